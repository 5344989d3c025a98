"""Time and peak memory of capturing attention on SmolLM2 at long context.

Methods, each measured in its own fresh process (so peak RSS is its own):
  a  plain forward, transformers sdpa attention (no statistics)
  b  transformers forward with output_attentions=True (eager patterns, all heads)
  c  TransformerLens 4 bridge run_with_cache of every hook_pattern
  d  lens.capture of all statistics for all heads (chunked backend on a CPU)

For each n the methods run alternately (a b c d a b c d ...), ``--repeats`` times; a
method that fails or runs out of memory at some n is not tried at larger n. Each child
gets an address-space limit (``--mem-limit-gb``) so an out-of-memory method fails
instead of taking the machine down. Prints a Markdown table; ``--out`` appends it.

Usage: python benchmarks/capture_long_context.py --ns 1024 2048 4096 8192 16384
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, gc, torch
method, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
import lens
subject = lens.load("smollm2")
g = torch.Generator().manual_seed(n)
ids = torch.randint(100, subject.tokenizer.vocab_size, (1, n), generator=g)
# One untimed 16-token call of the same method first: one-time costs (lazy imports, the
# TransformerLens bridge, registering the attention function) are not what is compared.
with torch.no_grad():
    if method == "a":
        subject.model(input_ids=ids[:, :16], use_cache=False)
    elif method == "b":
        subject.model.config._attn_implementation = "eager"
        subject.model(input_ids=ids[:, :16], use_cache=False, output_attentions=True)
    elif method == "c":
        subject.bridge.run_with_cache(ids[:, :16], names_filter=lambda name: name.endswith("hook_pattern"))
    elif method == "d":
        lens.capture(subject, ids[:, :16], progress=False)
gc.collect()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# ru_maxrss is a high-water mark; the model load set it, so report the peak of the timed
# section as its own high-water mark minus the RSS right before it.
import psutil, threading
proc = psutil.Process()
before = proc.memory_info().rss
peak = [before]
stop = False
def watch():
    while not stop:
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)
t = threading.Thread(target=watch, daemon=True); t.start()
t0 = time.perf_counter()
with torch.no_grad():
    if method == "a":
        subject.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    elif method == "b":
        subject.model.config._attn_implementation = "eager"
        out = subject.model(input_ids=ids, use_cache=False, output_attentions=True, logits_to_keep=1)
        assert len(out.attentions) == subject.n_layers
    elif method == "c":
        _, cache = subject.bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_pattern"))
        assert len(cache) == subject.n_layers
    elif method == "d":
        cap = lens.capture(subject, ids, backend="auto", progress=False, allow_beyond_context=True)
        assert cap.stats["received"].shape[-1] == n
seconds = time.perf_counter() - t0
stop = True; t.join()
peak[0] = max(peak[0], proc.memory_info().rss)
print(json.dumps({"method": method, "n": n, "seconds": seconds, "peak_gb": peak[0] / 2**30,
                  "delta_gb": (peak[0] - before) / 2**30}))
"""

NAMES = {
    "a": "sdpa forward (no stats)",
    "b": "transformers output_attentions",
    "c": "TransformerLens run_with_cache (patterns)",
    "d": "lens.capture, all stats, all heads",
}


def run_child(method: str, n: int, threads: int, mem_limit_gb: float, timeout: float) -> dict:
    limit = int(mem_limit_gb * 2**30)

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        out = subprocess.run([sys.executable, "-c", CHILD, method, str(n), str(threads)], capture_output=True,
                             text=True, timeout=timeout, preexec_fn=cap_memory)
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "error": f"timeout after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        if "can't allocate memory" in tail or "MemoryError" in tail:
            tail = f"out of memory (address space capped at {mem_limit_gb:g} GB)"
        return {"method": method, "n": n, "error": tail[:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--methods", default="abcd")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mem-limit-gb", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", help="append the Markdown table to this file")
    args = ap.parse_args()

    failed: set[str] = set()
    rows: list[dict] = []
    for n in args.ns:
        results: dict[str, list[dict]] = {m: [] for m in args.methods}
        for _ in range(args.repeats):
            for m in args.methods:  # alternate the methods at each n
                if m in failed:
                    continue
                r = run_child(m, n, args.threads, args.mem_limit_gb, args.timeout)
                print(json.dumps(r), flush=True)
                results[m].append(r)
                if "error" in r:
                    failed.add(m)
        for m, rs in results.items():
            ok = [r for r in rs if "error" not in r]
            if ok:
                best = min(ok, key=lambda r: r["seconds"])
                rows.append({"n": n, "method": m, "seconds": best["seconds"], "peak_gb": max(r["peak_gb"] for r in ok),
                             "delta_gb": max(r["delta_gb"] for r in ok)})
            elif rs:
                rows.append({"n": n, "method": m, "error": rs[-1]["error"]})

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, SmolLM2-135M fp32, batch 1, random token ids; best of {args.repeats}; "
        "peak = process RSS high-water mark during the timed call (model weights ~0.55 GB included), "
        "delta = peak minus RSS before the call.",
        "",
        "| n | method | time (s) | x sdpa | peak RSS (GB) | delta (GB) |",
        "|---|---|---|---|---|---|",
    ]
    base = {r["n"]: r["seconds"] for r in rows if r["method"] == "a" and "seconds" in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['method']}: {NAMES[r['method']]} | failed: {r['error']} | | | |")
        else:
            ratio = f"{r['seconds'] / base[r['n']]:.2f}" if r["n"] in base else ""
            lines.append(f"| {r['n']} | {r['method']}: {NAMES[r['method']]} | {r['seconds']:.2f} | {ratio} | "
                         f"{r['peak_gb']:.2f} | {r['delta_gb']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
