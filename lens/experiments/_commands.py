"""The bodies of the ``lens run`` and ``lens runs`` commands, as plain functions (testable without typer)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from lens.experiments._db import DEFAULT_DB, compare_runs, complete_runs_by_hash, list_runs
from lens.experiments._spec import SpecError
from lens.experiments._runner import run_spec
from lens.experiments._spec_sweep import load_specs
from lens.experiments._sweep import run_sweep
from lens.record import make_executor


def run_command(spec_path: str | Path, *, db: str | Path | None = None, quiet: bool = False, echo=print,
                executor: str | None = None, address: str | None = None, workers: int | None = None,
                resume: bool = False, placement: dict | None = None) -> str | list[str]:
    """Check the spec and every run of its ``[sweep]`` (before any model loads), run them, print
    the tables; returns the run id (a list of them for a sweep).

    executor: None (one process, as always), "local" or "ray" (``lens.record._executor``; ray
    needs the ``ray`` extra and says how to install it). resume: skip runs already complete
    in the database. placement: device / dtype / device_map over every spec's own. Raises ``SpecError`` (a ValueError naming the file, key path and line)
    for a bad spec.

    Why nine parameters: the body of ``lens run``, one keyword per command-line option.
    """
    specs = load_specs(spec_path)
    if placement:  # the command line's --device / --dtype / --device-map over the specs' [model]
        specs = [replace(s, placement={**s.placement, **placement}) for s in specs]

    if executor != "ray" and not resume and len(specs) == 1 and not specs[0].sweep:
        return run_spec(specs[0], db=db, progress=not quiet, echo=echo).run_id
    ex = None
    if executor == "ray" and resume:  # nothing left to run: no cluster to start
        path = db or specs[0].db or DEFAULT_DB
        if len(complete_runs_by_hash(path, [s.spec_hash() for s in specs])) == len({s.spec_hash() for s in specs}):
            executor = None
    if executor == "ray":  # "local" runs here, one run after another, on a model loaded once per name
        ex = make_executor("ray", address=address, workers=workers, progress=not quiet)
    try:
        table = run_sweep(specs, executor=ex, db=db, resume=resume, progress=not quiet, echo=echo)
    finally:
        if ex is not None:
            ex.close()
    ids = list(dict.fromkeys(table["run_id"]))
    return ids if len(specs) > 1 else ids[0]


STATUS_MEANING = {  # the statuses list_runs reports, as `lens runs` explains them under its table
    "running": "its process is alive on this machine",
    "interrupted": "started but never finished (killed, or its machine went down)",
    "interrupted (or still running)": "started on another machine and not finished there (yet)",
    "failed": "it raised an error (below)",
}


def runs_command(*, db: str | Path = DEFAULT_DB, compare: list[str] | None = None, metric: str = "accuracy",
                 limit: int = 20, echo=print) -> None:
    """List the runs in ``db`` (newest first, with their status) or, with ``compare``, show the
    summaries of complete runs side by side (a ValueError names a run that is not complete)."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no results database at {db} (run `lens run SPEC.toml` first, or pass --db)")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        if compare:
            echo(compare_runs(db, compare, metric=None if metric == "all" else metric).to_string())
            return
        df = list_runs(db, metric=metric).head(limit)
        if not len(df):
            echo(f"no runs in {db}")
            return
        errors = df.loc[df["error"].notna(), ["run_id", "error"]]
        df = df.drop(columns=["error"])
        for col in ("baseline", "edited", "delta", "delta_low", "delta_high"):
            df[col] = df[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        df["created"] = df["created"].map(lambda t: f"{t:%Y-%m-%d %H:%M}")
        df["git_commit"] = df["git_commit"].map(lambda c: (c or "")[:8])
        echo(f"{metric} per run in {db} (delta = edited - baseline with its BCa bootstrap interval):")
        echo(df.to_string(index=False))
        shown = set(df["status"]) - {"complete"}
        if shown:
            echo("no results are stored for a run that is not complete: "
                 + "; ".join(f"{s} = {STATUS_MEANING[s]}" for s in sorted(shown) if s in STATUS_MEANING))
        for rid, err in zip(errors["run_id"], errors["error"]):
            echo(f"  {rid}: {err}")


__all__ = ["SpecError", "run_command", "runs_command"]
