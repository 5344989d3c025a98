"""Who may attend to whom: causal offset, sliding window and the model's own mask.

One object answers the visibility question for every backend, for the whole matrix
(eager) or for one block of query rows and key columns (chunked, sdpa), so the
three cannot disagree about a mask. Positions are absolute: query row ``i`` sits at
``key_pos - query_pos + i`` (KV-cache decoding puts the queries last).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

__all__ = ["Geometry"]


@dataclass(frozen=True)
class Geometry:
    """Sizes and masking rules of one attention call.

    ``mask`` is the caller's boolean mask normalised to 4-D, each dimension either
    full or 1 (``[batch|1, head|1, query_pos|1, key_pos|1]``), True = may attend.
    """

    batch: int
    heads: int
    kv_heads: int
    query_pos: int
    key_pos: int
    causal: bool
    window: int | None
    mask: Bool[Tensor, "mb mh mq mk"] | None

    @property
    def offset(self) -> int:
        """Absolute position of query row 0."""
        return self.key_pos - self.query_pos

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads

    @property
    def mask_has_heads(self) -> bool:
        return self.mask is not None and self.mask.shape[1] > 1

    def key_range(self, a: int, c: int) -> tuple[int, int]:
        """Keys [lo, hi) that rows [a, c) may see under the causal and sliding rules.

        Keys outside it are invisible to every row of the block, so a blockwise
        backend never computes them: causal rows stop at their own position and a
        sliding window starts W - 1 before the first row.
        """
        lo, hi = 0, self.key_pos
        if self.causal:
            hi = min(self.key_pos, self.offset + c)
        if self.window is not None:
            lo = max(0, self.offset + a - self.window + 1)
        return lo, max(lo, hi)

    def rule_visibility(self, a: int, c: int, lo: int, hi: int, device: torch.device
                        ) -> Bool[Tensor, "block_q block_k"] | None:
        """Causal and sliding-window visibility of rows [a, c) x keys [lo, hi); None = all."""
        if not self.causal and self.window is None:
            return None
        qpos = torch.arange(self.offset + a, self.offset + c, device=device)[:, None]
        kpos = torch.arange(lo, hi, device=device)[None, :]
        vis = torch.ones(c - a, hi - lo, dtype=torch.bool, device=device)
        if self.causal:
            vis &= kpos <= qpos
        if self.window is not None:
            vis &= (qpos - kpos) < self.window
        return vis

    def mask_block(self, a: int, c: int, lo: int, hi: int) -> Bool[Tensor, "mb mh bq bk"] | None:
        """The caller's mask sliced to rows [a, c) and keys [lo, hi); size-1 dims stay 1."""
        if self.mask is None:
            return None
        m = self.mask
        if m.shape[2] > 1:
            m = m[:, :, a:c]
        if m.shape[3] > 1:
            m = m[:, :, :, lo:hi]
        return m

    def visibility(self, a: int, c: int, lo: int, hi: int, device: torch.device
                   ) -> Bool[Tensor, "vb vh block_q block_k"] | None:
        """Everything that may attend in rows [a, c) x keys [lo, hi), broadcastable to
        [batch, head, block_q, block_k]; None when nothing is masked."""
        rule = self.rule_visibility(a, c, lo, hi, device)
        user = self.mask_block(a, c, lo, hi)
        if user is None:
            return None if rule is None else rule[None, None]
        if rule is None:
            return user
        return user & rule

    def rule_counts(self, a: int, c: int, device: torch.device) -> Tensor:
        """Keys each row of [a, c) may see under the causal/sliding rules alone, fp32 [block_q]."""
        qpos = torch.arange(self.offset + a, self.offset + c, device=device)
        hi = (qpos + 1).clamp_max(self.key_pos) if self.causal else torch.full_like(qpos, self.key_pos)
        lo = (qpos - self.window + 1).clamp_min(0) if self.window is not None else torch.zeros_like(qpos)
        return (hi - lo).clamp_min(0).float()

    def rule_seen_counts(self, a: int, c: int, lo: int, hi: int, row_weight: Tensor | None, batch: int,
                         device: torch.device) -> Tensor:
        """For each key in [lo, hi): how many rows of [a, c) see it under the rules alone,
        each row counted with its weight (query_mask), fp32 [batch, hi - lo].

        Rows seeing key j form one contiguous run (causal: pos_i >= j; window:
        pos_i < j + W), so the count is a difference of suffix sums of the weights.
        """
        bq = c - a
        weight = torch.ones(batch, bq, device=device) if row_weight is None else row_weight
        suffix = torch.zeros(batch, bq + 1, device=device)
        suffix[:, :bq] = weight.flip(-1).cumsum(-1).flip(-1)  # suffix[r] = sum of weights of rows >= r
        kpos = torch.arange(lo, hi, device=device)
        first = (kpos - self.offset - a).clamp(0, bq) if self.causal else torch.zeros_like(kpos)
        stop = ((kpos + self.window - self.offset - a).clamp(0, bq) if self.window is not None
                else torch.full_like(kpos, bq))
        stop = torch.maximum(stop, first)
        return suffix[:, first] - suffix[:, stop]

    def masked_columns(self, a: int, c: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """Key ranges inside [lo, hi) where the causal/sliding rules hide some rows of [a, c).

        Outside these ranges every row of the block sees every key, so a blockwise
        backend masks only these narrow strips (width <= block rows), not the block.
        """
        strips = []
        if self.causal:  # row a sees keys <= offset + a; later keys are hidden from someone
            start = max(lo, self.offset + a + 1)
            if start < hi:
                strips.append((start, hi))
        if self.window is not None:  # the last row hides keys <= its position - W
            stop = min(hi, self.offset + c - self.window)
            if lo < stop:
                strips.append((lo, stop))
        return strips
