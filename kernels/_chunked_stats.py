"""Statistics of the chunked backend, accumulated one query block at a time.

Each block arrives as unnormalised probabilities ``e = exp(s - m)`` with ``inv_l =
1 / sum e`` per row, so ``p = e * inv_l``. Every statistic is linear in p except
entropy, so each is computed from e with the cheapest reduction and scaled per row
afterwards; column statistics fold the row scale into the weights of a matmul.
Definitions are in ``kernels._stats``; the eager backend is the reference.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ._api import Call
from ._stats import pattern_rows

__all__ = ["BlockStats"]

#: Scores at or below this are masked (the chunked backend masks with -1e30).
MASKED = -5e29

#: Per-row statistics that are sums of p over chosen keys (scaled by 1 / l per row).
_LINEAR_ROWS = ("sink_mass", "sink_mass_k", "prev_token", "diag_mass", "dup_token", "induction")
_ROW_STATS = _LINEAR_ROWS + ("entropy", "entropy_norm", "distance", "waad")


class BlockStats:
    """Output tensors of the statistics, filled block by block (local to one call)."""

    def __init__(self, call: Call, f: int):
        geo, opt = call.geo, call.options
        b, h, nq, nk = geo.batch, geo.heads, geo.query_pos, geo.key_pos
        self.call, self.geo, self.opt, self.f = call, geo, opt, f
        self.want = set(call.stats)
        self.topk_wanted = bool(self.want & {"topk_idx", "topk_val"})
        self.topk = min(opt.topk, nk)
        self.needs_entropy = bool(self.want & {"entropy", "entropy_norm"})
        self.needs_pool_alignment = "pooled" in self.want
        dev = call.q.device

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.float32, device=dev)

        self.rows = {n: zeros(b, h, nq) for n in _ROW_STATS if n in self.want}
        self.received = zeros(b, h, nk) if "received" in self.want else None
        self.visible = zeros(b, h if geo.mask_has_heads else 1, nk) if "visible" in self.want else None
        if self.topk_wanted:
            self.topk_idx = torch.full((b, h, nq, self.topk), -1, dtype=torch.long, device=dev)
            self.topk_val = zeros(b, h, nq, self.topk)
        if "pooled" in self.want:
            self.pooled = zeros(b, h, -(-nq // f), -(-nk // f))
        if "pattern" in self.want:
            self.heads = list(opt.pattern_heads) if opt.pattern_heads is not None else list(range(h))
            self.prow = pattern_rows(nq, opt)
            self.pattern = zeros(b, len(self.heads), self.prow[1] - self.prow[0], nk)

    def add_block(self, a: int, c: int, lo: int, e: Float[Tensor, "b h bq bk"], inv_l: Float[Tensor, "b h bq"],
                  l: Float[Tensor, "b h bq"], e_dot_t: Tensor | None, has_key: Tensor,
                  top: tuple[Tensor, Tensor] | None, vis: Tensor | None) -> None:
        """Fold rows [a, c) x keys [lo, lo + bk) into every statistic.

        e_dot_t: sum_j e (s - m) per row (entropy); top: (centred top scores s - m,
        block columns); vis: the combined mask of the block when the caller gave one.
        """
        geo, opt, want, call = self.geo, self.opt, self.want, self.call
        b, h, bq, nkb = e.shape
        dev = e.device
        ok = has_key if call.query_mask is None else has_key & call.query_mask[:, None, a:c]
        w = ok.to(e.dtype)  # valid rows
        r = w * inv_l  # valid rows, normalised: p = e * inv_l
        qpos = torch.arange(geo.offset + a, geo.offset + c, device=dev)
        lin, rows = {}, {}  # lin: sums of e (scaled by r below); rows: final per-row values

        if "sink_mass" in want and lo == 0:
            lin["sink_mass"] = e[..., 0]
        if "sink_mass_k" in want and lo < opt.sink_k:
            lin["sink_mass_k"] = e[..., : opt.sink_k - lo].sum(-1)
        if self.needs_entropy:
            entropy = torch.log(l) - e_dot_t * inv_l  # H = L - sum_j p s, centred at the row max
            if "entropy" in want:
                rows["entropy"] = entropy * w
            if "entropy_norm" in want:
                n_vis = geo.rule_counts(a, c, dev) if vis is None else vis.sum(-1).to(e.dtype)
                rows["entropy_norm"] = torch.where(n_vis > 1, entropy / torch.log(n_vis.clamp_min(2.0)), 0.0) * w
        if "distance" in want:  # sum_j p (pos_i - j) = (pos_i - lo) - p @ (j - lo)
            rel = torch.arange(nkb, device=dev, dtype=e.dtype)[:, None]
            rows["distance"] = ((qpos - lo).to(e.dtype) - torch.matmul(e, rel)[..., 0] * inv_l) * w
        diag = None
        if want & {"waad", "prev_token", "diag_mass"} or ("dup_token" in want and geo.causal):
            diag = self._band(lin, rows, e, inv_l, w, qpos, lo)
        if want & {"dup_token", "induction"}:
            self._token_masses(lin, e, qpos, lo, lo + nkb, diag)
        for name, value in lin.items():
            self.rows[name][:, :, a:c] = value * r
        for name, value in rows.items():
            self.rows[name][:, :, a:c] = value

        if self.received is not None:
            self.received[:, :, lo:lo + nkb] += torch.matmul(r[:, :, None, :], e)[:, :, 0]
        if self.visible is not None:
            qm = None if call.query_mask is None else call.query_mask[:, a:c].to(e.dtype)
            if vis is None:  # rules only: count rows in closed form, no [bq, nkb] mask
                self.visible[:, 0, lo:lo + nkb] += geo.rule_seen_counts(a, c, lo, lo + nkb, qm, b, dev)
            else:
                qm = torch.ones(b, bq, device=dev) if qm is None else qm
                seen = vis.to(e.dtype).expand(b, -1, bq, nkb)
                self.visible[:, :, lo:lo + nkb] += torch.einsum("bq,bhqk->bhk", qm, seen)
        if top is not None:
            val, idx = top
            good = (val > MASKED) & ok[..., None]
            kb = val.shape[-1]
            self.topk_val[:, :, a:c, :kb] = (torch.exp(val) * inv_l[..., None]).masked_fill_(~good, 0.0)
            self.topk_idx[:, :, a:c, :kb] = (idx + lo).masked_fill_(~good, -1)
        if "pooled" in want:
            self._pool(a, c, lo, e, r)
        if "pattern" in want:
            r0, r1 = max(a, self.prow[0]), min(c, self.prow[1])
            if r0 < r1:
                rows_p = e[:, self.heads, r0 - a:r1 - a] * r[:, self.heads, r0 - a:r1 - a, None]
                self.pattern[:, :, r0 - self.prow[0]:r1 - self.prow[0], lo:lo + nkb] = rows_p

    def _band(self, lin, rows, e, inv_l, w, qpos, lo) -> Tensor:
        """waad, prev_token, diag_mass from the band e[i, pos_i - d], d < W (a gather).

        Returns the band's d = 0 column (diagonal, unnormalised; dup_token needs it).
        """
        geo, want, width = self.geo, self.want, self.opt.window
        b, h, bq, nkb = e.shape
        span = max(width if "waad" in want else 1, 2 if "prev_token" in want else 1)
        col = qpos[:, None] - lo - torch.arange(span, device=e.device)  # key pos_i - d, block-relative
        inside = (col >= 0) & (col < nkb)
        band = e.gather(-1, col.clamp(0, nkb - 1).expand(b, h, bq, span)) * inside
        if "diag_mass" in want:
            lin["diag_mass"] = band[..., 0]
        if "prev_token" in want:
            lin["prev_token"] = band[..., 1]
        if "waad" in want:
            if geo.causal:  # no future keys: keys beyond the band all sit at distance >= W
                near = band[..., :width]
                d = torch.arange(width, device=e.device, dtype=e.dtype)
                near_mass, near_dist = near.sum(-1) * inv_l, torch.matmul(near, d) * inv_l
                rows["waad"] = (width * (1.0 - near_mass) + near_dist) * w
            else:
                kpos = torch.arange(lo, lo + nkb, device=e.device)
                clipped = (qpos[:, None] - kpos[None, :]).clamp_max(width).to(e.dtype)
                lin["waad"] = torch.linalg.vecdot(e, clipped)
        return band[..., 0]

    def _token_masses(self, lin, e, qpos, lo, hi, diag) -> None:
        """dup_token and induction: e summed over keys chosen by a token comparison.

        Causal rows have e = 0 beyond their own position, so only the comparison is
        needed: dup_token drops the always-equal diagonal by subtracting it.
        """
        tok, causal = self.call.token_ids, self.geo.causal
        kpos = torch.arange(lo, hi, device=e.device)
        tok_q = tok[:, qpos][:, :, None]  # [b, bq, 1]
        if "dup_token" in self.want:
            same = tok_q == tok[:, None, lo:hi]
            if causal:
                lin["dup_token"] = torch.einsum("bhqk,bqk->bhq", e, same.to(e.dtype)) - diag
            else:
                same &= kpos[None, :] < qpos[:, None]
                lin["dup_token"] = torch.einsum("bhqk,bqk->bhq", e, same.to(e.dtype))
        if "induction" in self.want:
            prev_tok = tok[:, max(lo - 1, 0):hi - 1]
            if lo == 0:  # key 0 has no previous token: a sentinel no token equals
                prev_tok = torch.cat([tok.new_full((tok.shape[0], 1), -1), prev_tok], dim=1)
            hit = tok_q == prev_tok[:, None, :]
            if not causal:
                hit &= kpos[None, :] <= qpos[:, None]
            lin["induction"] = torch.einsum("bhqk,bqk->bhq", e, hit.to(e.dtype))

    def _pool(self, a, c, lo, e, r) -> None:
        """Add the block's p (valid rows) to the f x f pooled sums; lo is a multiple of f.

        Rows are summed per pooling group by a matmul with a [groups, block_q] weight
        matrix holding 1 / l (so e is never normalised), keys on the f times smaller
        result. Groups may straddle blocks: the sums simply accumulate.
        """
        f = self.f
        b, h, bq, nkb = e.shape
        if f == 1:
            self.pooled[:, :, a:c, lo:lo + nkb] += e * r[..., None]
            return
        g_first = a // f
        group = torch.arange(a, c, device=e.device) // f - g_first
        n_groups = int(group[-1]) + 1
        member = (group[None, :] == torch.arange(n_groups, device=e.device)[:, None]).to(e.dtype)
        row_sums = torch.matmul(member * r[:, :, None, :], e)  # [b, h, groups, nkb]
        keys = _sum_groups(row_sums, f)
        self.pooled[:, :, g_first:g_first + n_groups, lo // f:lo // f + keys.shape[-1]] += keys

    def finish(self) -> dict[str, Tensor]:
        """The statistics, in the order asked for (pooled sums become means)."""
        out = {}
        for name in self.call.stats:
            if name in self.rows:
                out[name] = self.rows[name]
            elif name == "received":
                out[name] = self.received
            elif name == "visible":
                out[name] = self.visible if self.geo.mask_has_heads else self.visible[:, 0]
            elif name == "topk_idx":
                out[name] = self.topk_idx
            elif name == "topk_val":
                out[name] = self.topk_val
            elif name == "pooled":
                out[name] = self.pooled / _cell_counts(self.geo.query_pos, self.geo.key_pos, self.f, self.pooled)
            elif name == "pattern":
                out[name] = self.pattern
        return out


def _sum_groups(x: Float[Tensor, "... n"], f: int) -> Float[Tensor, "... g"]:
    """Sums of consecutive groups of f along the last dim (the last group may be short)."""
    n = x.shape[-1]
    whole = n - n % f
    out = x[..., :whole].unflatten(-1, (whole // f, f)).sum(-1)
    if whole < n:
        out = torch.cat([out, x[..., whole:].sum(-1, keepdim=True)], dim=-1)
    return out


def _cell_counts(nq: int, nk: int, f: int, like: Tensor) -> Tensor:
    """Number of (query, key) cells in each f x f pooling block (edge blocks have fewer)."""
    pq, pk = like.shape[-2:]
    rows = torch.full((pq,), float(f), device=like.device)
    rows[-1] = nq - (pq - 1) * f
    cols = torch.full((pk,), float(f), device=like.device)
    cols[-1] = nk - (pk - 1) * f
    return rows[:, None] * cols[None, :]
