"""``lens run SPEC.toml`` with a ``[sweep]``: every run of the sweep, here or on Ray, resumable.

Runs go one after another through ``run_spec``; with an executor (``lens.record._executor``)
each run's scoring jobs (calibration candidates, the test split) go to its workers, which
keep the model loaded between runs. Only this process writes the database, each run in
``_db``'s two commits (``running``, then ``complete`` with its results), so a sweep cut
short leaves complete runs and at most one interrupted one. ``resume`` skips each run whose
resolved spec (``Spec.spec_hash``) already has a complete run in the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lens.record import cached_subject
from lens.experiments import _db
from lens.experiments._runner import run_spec
from lens.experiments._spec import Spec


def run_sweep(specs: Sequence[Spec], *, executor=None, db: str | Path | None = None, resume: bool = False,
              progress: bool = True, echo=print, on_run: Callable | None = None) -> pd.DataFrame:
    """Run every spec of a sweep (``load_specs``); returns the sweep table (``sweep_table``).

    executor: None runs here on a model loaded once per model name; else a ``lens.record._executor``
    executor. resume: skip runs already complete in ``db``. on_run(i, run_id): called in
    this process after run ``i`` is stored (tests interrupt a sweep from it).
    """
    specs = list(specs)
    if not specs:
        raise ValueError("nothing to run: no specs")
    say = echo or (lambda *_: None)
    path = str(db or specs[0].db or _db.DEFAULT_DB)
    done = _db.complete_runs_by_hash(path, [s.spec_hash() for s in specs]) if resume else {}
    subjects: dict = {}  # ModelRef -> Subject
    ids: list[str] = []
    bar = tqdm(total=len(specs), desc="sweep", unit="run", disable=not progress or len(specs) == 1)
    try:
        for i, spec in enumerate(specs):
            label = f"sweep run {i + 1}/{len(specs)}" + (f" ({describe_sweep(spec.sweep)})" if spec.sweep else "")
            h = spec.spec_hash()
            if h in done:
                say(f"{label}: already complete as run {done[h]}; skipped")
                ids.append(done[h])
                bar.update(1)
                continue
            say(f"{label}:")
            kw = ({"executor": executor} if executor is not None
                  else {"subject": cached_subject(subjects, spec.model_ref, echo=say)})
            result = run_spec(spec, db=path, progress=progress, echo=echo, **kw)
            ids.append(result.run_id)
            done[h] = result.run_id
            bar.update(1)
            if on_run is not None:
                on_run(i, result.run_id)
    finally:
        bar.close()
    table = sweep_table(path, ids)
    if len(specs) > 1:
        say(f"sweep: {len(specs)} runs in {path} (delta = edited - baseline with its BCa bootstrap interval)")
        say(format_sweep(table))
    return table


def format_sweep(table: pd.DataFrame) -> str:
    """The sweep table as text: one line per (run, metric) with baseline, edited and delta."""
    if not len(table):
        return "(no complete runs)"
    keys = [c for c in table.columns if c.startswith("sweep.")]
    rows = []
    for (rid, metric), g in table.groupby(["run_id", "metric"], sort=False):
        cell = {c: g[g["condition"] == c] for c in ("baseline", "edited", "delta")}
        num = lambda c: f"{cell[c]['value'].iloc[0]:.3f}" if len(cell[c]) else "-"  # noqa: E731
        d = cell["delta"]
        rows.append({"run_id": rid, **{k[6:]: g[k].iloc[0] for k in keys}, "metric": metric,
                     "baseline": num("baseline"), "edited": num("edited"),
                     "delta": f"{d['value'].iloc[0]:+.3f} [{d['ci_low'].iloc[0]:+.3f}, {d['ci_high'].iloc[0]:+.3f}]"
                     if len(d) else "-"})
    with pd.option_context("display.width", 200, "display.max_colwidth", 50):
        return pd.DataFrame(rows).to_string(index=False)


def describe_sweep(values: dict) -> str:
    return ", ".join(f"{k} = {json.dumps(v, default=repr)}" for k, v in values.items())


def sweep_table(path: str | Path, run_ids: Sequence[str]) -> pd.DataFrame:
    """One row per (run, condition, metric) of complete runs, with the run's swept values as
    columns (``sweep.<key>``, JSON text), in the order of ``run_ids``: group or pivot by them."""
    ids = list(run_ids)
    con = _db.connect(path, read_only=True)
    try:
        runs = con.execute(f"SELECT run_id, spec_hash, sweep FROM runs WHERE status = 'complete' AND run_id IN "
                           f"({', '.join('?' for _ in ids)})", ids).df()
        summary = con.execute(f"SELECT * FROM summary WHERE run_id IN ({', '.join('?' for _ in ids)})", ids).df()
    finally:
        con.close()
    order = {rid: n for n, rid in enumerate(ids)}
    sweeps = {rid: json.loads(sw or "{}") for rid, sw in zip(runs["run_id"], runs["sweep"])}
    keys = list(dict.fromkeys(k for sw in sweeps.values() for k in sw))
    for k in keys:
        summary[f"sweep.{k}"] = [json.dumps(sweeps.get(rid, {}).get(k), default=repr) for rid in summary["run_id"]]
    summary["spec_hash"] = summary["run_id"].map(dict(zip(runs["run_id"], runs["spec_hash"])))
    summary["_order"] = summary["run_id"].map(order)
    cond = {"baseline": 0, "edited": 1, "delta": 2}
    summary["_cond"] = summary["condition"].map(cond)
    summary = summary.sort_values(["_order", "metric", "_cond"]).drop(columns=["_order", "_cond"])
    cols = ["run_id", "spec_hash", *(f"sweep.{k}" for k in keys), "metric", "condition", "value", "ci_low",
            "ci_high", "n"]
    return summary[cols].reset_index(drop=True)
