"""``analyze``: every pure analyzer on one Capture, gathered into an Atlas."""

from __future__ import annotations

from collections.abc import Callable

from lens._capture_data import Capture
from lens.analyzers._common import missing, seq_len_param
from lens.analyzers._dormant import dormant_heads
from lens.analyzers._entropy import entropy
from lens.analyzers._extreme import massive_activations, residual_peaks, value_drains
from lens.analyzers._findings import Atlas, Findings
from lens.analyzers._heads import head_types
from lens.analyzers._reasoning import head_distance, preplan_anchor
from lens.analyzers._sinks import hidden_sinks, sink_rate

__all__ = ["ANALYZERS", "analyze"]

# name -> (function, statistics it reads). Order = order in the summary.
ANALYZERS: dict[str, tuple[Callable[..., Findings], tuple[str, ...]]] = {
    "sinks": (sink_rate, ("received", "visible")),
    "hidden_sinks": (hidden_sinks, ("received", "visible")),
    "dormant_heads": (dormant_heads, ("sink_mass",)),
    "value_drains": (value_drains, ("value_norm",)),
    "residual_peaks": (residual_peaks, ("resid_norm",)),
    "massive_activations": (massive_activations, ("massive_val", "massive_pos", "massive_dim", "massive_median")),
    "entropy": (entropy, ("entropy", "entropy_norm")),
    "head_types": (head_types, ("prev_token", "dup_token", "induction")),
    "head_distance": (head_distance, ("distance",)),
    "preplan_anchor": (preplan_anchor, ("waad", "received", "diag_mass", "distance")),
}


def requested(only: list[str] | None, params: dict) -> list[str]:
    """The analyzers to run, in ``ANALYZERS`` order when ``only`` is None; unknown names raise."""
    unknown = set(params) - set(ANALYZERS)
    if unknown:
        raise TypeError(f"no analyzer named {sorted(unknown)}; known: {list(ANALYZERS)}")
    names = list(ANALYZERS) if only is None else list(only)
    bad = [n for n in names if n not in ANALYZERS]
    if bad:
        raise ValueError(f"no analyzer named {bad}; known: {list(ANALYZERS)}")
    return names


def analyze(capture: Capture, *, only: list[str] | None = None, **params: dict) -> Atlas:
    """Run every analyzer whose statistics the capture holds; return an Atlas.

    only: names from ``ANALYZERS`` to run (default all). Keyword arguments named after an
    analyzer pass it parameters, e.g. ``analyze(cap, sinks={"eps": 0.5}, dormant_heads={"tau": 0.6})``.
    Analyzers whose statistics are missing are listed in ``atlas.skipped`` with the reason.
    Pure: reads the Capture only, never a model.

    A ``lens.Store`` is analyzed shard by shard, one in memory at a time, with the same
    result as one Capture of all its inputs (``lens.analyzers._stream``).
    """
    from lens._store import Store

    if isinstance(capture, Store):
        from lens.analyzers._stream import analyze_shards

        return analyze_shards(capture.shards, only=only, **params)
    if not isinstance(capture, Capture):
        raise TypeError(f"analyze takes a lens.Capture or a lens.Store, got {type(capture).__name__}")
    names = requested(only, params)
    found: dict[str, Findings] = {}
    skipped: dict[str, str] = {}
    for name in names:
        fn, reads = ANALYZERS[name]
        lacking = missing(capture, *reads)
        if lacking:
            skipped[name] = f"capture has no {', '.join(lacking)}"
            continue
        found[name] = fn(capture, **params.get(name, {}))
    meta = {"model": capture.meta.get("model", "?"), "n_inputs": capture.n_inputs, "T": seq_len_param(capture),
            "n_layers": capture.n_layers, "n_heads": capture.n_heads, "edits": capture.meta.get("edits", [])}
    return Atlas(found, skipped, meta)
