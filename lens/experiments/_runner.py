"""``lens run SPEC.toml``: check the spec, load the model, calibrate or build the edits, score the
held-out test set with and without them, bootstrap the differences (BCa), record everything.

Order matters for honesty: the spec (and any task file) is checked before the model loads;
calibration sees only the calibration split; the test split is scored once for the
unedited model and once with the chosen edits, and nothing is chosen after that.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pandas as pd

from lens.edits import Edit
from lens.experiments import _db
from lens.experiments._bootstrap import bootstrap_ci, paired_bootstrap_ci
from lens.experiments._calibrate import Calibration, act_search, zerotuning, zerotuning_profiled
from lens.experiments._scorers import ExecutorScorer, LocalScorer
from lens.experiments._scoring import metric_values, score
from lens.experiments._spec import Spec, load_spec
from lens.experiments._spec_edits import check_targets


@dataclass
class RunResult:
    """What a run produced (also written to the database unless told not to)."""

    run_id: str
    spec: Spec
    edits: tuple[Edit, ...]
    summary: pd.DataFrame
    examples: pd.DataFrame
    calibration: Calibration | None = None
    seconds: float = 0.0
    db: str | None = None
    provenance: dict = field(default_factory=dict)

    def value(self, metric: str = "accuracy", condition: str = "edited") -> float:
        row = self.summary[(self.summary["metric"] == metric) & (self.summary["condition"] == condition)]
        if not len(row):
            raise KeyError(f"no {condition} {metric} in this run")
        return float(row["value"].iloc[0])

    def table(self) -> str:
        return format_result(self)


def run_spec(spec: Spec | str | Path, *, subject=None, db: str | Path | None | bool = None, progress: bool = True,
             echo=print, executor=None) -> RunResult:
    """Run an experiment spec (a path or a checked ``Spec``); returns the results.

    subject: an already loaded model to use instead of ``spec.model`` (tests, notebooks).
    db: the DuckDB file (default: the spec's ``output.db``, else ``runs.duckdb``); False
    writes nothing. echo: where progress lines and the final table go (None: nowhere).
    executor: a ``lens.record._executor`` executor: every scoring (each calibration candidate, the
    test split without and with the edits) is a job on its workers, which hold the model;
    this process only assembles and stores the results (same numbers as without one).

    The run is recorded as ``running`` before the model loads and its results are stored,
    with the status flipped to ``complete``, in one transaction at the end (``_db``): a run
    killed on the way leaves no results and is listed as interrupted; one that raises is
    marked failed with its error.
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    if subject is not None and executor is not None:
        raise ValueError("give either subject (scored here) or executor (scored on its workers), not both")
    say = echo or (lambda *_: None)
    t0 = time.perf_counter()
    task = spec.build_task()
    run_id = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    prov = provenance()
    path = None if db is False else str(db if db not in (None, True) else spec.db or _db.DEFAULT_DB)
    if path is not None:
        _db.start_run(path, _start_row(run_id, spec, task, prov))
        say(f"run {run_id} started (recorded as running in {path})")
    result = None
    try:
        scorer = None
        if executor is not None:
            scorer = _scorer_for(executor, spec.model_ref)
            subject = scorer.facts()
        elif subject is None:
            say(f"loading {spec.model_ref} ...")
            subject = spec.model_ref.load()
        result = _execute(spec, task, subject, run_id, progress, say, scorer)
        result.seconds, result.provenance = time.perf_counter() - t0, prov
        if path is not None:
            _db.finish_run(path, run_id, _finish_row(result, subject), result.examples, result.summary,
                           _trials_frame(run_id, result.calibration))
            result.db = path
    except BaseException as err:
        if path is not None:
            _db.abandon_run(path, run_id, err)
        if result is not None:  # computed but not stored: the numbers at least reach the screen
            say(format_result(result))
            say(f"run {run_id}: the results above were NOT saved to {path}: {type(err).__name__}: {err}")
        raise
    say(format_result(result))
    return result


_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # executor -> {model: ExecutorScorer}


def _scorer_for(executor, model):
    """One ``ExecutorScorer`` per (executor, model), so the model's facts are asked for once per sweep."""
    cache = _SCORERS.setdefault(executor, {})
    if model not in cache:
        cache[model] = ExecutorScorer(executor, model)
    return cache[model]


def _execute(spec: Spec, task, subject, run_id: str, progress: bool, say, scorer=None) -> RunResult:
    """Calibrate (or build the fixed edits), score the test split without and with them, summarize
    (``run_spec`` adds the time taken and the provenance).

    ``scorer`` (``_scorers``) runs the scoring elsewhere; then ``subject`` is only its ``ModelFacts``.
    """
    remote = scorer  # None: the calibration scores here too (through _calibrate's own score)
    scorer = scorer if scorer is not None else LocalScorer(subject, score)
    score_kw = {"batch_size": spec.eval["batch_size"], "prefix_cache": spec.eval["prefix_cache"],
                "backend": spec.eval["backend"]}
    check_targets(spec, subject)

    calibration = None
    if spec.calibration is not None:
        calibration = _calibrate(spec, subject, task.calibration, score_kw, progress, remote)
        edits = calibration.edits
        say(f"calibration ({calibration.method}, {calibration.objective}) chose: {_describe(calibration)}")
    else:
        edits = scorer.build_edits(spec, [e.prompt for e in task.calibration])

    conditions = {"baseline": (), **({"edited": edits} if edits else {})}  # scored independently, at once
    scored: dict[int, pd.DataFrame] = dict(scorer.map(task.test, list(conditions.values()), score_kw, progress=progress,
                                                      descs=[f"test: {c}" for c in conditions]))
    base, edited = scored[0], scored.get(1)
    frames = [_tag(base, task.test, "baseline")]
    if edited is not None:
        frames.append(_tag(edited, task.test, "edited"))
    summary = summarize(spec, base, edited)

    examples = pd.concat(frames, ignore_index=True)
    examples.insert(0, "run_id", run_id)
    summary.insert(0, "run_id", run_id)
    return RunResult(run_id, spec, tuple(edits), summary, examples, calibration)


def _tag(df: pd.DataFrame, examples, condition: str) -> pd.DataFrame:
    out = df.copy()
    out.insert(0, "condition", condition)
    out.insert(0, "split", "test")
    out["prompt"] = [e.prompt for e in examples]
    out["choices"] = [json.dumps(list(e.choices)) for e in examples]
    out["choice_logits"] = out["choice_logits"].map(json.dumps)
    return out


def summarize(spec: Spec, base: pd.DataFrame, edited: pd.DataFrame | None) -> pd.DataFrame:
    """Mean and BCa bootstrap CI of each metric for baseline and edited, and the paired difference."""
    kw = {"n_boot": spec.eval["bootstrap"], "confidence": spec.eval["confidence"], "seed": spec.seed}
    rows = []
    for metric in spec.metrics:
        b = metric_values(base, metric)
        rows.append(("baseline", metric, *bootstrap_ci(b, **kw), len(b)))
        if edited is not None:
            e = metric_values(edited, metric)
            rows.append(("edited", metric, *bootstrap_ci(e, **kw), len(e)))
            rows.append(("delta", metric, *paired_bootstrap_ci(b, e, **kw), len(e)))
    return pd.DataFrame(rows, columns=["condition", "metric", "value", "ci_low", "ci_high", "n"])


# --- edits from a spec ------------------------------------------------------------------------
def _calibrate(spec: Spec, subject, examples, score_kw: dict, progress: bool, scorer=None) -> Calibration:
    cal = spec.calibration
    common = {"objective": cal["objective"], "score_kw": score_kw, "progress": progress, "scorer": scorer}
    if cal["method"] == "zerotuning":
        return zerotuning(subject, examples, scopes=cal["scopes"], gammas=cal["gammas"], layers=cal["layers"],
                          heads=cal["heads"], **common)
    if cal["method"] == "zerotuning_profiled":
        return zerotuning_profiled(subject, examples, unit=cal["unit"], up=cal["up"], down=cal["down"],
                                   gammas=cal["gammas"], layers=cal["layers"], heads=cal["heads"], **common)
    layers = cal["layers"] if cal["layers"] is not None else range(subject.n_layers)
    heads = cal["heads"] if cal["heads"] is not None else range(subject.n_heads)
    return act_search(subject, examples, heads=[(l, h) for l in layers for h in heads], beta=cal["beta"],
                      theta=cal["theta"], alpha=cal["alpha"], max_heads=cal["max_heads"], **common)


def _describe(cal: Calibration) -> str:
    c = cal.chosen
    if cal.method == "act":
        return f"{len(c['kept_heads'])} head(s) {c['kept_heads']}" if c["kept_heads"] else "no head (baseline)"
    return c["label"] if c["label"] != "baseline" else "no edit (baseline was best)"


# --- provenance and storage -------------------------------------------------------------------------
VERSIONED = ("attention-workbench", "torch", "transformers", "nnsight", "tokenizers", "numpy", "pandas", "duckdb")


def provenance() -> dict:
    """Library versions and the git commit of the workbench that ran."""
    versions = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    repo = Path(__file__).resolve().parents[2]
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty}


