"""The results database (DuckDB): one row per run, per example, per summary metric, per calibration trial.

Tables (JSON columns hold JSON text):
  runs      run_id, created (when the run started), name, model, task, seed, n_calibration, n_test,
            spec_path, spec_toml, config (JSON), method, edits (JSON), calibration (JSON), versions (JSON),
            git_commit, git_dirty, seconds, status, finished_at, host, pid, pid_started, error,
            spec_hash (the resolved run's Spec.spec_hash), sweep (JSON: its swept values, {} if none)
  examples  run_id, split, condition, idx, prompt, choices (JSON), answer, pred, correct, margin,
            logit_diff, logprob_answer, entropy, entropy_vocab, choice_logits (JSON)
  summary   run_id, condition ("baseline" | "edited" | "delta"), metric, value, ci_low, ci_high, n
  trials    run_id, method, label, objective, accuracy, logprob_answer, entropy, entropy_vocab,
            details (JSON: scope, unit, gamma, layer, head, kept, ...)

No lost results, and none claimed that do not exist: a run is recorded in two commits.
``start_run`` inserts its ``runs`` row with status ``running`` before the model loads;
``finish_run`` writes examples, summary and trials and flips the status to ``complete`` in
one transaction. A run killed at any point (SIGKILL included; DuckDB replays or drops its
write-ahead log on the next open) therefore leaves either its ``running`` row and no
results, or everything. ``list_runs`` shows a ``running`` row whose process is gone as
``interrupted``; ``compare_runs`` and ``load_run`` refuse any run that is not complete.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import psutil

DEFAULT_DB = "runs.duckdb"

# Stored statuses. "running" is written at the start; a run that raised is "failed" (or
# "interrupted" for Ctrl-C); one killed outright stays "running" in the file, and
# list_runs tells it apart from a live one by its process (see run_state).
RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"
#: run_state's answer for a ``running`` row written on another host (or whose process it may not inspect).
MAYBE_RUNNING = "interrupted (or still running)"
#: States of a run whose process may still end it (run_state's "running" and its cross-host doubt).
LIVE_STATES = (RUNNING, MAYBE_RUNNING)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, created TIMESTAMP, name VARCHAR, model VARCHAR, task VARCHAR, seed INTEGER,
    n_calibration INTEGER, n_test INTEGER, spec_path VARCHAR, spec_toml VARCHAR, config VARCHAR, method VARCHAR,
    edits VARCHAR, calibration VARCHAR, versions VARCHAR, git_commit VARCHAR, git_dirty BOOLEAN, seconds DOUBLE,
    status VARCHAR DEFAULT 'running', finished_at TIMESTAMP, host VARCHAR, pid INTEGER, pid_started DOUBLE,
    error VARCHAR, spec_hash VARCHAR, sweep VARCHAR
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

# Columns of ``runs`` added after databases already existed, with their type. Files written
# before them are migrated on the next write; every run stored then had finished (the old
# code wrote a run only when it was done), hence status 'complete' for those rows.
ADDED_RUN_COLUMNS = {"status": "VARCHAR", "finished_at": "TIMESTAMP", "host": "VARCHAR", "pid": "INTEGER",
                     "pid_started": "DOUBLE", "error": "VARCHAR", "spec_hash": "VARCHAR", "sweep": "VARCHAR"}

EXAMPLE_COLUMNS = ("run_id", "split", "condition", "idx", "prompt", "choices", "answer", "pred", "correct", "margin",
                   "logit_diff", "logprob_answer", "entropy", "entropy_vocab", "choice_logits")
SUMMARY_COLUMNS = ("run_id", "condition", "metric", "value", "ci_low", "ci_high", "n")
TRIAL_COLUMNS = ("run_id", "method", "label", "objective", "accuracy", "logprob_answer", "entropy", "entropy_vocab",
                 "details")

# DuckDB lets one process at a time open a file for writing, and none read it meanwhile. Every
# connection here is short (open, one transaction, close), so a conflict is waited out: long
# for writes (a finished run must not be lost to a `lens runs` reading the file at that
# moment), shorter for reads.
WRITE_WAIT_S = 120.0
READ_WAIT_S = 15.0


def connect(path: str | Path = DEFAULT_DB, *, read_only: bool = False, wait: float | None = None):
    """Open the database (creating and migrating it for writing); waits up to ``wait`` seconds
    while another process holds the file."""
    path = Path(path)
    if read_only and not path.is_file():
        raise FileNotFoundError(f"no results database at {path}")
    wait = (READ_WAIT_S if read_only else WRITE_WAIT_S) if wait is None else wait
    deadline, pause = time.monotonic() + wait, 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
    if not read_only:
        try:
            con.execute(SCHEMA)
            _migrate(con)
        except BaseException:
            con.close()
            raise
    return con


def _run_columns(con) -> list[str]:
    return [d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description]


def _migrate(con) -> None:
    missing = [c for c in ADDED_RUN_COLUMNS if c not in _run_columns(con)]
    if not missing:
        return
    con.begin()
    for col in missing:
        if col == "status":  # rows already there are finished runs; new rows start as running
            con.execute(f"ALTER TABLE runs ADD COLUMN status VARCHAR DEFAULT '{COMPLETE}'")
            con.execute(f"ALTER TABLE runs ALTER COLUMN status SET DEFAULT '{RUNNING}'")
        else:
            con.execute(f"ALTER TABLE runs ADD COLUMN {col} {ADDED_RUN_COLUMNS[col]}")
    con.commit()


def _runs_table(con) -> str:
    """``runs`` as a subquery with every current column, also in an unmigrated file opened read-only."""
    have = _run_columns(con)
    fill = {"status": f"'{COMPLETE}'"}
    extra = [f"{fill.get(c, f'CAST(NULL AS {t})')} AS {c}" for c, t in ADDED_RUN_COLUMNS.items() if c not in have]
    return f"(SELECT *{''.join(', ' + e for e in extra)} FROM runs)"


def _insert(con, table: str, df: pd.DataFrame | None, columns) -> None:
    if df is None or not len(df):
        return
    frame = df.loc[:, list(columns)]
    con.register("_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM _frame")
    finally:
        con.unregister("_frame")


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def start_run(path: str | Path, run: dict) -> None:
    """Record that a run has started: its ``runs`` row with status ``running``, committed on its own."""
    row = {**run, **_this_process(), "status": RUNNING}
    cols = list(row)
    con = connect(path)
    try:
        con.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    [row[c] for c in cols])
    finally:
        con.close()


def finish_run(path: str | Path, run_id: str, updates: dict, examples: pd.DataFrame, summary: pd.DataFrame,
               trials: pd.DataFrame | None) -> None:
    """Store a started run's results and mark it complete, in one transaction (all of it or nothing)."""
    sets = {**updates, "status": COMPLETE, "finished_at": datetime.now()}
    con = connect(path)
    try:
        con.begin()
        try:
            n = con.execute(f"UPDATE runs SET {', '.join(f'{c} = ?' for c in sets)} WHERE run_id = ? AND status = ?",
                            [*sets.values(), run_id, RUNNING]).fetchone()[0]
            if n != 1:
                raise RuntimeError(f"run {run_id} is not recorded as running in {path}; its results were not stored")
            _insert(con, "examples", examples, EXAMPLE_COLUMNS)
            _insert(con, "summary", summary, SUMMARY_COLUMNS)
            _insert(con, "trials", trials, TRIAL_COLUMNS)
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        con.close()


