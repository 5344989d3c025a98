"""The bodies of the ``lens run`` and ``lens runs`` commands, as plain functions (testable without typer)."""

from __future__ import annotations

from pathlib import Path

from lens.experiments._db import DEFAULT_DB, compare_runs, list_runs
from lens.experiments._spec import SpecError, load_spec


def run_command(spec_path: str | Path, *, db: str | Path | None = None, quiet: bool = False, echo=print) -> str:
    """Check the spec (before any model loads), run it, print the table; returns the run id.

    Raises ``SpecError`` (a ValueError naming the file, key path and line) for a bad spec.
    """
    spec = load_spec(spec_path)
    from lens.experiments._runner import run_spec

    result = run_spec(spec, db=db, progress=not quiet, echo=echo)
    return result.run_id


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
    import pandas as pd

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
        echo(f"{metric} per run in {db} (delta = edited - baseline with its bootstrap interval):")
        echo(df.to_string(index=False))
        shown = set(df["status"]) - {"complete"}
        if shown:
            echo("no results are stored for a run that is not complete: "
                 + "; ".join(f"{s} = {STATUS_MEANING[s]}" for s in sorted(shown) if s in STATUS_MEANING))
        for rid, err in zip(errors["run_id"], errors["error"]):
            echo(f"  {rid}: {err}")


__all__ = ["SpecError", "run_command", "runs_command"]
