"""No lost results, and none claimed: a run killed mid-way leaves the results database readable,
lists the run as interrupted, stores none of its results, and the next run in the same file
completes normally.

The run is recorded in two commits (``lens.experiments._db``): its ``runs`` row as
``running`` when it starts, then its results and the flip to ``complete`` in one
transaction. The kills here are SIGKILL (no Python cleanup runs): one of a real ``lens run``
in a subprocess mid-calibration, and two inside ``finish_run`` itself, mid-transaction and
after the commit but before the connection closes (DuckDB's write-ahead log is left behind).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from lens.experiments import _db, compare_runs, list_runs, load_run, run_spec

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "docs" / "experiments"

# A small complete run for after the kill: fixed edits, no calibration, a short bootstrap.
SMALL_SPEC = """\
name = "after-the-kill"
model = "induction"
seed = 1

[task]
name = "induction"
calibration = 4
test = 12
period = 10
n_choices = 4

[[edits]]
type = "ablate"
layer = 1

[eval]
bootstrap = 200
"""


def _child_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _lines(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _wait_for_line(q: queue.Queue, pattern: str, timeout: float, seen: list[str]) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output so far:\n{''.join(seen)}")


def _raw_counts(db: Path, run_id: str) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0]
                for t in ("examples", "summary", "trials")}
    finally:
        con.close()


@pytest.mark.organism
def test_sigkilled_lens_run_is_listed_as_interrupted(induction_organism, tmp_path):
    """SIGKILL a real `lens run` mid-calibration: the file opens, the run is interrupted with no
    results, `lens runs` says so, compare/load refuse it by id, and a next run completes."""
    from typer.testing import CliRunner

    from lens.cli import app

    assert induction_organism is not None  # the fixture puts the organism in the cache the child reads
    db = tmp_path / "runs.duckdb"
    spec = EXPERIMENTS / "induction_organism_zerotuning.toml"  # calibration alone takes seconds
    proc = subprocess.Popen([sys.executable, "-m", "lens.cli", "run", str(spec), "--db", str(db), "--quiet"],
                            cwd=tmp_path, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, q), daemon=True).start()
    seen: list[str] = []
    try:
        run_id = _wait_for_line(q, r"^run (\S+) started", 120, seen).group(1)
        _wait_for_line(q, r"^loading induction", 30, seen)
        # While it runs, the file is readable from another process and the run shows as running.
        live = list_runs(db)
        assert live["run_id"].tolist() == [run_id] and live["status"].iloc[0] == "running"
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not any(re.match(rf"^run {run_id}: ", line) for line in seen), "the run printed its results table"

    # The file opens (also for writing), the row says running, nothing else of the run is stored.
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT status, finished_at FROM runs WHERE run_id = ?", [run_id]).fetchall() == \
            [("running", None)]
    finally:
        con.close()
    assert _raw_counts(db, run_id) == {"examples": 0, "summary": 0, "trials": 0}
    listed = list_runs(db)
    assert listed["run_id"].tolist() == [run_id]
    row = listed.iloc[0]
    assert row["status"] == "interrupted" and pd.isna(row["baseline"]) and pd.isna(row["delta"])
    with pytest.raises(ValueError, match=rf"run {run_id} .* is interrupted"):
        load_run(db, run_id)
    with pytest.raises(ValueError, match=rf"run {run_id} .* is interrupted"):
        compare_runs(db, [run_id])

    runner = CliRunner()
    res = runner.invoke(app, ["runs", "--db", str(db)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if run_id in ln)
    assert "interrupted" in line
    res = runner.invoke(app, ["runs", "--db", str(db), "--compare", run_id])
    assert res.exit_code == 2 and run_id in res.output and "interrupted" in res.output

    # The next run in the same file completes and is listed as such; the killed one stays interrupted.
    spec2 = tmp_path / "small.toml"
    spec2.write_text(SMALL_SPEC)
    done = run_spec(spec2, subject=induction_organism, db=db, progress=False, echo=None)
    listed = list_runs(db).set_index("run_id")
    assert listed.loc[done.run_id, "status"] == "complete" and listed.loc[run_id, "status"] == "interrupted"
    assert listed.loc[done.run_id, "baseline"] == pytest.approx(done.value("accuracy", "baseline"))
    stored = load_run(db, done.run_id)
    assert stored["run"]["status"] == "complete" and stored["run"]["finished_at"] is not None
    assert len(stored["examples"]) == 2 * 12 and stored["run"]["versions"]["model"] == "induction"
    assert _raw_counts(db, run_id) == {"examples": 0, "summary": 0, "trials": 0}


@pytest.mark.organism
def test_run_that_raises_is_marked_failed_or_interrupted(induction_organism, tmp_path, monkeypatch):
    """An error marks the run failed with its message; Ctrl-C marks it interrupted. Neither stores results."""
    from typer.testing import CliRunner

    from lens.cli import app
    from lens.experiments import SpecError, _runner, parse_spec

    db = tmp_path / "r.duckdb"
    bad = parse_spec(SMALL_SPEC.replace("layer = 1", "layer = [1, 7]"))  # layer 7: known only once the model is
    with pytest.raises(SpecError, match="layer 7 does not exist"):
        run_spec(bad, subject=induction_organism, db=db, progress=False, echo=None)

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(_runner, "score", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_spec(parse_spec(SMALL_SPEC), subject=induction_organism, db=db, progress=False, echo=None)

    listed = list_runs(db)
    assert listed["status"].tolist() == ["interrupted", "failed"]  # newest first
    assert listed["error"].iloc[0] == "KeyboardInterrupt: " and "layer 7 does not exist" in listed["error"].iloc[1]
    for rid in listed["run_id"]:
        assert _raw_counts(db, rid) == {"examples": 0, "summary": 0, "trials": 0}
    failed = listed["run_id"].iloc[1]
    with pytest.raises(ValueError, match=rf"run {failed} .* is failed: .*layer 7 does not exist"):
        load_run(db, failed)
    out = CliRunner().invoke(app, ["runs", "--db", str(db)]).output
    assert "failed = it raised an error" in out and f"{failed}: SpecError: " in out


# --- SIGKILL inside finish_run: mid-transaction, and after the commit with the WAL not checkpointed ------
# The child loads _db.py on its own (no torch import) and kills itself at the chosen point.
CHILD = r"""
import importlib.util, os, signal, sys
import pandas as pd

