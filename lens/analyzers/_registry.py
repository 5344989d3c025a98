"""The analyzers ``analyze`` runs, the statistics each reads, and the check of a requested list."""

from __future__ import annotations

from collections.abc import Callable

from lens.analyzers._dormant import dormant_heads
from lens.analyzers._entropy import entropy
from lens.analyzers._extreme import massive_activations, residual_peaks, value_drains
from lens.analyzers._findings import Findings
from lens.analyzers._heads import head_types
from lens.analyzers._reasoning import head_distance, preplan_anchor
from lens.analyzers._sinks import hidden_sinks, sink_rate

__all__ = ["ANALYZERS", "requested"]

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
