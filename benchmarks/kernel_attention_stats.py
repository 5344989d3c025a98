"""Time, memory and accuracy of the Triton attention-statistics kernels on one GPU.

Follows docs/METHODS.md "Kernel math", "Benchmark method": one process, one GPU, the same bf16 inputs for
every provider, providers interleaved round by round, ``triton.testing.do_bench``
(median and the 20-80 % spread, milliseconds), causal, batch 1.

Providers
  sdpa      torch sdpa forward, flash backend (k/v heads pre-expanded for GQA)
  flash     flash-attn's flash_attn_func, when it imports
  p1        Triton pass 1, no statistics (output + lse)
  p1+rows   pass 1 with every row statistic and the top-k
  p1+p2     all statistics but ``pattern``: pass 1 + pass 2 (column sums, pooled map)
  eager     the fp32 reference backend, up to --eager-max keys
Reported per (n, head size, heads): ms, ratio to sdpa, TFLOP/s and % of the bf16 dense
peak (FLOPs counted as useful causal work: 2 b h n^2 d for a forward, plus b h n^2 d for
pass 2's recomputed scores), and the peak CUDA memory the call adds.

Then: accuracy of every statistic against a float64 reference up to --accuracy-max keys,
on random inputs and on SmolLM2's own q/k/v (random inputs give near-uniform attention
and hide the sinks); the invariants at the longest n; and ``lens.capture`` of SmolLM2
with all statistics for all heads, backend="triton", at --capture lengths.

Targets (issue 4): p1+rows <= 1.2x sdpa; p1+p2 <= 2.1x (d 64) / 1.6x (d 128) at 32K;
SmolLM2 at 128K captured on one H100.

Usage:
  python benchmarks/kernel_attention_stats.py --out benchmarks/RESULTS.md
  python benchmarks/kernel_attention_stats.py --ns 32768 --sweep      # try other tile sizes
  python benchmarks/kernel_attention_stats.py --smoke                 # CPU, interpreter, tiny: checks the script
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: bf16 dense tensor-core peak (TFLOP/s) by device-name fragment; docs/METHODS.md "Kernel math", "GPU limits".
PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
               "A100": 312.0}
ROW_STATS = ("sink_mass", "sink_mass_k", "entropy", "entropy_norm", "distance", "waad", "topk_idx", "topk_val",
             "prev_token", "diag_mass", "dup_token", "induction")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", type=int, nargs="+", default=[4096, 16384, 32768, 65536, 131072])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--heads", nargs="+", default=["9:3", "32:32"], help="query:kv head counts")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration")
    ap.add_argument("--eager-max", type=int, default=8192)
    ap.add_argument("--accuracy-max", type=int, default=8192)
    ap.add_argument("--capture", type=int, nargs="*", default=[32768, 131072], help="lens.capture lengths")
    ap.add_argument("--sweep", action="store_true", help="also time alternative tile sizes")
    ap.add_argument("--skip-real", action="store_true", help="no SmolLM2 q/k/v accuracy run")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under the Triton interpreter")
    ap.add_argument("--out", help="append the Markdown report to this file")
    args = ap.parse_args()

    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.ns, args.dims, args.heads, args.rounds = [48], [16], ["4:2"], 1
        args.eager_max = args.accuracy_max = 48
        args.capture = [] if not args.capture or args.capture == [32768, 131072] else args.capture
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("kernel_attention_stats: no CUDA device here; this benchmark times GPU kernels and exits. "
              "(--smoke runs its code paths on the CPU under the Triton interpreter.)")
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        print("kernel_attention_stats: triton is not installed (pip install triton); exiting.")
        return

    bench = Bench(smoke=args.smoke)
    report = [bench.header()]
    report.append(timing_table(bench, args))
    if args.sweep:
        report.append(sweep_table(bench, args))
    report.append(accuracy_table(bench, args))
    report.append(invariants_table(bench, args))
    if args.capture:
        report.append(capture_table(bench, args))
    text = "\n\n".join(r for r in report if r) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


class Bench:
    """Device, timer and memory probe (CUDA events via do_bench; a wall clock under --smoke)."""

    def __init__(self, smoke: bool):
        import torch

        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.dtype = torch.float32 if smoke else torch.bfloat16  # the interpreter has no bf16 arithmetic
        self.name = "CPU (Triton interpreter)" if smoke else torch.cuda.get_device_name()
        self.peak = next((v for k, v in PEAK_TFLOPS.items() if k in self.name), None)

    def header(self) -> str:
        import torch
        import triton

        return (f"### Triton attention statistics, {time.strftime('%Y-%m-%d')}, {self.name}\n\n"
                f"torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}; "
                f"inputs {str(self.dtype).replace('torch.', '')}, causal, batch 1; "
                f"peak used for %: {self.peak or 'unknown'} TFLOP/s bf16 dense.")

    def time(self, fn) -> tuple[float, float, float]:
        """(median, 20th, 80th percentile) milliseconds."""
        if self.smoke:
            t0 = time.perf_counter()
            fn()
            ms = 1e3 * (time.perf_counter() - t0)
            return ms, ms, ms
        import triton

        return tuple(triton.testing.do_bench(fn, warmup=10, rep=50, quantiles=[0.5, 0.2, 0.8]))

    def memory(self, fn) -> float:
        """Peak bytes the call adds on the GPU, in GiB (0 under --smoke)."""
        if self.smoke:
            fn()
            return 0.0
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**30


def make_call(q, k, v, stats, token_ids=None, options=None, scale=None):
    from lens.kernels import StatOptions
    from lens.kernels._api import _validate

    return _validate(q, k, v, causal=True, scale=scale, mask=None, query_mask=None, sliding_window=None,
                     token_ids=token_ids, stats=stats, options=options or StatOptions(), edits=None, block_size=None)


def random_inputs(bench: Bench, h: int, kv: int, n: int, d: int, seed: int = 0):
    import torch

    g = torch.Generator(device=bench.device).manual_seed(seed)
    shape = lambda heads: (1, heads, n, d)  # noqa: E731
    q, k, v = (torch.randn(shape(x), generator=g, device=bench.device, dtype=bench.dtype) for x in (h, kv, kv))
    ids = torch.randint(0, 50, (1, n), generator=g, device=bench.device)
    return q, k, v, ids


def providers(bench: Bench, q, k, v, ids, *, eager_ok: bool, blocks=None) -> dict:
    """name -> (zero-argument callable, useful FLOPs)."""
    import torch.nn.functional as F

    from lens.kernels import STAT_NAMES, _eager, _triton

    _, h, n, d = q.shape
    group = h // k.shape[1]
    fwd = 2.0 * h * n * n * d  # two causal matmuls, 2 FLOPs per MAC, half the square
    out: dict = {}
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    if bench.smoke:
        out["sdpa"] = (lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True), fwd)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True)

        out["sdpa"] = (sdpa, fwd)
        try:
            from flash_attn import flash_attn_func

            qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            out["flash"] = (lambda: flash_attn_func(qt, kt, vt, causal=True), fwd)
        except ImportError:
            pass
    plain = make_call(q, k, v, ())
    rows = make_call(q, k, v, ROW_STATS, token_ids=ids)
    full = make_call(q, k, v, tuple(s for s in STAT_NAMES if s != "pattern"), token_ids=ids)
    out["p1"] = (lambda: _triton.run(plain, blocks=blocks), fwd)
    out["p1+rows"] = (lambda: _triton.run(rows, blocks=blocks), fwd)
    out["p1+p2"] = (lambda: _triton.run(full, blocks=blocks), 1.5 * fwd)
    if eager_ok:
        out["eager"] = (lambda: _eager.run(full), fwd)
    return out


def timing_table(bench: Bench, args) -> str:
    lines = ["#### Time and memory (ms: median [p20, p80]; x: ratio to sdpa; memory: peak GiB the call adds)", "",
             "| n | d | heads | provider | ms | x sdpa | TFLOP/s | % peak | GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for d in args.dims:
        for spec in args.heads:
            h, kv = (int(x) for x in spec.split(":"))
            for n in args.ns:
                try:
                    q, k, v, ids = random_inputs(bench, h, kv, n, d)
                    provs = providers(bench, q, k, v, ids, eager_ok=n <= args.eager_max)
                    times: dict[str, list] = {p: [] for p in provs}
                    for _ in range(args.rounds):  # interleave the providers
                        for p, (fn, _) in provs.items():
                            times[p].append(bench.time(fn))
                    mem = {p: bench.memory(fn) for p, (fn, _) in provs.items()}
                except Exception as err:  # out of memory at this size: say so, go on
                    lines.append(f"| {n} | {d} | {h}/{kv} | failed | {type(err).__name__}: {str(err)[:80]} | | | | |")
                    continue
                base = statistics.median(t[0] for t in times["sdpa"])
                for p, (_, flops) in provs.items():
                    med = statistics.median(t[0] for t in times[p])
                    lo, hi = min(t[1] for t in times[p]), max(t[2] for t in times[p])
                    tflops = flops / (med * 1e-3) / 1e12
                    pct = f"{100 * tflops / bench.peak:.0f}" if bench.peak else ""
                    lines.append(f"| {n} | {d} | {h}/{kv} | {p} | {med:.3f} [{lo:.3f}, {hi:.3f}] | {med / base:.2f} | "
                                 f"{tflops:.0f} | {pct} | {mem[p]:.2f} |")
                del q, k, v, provs
    return "\n".join(lines)


def sweep_table(bench: Bench, args) -> str:
    """Pass 1 with row statistics and pass 1 + 2 under other tiles, at the first n >= 32K (or the largest)."""
    from lens.kernels._triton import Blocks, default_blocks

    n = next((x for x in args.ns if x >= 32768), max(args.ns))
    configs = [Blocks(64, 64, 4, 3), Blocks(64, 64, 8, 3), Blocks(64, 32, 4, 3), Blocks(128, 64, 8, 3),
               Blocks(128, 32, 8, 3), Blocks(64, 128, 8, 3)]
    lines = [f"#### Tile sweep at n = {n} (ms, median)", "", "| d | heads | pass 1 tiles | pass 2 tiles | p1+rows | p1+p2 |",
             "|---|---|---|---|---|---|"]
    for d in args.dims:
        h, kv = (int(x) for x in args.heads[0].split(":"))
        q, k, v, ids = random_inputs(bench, h, kv, n, d)
        default = default_blocks(d, q.dtype, True)
        for c in configs:
            for pair in ((c, default[1]), (default[0], c)):
                try:
                    provs = providers(bench, q, k, v, ids, eager_ok=False, blocks=pair)
                    r = bench.time(provs["p1+rows"][0])[0]
                    f = bench.time(provs["p1+p2"][0])[0]
                    lines.append(f"| {d} | {h}/{kv} | {_fmt(pair[0])} | {_fmt(pair[1])} | {r:.3f} | {f:.3f} |")
                except Exception as err:
                    lines.append(f"| {d} | {h}/{kv} | {_fmt(pair[0])} | {_fmt(pair[1])} | failed: {str(err)[:60]} | |")
    return "\n".join(lines)


def _fmt(b) -> str:
    return f"{b.block_m}x{b.block_n} w{b.num_warps} s{b.num_stages}"


def reference64(q, k, v, ids, scale: float, sink_k: int, window: int, topk: int) -> dict:
    """Every compared statistic from its definition, float64, one head at a time."""
    import torch

    _, h, n, _ = q.shape
    group = h // k.shape[1]
    qpos = torch.arange(n, device=q.device)[:, None]
    kpos = torch.arange(n, device=q.device)[None, :]
    causal = kpos <= qpos
    out: dict[str, list] = {}
    tok = ids[0]
    same = tok[:, None] == tok[None, :]
    prev_same = torch.zeros_like(same)
    prev_same[:, 1:] = same[:, :-1]
    for hh in range(h):
        s = (q[0, hh].double() @ k[0, hh // group].double().T) * scale
        s = s.masked_fill(~causal, -math.inf)
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - lse[:, None])
        dist = (qpos - kpos).double()
        vals = {
            "output": p @ v[0, hh // group].double(), "lse": lse,
            "entropy": -torch.where(p > 0, p * torch.log(p), 0.0).sum(-1),
            "sink_mass": p[:, 0], "sink_mass_k": p[:, :sink_k].sum(-1), "received": p.sum(0),
            "distance": (p * dist).sum(-1), "waad": (p * dist.clamp_max(window)).sum(-1),
            "prev_token": torch.cat([p.new_zeros(1), torch.diagonal(p, -1)]),
            "diag_mass": torch.diagonal(p), "dup_token": (p * (same & (kpos < qpos))).sum(-1),
            "induction": (p * (prev_same & (kpos >= 1) & causal)).sum(-1),
            "topk_idx": torch.topk(s, topk, dim=-1).indices,
        }
        for name, val in vals.items():
            out.setdefault(name, []).append(val)
        del s, p
    return {name: torch.stack(vals)[None] for name, vals in out.items()}


def accuracy_rows(label: str, q, k, v, ids, scale: float, n: int) -> list[str]:
    from lens.kernels import StatOptions, _eager, _triton

    opt = StatOptions()
    stats = tuple(s for s in ROW_STATS if s != "entropy_norm") + ("received",)
    call = make_call(q, k, v, stats, token_ids=ids, options=opt, scale=scale)
    got = _triton.run(call)
    ref = reference64(q, k, v, ids, scale, opt.sink_k, opt.window, min(opt.topk, n))
    eag = _eager.run(call) if n <= 8192 else None
    rows = []
    for name in ("output", "lse", *[s for s in stats if s not in ("topk_val",)]):
        mine = got.output if name == "output" else got.lse if name == "lse" else got.stats[name]
        if name == "topk_idx":
            agree = (mine[..., 0] == ref[name][..., 0]).double().mean().item()
            rows.append(f"| {label} | {n} | topk_idx (top-1 agreement) | {agree:.6f} | |")
            continue
        err = (mine.double() - ref[name]).abs().max().item()
        e_err = ""
        if eag is not None:
            theirs = eag.output if name == "output" else eag.lse if name == "lse" else eag.stats[name]
            e_err = f"{(theirs.double() - ref[name]).abs().max().item():.2e}"
        rows.append(f"| {label} | {n} | {name} | {err:.2e} | {e_err} |")
    return rows


def accuracy_table(bench: Bench, args) -> str:
    lines = ["#### Accuracy against float64 (max abs error; eager fp32 beside it for scale)", "",
             "| inputs | n | quantity | triton | eager |", "|---|---|---|---|---|"]
    ns = [n for n in sorted(set(args.ns + [min(args.accuracy_max, 8192)])) if n <= args.accuracy_max]
    for n in ns:
        q, k, v, ids = random_inputs(bench, 9, 3, n, 64, seed=1)
        lines += accuracy_rows("random", q, k, v, ids, 1 / 8, n)
    if not args.skip_real and not bench.smoke:
        try:
            n = ns[-1]
            q, k, v, ids, scale = smollm2_qkv(bench, n, layer=5)
            lines += accuracy_rows("SmolLM2 layer 5", q, k, v, ids, scale, n)
        except Exception as err:
            lines.append(f"| SmolLM2 | | unavailable: {type(err).__name__}: {str(err)[:80]} | | |")
    return "\n".join(lines)


def smollm2_qkv(bench: Bench, n: int, layer: int):
    """q, k, v of one SmolLM2 layer on random tokens (BOS first), grabbed from the attention call."""
    import torch

    from lens import kernels
    import lens
    from lens.model import _routing

    subject = lens.load("smollm2", dtype=bench.dtype, device=bench.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, subject.tokenizer.vocab_size, (1, n), generator=g)
    if subject.tokenizer.bos_token_id is not None:
        ids[0, 0] = subject.tokenizer.bos_token_id
    ids = ids.to(bench.device)
    grabbed, calls, original = {}, [0], kernels.attention

    def spy(q, k, v, **kw):  # benchmark-only: records the layer's inputs, then attends as usual
        if calls[0] == layer:
            grabbed.update(q=q.detach().clone(), k=k.detach().clone(), v=v.detach().clone(), scale=kw.get("scale"))
        calls[0] += 1
        return original(q, k, v, **kw)

    kernels.attention = spy
    try:
        with torch.no_grad(), _routing.routed(subject.model):
            subject.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        kernels.attention = original
    scale = grabbed["scale"] or 1 / math.sqrt(grabbed["q"].shape[-1])
    return grabbed["q"], grabbed["k"], grabbed["v"], ids, scale


def invariants_table(bench: Bench, args) -> str:
    import torch

    from lens.kernels import _triton

    n = max(args.ns)
    q, k, v, ids = random_inputs(bench, 9, 3, n, 64, seed=2)
    call = make_call(q, k, v, ("received", "entropy", "sink_mass", "topk_val"), token_ids=ids)
    r = _triton.run(call)
    recv = r.stats["received"].sum(-1).double()
    ent = r.stats["entropy"]
    bound = torch.log(torch.arange(1, n + 1, device=q.device, dtype=torch.float32))
    sink = r.stats["sink_mass"]
    lines = [f"#### Invariants at n = {n} (random inputs, 9/3 heads, d 64)", "", "| check | worst |", "|---|---|",
             f"| sum_j received_j - n | {(recv - n).abs().max().item():.3e} |",
             f"| entropy below 0 or above ln(i+1) | {max(0.0, (-ent).max().item(), (ent - bound).max().item()):.3e} |",
             f"| sink mass outside [0, 1] | {max(0.0, (-sink).max().item(), (sink - 1).max().item()):.3e} |",
             f"| sum of top-k p above 1 | {max(0.0, (r.stats['topk_val'].sum(-1) - 1).max().item()):.3e} |",
             f"| non-finite values | {sum(int((~torch.isfinite(t)).sum()) for t in r.stats.values())} |"]
    return "\n".join(lines)


def capture_table(bench: Bench, args) -> str:
    """lens.capture of SmolLM2 with all statistics for all heads vs a plain forward."""
    import torch

    import lens

    subject = lens.load("smollm2", dtype=bench.dtype, device=bench.device)
    lines = ["#### lens.capture of SmolLM2 (30 layers x 9/3 heads), all statistics, all heads, backend=\"triton\"", "",
             "| n | plain forward s | capture s | x forward | capture peak GiB |", "|---|---|---|---|---|"]
    for n in args.capture:
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(100, subject.tokenizer.vocab_size, (1, n), generator=g)
        try:
            def forward():
                with torch.no_grad():
                    subject.model(input_ids=ids.to(bench.device), use_cache=False, logits_to_keep=1)

            def capture():
                return lens.capture(subject, ids, backend="triton", allow_beyond_context=True,
                                    progress=False)

            t_fwd = _wall(bench, forward)
            if not bench.smoke:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t_cap = _wall(bench, capture)
            peak = 0.0 if bench.smoke else (torch.cuda.max_memory_allocated() - base) / 2**30
            lines.append(f"| {n} | {t_fwd:.2f} | {t_cap:.2f} | {t_cap / t_fwd:.2f} | {peak:.2f} |")
        except Exception as err:
            lines.append(f"| {n} | failed: {type(err).__name__}: {str(err)[:100]} | | | |")
    return "\n".join(lines)


def _wall(bench: Bench, fn) -> float:
    """Seconds of one call after one warm-up call (compiles, caches), synchronised."""
    import torch

    fn()
    if not bench.smoke:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if not bench.smoke:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