spec = importlib.util.spec_from_file_location("_db", sys.argv[1])
db = importlib.util.module_from_spec(spec)
spec.loader.exec_module(db)
path, mode = sys.argv[2], sys.argv[3]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_connect = db.connect
class Con:  # the real connection; closing it is where the "after commit" kill happens
    def __init__(self, con): self._con = con
    committed = False
    def __getattr__(self, name): return getattr(self._con, name)
    def commit(self):
        self._con.commit()
        self.committed = True
    def close(self):
        if mode == "after_commit" and self.committed:
            die()
        self._con.close()
db.connect = lambda *a, **k: Con(real_connect(*a, **k))

real_insert = db._insert
def insert(con, table, df, columns):  # the "mid" kill: examples inserted, summary not yet, no commit
    real_insert(con, table, df, columns)
    if mode == "mid" and table == "examples":
        die()
db._insert = insert

db.start_run(path, {"run_id": mode, "created": pd.Timestamp.now(), "name": mode})
examples = pd.DataFrame({c: [None, None] for c in db.EXAMPLE_COLUMNS}).assign(run_id=mode, idx=[0, 1])
summary = pd.DataFrame([[mode, "baseline", "accuracy", 0.5, 0.0, 1.0, 2]], columns=db.SUMMARY_COLUMNS)
db.finish_run(path, mode, {"seconds": 1.0}, examples, summary, None)
"""


@pytest.mark.parametrize("mode,stored,counts", [
    ("mid", "running", {"examples": 0, "summary": 0, "trials": 0}),
    ("after_commit", "complete", {"examples": 2, "summary": 1, "trials": 0}),
])
def test_sigkill_inside_finish_run_leaves_nothing_or_everything(tmp_path, mode, stored, counts):
    db = tmp_path / "r.duckdb"
    proc = subprocess.run([sys.executable, "-c", CHILD, _db.__file__, str(db), mode], env=_child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if mode == "after_commit":  # committed to the write-ahead log, never checkpointed: the next open replays it
        assert Path(f"{db}.wal").is_file()
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT status FROM runs WHERE run_id = ?", [mode]).fetchall() == [(stored,)]
    finally:
        con.close()
    assert _raw_counts(db, mode) == counts
    listed = list_runs(db)
    assert listed["status"].tolist() == ["interrupted" if stored == "running" else "complete"]
    if stored == "complete":
        assert listed["baseline"].iloc[0] == 0.5 and len(load_run(db, mode)["examples"]) == 2
    else:
        with pytest.raises(ValueError, match=rf"run {mode} .* is interrupted"):
            load_run(db, mode)
    con = _db.connect(db)  # and it opens for writing (replaying the log into the file)
    con.close()
    assert _raw_counts(db, mode) == counts


# The runs table as databases written before run statuses have it.
OLD_RUNS_TABLE = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, created TIMESTAMP, name VARCHAR, model VARCHAR, task VARCHAR, seed INTEGER,
    n_calibration INTEGER, n_test INTEGER, spec_path VARCHAR, spec_toml VARCHAR, config VARCHAR, method VARCHAR,
    edits VARCHAR, calibration VARCHAR, versions VARCHAR, git_commit VARCHAR, git_dirty BOOLEAN, seconds DOUBLE
);
"""