def abandon_run(path: str | Path, run_id: str, err: BaseException) -> bool:
    """Best effort: mark a started run that raised as failed (interrupted for Ctrl-C) with the error.

    Never raises; returns whether the mark was written. A run that cannot be marked stays
    ``running`` and is listed as interrupted once its process is gone, which is also true.
    """
    status = INTERRUPTED if isinstance(err, (KeyboardInterrupt, SystemExit)) else FAILED
    try:
        con = connect(path, wait=5.0)
        try:
            con.execute("UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ? AND status = ?",
                        [status, f"{type(err).__name__}: {err}"[:2000], datetime.now(), run_id, RUNNING])
        finally:
            con.close()
        return True
    except Exception:
        return False


def complete_runs_by_hash(path: str | Path, hashes) -> dict[str, str]:
    """``{spec_hash: run_id}`` of the complete runs in ``path`` among ``hashes`` (``--resume``);
    the earliest run where one hash completed more than once."""
    hashes = list(hashes)
    if not hashes or not Path(path).is_file():
        return {}
    con = connect(path, read_only=True)
    try:
        if "spec_hash" not in _run_columns(con):
            return {}
        rows = con.execute(f"SELECT spec_hash, run_id FROM runs WHERE status = '{COMPLETE}' AND spec_hash IN "
                           f"({', '.join('?' for _ in hashes)}) ORDER BY created DESC, run_id DESC", hashes).fetchall()
    finally:
        con.close()
    return dict(rows)  # the last assignment wins: the earliest


def run_state(status: str | None, host: str | None, pid, pid_started) -> str:
    """What a stored status means now: a ``running`` row whose process is gone is ``interrupted``.

    The process is checked only on the host that wrote the row (pid and its start time, so a
    reused pid does not count); from another host a ``running`` row may be either.
    """
    if status != RUNNING:
        return status or COMPLETE
    unknown = MAYBE_RUNNING
    if host != socket.gethostname() or pid is None or pd.isna(pid):
        return unknown
    try:
        proc = psutil.Process(int(pid))
        alive = proc.status() != psutil.STATUS_ZOMBIE and (
            pid_started is None or pd.isna(pid_started) or abs(proc.create_time() - float(pid_started)) < 1.0)
    except psutil.NoSuchProcess:
        alive = False
    except psutil.Error:  # not ours to inspect
        return unknown
    return RUNNING if alive else INTERRUPTED