def _jsonable(x):
    return json.loads(json.dumps(x, default=repr))


def _start_row(run_id: str, spec: Spec, task, prov: dict) -> dict:
    """The ``runs`` row as far as it is known before the model loads."""
    return {
        "run_id": run_id, "created": datetime.now(), "name": spec.name, "model": spec.model,
        "task": task.name, "seed": spec.seed, "n_calibration": len(task.calibration), "n_test": len(task.test),
        "spec_path": spec.path, "spec_toml": spec.text, "config": json.dumps(_jsonable(spec.config())),
        "method": spec.calibration["method"] if spec.calibration else ("edits" if spec.edits else "baseline"),
        "versions": json.dumps(prov["versions"]), "git_commit": prov["git_commit"], "git_dirty": prov["git_dirty"],
        "spec_hash": spec.spec_hash(), "sweep": json.dumps(_jsonable(spec.sweep)),
    }


def _finish_row(result: RunResult, subject) -> dict:
    """What only the finished run knows: the edits it chose, the model it loaded, how long it took."""
    cal = result.calibration
    return {
        "method": cal.method if cal else ("edits" if result.spec.edits else "baseline"),
        "edits": json.dumps([repr(e) for e in result.edits]),
        "calibration": json.dumps(_jsonable(cal.chosen)) if cal else None,
        "versions": json.dumps({**result.provenance["versions"], "model": subject.name,
                                "model_source": subject.source}),
        "seconds": result.seconds,
    }


