"""Calibrating edits on a calibration set: ZeroTuning (METHODS sec 5) and ACT head search (sec 6).

Every search here sees only the calibration examples it is given; the runner evaluates
the chosen edits on a disjoint test set. Each candidate is scored on the whole
calibration set and recorded as one row of ``Calibration.trials``.

The candidates of one search are independent; each search hands them to its ``scorer``
all at once (``_scorers``: in this process, or as jobs on Ray workers), and the trials
table is the same either way.

Objectives: "accuracy" (supervised; ties broken by the mean log-probability of the
answer among the choices) and "entropy" / "entropy_vocab" (unsupervised: minimise the
mean entropy of the output distribution over the choices / over the whole vocabulary;
no label is read, though the trials table still reports accuracy for reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lens.edits import CalibrateSinks, Edit, ScaleAttention
from lens.experiments._scorers import LocalScorer
from lens.experiments._scoring import score
from lens.experiments._spec_tables import OBJECTIVES, SCOPES

DEFAULT_GAMMAS = (0.5, 0.75, 1.25, 1.5, 2.0)


@dataclass
class Calibration:
    """What a calibration chose and everything it tried."""

    method: str
    objective: str
    edits: tuple[Edit, ...]
    chosen: dict
    trials: pd.DataFrame
    profile: pd.DataFrame | None = field(default=None)


def objective_value(df: pd.DataFrame, objective: str) -> tuple[float, float]:
    """(primary, tie-break), both larger-is-better. Unsupervised objectives read no labels."""
    if objective == "accuracy":
        return float(np.mean(df["correct"])), float(np.mean(df["logprob_answer"]))
    if objective in ("entropy", "entropy_vocab"):
        return -float(np.mean(df[objective])), 0.0
    raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


class _Trials:
    """Scores candidates on the calibration set and keeps one row per candidate, in plan order.

    ``scorer`` says where the scoring runs (``_scorers``: this process, or an executor's
    workers); the rows do not depend on it, nor on the order in which results arrive.
    """

    def __init__(self, subject, examples, objective: str, score_kw: dict, progress: bool, scorer=None):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        if not examples:
            raise ValueError("calibration needs calibration examples (task.calibration >= 1)")
        self.subject, self.examples, self.objective = subject, list(examples), objective
        self.score_kw, self.progress = dict(score_kw), progress
        self.scorer = scorer if scorer is not None else LocalScorer(subject, score)
        self.rows: list[dict] = []
        self.bar = None

    def _row(self, label: str, edits, info: dict, df: pd.DataFrame) -> dict:
        primary, tie = objective_value(df, self.objective)
        return {"label": label, **info, "objective": primary, "tiebreak": tie,
                "accuracy": float(np.mean(df["correct"])), "logprob_answer": float(np.mean(df["logprob_answer"])),
                "entropy": float(np.mean(df["entropy"])), "entropy_vocab": float(np.mean(df["entropy_vocab"])),
                "edits": list(edits)}

    def run_many(self, candidates: Sequence[tuple[str, Sequence[Edit], dict]]) -> list[dict]:
        """Score independent candidates ``(label, edits, info)`` (at once, where the scorer can)."""
        rows: list[dict | None] = [None] * len(candidates)
        for i, df in self.scorer.map(self.examples, [list(c[1]) for c in candidates], self.score_kw):
            label, edits, info = candidates[i]
            rows[i] = self._row(label, edits, info, df)
            if self.bar is not None:
                self.bar.update(1)
                done = [r for r in [*self.rows, *rows] if r is not None]
                self.bar.set_postfix(best=f"{max(r['objective'] for r in done):.3f}")
        self.rows.extend(rows)
        return rows

    def run(self, label: str, edits: Sequence[Edit], **info) -> dict:
        return self.run_many([(label, edits, info)])[0]

    def progress_bar(self, total: int, desc: str):
        self.bar = tqdm(total=total, desc=desc, unit="trial", disable=not self.progress)
        return self.bar

    def table(self) -> pd.DataFrame:
        df = pd.DataFrame([{k: v for k, v in r.items() if k != "edits"} for r in self.rows])
        df["edits"] = [repr(list(r["edits"])) for r in self.rows]
        return df


def _best(rows: list[dict]) -> dict:
    """The highest (objective, tiebreak); among equals the earliest (the baseline comes first)."""
    best = rows[0]
    for r in rows[1:]:
        if (r["objective"], r["tiebreak"]) > (best["objective"], best["tiebreak"]):
            best = r
    return best


def zerotuning_edits(scope: str, unit: int | None, gamma: float) -> list[Edit]:
    """ZeroTuning as edits: scale attention to the first token by gamma on one scope's heads."""
    if scope == "layer":
        return [ScaleAttention(layer=unit, head=None, keys=0, factor=gamma)]
    if scope == "head_index":
        return [ScaleAttention(layer=None, head=unit, keys=0, factor=gamma)]
    if scope == "all":
        return [ScaleAttention(layer=None, head=None, keys=0, factor=gamma)]
    raise ValueError(f"unknown ZeroTuning scope {scope!r}; known: {', '.join(SCOPES)}")


