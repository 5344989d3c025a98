"""Sweeps in specs, run here and on a local Ray cluster: same numbers, nothing lost, resumable.

The Ray tests start a two-CPU cluster in this process (``ray.init(num_cpus=2)``), shut it
down at the end of the module, and run a 2 x 2 sweep (seed x ZeroTuning gammas) on the
induction organism: its table on Ray equals the local one row for row, floats exactly;
an actor killed mid-sweep (``ray.kill(actor, no_restart=False)``) is restarted by Ray, which
retries its in-flight job, and the result is complete, equal and without duplicates; a job
that raises fails with its own error, unretried, and one that keeps killing its actor fails
after ``retries`` retries, named; a sweep interrupted mid-run resumes with ``resume=True``,
recomputing only what was not complete. Without Ray installed those tests are skipped
(reason below); the spec, local-executor and "Ray is missing" tests run anyway.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pandas as pd
import pytest

from skips import needs

from lens.experiments import SpecError, _db, load_specs, parse_specs, run_sweep

try:
    import ray
except ImportError:  # the optional extra is not installed
    ray = None

pytestmark = [pytest.mark.ray, pytest.mark.organism]
needs_ray = needs("ray")

SPEC = """
name = "sweep-induction"
model = "induction"
metrics = ["accuracy", "logit_diff"]

[task]
name = "induction"
calibration = 8
test = 24
period = 10
n_choices = 4

[calibration]
method = "zerotuning"
scopes = ["all", "head_index", "layer"]

[eval]
bootstrap = 200

