"""The reference backend: materialise the whole fp32 pattern, read each statistic off it.

Every statistic here is written the way ``lens.kernels._stats`` defines it, with no
streaming tricks, so that the chunked (and later Triton) backends have something
obviously right to be compared against. Memory is O(batch * head * query_pos *
key_pos): use it for short inputs and for tests.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ._finish import cell_counts
from ._stats import pattern_rows, pool_factor
from ._types import AttentionResult, Call, apply_head_edits

__all__ = ["run"]


def run(call: Call) -> AttentionResult:
    """Attention output, lse and the requested statistics from the full pattern.

    One function on purpose: the reference reads every statistic straight off its definition
    (``_stats``) from the same materialised pattern, top to bottom, with nothing to follow elsewhere."""
    geo, opt = call.geo, call.options
    b, h, nq, nk, g = geo.batch, geo.heads, geo.query_pos, geo.key_pos, geo.group
    dev = call.q.device
    q = call.q.float() * call.scale
    k = call.k.float().repeat_interleave(g, dim=1)  # head h reads kv head h // g
    v = call.v.float().repeat_interleave(g, dim=1)

    scores = q @ k.transpose(-1, -2)  # [b, h, q, k]
    if call.softcap is not None:  # Gemma-2: cap * tanh(s / cap), before masks and edits
        scores = call.softcap * torch.tanh(scores / call.softcap)
    visible = geo.visibility(0, nq, 0, nk, dev)
    if visible is None:
        visible = torch.ones(1, 1, nq, nk, dtype=torch.bool, device=dev)
    allowed = visible.expand(b, h, nq, nk)
    if call.key_bias is not None:
        bias = call.key_bias[:, :, None, :]
        scores = scores + bias.clamp_min(-1e30).masked_fill(bias <= -1e30, float("-inf"))
        allowed = allowed & (bias > -1e30)
    scores = scores.masked_fill(~allowed, float("-inf"))
    has_key = allowed.any(dim=-1)
    if call.sinks is None:
        lse = torch.logsumexp(scores, dim=-1)  # -inf on rows with no key
    else:  # the learned sink is one more logit in every row's denominator (no value)
        sink = call.sinks[None, :, None].expand(b, h, nq)
        lse = torch.logaddexp(torch.logsumexp(scores, dim=-1), sink).masked_fill(~has_key, float("-inf"))
    p = torch.where(allowed, torch.exp(scores - lse[..., None]), 0.0)

    out = apply_head_edits(p @ v, call)
    result = AttentionResult(output=out.to(call.q.dtype), lse=lse, stats={},
                             meta=_meta(call, nq, nk))
    if not call.stats:
        return result

    row_ok = has_key if call.query_mask is None else has_key & call.query_mask[:, None, :]
    w = row_ok.float()
    pw = p * w[..., None]  # invalid rows enter no statistic
    qpos = (geo.offset + torch.arange(nq, device=dev)).float()[:, None]  # absolute query positions
    kpos = torch.arange(nk, device=dev).float()[None, :]
    want, stats = set(call.stats), result.stats

    if "learned_sink_mass" in want:
        stats["learned_sink_mass"] = (torch.zeros_like(lse) if call.sinks is None
                                      else torch.where(row_ok, torch.exp(call.sinks[None, :, None] - lse), 0.0))
    if "sink_mass" in want:
        stats["sink_mass"] = pw[..., 0]
    if "sink_mass_k" in want:
        stats["sink_mass_k"] = pw[..., : opt.sink_k].sum(-1)
    if want & {"entropy", "entropy_norm"}:
        plogp = torch.where(pw > 0, pw * torch.log(pw), 0.0)
        entropy = -plogp.sum(-1)
        stats["entropy"] = entropy
        n_visible = visible.sum(-1).expand(b, h, nq).float()
        log_n = torch.log(n_visible.clamp_min(1.0))
        stats["entropy_norm"] = torch.where(n_visible > 1, entropy / log_n.clamp_min(1e-30), 0.0)
    if "received" in want:
        stats["received"] = pw.sum(-2)
    if "visible" in want:
        seen = visible.expand(b, -1, nq, nk).float()
        if call.query_mask is not None:
            seen = seen * call.query_mask[:, None, :, None]
        counts = seen.sum(-2)  # [b, 1 or h, k]
        stats["visible"] = counts.expand(b, h, nk).clone() if geo.mask_has_heads else counts[:, 0]
    if "distance" in want:
        stats["distance"] = (pw * (qpos - kpos)).sum(-1)
    if "waad" in want:
        stats["waad"] = (pw * (qpos - kpos).clamp_max(opt.window)).sum(-1)
    if want & {"topk_idx", "topk_val"}:
        stats["topk_idx"], stats["topk_val"] = _topk(scores, lse, row_ok, opt.topk)
    if "prev_token" in want:
        stats["prev_token"] = _at_key(pw, qpos - 1)
    if "diag_mass" in want:
        stats["diag_mass"] = _at_key(pw, qpos)
    if want & {"dup_token", "induction"}:
        tok = call.token_ids
        tok_q = tok[:, geo.offset:]  # token of each query row
        same = tok_q[:, :, None] == tok[:, None, :]  # tok_j == tok_i, [b, q, k]
        if "dup_token" in want:
            earlier = kpos < qpos
            stats["dup_token"] = (pw * (same & earlier)[:, None]).sum(-1)
        if "induction" in want:
            prev_same = torch.zeros_like(same)
            prev_same[..., 1:] = same[..., :-1]  # tok_{j-1} == tok_i
            reach = (kpos >= 1) & (kpos <= qpos)
            stats["induction"] = (pw * (prev_same & reach)[:, None]).sum(-1)
    if "pooled" in want:
        stats["pooled"] = _pool(pw, result.meta["pool_factor"])
    if "pattern" in want:
        heads = list(opt.pattern_heads) if opt.pattern_heads is not None else list(range(h))
        start, stop = pattern_rows(nq, opt)
        stats["pattern"] = pw[:, heads, start:stop].contiguous()
    picked = {name: stats[name] for name in call.stats}  # only what was asked, in that order (as ``finish``)
    stats.clear()
    stats.update(picked)
    return result


def _meta(call: Call, nq: int, nk: int) -> dict:
    opt = call.options
    return {"pool_factor": pool_factor(nq, nk, opt.pool_max), "topk": min(opt.topk, nk),
            "sink_k": opt.sink_k, "window": opt.window, "scale": call.scale}


def _topk(scores: Float[Tensor, "b h q k"], lse: Float[Tensor, "b h q"], row_ok: Bool[Tensor, "b h q"],
          topk: int) -> tuple[Tensor, Tensor]:
    """Top keys by probability (= by score; softmax is monotone), -1 / 0 past the visible keys."""
    kk = min(topk, scores.shape[-1])
    best, idx = torch.topk(scores, kk, dim=-1)
    ok = (best > float("-inf")) & row_ok[..., None]
    val = torch.where(ok, torch.exp(best - lse[..., None]), 0.0)
    return idx.masked_fill(~ok, -1), val


def _at_key(p: Float[Tensor, "b h q k"], key: Float[Tensor, "q 1"]) -> Float[Tensor, "b h q"]:
    """p[..., i, key[i]] with 0 where key[i] is outside [0, key_pos)."""
    nk = p.shape[-1]
    key = key.long()[:, 0]
    inside = (key >= 0) & (key < nk)
    picked = p.gather(-1, key.clamp(0, nk - 1).expand(*p.shape[:-1])[..., None])[..., 0]
    return picked * inside


def _pool(p: Float[Tensor, "b h q k"], f: int) -> Float[Tensor, "b h pq pk"]:
    """Mean of p over f x f blocks; edge blocks are averaged over the cells they have."""
    b, h, nq, nk = p.shape
    pq, pk = -(-nq // f), -(-nk // f)
    padded = torch.zeros(b, h, pq * f, pk * f, dtype=p.dtype, device=p.device)
    padded[:, :, :nq, :nk] = p
    sums = padded.view(b, h, pq, f, pk, f).sum(dim=(3, 5))
    return sums / cell_counts(nq, nk, f, (pq, pk), p.device)