def _units(subject, scope: str, layers, heads) -> list[int | None]:
    if scope == "layer":
        return list(layers) if layers is not None else list(range(subject.n_layers))
    if scope == "head_index":
        return list(heads) if heads is not None else list(range(subject.n_heads))
    return [None]


def zerotuning(subject, examples, *, scopes: Sequence[str] = SCOPES, gammas: Sequence[float] = DEFAULT_GAMMAS,
               objective: str = "accuracy", layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
               score_kw: dict | None = None, progress: bool = True, scorer=None) -> Calibration:
    """Grid search of gamma over the three ZeroTuning scopes (METHODS sec 5).

    Candidates: every (scope, unit, gamma) with units = each layer (all its heads), each
    head index (in all layers), and "all" (every head); ``layers`` / ``heads`` restrict the
    units tried. The unedited model (gamma = 1) is a candidate too: when nothing beats it
    on the calibration set, no edit is chosen.

    Why ten parameters: each search knob is a key of the spec's ``[calibration]`` table, passed by
    keyword; the last four (objective, score_kw, progress, scorer) are shared by every search.
    """
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(f"unknown ZeroTuning scope {scope!r}; known: {', '.join(SCOPES)}")
    trials = _Trials(subject, examples, objective, score_kw or {}, progress, scorer)
    plan = [(scope, unit, float(g)) for scope in scopes for unit in _units(subject, scope, layers, heads)
            for g in gammas]
    with trials.progress_bar(len(plan) + 1, "zerotuning"):
        trials.run_many([("baseline", [], {"scope": "none", "unit": None, "gamma": 1.0})]
                        + [(f"{scope}:{'*' if unit is None else unit}:x{g:g}", zerotuning_edits(scope, unit, g),
                            {"scope": scope, "unit": unit, "gamma": g}) for scope, unit, g in plan])
    best = _best(trials.rows)
    return Calibration("zerotuning", objective, tuple(best["edits"]),
                       {"label": best["label"], "scope": best["scope"], "unit": best["unit"], "gamma": best["gamma"],
                        "calibration_objective": best["objective"], "calibration_accuracy": best["accuracy"],
                        "baseline_objective": trials.rows[0]["objective"],
                        "baseline_accuracy": trials.rows[0]["accuracy"]}, trials.table())


def _profile_units(subject, unit: str, layers, heads) -> list[tuple[str, object]]:
    """(name, key) of each profiling unit: key is (layer, head), a layer or a head index."""
    layers = list(range(subject.n_layers)) if layers is None else list(layers)
    heads = list(range(subject.n_heads)) if heads is None else list(heads)
    if unit == "head":
        return [(f"L{l}H{h}", (l, h)) for l in layers for h in heads]
    if unit == "layer":
        return [(f"L{l}", l) for l in layers]
    if unit == "head_index":
        return [(f"H{h}", h) for h in heads]
    raise ValueError(f"unknown profiling unit {unit!r}; known: head, layer, head_index")


def _unit_edits(unit: str, keys: Sequence, gamma: float) -> list[Edit]:
    if unit == "head":
        by_layer: dict[int, list[int]] = {}
        for l, h in keys:
            by_layer.setdefault(l, []).append(h)
        return [ScaleAttention(layer=l, head=tuple(hs), keys=0, factor=gamma) for l, hs in sorted(by_layer.items())]
    if unit == "layer":
        return [ScaleAttention(layer=tuple(keys), head=None, keys=0, factor=gamma)]
    return [ScaleAttention(layer=None, head=tuple(keys), keys=0, factor=gamma)]


