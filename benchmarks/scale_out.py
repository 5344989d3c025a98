"""Scale-out on Ray, measured: dataset-capture throughput, sweep throughput, Ray's overhead per job.

    python benchmarks/scale_out.py                       # everything below, 1 and 2 workers
    python benchmarks/scale_out.py --census 2000          # also the 2,000-prompt SmolLM2 store (index size, query time)

For each worker count (``--workers``, default 1 2) on a local Ray cluster of this machine:
  * dataset capture: ``--prompts`` SmolLM2 prompts of 64 tokens in shards of ``--shard-size``,
    all statistics, through ``lens.store._store.capture_dataset`` (driver writes every shard);
  * sweep: ``--sweep`` (default: the induction organism's 6-run ablation sweep), through
    ``lens run``'s sweep driver on the same executor (the driver writes DuckDB);
  * Ray's overhead per job: ``--noop-jobs`` jobs that return at once through ``RayExecutor``
    (ms per job = wall / jobs; the model is already loaded in every actor);
and the same capture and sweep with the local executor as the baseline. Prints one table.
Models are loaded in every worker before timing (warm-up jobs), so the figures are steady
throughput, not start-up. Ray actors run torch with one thread each; the local executor
uses torch's default (2 threads here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

WORDS = ("the red box holds seven stones and the blue one holds none while a green lid covers "
         "both of them near the old oak table in the quiet room").split()


def prompts(n: int, tokens: int = 64, seed: int = 0) -> list[str]:
    """n texts of about ``tokens`` SmolLM2 tokens each (words drawn with a fixed seed)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(tokens - 2)) for _ in range(n)]


def noop(subject, job):
    """A job that does nothing with the (already loaded) model: measures the executor's own cost."""
    return job


def time_capture(executor, model: str, dataset: Path, out: Path, shard_size: int) -> float:
    from lens.store._store import capture_dataset

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    capture_dataset(model, dataset, out, executor=executor, shard_size=shard_size, echo=lambda s: None)
    return time.perf_counter() - t0


def warm(executor, model: str) -> None:
    """Load the model in every worker before timing (one no-op job per worker)."""
    for _ in executor.run(model, list(range(max(1, executor.workers) * 2)), noop, desc="warm-up"):
        pass


def time_sweep(spec: Path, executor, db: Path) -> tuple[int, float]:
    """Runs of the sweep in ``spec`` and the seconds they took (the driver writes ``db``)."""
    from lens.experiments._spec_sweep import load_specs
    from lens.experiments._sweep import run_sweep

    specs = load_specs(spec)
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    run_sweep(specs, executor=executor, db=db, progress=False, echo=None)
    return len(specs), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--noop-jobs", type=int, default=200)
    parser.add_argument("--sweep", type=Path, default=Path("docs/experiments/sweeps/induction_organism_ablation_sweep.toml"))
    parser.add_argument("--census", type=int, default=0, help="also build an N-prompt SmolLM2 store and query it")
    args = parser.parse_args()

    import ray

    from lens.record._executor import make_executor

    tmp = Path(tempfile.mkdtemp(prefix="lens-scale-"))
    data = tmp / "prompts.txt"
    data.write_text("\n".join(prompts(args.prompts)) + "\n")
    rows = []

    local = make_executor("local", progress=False)
    warm(local, "smollm2")
    t = time_capture(local, "smollm2", data, tmp / "store-local", args.shard_size)
    rows.append(("local", 1, args.prompts / t, None, None))
    local.close()

    for w in args.workers:
        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
        try:
            ex = make_executor("ray", workers=w, progress=False)
            warm(ex, "smollm2")
            t0 = time.perf_counter()
            for _ in ex.run("smollm2", list(range(args.noop_jobs)), noop, desc="noop"):
                pass
            per_job_ms = 1000 * (time.perf_counter() - t0) / args.noop_jobs
            t = time_capture(ex, "smollm2", data, tmp / f"store-ray{w}", args.shard_size)
            sweep_rate = None
            if args.sweep.is_file():
                warm(ex, "induction")
                n_runs, ts = time_sweep(args.sweep, ex, tmp / f"sweep{w}.duckdb")
                sweep_rate = n_runs / ts
            ex.close()
        finally:
            ray.shutdown()
        rows.append(("ray", w, args.prompts / t, sweep_rate, per_job_ms))

    if args.sweep.is_file():
        n_runs, ts = time_sweep(args.sweep, None, tmp / "sweep-local.duckdb")
        rows.insert(1, ("local (sweep)", 1, None, n_runs / ts, None))

    print(f"\nmachine: {os.cpu_count()} cores; {args.prompts} SmolLM2 prompts x 64 tokens, shards of "
          f"{args.shard_size}; sweep {args.sweep}")
    print("| executor | workers | capture prompts/s | sweep runs/s | Ray overhead per job (ms) |")
    print("|---|---|---|---|---|")
    for kind, w, pps, rps, ms in rows:
        f = (lambda v, fmt: "-" if v is None else format(v, fmt))
        print(f"| {kind} | {w} | {f(pps, '.2f')} | {f(rps, '.3f')} | {f(ms, '.1f')} |")

    if args.census:
        from lens.store._store import Store

        big = tmp / "census.txt"
        big.write_text("\n".join(prompts(args.census, seed=1)) + "\n")
        local = make_executor("local", progress=True)
        t = time_capture(local, "smollm2", big, tmp / "census", 64)
        store = Store(tmp / "census")
        size = sum(p.stat().st_size for p in (tmp / "census" / "index").glob("*.parquet"))
        t0 = time.perf_counter()
        dormant = store.query("SELECT layer, head FROM heads GROUP BY layer, head "
                              "HAVING avg(CASE WHEN dormancy >= 0.5 THEN 1 ELSE 0 END) >= 0.9")
        tq = time.perf_counter() - t0
        print(f"\ncensus: {args.census} prompts captured in {t:.0f} s ({args.census / t:.2f} prompts/s, local); "
              f"index {size / 1e6:.1f} MB over {store.n_shards} shards; 'dormant on >= 90% of inputs' query "
              f"{1000 * tq:.0f} ms -> {len(dormant)} heads")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
