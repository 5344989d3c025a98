"""The fast path when no statistic is asked for: torch's fused attention kernel.

The CPU flash kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) returns
the log-sum-exp besides the output and reads grouped k/v heads directly. It aligns a
causal mask top-left, so when queries are the last positions of a longer key
sequence, or a window, mask or key_bias applies, we call it per query block with an
explicit additive mask over only the keys that block can see (memory linear in
key_pos). Other devices, a torch without that kernel, or value heads of another size
than the query/key heads (the kernel refuses d_v != d_head) take the chunked backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _chunked
from ._types import AttentionResult, Call, apply_head_edits
from ._stats import pool_factor

__all__ = ["run"]

#: Bytes of additive mask built per query block.
MASK_BUDGET_BYTES = 16 * 2**20


def _cpu_flash():
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def run(call: Call) -> AttentionResult:
    """Output and lse of the (edited) attention with no statistics."""
    kernel = _cpu_flash()
    if call.q.device.type != "cpu" or kernel is None or call.v.shape[-1] != call.q.shape[-1]:
        return _chunked.run(call)
    geo = call.geo
    b, h, nq, nk = geo.batch, geo.heads, geo.query_pos, geo.key_pos
    q, k, v = call.q.float(), call.k.float(), call.v.float()
    meta = {"pool_factor": pool_factor(nq, nk, call.options.pool_max), "fast_path": True}

    simple = geo.mask is None and geo.window is None and call.key_bias is None
    if simple and (not geo.causal or nq == nk):
        out, lse = kernel(q, k, v, 0.0, geo.causal, scale=call.scale)
        out, lse = _with_sinks(out, lse, call)
        out = apply_head_edits(out, call)
        return AttentionResult(output=out.to(call.q.dtype), lse=lse, stats={}, meta=meta)

    out = q.new_empty(b, h, nq, v.shape[-1])
    lse = q.new_empty(b, h, nq)
    bq = call.block_size or max(1, min(nq, MASK_BUDGET_BYTES // (4 * nk * (b if _per_batch(call) else 1))))
    for a in range(0, nq, bq):
        c = min(nq, a + bq)
        lo, hi = geo.key_range(a, c)
        if hi <= lo:  # the whole block sees nothing
            out[:, :, a:c] = 0.0
            lse[:, :, a:c] = float("-inf")
            continue
        add = _additive_mask(call, a, c, lo, hi)
        o, l = kernel(q[:, :, a:c], k[:, :, lo:hi], v[:, :, lo:hi], 0.0, False,
                      attn_mask=add, scale=call.scale)
        if add is not None:
            empty = ~torch.isfinite(add).any(-1).expand(b, h, c - a)  # rows that see no key
            o = o.masked_fill(empty[..., None], 0.0)
            l = l.masked_fill(empty, float("-inf"))
        out[:, :, a:c] = o
        lse[:, :, a:c] = l
    out, lse = _with_sinks(out, lse, call)
    out = apply_head_edits(out, call)
    return AttentionResult(output=out.to(call.q.dtype), lse=lse, stats={}, meta=meta)


def _with_sinks(out: Tensor, lse: Tensor, call: Call) -> tuple[Tensor, Tensor]:
    """Fold learned sink logits in after the fact: with L' = logaddexp(L, sink) every
    probability shrinks by exp(L - L'), so the output does too (rows with no key stay 0, -inf)."""
    if call.sinks is None:
        return out, lse
    full = torch.logaddexp(lse, call.sinks[None, :, None].expand_as(lse))
    shrink = torch.exp(lse - full).nan_to_num_(0.0)  # -inf - -inf on rows with no key
    full = torch.where(torch.isfinite(lse), full, lse)
    return out * shrink[..., None], full


def _per_batch(call: Call) -> bool:
    return (call.geo.mask is not None and call.geo.mask.shape[0] > 1) or (
        call.key_bias is not None and call.key_bias.shape[0] > 1)


def _additive_mask(call: Call, a: int, c: int, lo: int, hi: int) -> Tensor | None:
    """0 / -inf mask plus key_bias for rows [a, c) x keys [lo, hi), [b|1, h|1, bq, bk]."""
    vis = call.geo.visibility(a, c, lo, hi, call.q.device)
    add = None
    if vis is not None:
        add = torch.zeros(vis.shape, dtype=torch.float32, device=vis.device).masked_fill_(~vis, float("-inf"))
    if call.key_bias is not None:
        bias = call.key_bias[:, :, None, lo:hi]
        bias = bias.masked_fill(bias <= -1e30, float("-inf"))
        add = bias if add is None else add + bias
    if add is None:
        return None
    return add.expand(*add.shape[:2], c - a, hi - lo)