def test_old_database_without_status_is_migrated(tmp_path):
    """A file written before runs had a status: read as is (all complete), migrated on the next write."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute(OLD_RUNS_TABLE + _db.SCHEMA[_db.SCHEMA.index("CREATE TABLE IF NOT EXISTS examples"):])
    con.execute("INSERT INTO runs (run_id, created, name) VALUES ('old', now(), 'old run')")
    con.execute("INSERT INTO summary VALUES ('old', 'baseline', 'accuracy', 0.75, 0.5, 1.0, 4)")
    con.close()

    assert list_runs(db)[["run_id", "status", "baseline"]].values.tolist() == [["old", "complete", 0.75]]
    assert load_run(db, "old")["run"]["status"] == "complete"

    _db.start_run(db, {"run_id": "new", "created": pd.Timestamp.now(), "name": "new run"})  # migrates
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
        assert rows == [("new", "running"), ("old", "complete")]
        con.close()
        con = duckdb.connect(str(db))
        con.execute("INSERT INTO runs (run_id) VALUES ('bare')")  # the column default is running, never complete
        assert con.execute("SELECT status FROM runs WHERE run_id = 'bare'").fetchone() == ("running",)
    finally:
        con.close()
    listed = list_runs(db).set_index("run_id")["status"]
    assert listed["new"] == "running"  # this very process wrote it and is alive
    assert listed["old"] == "complete"


def test_a_held_file_is_waited_out(tmp_path):
    """Another process holding the file for writing delays a read and a write; neither fails."""
    db = tmp_path / "r.duckdb"
    _db.start_run(db, {"run_id": "a", "created": pd.Timestamp.now(), "name": "a"})
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(1.5); c.close()", str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        t0 = time.monotonic()
        assert list_runs(db)["run_id"].tolist() == ["a"]
        assert time.monotonic() - t0 > 0.5  # it did wait
    finally:
        holder.wait(timeout=30)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(1.5); c.close()", str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        _db.start_run(db, {"run_id": "b", "created": pd.Timestamp.now(), "name": "b"})
    finally:
        holder.wait(timeout=30)
    assert sorted(list_runs(db)["run_id"]) == ["a", "b"]
