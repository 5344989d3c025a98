"""The blockwise backend: exact statistics with memory linear in key_pos, pure torch.

Query rows are processed in blocks; each block scores only the keys it can see
(causal rows stop at their own position, a sliding window starts W - 1 before the
first row) and holds its probabilities ``p`` for all heads at once, [batch, head,
block_q, visible_keys]. The output ``p @ v`` and every statistic come from that same
``p`` (one pass: no second kernel recomputing scores), so chunked and eager differ
only by rounding.

Cost model: on a CPU each elementwise pass over a score block costs about as much
as a slice of the q.k matmul, so the block body makes as few passes as it can:
  * masks touch only the strips where the causal/sliding rules cut the block;
  * ``torch.softmax`` makes p in one fused pass; the row max (and where it is) is read
    off the top-k, and ``ln l = -ln p[argmax]``, so the lse costs no pass;
  * the output matmul keeps v's own width: with d = 64, two extra columns (to sum p j
    for ``distance`` alongside) made it 16-19% slower, more than the matvec they save;
  * entropy is ``ln l - sum_j p (s - m)``: one dot product of p with the scores;
  * soft-capping is one in-place tanh pass over the scores; a learned sink logit scales
    the block's p by ``sigmoid(L - sink)`` after the softmax (one pass, only when present);
  * one reshape-sum gives the pooled map's row-group sums and, summed over the groups,
    ``received``; one batched matmul gives both token masses; ``waad``/``prev_token``/
    ``diag_mass`` read a diagonal band of width W.
Blocks are sized to a cache-friendly budget (``SCORE_BUDGET_BYTES``), not to fill
memory: small blocks stay in cache between the passes. Peak extra memory is about
three blocks (scores, p, one temporary) plus the statistics themselves.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from ._types import AttentionResult, Call, apply_head_edits
from ._chunked_stats import BlockStats
from ._stats import pool_factor

__all__ = ["run"]

#: Stand-in for -inf in scores: finite, so 0 * NEG = 0 in the entropy dot product.
NEG = -1e30
#: fp32 score bytes per block [batch, head, block_q, keys] when block_size is not given.
SCORE_BUDGET_BYTES = 4 * 2**20
#: Rows per block. At least 64 even when the budget asks for fewer (long rows): the two
#: matmuls of a block run at about half speed with fewer rows (one SmolLM2 layer at 8K,
#: 2 threads: 3.4 s with 14 rows per block, 2.7 s with 64).
MIN_BLOCK_Q, MAX_BLOCK_Q = 64, 1024
#: Rows of at least TOPK_MIN_KEYS keys take the two-stage top-k over TOPK_CHUNKS
#: strided chunks; shorter rows use torch.topk directly (its cost is mostly per row).
TOPK_CHUNKS, TOPK_MIN_KEYS = 8, 4096


def run(call: Call) -> AttentionResult:
    """Attention output, lse and the requested statistics, one query block at a time."""
    geo, opt = call.geo, call.options
    b, h, kv, g, nq, nk = geo.batch, geo.heads, geo.kv_heads, geo.group, geo.query_pos, geo.key_pos
    dev = call.q.device
    q = (call.q.float() * call.scale).reshape(b, kv, g, nq, call.q.shape[-1])
    k, v = call.k.float(), call.v.float()
    dv = v.shape[-1]
    bias = None if call.key_bias is None else call.key_bias.clamp_min(NEG)
    sinks = None if call.sinks is None else call.sinks[None, :, None]  # [1, h, 1]
    f = pool_factor(nq, nk, opt.pool_max)
    stats = BlockStats(call, f)
    out = q.new_zeros(b, h, nq, dv)
    lse = q.new_full((b, h, nq), float("-inf"))
    align = f if stats.needs_pool_alignment else 1

    for a, c in _blocks(call, align):
        lo, hi = geo.key_range(a, c)
        if hi <= lo:  # no row of the block sees a key: output 0, lse -inf, no statistic
            continue
        lo, hi = lo - lo % align, min(nk, -(-hi // align) * align)
        bq, nkb = c - a, hi - lo
        qb = q[:, :, :, a:c].reshape(b, kv, g * bq, -1)
        s = torch.matmul(qb, k[:, :, lo:hi].transpose(-1, -2)).view(b, h, bq, nkb)
        if call.softcap is not None:  # Gemma-2 soft-capping, before masks and edits
            s.div_(call.softcap).tanh_().mul_(call.softcap)
        vis = geo.visibility(a, c, lo, hi, dev) if geo.mask is not None else None
        if vis is not None:
            s.masked_fill_(~vis, NEG)
        else:
            for c0, c1 in geo.masked_columns(a, c, lo, hi):
                s[..., c0 - lo:c1 - lo].masked_fill_(~geo.rule_visibility(a, c, c0, c1, dev), NEG)
        if bias is not None:
            s.add_(bias[:, :, None, lo:hi])

        # The row max and where it is: from the top-k when asked, else one max pass.
        top = _topk_scores(s, min(stats.topk, nkb)) if stats.topk_wanted else None
        if top is not None:
            m, arg = top[0][..., 0], top[1][..., :1]
        else:
            m, arg = s.max(-1, keepdim=True)
            m = m.squeeze(-1)
        has_key = m > NEG / 2
        p = torch.softmax(s, dim=-1)  # one fused pass; rows with no key come out uniform, dropped below
        # ln l = -ln p[argmax] (p at the max is exp(m - L)), so L = m + ln l needs no extra pass.
        ln_l = -torch.log(p.gather(-1, arg).squeeze(-1))
        mass = learned = None
        if sinks is not None:
            # A learned sink adds exp(sink) to the denominator: with L' = logaddexp(L, sink)
            # every real-key probability shrinks by exp(L - L') = sigmoid(L - sink).
            gap = (m + ln_l) - sinks
            mass, learned = torch.sigmoid(gap), torch.sigmoid(-gap)
            p.mul_(mass[..., None])
            ln_l = ln_l + torch.nn.functional.softplus(-gap)  # L' - m
        lse[:, :, a:c] = (m + ln_l).masked_fill_(~has_key, float("-inf"))

        o = torch.matmul(p.view(b, kv, g * bq, nkb), v[:, :, lo:hi]).view(b, h, bq, dv)
        out[:, :, a:c] = o * has_key[..., None]
        if stats.want:
            if top is not None:
                top = (top[0] - m[..., None], top[1])  # centred: p = exp(val - ln l)
            stats.add_block(a, c, lo, p, s, m, ln_l, has_key, top, vis, mass=mass, learned=learned)

    out = apply_head_edits(out, call)
    return AttentionResult(output=out.to(call.q.dtype), lse=lse, stats=stats.finish(),
                           meta={"pool_factor": f, "topk": min(opt.topk, nk), "sink_k": opt.sink_k,
                                 "window": opt.window, "scale": call.scale})


def _blocks(call: Call, align: int):
    """Query blocks [a, c): fixed ``block_size`` or sized to the score budget.

    With the budget, a block takes as many rows as keep block_q * visible_keys under
    it (causal blocks early in the sequence see few keys and so take many rows), and
    a multiple of ``align`` rows so that pooling groups do not straddle blocks.
    """
    geo, nq = call.geo, call.geo.query_pos
    if call.block_size is not None:
        yield from ((a, min(nq, a + call.block_size)) for a in range(0, nq, call.block_size))
        return
    budget = max(1, SCORE_BUDGET_BYTES // (4 * geo.batch * geo.heads))
    a = 0
    while a < nq:
        lo, hi = geo.key_range(a, a + 1)
        width = hi - lo  # keys of the first row; causal blocks gain one key per row
        if geo.causal or geo.window is not None:
            rows = int((-width + math.sqrt(width * width + 4 * budget)) / 2)
        else:
            rows = budget // max(width, 1)
        rows = max(MIN_BLOCK_Q, min(MAX_BLOCK_Q, rows))
        rows = max(align, rows - rows % align)  # whole pooling groups per block
        yield a, min(nq, a + rows)
        a += rows


def _topk_scores(s: Float[Tensor, "b h q k"], kk: int) -> tuple[Tensor, Tensor]:
    """Exact top-kk of each row (values best first, column indices), in two stages.

    Split the row into C = n // TOPK_CHUNKS strided chunks {r, r + C, r + 2C, ...}.
    The kk largest entries lie in the kk chunks with the largest maxima (an entry
    outside them has kk chunk maxima, kk distinct entries, at least as large), so
    the full top-k only runs over kk * TOPK_CHUNKS candidates (plus the < TOPK_CHUNKS
    tail columns). Strided chunks keep the chunk-max reduction vectorised.
    """
    n = s.shape[-1]
    c = TOPK_CHUNKS
    width = n // c
    if n < TOPK_MIN_KEYS or width < 2 * kk:  # short rows, or a top-k too wide for chunks to prune
        return torch.topk(s, kk, dim=-1)
    chunk_max = s[..., : c * width].unflatten(-1, (c, width)).amax(-2)  # [..., width]
    best = torch.topk(chunk_max, kk, dim=-1).indices
    cols = (best[..., None] + width * torch.arange(c, device=s.device)).flatten(-2)
    if n > c * width:  # tail columns are always candidates
        tail = torch.arange(c * width, n, device=s.device).expand(*cols.shape[:-1], -1)
        cols = torch.cat([cols, tail], dim=-1)
    val, pick = torch.topk(s.gather(-1, cols), kk, dim=-1)
    return val, cols.gather(-1, pick)
