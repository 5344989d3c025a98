"""``analyze`` over many shards (a ``lens.Store``), one Capture in memory at a time.

Each analyzer here is split in two: a *partial* that reads one shard's Capture and returns
sums, counts and rows, and a *finish* that turns (merged) partials into the Findings. The
in-process analyzer is ``finish(partial(capture))``, so a store's atlas and the atlas of the
same inputs captured in one process run the same code; only the order of floating-point
sums differs (the shards' sums are added), about 1e-15 relative. How each merges:

==================  =========================================================================
sinks               per-head sums of alpha and of 1[alpha > eps] over inputs, and the count: exact
hidden_sinks        rows per (input, layer, head, sink): concatenated, inputs offset; summary from the rows
dormant_heads       per-head sum of s(x), count of inputs where it is defined, count dormant: exact
value_drains        per-head sum of the per-input ratio, and the count: exact
residual_peaks      per-layer sum of the per-input ratio, and the count: exact
massive_activations the per-input top entry and median of each layer (one number each per input and
                    layer: the median of medians needs them all), per-layer hit counts, sets of dims
                    and positions, token counters: exact. ``per_input=True``: rows concatenated
entropy             per-head sums over real queries i >= 1, and their count: exact
head_types          per-head sums of the per-input scores where defined, and the counts: exact
head_distance       per-head sums of distance over real queries i >= 1, and their count: exact
preplan_anchor      two passes: D^h over every shard picks the local/global head sets (as in one
                    process), then each shard's token rows with those sets are concatenated and the
                    anchor/coupling/chance counts added: exact
==================  =========================================================================

No analyzer is approximated; a parameter that cannot be streamed (per-capture ``queries``
masks for ``dormant_heads``) is refused by name. Memory: one shard's Capture at a time, plus
what the Findings themselves hold; those grow with the number of inputs where the Findings
have a row per input or token (``hidden_sinks``, ``preplan_anchor``), and ``massive_activations``
keeps four numbers per (input, layer).
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import pandas as pd
import torch

from lens.record import Capture
from lens.analyzers._common import missing, window_param
from lens.analyzers._dormant import dormant_finish, dormant_partial
from lens.analyzers._entropy import entropy_finish, entropy_partial
from lens.analyzers._extreme import (
    drains_finish,
    drains_partial,
    massive_activations,
    massive_finish,
    massive_partial,
    peaks_finish,
    peaks_partial,
)
from lens.analyzers._findings import Atlas, Findings
from lens.analyzers._registry import ANALYZERS, requested
from lens.analyzers._heads import head_types_finish, head_types_partial
from lens.analyzers._reasoning import (
    _check_heads,
    _head_sets,
    distance_finish,
    distance_mean,
    distance_partial,
    preplan_finish,
    preplan_rows,
)
from lens.analyzers._sinks import hidden_finish, hidden_sinks, sink_finish, sink_partial

__all__ = ["analyze_shards", "merge"]

Shards = Callable[[], Iterable[tuple[int, Capture]]]


def merge(a, b):
    """Add two partials: tensors and numbers add, lists concatenate, sets unite, Counters and dicts merge by key."""
    if isinstance(a, torch.Tensor):
        return a + b
    if isinstance(a, Counter):
        a.update(b)  # keeps first-seen order, as one Counter over all inputs would
        return a
    if isinstance(a, dict):
        return {k: merge(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, list):
        a.extend(b)
        return a
    if isinstance(a, set):
        return a | b
    return a + b


def _defaults(name: str, given: dict) -> dict:
    fn = ANALYZERS[name][0]
    out = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = set(given) - set(out)
    if unknown:
        raise TypeError(f"{name} takes no parameter {sorted(unknown)}; it takes {sorted(out)}")
    out.update(given)
    return out


def _offset_frame(f: Findings, offset: int) -> pd.DataFrame:
    frame = f.frame.copy()
    frame.attrs = {}
    frame["input"] = frame["input"] + offset
    return frame


def _partial(name: str, cap: Capture, offset: int, p: dict):
    if name == "sinks":
        return sink_partial(cap, k=p["k"], eps=p["eps"])
    if name == "hidden_sinks":
        return {"frames": [_offset_frame(hidden_sinks(cap, **p), offset)],
                "n_pairs": cap.n_inputs * cap.n_layers * cap.n_heads}
    if name == "dormant_heads":
        return dormant_partial(cap, tau=p["tau"])
    if name == "value_drains":
        return drains_partial(cap)
    if name == "residual_peaks":
        return peaks_partial(cap)
    if name == "massive_activations":
        if p["per_input"]:
            f = massive_activations(cap, **p)
            return {"frames": [_offset_frame(f, offset)], "n_massive": f.summary["n_massive"]}
        return massive_partial(cap, min_abs=p["min_abs"], min_ratio=p["min_ratio"])
    if name == "entropy":
        return entropy_partial(cap)
    if name == "head_types":
        return head_types_partial(cap, exclude_bos=p["exclude_bos"], exclude_diag=p["exclude_diag"])
    if name in ("head_distance", "preplan_anchor"):
        return distance_partial(cap)  # preplan_anchor: pass 1 (head sets); its rows come in pass 2
    raise AssertionError(name)


def _finish(name: str, part, p: dict, T, L: tuple[int, ...], H: int, n_blocks: int) -> Findings:
    """One analyzer's Findings from its merged partials; ``L``: the blocks with attention, ``n_blocks``: all."""
    if name == "sinks":
        return sink_finish(part, k=p["k"], eps=p["eps"], T=T, layers=L, n_heads=H)
    if name == "hidden_sinks":
        frame = pd.concat(part["frames"], ignore_index=True)
        params = {"theta": p["theta"], "scale": p["scale"], "min_queries": p["min_queries"], "T": T}
        return hidden_finish(frame, n_pairs=part["n_pairs"], params=params)
    if name == "dormant_heads":
        params = {"tau": p["tau"], "queries": "all i >= 1", "T": [T],
                  "loss_check": "not run (lens.experiments._model_checks.confirm_dormant)"}
        return dormant_finish(part, params=params, layers=L, n_heads=H)
    if name == "value_drains":
        return drains_finish(part, drain_below=p["drain_below"], T=T, layers=L, n_heads=H)
    if name == "residual_peaks":
        return peaks_finish(part, peak_above=p["peak_above"], T=T, n_layers=n_blocks)
    if name == "massive_activations":
        params = {"min_abs": p["min_abs"], "min_ratio": p["min_ratio"], "T": T}
        if p["per_input"]:
            return Findings("massive_activations", pd.concat(part["frames"], ignore_index=True), params,
                            level="entry", summary={"n_massive": part["n_massive"]})
        return massive_finish(part, params=params, n_layers=n_blocks)
    if name == "entropy":
        return entropy_finish(part, collapse_below=p["collapse_below"], T=T, layers=L, n_heads=H)
    if name == "head_types":
        return head_types_finish(part, exclude_bos=p["exclude_bos"], exclude_diag=p["exclude_diag"], T=T,
                                 layers=L, n_heads=H)
    if name == "head_distance":
        return distance_finish(part, local_frac=p["local_frac"], global_frac=p["global_frac"], T=T, layers=L,
                               n_heads=H)
    raise AssertionError(name)