[sweep]
seed = [0, 1]
"calibration.gammas" = [[0.5], [2.0]]
"""


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    import lens

    lens.load("induction")  # trained and cached once, here, before any worker loads it
    path = tmp_path_factory.mktemp("sweep") / "sweep.toml"
    path.write_text(SPEC)
    return path


def snapshot(db) -> dict[str, pd.DataFrame]:
    """Every stored number of the complete runs, keyed by spec hash instead of run id (which differ)."""
    con = _db.connect(db, read_only=True)
    try:
        runs = con.execute("SELECT run_id, spec_hash, sweep, method, edits, calibration FROM runs "
                           "WHERE status = 'complete' ORDER BY spec_hash").df()
        out = {"runs": runs.drop(columns="run_id").reset_index(drop=True)}
        key = dict(zip(runs["run_id"], runs["spec_hash"]))
        for table in ("summary", "examples", "trials"):
            df = con.execute(f"SELECT * FROM {table}").df()
            df = df[df["run_id"].isin(key)]
            df.insert(0, "spec_hash", df.pop("run_id").map(key))
            out[table] = df.sort_values(list(df.columns[:4])).reset_index(drop=True)
    finally:
        con.close()
    return out


def assert_same(a: dict, b: dict) -> None:
    for table in a:
        pd.testing.assert_frame_equal(a[table], b[table], check_exact=True, obj=table)


@pytest.fixture(scope="module")
def local(spec_path, tmp_path_factory):
    """The sweep run in this process, one run after another (as `lens run` always ran)."""
    db = tmp_path_factory.mktemp("local") / "runs.duckdb"
    table = run_sweep(load_specs(spec_path), db=db, progress=False, echo=None)
    return db, table


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(cluster):
    from lens.record._executor import make_executor

    ex = make_executor("ray", workers=2, progress=False)
    yield ex
    ex.close()


# --- specs ----------------------------------------------------------------------------------------
def test_sweep_is_the_cross_product_of_its_lists(spec_path):
    specs = load_specs(spec_path)
    assert [s.sweep for s in specs] == [{"seed": 0, "calibration.gammas": [0.5]},
                                        {"seed": 0, "calibration.gammas": [2.0]},
                                        {"seed": 1, "calibration.gammas": [0.5]},
                                        {"seed": 1, "calibration.gammas": [2.0]}]
    assert [(s.seed, s.calibration["gammas"]) for s in specs] == [(0, [0.5]), (0, [2.0]), (1, [0.5]), (1, [2.0])]
    assert len({s.spec_hash() for s in specs}) == 4
    # bare dotted keys are the same sweep; an edits sweep takes edit lists, [] meaning none
    bare = parse_specs(SPEC.replace('"calibration.gammas"', "calibration.gammas"))
    assert [s.spec_hash() for s in bare] == [s.spec_hash() for s in specs]
    text = SPEC.split("[calibration]")[0] + '[sweep]\nedits = [[], [{type = "ablate", layer = 1}]]\n'
    base, ablated = parse_specs(text)
    assert base.edits == () and ablated.edits[0]["layer"] == 1


def test_example_sweep_spec_is_six_runs():
    from pathlib import Path

    path = Path(__file__).parents[2] / "docs" / "experiments" / "sweeps" / "induction_organism_ablation_sweep.toml"
    specs = load_specs(path)
    assert [(len(s.edits), s.seed) for s in specs] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 0), (1, 1)]
    assert [s.edits[0]["layer"] for s in specs[2:]] == [0, 0, 1, 1]


@pytest.mark.parametrize("sweep, match", [
    ('seed = [0, -1]', r"sweep\.seed\[1\]: seed: must be >= 0, got -1 \(line 21\)"),
    ('"calibration.gammas" = [[0.5], [0.0]]', r"sweep\.calibration\.gammas\[1\]: calibration\.gammas\[0\]: "
                                              r"must be > 0, got 0.0 \(line 21\)"),
    ('"task.n_choices" = [4, "four"]', r"sweep\.task\.n_choices\[1\]: task\.n_choices: expected an integer.*line 21"),
    ('"output.db" = ["a.duckdb"]', r"sweep\.output\.db: cannot be swept.*\(line 21\)"),
    ('seed = 3', r"sweep\.seed: expected a non-empty list.*\(line 21\)"),
])
def test_a_bad_sweep_value_names_its_key_and_line(sweep, match):
    text = SPEC.split("[sweep]")[0] + "[sweep]\n" + sweep + "\n"
    assert text.splitlines()[20] == sweep
    with pytest.raises(SpecError, match=match):
        parse_specs(text, source="s.toml")


# --- running ----------------------------------------------------------------------------------------
def test_local_executor_equals_in_process(local, spec_path, tmp_path):
    """The executor path (each scoring a job, results assembled in candidate order) gives the same numbers."""
    from lens.record._executor import make_executor

    ex = make_executor("local", progress=False)
    db = tmp_path / "ex.duckdb"
    run_sweep(load_specs(spec_path), executor=ex, db=db, progress=False, echo=None)
    assert_same(snapshot(local[0]), snapshot(db))


@needs_ray
def test_sweep_on_ray_equals_local(local, spec_path, executor, tmp_path):
    db = tmp_path / "ray.duckdb"
    table = run_sweep(load_specs(spec_path), executor=executor, db=db, progress=False, echo=None)
    assert_same(snapshot(local[0]), snapshot(db))
    pd.testing.assert_frame_equal(table.drop(columns="run_id"), local[1].drop(columns="run_id"), check_exact=True)
    assert table["sweep.seed"].tolist()[:1] == ["0"]  # the swept values are columns, to group by


@needs_ray
def test_killed_actor_restarts_and_nothing_is_lost_or_doubled(local, spec_path, executor, tmp_path):
    db = tmp_path / "kill.duckdb"
    pids = [ray.get(a.pid.remote()) for a in executor.actors]
    threads = []

    def after_first_run(i, run_id):  # from a thread, while the next runs' jobs are being sent
        if i == 0:
            threads.append(threading.Thread(target=lambda: ray.kill(executor.actors[0], no_restart=False)))
            threads[0].start()

    run_sweep(load_specs(spec_path), executor=executor, db=db, progress=False, echo=None, on_run=after_first_run)
    threads[0].join()
    # the same actor handles; the killed one runs in a new process (Ray restarted it and retried its job)
    now = [ray.get(a.pid.remote()) for a in executor.actors]
    assert now[0] != pids[0] and now[1] == pids[1]
    got = snapshot(db)
    assert_same(snapshot(local[0]), got)
    con = _db.connect(db, read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT spec_hash) FROM runs").fetchone() == (4, 4)
        dupes = con.execute("SELECT count(*) FROM (SELECT run_id, condition, idx FROM examples "
                            "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
        assert dupes == 0
    finally:
        con.close()


@needs_ray
def test_a_failing_job_raises_in_the_driver(executor, tmp_path):
    """A job that raises: its own error, not retried. A job that kills its actor every time: Ray restarts
    the actor and retries it ``retries`` times, then the driver raises a RuntimeError naming the job."""
    tries = tmp_path / "tries"
    tries.mkdir()

    def job_fn(subject, job):  # a closure: Ray pickles it by value (a test module is not importable on workers)
        (tries / f"{job}-{os.getpid()}-{time.monotonic_ns()}").touch()
        if job == "raise":
            raise ValueError("this job is bad")
        if job == "die":
            os._exit(1)
        return job

    pids = [ray.get(a.pid.remote()) for a in executor.actors]
    with pytest.raises(ValueError, match="this job is bad"):
        list(executor.run("induction", ["ok", "raise", "ok"], job_fn))
    assert len(list(tries.glob("raise-*"))) == 1  # not retried
    assert [ray.get(a.pid.remote()) for a in executor.actors] == pids  # and no actor died of it

    with pytest.raises(RuntimeError, match=r"sweep-test: job 1 lost its worker 4 time\(s\)"):
        list(executor.run("induction", ["ok", "die", "ok"], job_fn, desc="sweep-test"))
    assert len(list(tries.glob("die-*"))) == executor.retries + 1 == 4  # tried once, retried 3 times
    assert list(executor.run("induction", ["ok"], job_fn)) == [(0, "ok")]  # the actors are back


@needs_ray
def test_interrupted_sweep_resumes_without_recomputing(local, spec_path, executor, tmp_path):
    db = tmp_path / "resume.duckdb"
    specs = load_specs(spec_path)
    chosen = []

    def ctrl_c_in_third_run(line, *a, **k):  # Ctrl-C while run 3 is between calibration and test scoring
        if str(line).startswith("calibration ("):
            chosen.append(line)
            if len(chosen) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(specs, executor=executor, db=db, progress=False, echo=ctrl_c_in_third_run)
    before = _db.connect(db, read_only=True).execute(
        "SELECT run_id, spec_hash, status, created, finished_at FROM runs ORDER BY created, run_id").df()
    assert before["status"].tolist() == ["complete", "complete", "interrupted"]

    lines = []
    run_sweep(specs, executor=executor, db=db, resume=True, progress=False, echo=lines.append)
    assert sum("skipped" in str(line) for line in lines) == 2
    after = _db.connect(db, read_only=True).execute(
        "SELECT run_id, spec_hash, status, created, finished_at FROM runs ORDER BY created, run_id").df()
    done = before[before["status"] == "complete"]
    pd.testing.assert_frame_equal(after.iloc[:2], done)  # the finished runs were not recomputed
    assert after["status"].tolist() == ["complete", "complete", "interrupted", "complete", "complete"]
    assert_same(snapshot(local[0]), snapshot(db))

    again = []  # a second resume finds everything done
    run_sweep(specs, executor=executor, db=db, resume=True, progress=False, echo=again.append)
    assert sum("skipped" in str(line) for line in again) == 4


def test_ray_executor_without_ray_says_how_to_install(spec_path, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from lens.cli import app
    from lens.record._executor import RAY_INSTALL

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    res = CliRunner().invoke(app, ["run", str(spec_path), "--executor", "ray", "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2, res.output
    assert "needs Ray" in res.output and RAY_INSTALL in res.output.replace("\n", "")
    assert not (tmp_path / "x.duckdb").exists()  # refused before any run was recorded


def test_lens_run_resume_on_the_command_line(local, spec_path, tmp_path):
    """`lens run SPEC --executor local --resume` into a database holding the local sweep runs nothing again."""
    import shutil

    from typer.testing import CliRunner

    from lens.cli import app

    db = tmp_path / "copy.duckdb"
    shutil.copy(local[0], db)
    res = CliRunner().invoke(app, ["run", str(spec_path), "--executor", "local", "--resume", "--quiet",
                                   "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped") == 4 and "sweep: 4 runs" in res.output
    assert json.loads(snapshot(db)["runs"]["sweep"].iloc[0]).keys() == {"seed", "calibration.gammas"}
