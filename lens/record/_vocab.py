"""What a Capture's ``stats`` may hold: the kernels' registry stacked over layers, and what a capture adds.

``lens.kernels.STATS`` is the one registry of attention statistics (kind, axes, dtype,
fill). A capture stacks each one over the attention layers (``layer`` after ``batch``)
and records a few things beside attention, described here with the same ``Stat``
record: value norms per key, the residual stream's norms and massive activations per
decoder block (axis ``block``: every block, where attention statistics have one entry
per attention layer; they differ in hybrid models) and each layer's pool factor. The
Capture's shape checks, its padding fills, the memory estimate and the dashboard's
cut of one input are read off ``CAPTURE_STATS``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lens.kernels import STATS, Stat

__all__ = ["ASKABLE_STATS", "CAPTURE_STATS", "fill_of"]


def _layered(s: Stat) -> Stat:
    return replace(s, axes=s.axes.replace("batch", "batch layer", 1))


#: Recorded by the capture itself (controlled by ``value_norm``, ``resid_norm``, ``massive``; not by ``stats``).
_OWN = (
    Stat("value_norm", "key", "batch layer head key_pos", default=False),
    Stat("resid_norm", "position", "batch block pos", default=False),
    Stat("massive_val", "summary", "batch block top3", default=False),
    Stat("massive_pos", "summary", "batch block top3", dtype=torch.int64, default=False),
    Stat("massive_dim", "summary", "batch block top3", dtype=torch.int64, default=False),
    Stat("massive_median", "summary", "batch block", default=False),
    Stat("pool_factor", "summary", "batch layer", dtype=torch.int64, default=False),
)

#: Every name a Capture's ``stats`` may hold, with its shape in a Capture (full patterns live
#: apart, in ``Capture.patterns``).
CAPTURE_STATS: dict[str, Stat] = {**{n: _layered(s) for n, s in STATS.items() if s.kind != "pattern"},
                                  **{s.name: s for s in _OWN}}

#: What ``lens.capture(stats=...)`` may ask for: every attention statistic but the full pattern,
#: which is asked for by head with ``patterns=``.
ASKABLE_STATS: tuple[str, ...] = tuple(n for n, s in STATS.items() if s.kind != "pattern")


def fill_of(name: str) -> float:
    """The padding value of a statistic when batches of different widths are joined (0 if unknown)."""
    stat = CAPTURE_STATS.get(name)
    return 0 if stat is None else stat.fill