def analyze_shards(shards: Shards, *, only: list[str] | None = None, **params: dict) -> Atlas:
    """``analyze`` over shards: ``shards()`` yields (offset of the first input, Capture) in input order,
    and is called twice when ``preplan_anchor`` runs (its head sets need D^h over every input first).
    Equal to ``analyze`` of one Capture holding every input (module docstring)."""
    names = requested(only, params)
    if "queries" in params.get("dormant_heads", {}):
        raise ValueError("dormant_heads: a queries mask per capture cannot be given for a store; "
                         "analyze its shards one by one (store.load_shard) to pass one")
    p = {n: _defaults(n, params.get(n, {})) for n in names}
    run: list[str] = []
    skipped: dict[str, str] = {}
    parts: dict = {}
    meta: dict = {}
    lo = hi = None
    n_inputs = 0
    it: Iterator = iter(shards())
    for offset, cap in it:
        if not meta:
            meta = {"model": cap.meta.get("model", "?"), "blocks": cap.blocks, "n_blocks": cap.n_blocks,
                    "n_layers": cap.n_layers, "n_heads": cap.n_heads,
                    "edits": cap.meta.get("edits", []), "window": window_param(cap)}
            for name in names:
                lacking = missing(cap, *ANALYZERS[name][1])
                if lacking:
                    skipped[name] = f"capture has no {', '.join(lacking)}"
                else:
                    run.append(name)
        if offset != n_inputs:
            raise ValueError(f"shards out of order: a shard starts at input {offset}, expected {n_inputs}")
        n_inputs += cap.n_inputs
        lo = min(int(cap.lengths.min()), lo if lo is not None else 10**18)
        hi = max(int(cap.lengths.max()), hi if hi is not None else -1)
        for name in run:
            part = _partial(name, cap, offset, p[name])
            parts[name] = part if name not in parts else merge(parts[name], part)
        del cap
    if not meta:
        raise ValueError("nothing to analyze: the store has no shards")
    T = lo if lo == hi else [lo, hi]
    L, H = meta["blocks"], meta["n_heads"]
    found = {name: _finish(name, parts[name], p[name], T, L, H, meta["n_blocks"])
             for name in run if name != "preplan_anchor"}
    if "preplan_anchor" in run:
        found["preplan_anchor"] = _preplan(shards, parts["preplan_anchor"], p["preplan_anchor"], T, L, H,
                                           meta["window"])
    found = {name: found[name] for name in run}  # the order of ANALYZERS, as in one process
    atlas_meta = {"model": meta["model"], "n_inputs": n_inputs, "T": T, "n_layers": len(L), "blocks": list(L),
                  "n_blocks": meta["n_blocks"], "n_heads": H, "edits": meta["edits"]}
    return Atlas(found, skipped, atlas_meta)


def _preplan(shards: Shards, dist: dict, p: dict, T, L: tuple[int, ...], H: int, window: int) -> Findings:
    local, glob = p["local_heads"], p["global_heads"]
    if local is None or glob is None:
        found_local, found_global = _head_sets(distance_mean(dist), p["local_frac"], p["global_frac"], L)
        local = found_local if local is None else local
        glob = found_global if glob is None else glob
    counts = None
    for offset, cap in shards():
        local_c = _check_heads(local, cap, "local_heads")
        glob_c = _check_heads(glob, cap, "global_heads")
        part = preplan_rows(cap, local_c, glob_c, anchor_frac=p["anchor_frac"], peak_std=p["peak_std"],
                            skip_first=p["skip_first"], offset=offset)
        counts = part if counts is None else merge(counts, part)
        del cap
    params = {"local_frac": p["local_frac"], "global_frac": p["global_frac"], "anchor_frac": p["anchor_frac"],
              "peak_std": p["peak_std"], "skip_first": p["skip_first"], "window": window, "T": T}
    return preplan_finish(counts, params=params, local_heads=local_c, global_heads=glob_c)