def _trials_frame(run_id: str, cal: Calibration | None) -> pd.DataFrame | None:
    if cal is None or not len(cal.trials):
        return None
    t = cal.trials
    base = ("label", "objective", "accuracy", "logprob_answer", "entropy", "entropy_vocab")
    detail_cols = [c for c in t.columns if c not in base]
    details = [json.dumps(_jsonable({c: row[c] for c in detail_cols})) for _, row in t.iterrows()]
    return pd.DataFrame({"run_id": run_id, "method": cal.method, "label": t["label"], "objective": t["objective"],
                         "accuracy": t["accuracy"], "logprob_answer": t["logprob_answer"], "entropy": t["entropy"],
                         "entropy_vocab": t["entropy_vocab"], "details": details})


# --- the printed table ------------------------------------------------------------------------------
def format_result(result: RunResult) -> str:
    spec, s = result.spec, result.summary
    conf = int(round(spec.eval["confidence"] * 100))
    lines = [f"run {result.run_id}: {spec.name} | model {spec.model} | task {Path(spec.task).name} | seed {spec.seed} "
             f"| {spec.n_calibration} calibration, {spec.n_test} test examples | {result.seconds:.0f} s"]
    if result.calibration is not None:
        lines.append(f"calibration {result.calibration.method} ({result.calibration.objective}): "
                     f"{_describe(result.calibration)}")
    elif result.edits:
        lines.append(f"edits: {len(result.edits)}: " + "; ".join(_short(e) for e in result.edits))
    header = f"{'metric':<16}{'baseline':>26}{'edited':>26}{'edited - baseline':>28}"
    lines += [header, "-" * len(header)]
    for metric in spec.metrics:
        cells = []
        for cond in ("baseline", "edited", "delta"):
            row = s[(s["metric"] == metric) & (s["condition"] == cond)]
            if not len(row):
                cells.append("-")
                continue
            v, lo, hi = row[["value", "ci_low", "ci_high"]].iloc[0]
            sign = "+" if cond == "delta" else ""
            cells.append(f"{v:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]")
        lines.append(f"{metric:<16}{cells[0]:>26}{cells[1]:>26}{cells[2]:>28}")
    lines.append(f"({conf}% BCa bootstrap intervals over test examples, {spec.eval['bootstrap']} resamples"
                 + (f"; saved to {result.db})" if result.db else ")"))
    return "\n".join(lines)


def _short(e: Edit) -> str:
    text = repr(e)
    return text if len(text) <= 90 else text[:87] + "..."
