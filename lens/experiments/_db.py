"""The results database (DuckDB): one row per run, per example, per summary metric, per calibration trial.

Tables (JSON columns hold JSON text):
  runs      run_id, created, name, model, task, seed, n_calibration, n_test, spec_path, spec_toml,
            config (JSON), method, edits (JSON), calibration (JSON), versions (JSON), git_commit,
            git_dirty, seconds
  examples  run_id, split, condition, idx, prompt, choices (JSON), answer, pred, correct, margin,
            logit_diff, logprob_answer, entropy, entropy_vocab, choice_logits (JSON)
  summary   run_id, condition ("baseline" | "edited" | "delta"), metric, value, ci_low, ci_high, n
  trials    run_id, method, label, objective, accuracy, logprob_answer, entropy, entropy_vocab,
            details (JSON: scope, unit, gamma, layer, head, kept, ...)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

DEFAULT_DB = "runs.duckdb"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, created TIMESTAMP, name VARCHAR, model VARCHAR, task VARCHAR, seed INTEGER,
    n_calibration INTEGER, n_test INTEGER, spec_path VARCHAR, spec_toml VARCHAR, config VARCHAR, method VARCHAR,
    edits VARCHAR, calibration VARCHAR, versions VARCHAR, git_commit VARCHAR, git_dirty BOOLEAN, seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS examples (
    run_id VARCHAR, split VARCHAR, condition VARCHAR, idx INTEGER, prompt VARCHAR, choices VARCHAR,
    answer INTEGER, pred INTEGER, correct BOOLEAN, margin DOUBLE, logit_diff DOUBLE, logprob_answer DOUBLE,
    entropy DOUBLE, entropy_vocab DOUBLE, choice_logits VARCHAR
);
CREATE TABLE IF NOT EXISTS summary (
    run_id VARCHAR, condition VARCHAR, metric VARCHAR, value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER
);
CREATE TABLE IF NOT EXISTS trials (
    run_id VARCHAR, method VARCHAR, label VARCHAR, objective DOUBLE, accuracy DOUBLE, logprob_answer DOUBLE,
    entropy DOUBLE, entropy_vocab DOUBLE, details VARCHAR
);
"""

EXAMPLE_COLUMNS = ("run_id", "split", "condition", "idx", "prompt", "choices", "answer", "pred", "correct", "margin",
                   "logit_diff", "logprob_answer", "entropy", "entropy_vocab", "choice_logits")
TRIAL_COLUMNS = ("run_id", "method", "label", "objective", "accuracy", "logprob_answer", "entropy", "entropy_vocab",
                 "details")


def connect(path: str | Path = DEFAULT_DB, *, read_only: bool = False):
    import duckdb

    path = Path(path)
    if read_only and not path.is_file():
        raise FileNotFoundError(f"no results database at {path}")
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        con.execute(SCHEMA)
    return con


def _insert(con, table: str, df: pd.DataFrame, columns) -> None:
    if df is None or not len(df):
        return
    frame = df.loc[:, list(columns)]
    con.register("_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM _frame")
    finally:
        con.unregister("_frame")


def write_run(path: str | Path, run: dict, examples: pd.DataFrame, summary: pd.DataFrame,
              trials: pd.DataFrame | None) -> None:
    """Write one run in a single transaction (all of it or nothing)."""
    con = connect(path)
    try:
        con.execute("BEGIN TRANSACTION")
        cols = list(run)
        con.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    [run[c] for c in cols])
        _insert(con, "examples", examples, EXAMPLE_COLUMNS)
        _insert(con, "summary", summary, ("run_id", "condition", "metric", "value", "ci_low", "ci_high", "n"))
        _insert(con, "trials", trials, TRIAL_COLUMNS)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()


def list_runs(path: str | Path = DEFAULT_DB, *, metric: str = "accuracy") -> pd.DataFrame:
    """One row per run, newest first: what ran and ``metric`` for baseline, edited and their difference."""
    con = connect(path, read_only=True)
    try:
        return con.execute("""
            SELECT r.run_id, r.created, r.name, r.model, r.task, r.seed, r.n_test, r.method,
                   b.value AS baseline, e.value AS edited, d.value AS delta, d.ci_low AS delta_low,
                   d.ci_high AS delta_high, r.git_commit
            FROM runs r
            LEFT JOIN summary b ON b.run_id = r.run_id AND b.condition = 'baseline' AND b.metric = ?
            LEFT JOIN summary e ON e.run_id = r.run_id AND e.condition = 'edited' AND e.metric = ?
            LEFT JOIN summary d ON d.run_id = r.run_id AND d.condition = 'delta' AND d.metric = ?
            ORDER BY r.created DESC, r.run_id DESC
        """, [metric, metric, metric]).df()
    finally:
        con.close()


def compare_runs(path: str | Path, run_ids, *, metric: str | None = None) -> pd.DataFrame:
    """The summaries of several runs side by side: one row per (metric, condition), one column per run."""
    ids = list(run_ids)
    con = connect(path, read_only=True)
    try:
        known = set(con.execute("SELECT run_id FROM runs").df()["run_id"])
        missing = [r for r in ids if r not in known]
        if missing:
            raise ValueError(f"no run(s) {missing} in {path}")
        df = con.execute(f"SELECT * FROM summary WHERE run_id IN ({', '.join('?' for _ in ids)})", ids).df()
    finally:
        con.close()
    if metric is not None:
        df = df[df["metric"] == metric]
    df["cell"] = [f"{v:.4f} [{lo:.4f}, {hi:.4f}]" for v, lo, hi in zip(df["value"], df["ci_low"], df["ci_high"])]
    table = df.pivot_table(index=["metric", "condition"], columns="run_id", values="cell", aggfunc="first")
    return table.reindex(columns=ids)


def load_run(path: str | Path, run_id: str) -> dict[str, pd.DataFrame | dict]:
    """Everything stored for one run: ``run`` (a dict with JSON decoded), examples, summary, trials."""
    con = connect(path, read_only=True)
    try:
        runs = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
        if not len(runs):
            raise ValueError(f"no run {run_id!r} in {path}")
        run = runs.iloc[0].to_dict()
        for k in ("config", "edits", "calibration", "versions"):
            run[k] = json.loads(run[k]) if run[k] else None
        out = {"run": run}
        for table in ("examples", "summary", "trials"):
            out[table] = con.execute(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY ALL", [run_id]).df()
        return out
    finally:
        con.close()
