"""Measured on an H200 on 2026-11-28 (benchmarks/gpu/2026-11-28-h200.md); imports updated to the one-package layout. Which statistic costs what in the Triton kernels: times pass 1/2 with one statistic set at a time (run from a folder holding a copy of the project under project/)."""
import os, sys, time, statistics
T0 = time.time()
OUT = os.environ.get("OUT", ".")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [f"{HERE}/project", f"{HERE}/project/benchmarks"]
LOG = open(f"{OUT}/ablate.md", "a")
def emit(s):
    print(s, flush=True); LOG.write(s + "\n"); LOG.flush()
import torch, triton
import kernel_attention_stats as kas
from lens.kernels import StatOptions, STAT_NAMES, _triton
from lens.kernels._triton import Blocks
bench = kas.Bench(smoke=False)
ROW = kas.ROW_STATS
sets = [
    ("none (output+lse)", ()),
    ("sink_mass+sink_mass_k", ("sink_mass", "sink_mass_k")),
    ("entropy", ("entropy",)),
    ("distance", ("distance",)),
    ("waad+prev+diag", ("waad", "prev_token", "diag_mass")),
    ("dup+induction", ("dup_token", "induction")),
    ("topk k=8", ("topk_idx", "topk_val")),
    ("topk k=1", ("topk_idx",), StatOptions(topk=1)),
    ("rows w/o topk", tuple(s for s in ROW if not s.startswith("topk"))),
    ("all rows (p1+rows)", ROW),
    ("received (p2)", ("received",)),
    ("pooled (p2)", ("pooled",)),
    ("all but pattern (p1+p2)", tuple(s for s in STAT_NAMES if s != "pattern")),
]
emit(f"### Ablation, {bench.name}, torch {torch.__version__}, triton {triton.__version__}, bf16, causal, batch 1; ms median of do_bench")
for d, spec, n in ((64, "9:3", 32768), (128, "32:8", 32768), (64, "9:3", 4096)):
    h, kv = (int(x) for x in spec.split(":"))
    q, k, v, ids = kas.random_inputs(bench, h, kv, n, d)
    provs = kas.providers(bench, q, k, v, ids, eager_ok=False)
    base = bench.time(provs["sdpa"][0])[0]
    emit(f"\n#### n {n}, d {d}, heads {h}/{kv}: sdpa flash {base:.3f} ms\n\n| statistics | default tiles ms | x sdpa | 64x64 w4 s3 ms | x sdpa |\n|---|---|---|---|---|")
    for item in sets:
        name, st = item[0], item[1]
        opt = item[2] if len(item) > 2 else StatOptions()
        call = kas.make_call(q, k, v, st, token_ids=ids, options=opt)
        try:
            t1 = bench.time(lambda: _triton.run(call))[0]
            t2 = bench.time(lambda: _triton.run(call, blocks=(Blocks(64, 64, 4, 3), Blocks(64, 64, 4, 3))))[0]
            emit(f"| {name} | {t1:.3f} | {t1 / base:.2f} | {t2:.3f} | {t2 / base:.2f} |")
        except Exception as err:
            emit(f"| {name} | failed {type(err).__name__}: {str(err)[:120]} | | | |")
    del q, k, v
emit(f"\ntotal {time.time() - T0:.0f}s")