def zerotuning_profiled(subject, examples, *, unit: str = "layer", up: float = 1.5, down: float = 0.67,
                        gammas: Sequence[float] = DEFAULT_GAMMAS, objective: str = "accuracy",
                        layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                        score_kw: dict | None = None, progress: bool = True, scorer=None) -> Calibration:
    """ZeroTuning with head profiling (METHODS sec 5, the paper's recipe).

    Each unit (a head, a layer's heads, or a head index across layers) is scaled up
    (gamma = ``up``) and down (``down``) alone. It is up-effective when scaling up beats
    both the baseline and scaling down, down-effective in the mirror case, neutral
    otherwise. The dominant type is kept (ties: up), and one shared gamma, from the
    ``gammas`` on that side of 1, is tuned over all units of that type together.

    Why twelve parameters: as in ``zerotuning``, one keyword per ``[calibration]`` key, plus the
    four every search shares.
    """
    if not (up > 1 and 0 < down < 1):
        raise ValueError(f"profiling needs up > 1 and 0 < down < 1, got up={up}, down={down}")
    units = _profile_units(subject, unit, layers, heads)
    trials = _Trials(subject, examples, objective, score_kw or {}, progress, scorer)
    profile = []
    side = [g for g in gammas if g != 1]
    with trials.progress_bar(1 + 2 * len(units) + len(side), "zerotuning profile"):
        first = [("baseline", [], {"phase": "baseline", "unit": None, "gamma": 1.0})]
        for name, key in units:  # each unit scaled up, then down, alone
            first += [(f"profile:{name}:x{g:g}", _unit_edits(unit, [key], g),
                       {"phase": "profile", "unit": name, "gamma": g}) for g in (up, down)]
        base, *scaled = trials.run_many(first)
        base_key = (base["objective"], base["tiebreak"])
        for j, (name, key) in enumerate(units):
            r_up, r_dn = scaled[2 * j], scaled[2 * j + 1]
            k_up, k_dn = (r_up["objective"], r_up["tiebreak"]), (r_dn["objective"], r_dn["tiebreak"])
            kind = "up" if k_up > max(base_key, k_dn) else "down" if k_dn > max(base_key, k_up) else "neutral"
            profile.append({"unit": name, "key": key, "objective_up": r_up["objective"],
                            "objective_down": r_dn["objective"], "objective_base": base["objective"], "type": kind})
        n_up = sum(p["type"] == "up" for p in profile)
        n_down = sum(p["type"] == "down" for p in profile)
        dominant = "up" if n_up >= n_down and n_up > 0 else "down" if n_down > 0 else None
        keys = [p["key"] for p in profile if p["type"] == dominant]
        grid = [g for g in side if (g > 1) == (dominant == "up")] if dominant else []
        if trials.bar is not None:
            trials.bar.total = len(trials.rows) + len(grid)
        trials.run_many([(f"tune:{dominant}:x{g:g}", _unit_edits(unit, keys, g),
                          {"phase": "tune", "unit": dominant, "gamma": g}) for g in grid])
    best = _best(trials.rows[:1] + [r for r in trials.rows if r.get("phase") == "tune"])
    prof = pd.DataFrame(profile)
    if len(prof):
        prof["key"] = prof["key"].map(str)
    return Calibration("zerotuning_profiled", objective, tuple(best["edits"]),
                       {"label": best["label"], "dominant": dominant, "n_up": n_up, "n_down": n_down,
                        "units": [str(k) for k in keys], "gamma": best["gamma"], "unit_kind": unit,
                        "calibration_objective": best["objective"], "calibration_accuracy": best["accuracy"],
                        "baseline_objective": base["objective"], "baseline_accuracy": base["accuracy"]},
                       trials.table(), prof)


def act_search(subject, examples, *, heads: Sequence[tuple[int, int]] | None = None, beta: float = 0.4,
               theta: float = 0.1, alpha: float | None = None, max_heads: int | None = None,
               objective: str = "accuracy", score_kw: dict | None = None, progress: bool = True,
               scorer=None) -> Calibration:
    """ACT head search (METHODS sec 6): calibrate one head at a time, keep those that help.

    A head is kept when ACT on it alone raises the calibration objective strictly above the
    baseline's (primary value, e.g. accuracy; the tie-break does not count). With
    ``max_heads`` only the best that many are kept. The kept heads are then applied
    together (one ``CalibrateSinks`` per layer) and scored once more, for the record.

    Why eleven parameters: as in ``zerotuning``, one keyword per ``[calibration]`` key, plus the
    four every search shares.
    """
    if heads is None:
        heads = [(l, h) for l in range(subject.n_layers) for h in range(subject.n_heads)]
    heads = [tuple(x) for x in heads]
    subject.check_heads(heads)
    kw = dict(score_kw or {})
    trials = _Trials(subject, examples, objective, kw, progress, scorer)
    with trials.progress_bar(len(heads) + 2, "act search"):
        base, *search = trials.run_many(
            [("baseline", [], {"phase": "baseline", "layer": None, "head": None})]
            + [(f"act:L{l}H{h}", [CalibrateSinks(layer=l, head=h, beta=beta, theta=theta, alpha=alpha)],
                {"phase": "search", "layer": l, "head": h}) for l, h in heads])
        better = sorted((r for r in search if r["objective"] > base["objective"]),
                        key=lambda r: (-r["objective"], -r["tiebreak"], r["layer"], r["head"]))
        if max_heads is not None:
            better = better[:max_heads]
        kept = sorted((r["layer"], r["head"]) for r in better)
        by_layer: dict[int, list[int]] = {}
        for l, h in kept:
            by_layer.setdefault(l, []).append(h)
        edits = tuple(CalibrateSinks(layer=l, head=tuple(hs), beta=beta, theta=theta, alpha=alpha)
                      for l, hs in sorted(by_layer.items()))
        combined = trials.run("act:combined", list(edits), phase="combined", layer=None, head=None) if edits else None
    table = trials.table()
    table["kept"] = [(r.get("layer"), r.get("head")) in set(kept) and r.get("phase") == "search" for r in trials.rows]
    return Calibration("act", objective, edits,
                       {"kept_heads": [list(k) for k in kept], "beta": beta, "theta": theta, "alpha": alpha,
                        "n_searched": len(heads), "baseline_objective": base["objective"],
                        "baseline_accuracy": base["accuracy"],
                        "calibration_objective": combined["objective"] if combined else base["objective"],
                        "calibration_accuracy": combined["accuracy"] if combined else base["accuracy"]}, table)
