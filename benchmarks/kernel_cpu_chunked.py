"""CPU benchmark of one layer's attention: torch sdpa vs the chunked and eager backends.

Shapes are one SmolLM2-135M layer: batch 1, 9 query heads, 3 key/value heads, head
size 64, causal, n in 1K..8K (``--n`` to change). Providers, interleaved per round:
  sdpa     torch.nn.functional.scaled_dot_product_attention, no statistics
  chunked  kernels.attention(backend="chunked") with every statistic but ``pattern``
           (token stats from random token ids)
  chunked-row   the same with the cheap per-row and column statistics only
           (sink_mass, sink_mass_k, entropy, entropy_norm, received, visible)
  eager    kernels.attention(backend="eager"), same statistics, skipped when the
           estimated pattern memory exceeds --eager-max-gb
Time is the median of ``--repeat`` runs after one warm-up run. Peak memory is the
growth of the process's peak resident set (VmHWM) during one call, after resetting
the high-water mark through /proc/self/clear_refs: it counts every allocation torch
makes on the CPU (tracemalloc would see only Python objects, not tensor storage).

"model x" columns estimate the whole-model ratio (attention + the rest of the layer)
/ (sdpa + the rest), timing the rest as the layer's projection and MLP matmuls
(hidden 576, MLP 1536, SwiGLU) on the same machine.

Run: ``python benchmarks/kernel_cpu_chunked.py [--n 1024 2048 4096 8192] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from lens.kernels import STAT_NAMES, attention  # noqa: E402

ALL_STATS = tuple(s for s in STAT_NAMES if s != "pattern")
ROW_STATS = ("sink_mass", "sink_mass_k", "entropy", "entropy_norm", "received", "visible")
HEADS, KV_HEADS, D_HEAD, HIDDEN, MLP = 9, 3, 64, 576, 1536


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_mb(fn) -> float:
    """Growth of the peak resident set during fn(), in MB (Linux only; nan elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return float("nan")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def rest_of_layer(n: int):
    """The non-attention matmuls of one SmolLM2 layer for n tokens (a timing stand-in)."""
    x = torch.randn(n, HIDDEN)
    heads_out = torch.randn(n, HEADS * D_HEAD)
    w_qkv = torch.randn(HIDDEN, (HEADS + 2 * KV_HEADS) * D_HEAD) * 0.02
    w_o = torch.randn(HEADS * D_HEAD, HIDDEN) * 0.02
    w_up = torch.randn(HIDDEN, 2 * MLP) * 0.02
    w_down = torch.randn(MLP, HIDDEN) * 0.02

    def run():
        qkv = x @ w_qkv
        o = heads_out @ w_o
        g, u = (x @ w_up).chunk(2, dim=-1)
        return qkv, o + (F.silu(g) * u) @ w_down
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--eager-max-gb", type=float, default=3.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"batch 1, {HEADS} q heads / {KV_HEADS} kv heads, d_head {D_HEAD}, causal")
    header = (f"{'n':>6} {'provider':<12} {'time ms':>9} {'x sdpa':>7} {'model x':>8} {'peak MB':>9}")
    print(header)
    print("-" * len(header))
    for n in args.n:
        torch.manual_seed(0)
        q = torch.randn(1, HEADS, n, D_HEAD) * 2.0  # peaky rows, not uniform
        k = torch.randn(1, KV_HEADS, n, D_HEAD)
        v = torch.randn(1, KV_HEADS, n, D_HEAD)
        tok = torch.randint(0, 500, (1, n))
        providers = {
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            "chunked": lambda: attention(q, k, v, token_ids=tok, stats=ALL_STATS, backend="chunked"),
            "chunked-row": lambda: attention(q, k, v, stats=ROW_STATS, backend="chunked"),
        }
        eager_gb = 6 * HEADS * n * n * 4 / 2**30  # scores, p and a few same-size temporaries
        if eager_gb <= args.eager_max_gb:
            providers["eager"] = lambda: attention(q, k, v, token_ids=tok, stats=ALL_STATS, backend="eager")
        rest = rest_of_layer(n)
        times = {name: [] for name in providers} | {"rest": []}
        for fn in list(providers.values()) + [rest]:
            fn()  # warm-up
        for _ in range(args.repeat):
            for name, fn in list(providers.items()) + [("rest", rest)]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        for name, fn in providers.items():
            ratio = med[name] / med["sdpa"]
            model = (med[name] + med["rest"]) / (med["sdpa"] + med["rest"])
            print(f"{n:>6} {name:<12} {med[name]:>9.1f} {ratio:>7.2f} {model:>8.2f} {peak_mb(fn):>9.1f}")
        if "eager" not in providers:
            print(f"{n:>6} {'eager':<12} {'skipped: needs ~%.0f GB' % eager_gb:>36}")
        print(f"{n:>6} {'(rest)':<12} {med['rest']:>9.1f}")


if __name__ == "__main__":
    main()
