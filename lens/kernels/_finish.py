"""The one assembly of a streaming backend's accumulators into the statistics asked for.

The chunked and Triton backends accumulate differently (blocks of query rows on the
host, fused kernels on a GPU) but end with the same raw parts: per-row statistics,
column sums, visibility counts with a head dimension of 1 unless the caller's mask
has heads, top-k slots, the pooled map as block *sums*, the pattern. ``finish`` turns
those into ``AttentionResult.stats``, in the order asked for, the same way for both;
the eager reference reads each statistic straight off its definition instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from ._stats import STATS
from ._types import Call

__all__ = ["cell_counts", "finish", "normalised_entropy"]


def finish(call: Call, parts: Mapping[str, Tensor | None], pool_factor: int) -> dict[str, Tensor]:
    """The statistics of ``call.stats``, in that order, from a backend's ``parts`` (name -> tensor).

    ``parts["visible"]`` is [batch, 1 or head, key_pos] (the head dimension is dropped
    unless the mask has heads) and ``parts["pooled"]`` holds block sums, divided here by
    each block's cell count. Parts not asked for are ignored; a statistic asked for that
    the backend left out is a backend bug and raises.
    """
    geo = call.geo
    out: dict[str, Tensor] = {}
    for name in call.stats:
        value = parts.get(name)
        if value is None:
            raise RuntimeError(f"the backend computed no {name!r} although it was asked for")
        if name == "visible" and not geo.mask_has_heads:
            value = value[:, 0]
        elif STATS[name].kind == "pooled":
            value = value / cell_counts(geo.query_pos, geo.key_pos, pool_factor, value.shape[-2:], value.device)
        out[name] = value
    return out


def cell_counts(nq: int, nk: int, f: int, pooled_shape: tuple[int, int], device) -> Float[Tensor, "pool_q pool_k"]:
    """Number of (query, key) cells in each f x f pooling block (edge blocks have fewer)."""
    pq, pk = pooled_shape
    rows = torch.full((pq,), float(f), device=device)
    rows[-1] = nq - (pq - 1) * f
    cols = torch.full((pk,), float(f), device=device)
    cols[-1] = nk - (pk - 1) * f
    return rows[:, None] * cols[None, :]


def normalised_entropy(entropy: Float[Tensor, "..."], n_visible: Tensor) -> Float[Tensor, "..."]:
    """entropy / ln(n_visible), 0 where a row sees at most one key (``entropy_norm``)."""
    return torch.where(n_visible > 1, entropy / torch.log(n_visible.clamp_min(2.0)), 0.0)