def list_runs(path: str | Path = DEFAULT_DB, *, metric: str = "accuracy") -> pd.DataFrame:
    """One row per run, newest first: what ran, its status (complete, running, interrupted, failed)
    and ``metric`` for baseline, edited and their difference (empty for a run that is not complete)."""
    con = connect(path, read_only=True)
    try:
        df = con.execute(f"""
            SELECT r.run_id, r.status, r.created, r.name, r.model, r.task, r.seed, r.n_test, r.method,
                   b.value AS baseline, e.value AS edited, d.value AS delta, d.ci_low AS delta_low,
                   d.ci_high AS delta_high, r.git_commit, r.host, r.pid, r.pid_started, r.error
            FROM {_runs_table(con)} r
            LEFT JOIN summary b ON b.run_id = r.run_id AND b.condition = 'baseline' AND b.metric = ?
                                   AND r.status = '{COMPLETE}'
            LEFT JOIN summary e ON e.run_id = r.run_id AND e.condition = 'edited' AND e.metric = ?
                                   AND r.status = '{COMPLETE}'
            LEFT JOIN summary d ON d.run_id = r.run_id AND d.condition = 'delta' AND d.metric = ?
                                   AND r.status = '{COMPLETE}'
            ORDER BY r.created DESC, r.run_id DESC
        """, [metric, metric, metric]).df()
    finally:
        con.close()
    df["status"] = [run_state(*row) for row in zip(df["status"], df["host"], df["pid"], df["pid_started"])]
    return df.drop(columns=["host", "pid", "pid_started"])


def _require_complete(con, path, ids) -> None:
    """Raise naming each run that is unknown or has no complete results."""
    rows = con.execute(f"SELECT run_id, status, host, pid, pid_started, error FROM {_runs_table(con)} "
                       f"WHERE run_id IN ({', '.join('?' for _ in ids)})", list(ids)).fetchall()
    known = {r[0]: r for r in rows}
    missing = [r for r in ids if r not in known]
    if missing:
        raise ValueError(f"no run(s) {missing} in {path}")
    for rid in ids:
        _, status, host, pid, pid_started, error = known[rid]
        if status != COMPLETE:
            state = run_state(status, host, pid, pid_started)
            why = {RUNNING: "it has not finished", FAILED: f"it failed ({error})"}.get(
                state, "it was started but never finished (killed or interrupted)")
            raise ValueError(f"run {rid} in {path} is {state}: no results are stored, {why}")


def query_runs(path: str | Path, sql: str, params=()) -> pd.DataFrame:
    """Run the read-only query ``sql``, in which ``{runs}`` stands for the runs table with every current column."""
    con = connect(path, read_only=True)
    try:
        return con.execute(sql.replace("{runs}", _runs_table(con)), list(params)).df()
    finally:
        con.close()


def run_summaries(path: str | Path, run_ids) -> pd.DataFrame:
    """The summary rows (run_id, metric, condition, value, ci_low, ci_high, n) of complete runs, in no
    particular order; a ValueError names a run that is unknown or not complete."""
    ids = list(run_ids)
    con = connect(path, read_only=True)
    try:
        _require_complete(con, path, ids)
        return con.execute(f"SELECT run_id, metric, condition, value, ci_low, ci_high, n FROM summary "
                           f"WHERE run_id IN ({', '.join('?' for _ in ids)})", ids).df()
    finally:
        con.close()


def compare_runs(path: str | Path, run_ids, *, metric: str | None = None) -> pd.DataFrame:
    """The summaries of several complete runs side by side: one row per (metric, condition), one column per run."""
    ids = list(run_ids)
    con = connect(path, read_only=True)
    try:
        _require_complete(con, path, ids)
        df = con.execute(f"SELECT * FROM summary WHERE run_id IN ({', '.join('?' for _ in ids)})", ids).df()
    finally:
        con.close()
    if metric is not None:
        df = df[df["metric"] == metric]
    df["cell"] = [f"{v:.4f} [{lo:.4f}, {hi:.4f}]" for v, lo, hi in zip(df["value"], df["ci_low"], df["ci_high"])]
    table = df.pivot_table(index=["metric", "condition"], columns="run_id", values="cell", aggfunc="first")
    return table.reindex(columns=ids)


def load_run(path: str | Path, run_id: str) -> dict[str, pd.DataFrame | dict]:
    """Everything stored for one complete run: ``run`` (a dict with JSON decoded), examples, summary, trials."""
    con = connect(path, read_only=True)
    try:
        _require_complete(con, path, [run_id])
        run = con.execute(f"SELECT * FROM {_runs_table(con)} WHERE run_id = ?", [run_id]).df().iloc[0].to_dict()
        for k in ("config", "edits", "calibration", "versions"):
            run[k] = json.loads(run[k]) if run[k] else None
        out = {"run": run}
        for table in ("examples", "summary", "trials"):
            out[table] = con.execute(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY ALL", [run_id]).df()
        return out
    finally:
        con.close()
