"""Static cost of the Triton attention kernels, on a CPU, for sm_90 (issue 15).

No GPU needed. For each statistic set of the H200 ablation (benchmarks/gpu/2026-11-28-h200.md)
the host wrapper ``lens.kernels._triton.run`` is called on empty CPU tensors of the ablation's
shape (n = 32K, bf16, causal, batch 1) with the kernel launches intercepted, so the
constexprs, block sizes and warps are exactly the ones the wrapper would pass. Each launch
is then compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``
and its cubin read with the ``cuobjdump`` / ``nvdisasm`` that ship inside the triton
package:

  regs, stack   registers per thread and the stack frame (bytes; > 0 with spills) from
                ``cuobjdump -res-usage``; STL counts local stores (spills) in the SASS.
  per iteration SASS instructions of one warp in the main loop body, the outermost backward
                branch's span (the key-tile loop in pass 1, the candidate loop of the top-k
                rescan, the query-tile loop in pass 2): MUFU.EX2, MUFU (all), BAR (BAR.*),
                SHFL, TC (HGMMA/HMMA/WGMMA), total. "once": the instructions outside that
                loop, run once a program (prologue, epilogue, the rescan's k selections).
                "hot": run on every tile; "cond": regions a predicated forward branch in
                the loop skips (the causal-mask code of the diagonal tile, the WAAD/prev/diag
                band, the sink tile, the top-k guard), weighted by ``--cond`` (default 0:
                at 32K they run on ~1-2 of ~256 tiles a row block). Nested loops (pass 1's
                top-k ``while go:`` insertion loop) count once per trip; the trips per tile
                are a Monte Carlo of that loop on iid scores (the ablation's random inputs).
  pipe cycles   the estimate (default model): per iteration, one warp's cycles on its SM
                sub-partition = the busiest pipe + barrier stalls:
                  max(issue: total instructions (1 a cycle),
                      MUFU: 8 x MUFU (16 SFU lanes per SM vs 128 FP32 lanes),
                      MIO: 4 x (SHFL + LDS/STS) (~32 lanes per SM),
                      tensor: HGMMA.64xNxK = N/2 cycles (989 TFLOP/s / 132 SMs / 4 sub-
                      partitions at ~1.8 GHz ~ 1024 FLOP/clock; a warp does 16 of 64 rows))
                  + 24 x BAR (a block-wide sync with its shared-memory round trip).
                Chosen from the hardware rates, not fitted. Total = cycles x warps x the
                (program, iteration) pairs the causal grid runs at n = 32K, pass 1 + pass 2.
  weighted sum  the alternative: sum_i weight_i x count_i with ALU 1, MUFU 8, SHFL 4, BAR 16,
                LDS/STS 2, TC 8 (issue-slot costs); it ignores that the pipes overlap.
``--sensitivity`` prints rho as each parameter changes; ``--fit`` the rho of a non-negative
least-squares fit of the weighted sum (optimistic: 13 rows, 7 parameters).

Ground truth: the H200 ablation (times sdpa, n = 32K; d 64 at 9/3 heads, d 128 at 32/8),
with the tiles it ran: "H200 default" = pass 1 64x64 on 8 warps with statistics, 128x64
on 8 warps without, pass 2 64x64 on 8 warps (commit 31180a5); and "64x64 w4" on both
passes (3 stages throughout). The ablation measured the kernels before issue 15's redesign,
so the calibration compiles those ("old": OLD_REF's kernels/_triton*.py, read from git into
a temporary package); Spearman's rho between their estimated cost and the measured time
over the 13 rows is printed per head size and tile config. The current kernels ("new")
are estimated with the same model, and every run's estimate is also given as times sdpa:
G x the geometric mean of measured / estimated over the calibration rows of its head size.

Usage:
  python benchmarks/kernel_static_cost.py          # d 64 and 128: calibration, then old vs new
  python benchmarks/kernel_static_cost.py --sensitivity --fit --out benchmarks/RESULTS.md
  python benchmarks/kernel_static_cost.py --dims 64 --runs old:w4 new:now --sets none entropy
Compiled kernels land in Triton's cache (~/.triton/cache): a second run is fast.
Limitations: static counts and a throughput model: no latency chains, occupancy (registers
limit resident warps), memory traffic, L2 or scheduling; warp divergence ignored; branch
regions taken as never run (``--cond``); top-k trips from iid scores, not real attention
(the old insertion loop); the top-k rescan's gathered key reads (k x SPAN keys a row, from
L2) are not modelled;
compiled by the installed triton, which may differ from the one the H200 ran (3.6).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's notice; same default
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROW_STATS = ("sink_mass", "sink_mass_k", "entropy", "entropy_norm", "distance", "waad", "topk_idx", "topk_val",
             "prev_token", "diag_mass", "dup_token", "induction")

#: (label, statistics, topk): the 13 rows of the H200 ablation (benchmarks/gpu/ablate.py).
SETS = [
    ("none", (), 8),
    ("sink_mass+sink_mass_k", ("sink_mass", "sink_mass_k"), 8),
    ("entropy", ("entropy",), 8),
    ("distance", ("distance",), 8),
    ("waad+prev_token+diag_mass", ("waad", "prev_token", "diag_mass"), 8),
    ("dup_token+induction", ("dup_token", "induction"), 8),
    ("topk k=8", ("topk_idx", "topk_val"), 8),
    ("topk k=1", ("topk_idx",), 1),
    ("rows but top-k", tuple(s for s in ROW_STATS if not s.startswith("topk")), 8),
    ("all rows", ROW_STATS, 8),
    ("received (p2)", ("received",), 8),
    ("pooled (p2)", ("pooled",), 8),
    ("all but pattern", None, 8),  # None: every STAT_NAMES entry but pattern
]

#: H200 ablation, times sdpa at n = 32K: {d: {config: [13 values in SETS order]}}.
MEASURED = {
    64: {"default": [0.71, 1.25, 1.43, 1.43, 1.28, 2.56, 5.48, 4.10, 4.87, 7.92, 1.61, 1.87, 9.43],
         "w4": [0.75, 0.74, 0.88, 0.85, 0.84, 2.16, 2.62, 1.90, 2.25, 4.83, 1.52, 1.66, 6.16]},
    128: {"default": [0.74, 1.44, 1.64, 1.62, 1.43, 2.70, 3.94, 3.05, 2.99, 5.48, 1.42, 1.53, 6.26],
          "w4": [0.77, 0.80, 0.85, 0.85, 0.79, 1.23, 1.83, 1.41, 1.79, 3.22, 1.39, 1.47, 3.93]},
}
HEADS = {64: (9, 3), 128: (32, 8)}
CONFIGS = {"default": "H200 default (p1 64x64 w8 / 128x64 w8 without stats, p2 64x64 w8)",
           "w4": "64x64 w4 on both passes", "now": "the wrapper's own default_blocks"}

WEIGHTS = {"alu": 1.0, "mufu": 8.0, "shfl": 4.0, "bar": 16.0, "smem": 2.0, "tc": 8.0}
TC_OPS = ("HGMMA", "HMMA", "WGMMA", "IMMA")


def _bin(tool: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


#: The kernels the H200 ablation ran, as far as the static model is concerned: the commit
#: this tool was calibrated on (its kernels equal commit 31180a5's but for soft-capping and
#: sinks, compiled off here). ``--kernels old`` compiles them from git.
OLD_REF = "c41b002"
KERNEL_NAMES = ("attn_rows_kernel", "attn_topk_kernel", "attn_columns_kernel")


def backend(which: str):
    """The host module ``_triton`` of the current kernels ("new") or of OLD_REF ("old"),
    the latter written from git into a temporary package beside shims for _types/_stats."""
    if which == "new":
        import lens.kernels._triton as T

        return T
    if "kernels_old" not in sys.modules:
        root = Path(__file__).resolve().parents[1]
        pkg = Path(tempfile.mkdtemp(prefix="static_cost_")) / "kernels_old"
        pkg.mkdir()
        for name in ("_triton.py", "_triton_kernels.py"):
            src = subprocess.run(["git", "show", f"{OLD_REF}:kernels/{name}"], cwd=root, capture_output=True,
                                 text=True, check=True).stdout
            (pkg / name).write_text(src)
        (pkg / "__init__.py").write_text("")
        (pkg / "_types.py").write_text("from lens.kernels._types import AttentionResult, Call  # noqa: F401\n")
        (pkg / "_stats.py").write_text("from lens.kernels._stats import pattern_rows, pool_factor  # noqa: F401\n")
        sys.path.insert(0, str(pkg.parent))
    import importlib

    return importlib.import_module("kernels_old._triton")


def capture_launches(d: int, stats, topk: int, config: str, n: int, which: str = "new"):
    """Run the host wrapper's ``run`` on empty CPU tensors with the launches intercepted:
    [(kernel, grid, args, kwargs)] for pass 1, the top-k rescan and pass 2, as launched."""
    import torch

    from lens.kernels import STAT_NAMES, StatOptions
    from lens.kernels._api import _validate

    h, kv = HEADS[d]
    if stats is None:
        stats = tuple(s for s in STAT_NAMES if s != "pattern")
    q = torch.empty(1, h, n, d, dtype=torch.bfloat16)
    k = torch.empty(1, kv, n, d, dtype=torch.bfloat16)
    v = torch.empty(1, kv, n, d, dtype=torch.bfloat16)
    ids = torch.zeros(1, n, dtype=torch.long)
    call = _validate(q, k, v, causal=True, scale=None, mask=None, query_mask=None, sliding_window=None,
                     token_ids=ids, stats=stats, options=StatOptions(topk=topk), edits=None, block_size=None)
    got: list = []

    class _Catch:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *a, **kw: got.append((self.fn, grid, a, kw))

    T = backend(which)
    # the kernels live in _triton_kernels (passes 1 and 2) and, since the split, _triton_topk (the rescan)
    mods = [m for m in (T._k, getattr(T, "_kt", None)) if m is not None]
    where = {nm: m for m in reversed(mods) for nm in KERNEL_NAMES if hasattr(m, nm)}
    saved = {nm: getattr(m, nm) for nm, m in where.items()}
    saved_check = T._check_device
    try:
        for nm, m in where.items():
            setattr(m, nm, _Catch(saved[nm]))
        T._check_device = lambda dev: None
        blocks = None  # "now": the wrapper's own default_blocks
        if config == "w4":
            blocks = (T.Blocks(64, 64, 4, 3), T.Blocks(64, 64, 4, 3))
        elif config == "default":  # the tiles the H200 run used (commit 31180a5's default_blocks)
            first = T.Blocks(64, 64, 8, 3)
            T.run(call, blocks=(first, T.Blocks(64, 64, 8, 3)))  # probe: are row statistics on?
            kw = got[0][3]
            rows = kw["TOPK"] > 0 or any(v >= 0 for key, v in kw.items() if key.startswith("S_"))
            got.clear()
            blocks = (first if rows else T.Blocks(128, 64, 8, 3), T.Blocks(64, 64, 8, 3))
        T.run(call, blocks=blocks)
    finally:
        for nm, m in where.items():
            setattr(m, nm, saved[nm])
        T._check_device = saved_check
    return got


def compile_sm90(fn, args, kwargs):
    """Compile one launch for sm_90 exactly as the JIT would specialise it: the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(kwargs, debug=False)
    bound, spec, opts = binder(*args, **kwargs)
    options, sig, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target, options=options.__dict__)


