"""``analyze``: every pure analyzer on one Capture, gathered into an Atlas."""

from __future__ import annotations

from lens.analyzers._common import missing, seq_len_param
from lens.analyzers._findings import Atlas, Findings
from lens.analyzers._registry import ANALYZERS, requested
from lens.analyzers._stream import analyze_shards
from lens.record import Capture

__all__ = ["ANALYZERS", "analyze"]


def analyze(capture: Capture, *, only: list[str] | None = None, **params: dict) -> Atlas:
    """Run every analyzer whose statistics the capture holds; return an Atlas.

    only: names from ``ANALYZERS`` to run (default all). Keyword arguments named after an
    analyzer pass it parameters, e.g. ``analyze(cap, sinks={"eps": 0.5}, dormant_heads={"tau": 0.6})``.
    Analyzers whose statistics are missing are listed in ``atlas.skipped`` with the reason.
    Pure: reads the Capture only, never a model.

    A ``lens.Store`` is analyzed shard by shard, one in memory at a time, with the same
    result as one Capture of all its inputs (``lens.analyzers._stream``).
    """
    if not isinstance(capture, Capture) and hasattr(capture, "shards"):  # a lens.Store (a layer above)
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
            "n_layers": capture.n_layers, "blocks": list(capture.blocks), "n_blocks": capture.n_blocks,
            "n_heads": capture.n_heads, "edits": capture.meta.get("edits", [])}
    return Atlas(found, skipped, meta)