_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRA = re.compile(r"\bBRA\b.*?`\((\.L_x_\d+)\)")


def analyse_cubin(cubin: bytes) -> dict:
    """Registers, local memory and per-iteration SASS counts of one cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True).stdout
        sass = subprocess.run([_bin("nvdisasm"), "-c", str(path)], capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    stack = int(re.search(r"STACK:(\d+)", res).group(1))
    instrs: list[str] = []  # opcode text, in order
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = _INSTR.match(line)
        if m:
            instrs.append(m.group(2))
    loops = []  # (start, end) of each backward branch's span
    for i, ins in enumerate(instrs):
        m = _BRA.search(ins)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((labels[m.group(1)], i))
    if loops:
        outer = max(loops, key=lambda se: se[1] - se[0])
        inner = [se for se in loops if se != outer and outer[0] <= se[0] and se[1] <= outer[1]]
    else:  # straight-line kernel: everything runs once a program
        outer, inner = (0, -1), []
    in_inner = set()
    for s, e in inner:
        in_inner.update(range(s, e + 1))
    # Regions a predicated forward branch inside the loop can skip (the causal-mask tile, the
    # band, the sink tile, the top-k guard): "cond"; the rest of the body runs every tile: "hot".
    in_cond = set()
    for i in range(outer[0], outer[1] + 1):
        m = _BRA.search(instrs[i])
        if m and instrs[i].lstrip().startswith("@") and m.group(1) in labels:
            tgt = labels[m.group(1)]
            if i < tgt <= outer[1] + 1:
                in_cond.update(range(i + 1, tgt))
    in_cond -= in_inner
    hot = [instrs[i] for i in range(outer[0], outer[1] + 1) if i not in in_inner and i not in in_cond]
    cond = [instrs[i] for i in sorted(in_cond)]
    inner_body = [instrs[i] for i in sorted(in_inner)]
    # Once a program: prologue and epilogue (the top-k rescan's k selection rounds live there).
    once = [x for i, x in enumerate(instrs) if not outer[0] <= i <= outer[1]]
    return {"regs": regs, "stack": stack, "stl": sum(_op(x).startswith("STL") for x in instrs),
            "loop_found": bool(loops), "body": count(hot), "cond": count(cond), "inner": count(inner_body),
            "n_inner": len(inner), "once": count(once)}


def _op(ins: str) -> str:
    parts = ins.split()
    if parts and parts[0].startswith("@"):  # predicate
        parts = parts[1:]
    return parts[0] if parts else ""


def count(instrs: list[str]) -> dict:
    c = {"ex2": 0, "mufu": 0, "bar": 0, "shfl": 0, "tc": 0, "smem": 0, "tc_cyc": 0.0, "total": len(instrs)}
    for ins in instrs:
        op = _op(ins)
        if op.startswith("MUFU"):
            c["mufu"] += 1
            c["ex2"] += op.startswith("MUFU.EX2")
        elif op.startswith("BAR"):
            c["bar"] += 1
        elif op.startswith("SHFL"):
            c["shfl"] += 1
        elif op.startswith(TC_OPS):
            c["tc"] += 1
            c["tc_cyc"] += _tc_cycles(op)
        elif op.startswith(("LDS", "STS", "LDSM", "STSM")):
            c["smem"] += 1
    c["alu"] = c["total"] - c["mufu"] - c["bar"] - c["shfl"] - c["tc"] - c["smem"]
    return c


def _tc_cycles(op: str) -> float:
    """Tensor-pipe cycles one warp's share of a tensor-core instruction holds its SM
    sub-partition: ~1024 dense bf16 FLOP per clock per sub-partition (989 TFLOP/s / 132 SMs /
    4 / ~1.8 GHz), tf32 at half rate with half the k. HGMMA.64xNxK: a warpgroup op, a quarter
    (16 rows) per warp: 16 N K 2 / 1024 = N / 2 cycles for bf16 k16 and tf32 k8 alike.
    HMMA (mma.sync m16n8k16 etc.): 2 m n k / 1024."""
    m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op)
    if m:
        return int(m.group(2)) / 2
    return 4.0  # HMMA m16n8k16: 2 * 16 * 8 * 16 / 1024 = 4 cycles (k8: 2; taken as 4)


#: The pipe model (default): per iteration, one warp's cycles on its sub-partition are the
#: busiest of its pipes plus the barrier stalls: issue (1 instruction a cycle), the MUFU
#: (16 lanes per SM: 8 cycles a warp instruction), the MIO queue for shuffles and shared
#: memory (~32 lanes per SM: 4 cycles), the tensor pipe (``_tc_cycles``); each BAR adds
#: BAR_CYCLES of stall (a block-wide sync plus the shared-memory round trip around it).
BAR_CYCLES = 24.0


def pipe_cycles(c: dict, bar: float | None = None) -> float:
    bar = BAR_CYCLES if bar is None else bar
    return max(c["total"], 8 * c["mufu"], 4 * (c["shfl"] + c["smem"]), c["tc_cyc"]) + bar * c["bar"]


def weighted(c: dict, w: dict = WEIGHTS) -> float:
    return sum(w[key] * c[key] for key in w)


def topk_trips(k: int, bm: int, bn: int, tiles: int, reps: int = 4, seed: int = 0) -> list[float]:
    """Expected trips of pass 1's top-k insertion loop (``while go:``) on the t-th key tile of
    a row block, t < tiles, for iid scores (the ablation's random inputs): each trip inserts
    one key per row that still has a candidate above its k-th best, so the trips are the
    largest number of a tile's keys that enter some row's top-k. Monte Carlo, numpy."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.zeros(tiles)
    for _ in range(reps):
        top = np.full((bm, k), -np.inf)
        for t in range(tiles):
            new = rng.random((bm, bn))
            both = np.concatenate([top, new], 1)
            order = np.argsort(both, 1)[:, -k:]
            inserts = (order >= k).sum(1)  # new keys that land in the top-k
            out[t] += inserts.max()
            top = np.take_along_axis(both, order, 1)
    return list(out / reps)


_TRIPS: dict = {}


def trips(kernel_name: str, grid, kw: dict, n: int) -> tuple[int, float]:
    """(outer-loop iterations over the whole grid, inner-loop trips over the whole grid)."""
    heads = grid[1]
    if kernel_name == "attn_topk_kernel":  # one row a program, a loop over its k candidate tiles
        return grid[0] * heads * kw["TOPK"], 0.0
    if kernel_name == "attn_rows_kernel":
        bm, bn, k = kw["BLOCK_M"], kw["BLOCK_N"], kw["TOPK"]
        tiles = [-(-min(n, m0 + bm) // bn) for m0 in range(0, n, bm)]
        inner = 0.0
        if k > 0:
            key = (k, bm, bn, max(tiles))
            if key not in _TRIPS:
                _TRIPS[key] = topk_trips(k, bm, bn, max(tiles))
            cum = [0.0]
            for x in _TRIPS[key]:
                cum.append(cum[-1] + x)
            inner = sum(cum[t] for t in tiles)
        return sum(tiles) * heads, inner * heads
    rpg, kpg, ksub, qsub, bn = kw["ROWS_PER_GROUP"], kw["KEYS_PER_GROUP"], kw["K_SUBS"], kw["Q_SUBS"], kw["BLOCK_N"]
    it = 0
    for kt in range(grid[0]):
        kstart = (kt // ksub) * kpg + (kt % ksub) * bn
        it += -(-n // rpg) - kstart // rpg
    return it * heads, float(it * heads * qsub)


def spearman(a, b) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2 + 1
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128], choices=[64, 128])
    ap.add_argument("--runs", nargs="+", default=["old:default", "old:w4", "old:now", "new:now"],
                    help="kernels:tiles pairs; kernels old (OLD_REF, calibrated) or new; tiles " + ", ".join(CONFIGS))
    ap.add_argument("--sets", nargs="+", help="only these rows (labels as printed; partial match)")
    ap.add_argument("--n", type=int, default=32768, help="sequence length of the grid (ablation: 32768)")
    ap.add_argument("--cond", type=float, default=0.0,
                    help="weight of the loop's branch-skipped regions (mask, band, sink tile): 0 = never run")
    ap.add_argument("--weights", help="override weights, e.g. bar=32,shfl=2 (classes: alu mufu shfl bar smem tc)")
    ap.add_argument("--sensitivity", action="store_true", help="rho with each weight halved / doubled / zeroed")
    ap.add_argument("--fit", action="store_true", help="also fit the weights by least squares (optimistic)")
    ap.add_argument("--out", help="append the Markdown to this file")
    args = ap.parse_args()
    runs = [tuple(r.split(":")) for r in args.runs]
    for which, cfg in runs:
        if which not in ("old", "new") or cfg not in CONFIGS:
            raise SystemExit(f"--runs wants kernels:tiles with kernels old|new and tiles {'|'.join(CONFIGS)}")
    t0 = time.time()
    if args.weights:
        for item in args.weights.split(","):
            key, val = item.split("=")
            if key not in WEIGHTS:
                raise SystemExit(f"unknown weight class {key!r}: {', '.join(WEIGHTS)}")
            WEIGHTS[key] = float(val)
    lines: list[str] = []

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    import triton

    sets = [s for s in SETS if not args.sets or any(x in s[0] for x in args.sets)]
    cache: dict = {}
    w_txt = ", ".join(f"{k} {v:g}" for k, v in WEIGHTS.items())
    emit(f"Static, sm_90 (GPUTarget cuda 90), triton {triton.__version__}, bf16, causal, batch 1, n {args.n}; "
         f"compiled on the CPU, no GPU. Counts: SASS instructions per main-loop iteration of one warp "
         f"(hot path; cond = branch-skipped regions, weight {args.cond:g}); once = outside the main loop, "
         f"per program. Pipe model: max(issue, 8 MUFU, 4 (SHFL + LDS/STS), tensor N/2 per HGMMA) + "
         f"{BAR_CYCLES:g} per BAR cycles; pipe G = that x warps x (iterations, programs), G warp-cycles. "
         f"Weighted sum: {w_txt}. Kernels: old = commit {OLD_REF} (the H200 ablation's), new = this tree.")
    summary, sens, both = [], [], {}
    totals: dict = {}  # (d, which, cfg) -> {row index: pipe-model G}
    for d in args.dims:
        for which, cfg in runs:
            calibrating = which == "old" and cfg in MEASURED[d]
            emit(f"\n#### d {d}, heads {HEADS[d][0]}/{HEADS[d][1]}, {which} kernels, tiles: {CONFIGS[cfg]}\n")
            emit("| statistics | kernel | tile | regs | stack B | STL | MUFU.EX2 | MUFU | BAR | SHFL | TC | hot total "
                 "| cond total | inner loop x trips | once total | pipe cycles / iter | weighted / iter | pipe G "
                 "| H200 x sdpa |")
            emit("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            feats = []
            for idx, (label, stats, topk) in enumerate(SETS):
                if (label, stats, topk) not in sets:
                    continue
                parts = []  # (counts, warps x repetitions): per loop iteration and once per program
                for fn, grid, a, kw in capture_launches(d, stats, topk, cfg, args.n, which):
                    name = fn.__name__ if hasattr(fn, "__name__") else fn.fn.__name__
                    key = (which, name, tuple(sorted((k, str(v)) for k, v in kw.items())), tuple(
                        getattr(x, "dtype", type(x)) for x in a))
                    if key not in cache:
                        cache[key] = analyse_cubin(compile_sm90(fn, a, kw).asm["cubin"])
                    r = cache[key]
                    outer, inner_total = trips(name, grid, kw, args.n)
                    r_inner = inner_total / outer if r["n_inner"] else 0.0  # trips per outer iteration
                    per_iter = {k2: r["body"][k2] + args.cond * r["cond"][k2] + r_inner * r["inner"][k2]
                                for k2 in r["body"]}
                    programs = grid[0] * grid[1]
                    parts.append((per_iter, kw["num_warps"] * outer))
                    parts.append((r["once"], kw["num_warps"] * programs))
                    c = r["body"]
                    tile = f"{kw.get('BLOCK_M', 1)}x{kw.get('BLOCK_N', kw.get('SPAN'))} w{kw['num_warps']}"
                    inner_txt = f"{r['inner']['total']} x {r_inner:.2f}" if r["n_inner"] else "-"
                    g = (pipe_cycles(per_iter) * outer + pipe_cycles(r["once"]) * programs) * kw["num_warps"]
                    meas = f"{MEASURED[d][cfg][idx]:.2f}" if calibrating else "-"
                    emit(f"| {label} | {KERNEL_LABEL[name]} | {tile} | {r['regs']} | "
                         f"{r['stack']} | {r['stl']} | {c['ex2']} | {c['mufu']} | {c['bar']} | {c['shfl']} | "
                         f"{c['tc']} | {c['total']} | {r['cond']['total']} | {inner_txt} | {r['once']['total']} | "
                         f"{pipe_cycles(per_iter):.0f} | {weighted(per_iter):.0f} | {g / 1e9:.2f} | {meas} |")
                feats.append((idx, parts))
            totals[(d, which, cfg)] = {i: _total(p, pipe_cycles) for i, p in feats}
            emit("\nEstimated total, G warp-cycles (pipe model), by row: " + ", ".join(
                f"{SETS[i][0]} {_total(p, pipe_cycles) / 1e9:.1f}" for i, p in feats))
            if calibrating and len(feats) >= 3:
                meas = [MEASURED[d][cfg][i] for i, _ in feats]
                rho = spearman([_total(p, pipe_cycles) for _, p in feats], meas)
                rho_sum = spearman([_total(p, weighted) for _, p in feats], meas)
                extra = ""
                if args.fit:
                    extra = f"; least-squares fitted weights: rho = {_fit(feats, meas):.2f}"
                emit(f"\nSpearman rho (estimated cost vs H200 time, {len(feats)} rows): pipe model **{rho:.2f}**, "
                     f"weighted sum {rho_sum:.2f}{extra}")
                summary.append((d, cfg, rho, rho_sum, len(feats)))
                both.setdefault(d, []).extend((_total(p, pipe_cycles), m) for (_, p), m in zip(feats, meas))
                if args.sensitivity:
                    sens.append((d, cfg, feats, meas))
    if summary:
        emit(f"\nCalibration: {OLD_REF}'s kernels (the H200 ablation's) against the ablation.\n")
        emit("| d | tiles | rows | Spearman rho, pipe model | Spearman rho, weighted sum |\n|---|---|---|---|---|")
        for d, cfg, rho, rho_sum, nrows in summary:
            emit(f"| {d} | {cfg} | {nrows} | {rho:.2f} | {rho_sum:.2f} |")
        for d, pairs in both.items():
            if len(pairs) > 13:  # both tile configs: one ranking over the two
                rho_both = spearman([c for c, _ in pairs], [m for _, m in pairs])
                emit(f"| {d} | both (pooled) | {len(pairs)} | {rho_both:.2f} | |")
    _estimates(totals, both, runs, emit)
    if sens:
        _sensitivity(sens, emit)
    emit(f"\n{len(cache)} kernels compiled or read from the cache; total {time.time() - t0:.0f} s")
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n".join(lines) + "\n")


KERNEL_LABEL = {"attn_rows_kernel": "1", "attn_topk_kernel": "top-k", "attn_columns_kernel": "2"}


def _estimates(totals: dict, both: dict, runs, emit) -> None:
    """Each run's estimate as times sdpa: G times the H200 seconds-per-G of the calibration rows
    (geometric mean of measured / estimated over the ablation rows of that head size)."""
    import math

    for d, pairs in both.items():
        scale = math.exp(sum(math.log(m / c) for c, m in pairs) / len(pairs))
        cols = [(w, c) for w, c in runs if (d, w, c) in totals]
        emit(f"\n#### d {d}: estimated x sdpa (pipe G x {scale * 1e9:.3f} per G, the geometric mean of the "
             f"{len(pairs)} calibration rows' measured / estimated)\n")
        emit("| statistics | " + " | ".join(f"{w} kernels, {c} tiles" for w, c in cols) + " | H200 measured, w4 |")
        emit("|---|" + "---|" * (len(cols) + 1))
        for i, (label, _, _) in enumerate(SETS):
            if not all(i in totals[(d, w, c)] for w, c in cols):
                continue
            cells = [f"{totals[(d, w, c)][i] * scale:.2f}" for w, c in cols]
            emit(f"| {label} | " + " | ".join(cells) + f" | {MEASURED[d]['w4'][i]:.2f} |")


def _total(parts, model) -> float:
    return sum(model(per_iter) * reps for per_iter, reps in parts)


def _sensitivity(sens, emit) -> None:
    """Spearman rho of both models when one parameter at a time is changed."""
    emit("\n#### Sensitivity of rho to the model's parameters (one changed at a time)\n")
    head = " | ".join(f"d {d} {cfg}" for d, cfg, _, _ in sens)
    emit(f"| model | {head} |\n|---|" + "---|" * len(sens))
    variants = [(f"pipe, BAR {b:g} cycles" + (" (chosen)" if b == BAR_CYCLES else ""),
                 lambda c, b=b: pipe_cycles(c, b)) for b in (0, 12, 24, 48)]
    variants.append(("weighted sum as chosen", weighted))
    for key in WEIGHTS:
        for f in (0.0, 0.5, 2.0):
            w = dict(WEIGHTS)
            w[key] = WEIGHTS[key] * f
            variants.append((f"weighted sum, {key} x{f:g}", lambda c, w=w: weighted(c, w)))
    variants.append(("plain instruction count", lambda c: c["total"]))
    for name, model in variants:
        cells = [f"{spearman([_total(p, model) for _, p in feats], meas):.2f}" for _, _, feats, meas in sens]
        emit(f"| {name} | " + " | ".join(cells) + " |")


def _fit(feats, meas) -> float:
    """Spearman rho of non-negative least-squares weights (one per class, plus a constant)."""
    import numpy as np
    from scipy.optimize import nnls

    keys = list(WEIGHTS)
    x = np.array([[_total(p, lambda c, k=k: c[k]) for k in keys] + [1.0] for _, p in feats])
    x = x / x.max(0)
    w, _ = nnls(x, np.array(meas))
    return spearman(list(x @ w), meas)


if __name__ == "__main__":
    main()
