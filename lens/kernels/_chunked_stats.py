"""Statistics of the chunked backend, accumulated one query block at a time.

Each block arrives as probabilities ``p`` (one softmax) with its scores. Every
statistic but entropy is linear in p, so each is the cheapest reduction over the
block: a matvec for ``distance``, a gather for the diagonal band, one batched matmul
for both token patterns, one reshape-sum for the pooled map and the column sums
together; entropy is ``ln l - sum_j p (s - m)``, one dot product.
Definitions are in ``lens.kernels._stats``; the eager backend is the reference.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ._finish import finish, normalised_entropy
from ._stats import ROW_STATS, STATS, pattern_rows
from ._types import Call

__all__ = ["BlockStats"]

#: Scores at or below this are masked (the chunked backend masks with -1e30).
MASKED = -5e29


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

        self.rows = {n: zeros(b, h, nq) for n in ROW_STATS if n in self.want}
        self.received = zeros(b, h, nk) if "received" in self.want else None
        self.visible = zeros(b, h if geo.mask_has_heads else 1, nk) if "visible" in self.want else None
        self.topk_idx = self.topk_val = self.pooled = self.pattern = None
        if self.topk_wanted:
            idx = STATS["topk_idx"]
            self.topk_idx = torch.full((b, h, nq, self.topk), idx.fill, dtype=idx.dtype, device=dev)
            self.topk_val = zeros(b, h, nq, self.topk)
        if "pooled" in self.want:
            self.pooled = zeros(b, h, -(-nq // f), -(-nk // f))
        if "pattern" in self.want:
            self.heads = list(opt.pattern_heads) if opt.pattern_heads is not None else list(range(h))
            self.prow = pattern_rows(nq, opt)
            self.pattern = zeros(b, len(self.heads), self.prow[1] - self.prow[0], nk)

    def add_block(self, a: int, c: int, lo: int, p: Float[Tensor, "b h bq bk"], s: Float[Tensor, "b h bq bk"],
                  m: Float[Tensor, "b h bq"], ln_l: Float[Tensor, "b h bq"], has_key: Tensor,
                  top: tuple[Tensor, Tensor] | None, vis: Tensor | None, *,
                  mass: Tensor | None = None, learned: Tensor | None = None) -> None:
        """Fold rows [a, c) x keys [lo, lo + bk) into every statistic.

        p: the block's probabilities; s: its scores (masked ones at -1e30), m their row max
        and ln_l = L - m; top: (top scores minus m, block columns); vis: the combined mask
        of the block when the caller gave one. With a learned sink, ``mass`` [b, h, bq] is
        each row's real-key mass (sum_j p) and ``learned`` the sink's share (1 - mass);
        without one both are None and every row's mass is 1. (Twelve parameters: the block's tensors
        as the streaming loop of ``_chunked.run`` already computed them, so none is computed twice.)
        """
        geo, opt, want, call = self.geo, self.opt, self.want, self.call
        b, h, bq, nkb = p.shape
        dev = p.device
        ok = has_key if call.query_mask is None else has_key & call.query_mask[:, None, a:c]
        w = ok.to(p.dtype)  # valid rows
        qpos = torch.arange(geo.offset + a, geo.offset + c, device=dev)
        rows = {}  # final per-row values of valid rows (masked by w below)

        if "learned_sink_mass" in want and learned is not None:  # no sink: stays 0
            rows["learned_sink_mass"] = learned
        if "sink_mass" in want and lo == 0:
            rows["sink_mass"] = p[..., 0]
        if "sink_mass_k" in want and lo < opt.sink_k:
            rows["sink_mass_k"] = p[..., : opt.sink_k - lo].sum(-1)
        if "distance" in want:  # sum_j p (pos_i - j) = (pos_i - lo) - p @ (j - lo): one matvec
            rel = torch.arange(nkb, device=dev, dtype=p.dtype)[:, None]
            first = (qpos - lo).to(p.dtype)  # times the row's real-key mass (1 without a learned sink)
            rows["distance"] = (first if mass is None else first * mass) - torch.matmul(p, rel)[..., 0]
        if self.needs_entropy:
            # H = L - sum_j p s = ln l - sum_j p (s - m): masked scores have p = 0 and add 0.
            # With a learned sink the real keys hold mass P < 1: -sum p (s - L) = P (L - m) - sum p (s - m).
            entropy = (ln_l - (torch.linalg.vecdot(p, s) - m) if mass is None
                       else ln_l * mass - (torch.linalg.vecdot(p, s) - m * mass))
            if "entropy" in want:
                rows["entropy"] = entropy
            if "entropy_norm" in want:
                n_vis = geo.rule_counts(a, c, dev) if vis is None else vis.sum(-1).to(p.dtype)
                rows["entropy_norm"] = normalised_entropy(entropy, n_vis)
        if want & {"waad", "prev_token", "diag_mass"} or ("dup_token" in want and geo.causal):
            diag = self._band(rows, p, qpos, lo, mass)
        else:
            diag = None
        if want & {"dup_token", "induction"}:
            self._token_masses(rows, p, qpos, lo, lo + nkb, diag)
        for name, value in rows.items():
            self.rows[name][:, :, a:c] = value * w

        pooled = "pooled" in want
        if self.received is not None and not (pooled and self.f > 1):
            self.received[:, :, lo:lo + nkb] += torch.matmul(w[:, :, None, :], p)[:, :, 0]
        if self.visible is not None:
            qm = None if call.query_mask is None else call.query_mask[:, a:c].to(p.dtype)
            if vis is None:  # rules only: count rows in closed form, no [bq, nkb] mask
                self.visible[:, 0, lo:lo + nkb] += geo.rule_seen_counts(a, c, lo, lo + nkb, qm, b, dev)
            else:
                qm = torch.ones(b, bq, device=dev) if qm is None else qm
                seen = vis.to(p.dtype).expand(b, -1, bq, nkb)
                self.visible[:, :, lo:lo + nkb] += torch.einsum("bq,bhqk->bhk", qm, seen)
        if top is not None:
            val, idx = top
            good = (val > MASKED) & ok[..., None]
            kb = val.shape[-1]
            self.topk_val[:, :, a:c, :kb] = torch.exp(val - ln_l[..., None]).masked_fill_(~good, 0.0)
            self.topk_idx[:, :, a:c, :kb] = (idx + lo).masked_fill_(~good, -1)
        if pooled:
            self._pool(a, c, lo, p, w)
        if "pattern" in want:
            r0, r1 = max(a, self.prow[0]), min(c, self.prow[1])
            if r0 < r1:
                rows_p = p[:, self.heads, r0 - a:r1 - a] * w[:, self.heads, r0 - a:r1 - a, None]
                self.pattern[:, :, r0 - self.prow[0]:r1 - self.prow[0], lo:lo + nkb] = rows_p

    def _band(self, rows, p, qpos, lo, mass) -> Tensor:
        """waad, prev_token, diag_mass from the band p[i, pos_i - d], d < W (a gather).

        Returns the band's d = 0 column (the diagonal; dup_token needs it).
        """
        geo, want, width = self.geo, self.want, self.opt.window
        b, h, bq, nkb = p.shape
        span = max(width if "waad" in want else 1, 2 if "prev_token" in want else 1)
        col = qpos[:, None] - lo - torch.arange(span, device=p.device)  # key pos_i - d, block-relative
        inside = (col >= 0) & (col < nkb)
        band = p.gather(-1, col.clamp(0, nkb - 1).expand(b, h, bq, span)) * inside
        if "diag_mass" in want:
            rows["diag_mass"] = band[..., 0]
        if "prev_token" in want:
            rows["prev_token"] = band[..., 1]
        if "waad" in want:
            if geo.causal:  # no future keys: keys beyond the band all sit at distance >= W
                near = band[..., :width]
                d = torch.arange(width, device=p.device, dtype=p.dtype)
                total = 1.0 if mass is None else mass  # the row's real-key mass
                rows["waad"] = width * (total - near.sum(-1)) + torch.matmul(near, d)
            else:
                kpos = torch.arange(lo, lo + nkb, device=p.device)
                clipped = (qpos[:, None] - kpos[None, :]).clamp_max(width).to(p.dtype)
                rows["waad"] = torch.linalg.vecdot(p, clipped)
        return band[..., 0]

    def _token_masses(self, rows, p, qpos, lo, hi, diag) -> None:
        """dup_token and induction: p summed over keys chosen by a token comparison.

        The comparisons asked for go into one [b, names, bq, keys] weight so that p is read
        once. Causal rows have p = 0 beyond their own position, so only the comparison is
        needed: dup_token drops the always-equal diagonal by subtracting it.
        """
        tok, causal, want = self.call.token_ids, self.geo.causal, self.want
        b, h, bq, nkb = p.shape
        kpos = torch.arange(lo, hi, device=p.device)
        tok_q = tok[:, qpos][:, :, None]  # [b, bq, 1]
        names = [n for n in ("dup_token", "induction") if n in want]
        hits = torch.empty(b, len(names), bq, nkb, dtype=p.dtype, device=p.device)  # one slot per name
        if "dup_token" in want:
            same = torch.eq(tok_q, tok[:, None, lo:hi], out=hits[:, names.index("dup_token")])
            if not causal:
                same.mul_(kpos[None, :] < qpos[:, None])
        if "induction" in want:
            prev_tok = tok[:, max(lo - 1, 0):hi - 1]
            if lo == 0:  # key 0 has no previous token: a sentinel no token equals
                prev_tok = torch.cat([tok.new_full((tok.shape[0], 1), -1), prev_tok], dim=1)
            hit = torch.eq(tok_q, prev_tok[:, None, :], out=hits[:, names.index("induction")])
            if not causal:
                hit.mul_(kpos[None, :] <= qpos[:, None])
        # [b, bq, h, keys] @ [b, bq, keys, names]: one small matmul per query row, p read once.
        masses = torch.matmul(p.transpose(1, 2), hits.permute(0, 2, 3, 1)).transpose(1, 2)  # [b, h, bq, names]
        for i, name in enumerate(names):
            rows[name] = masses[..., i]
        if "dup_token" in rows and causal:
            rows["dup_token"] = rows["dup_token"] - diag

    def _pool(self, a, c, lo, p, w) -> None:
        """Add the block's p (valid rows) to the f x f pooled sums; lo is a multiple of f.

        Rows are summed per pooling group (invalid rows zeroed first), keys on the f times
        smaller result; groups cut by a block boundary accumulate across the two blocks.
        The same row sums give ``received`` (summed over the groups), so p is read once
        for both.
        """
        f = self.f
        b, h, bq, nkb = p.shape
        pw = p if bool(w.min() > 0) else p * w[..., None]  # no copy when every row is valid
        if f == 1:
            self.pooled[:, :, a:c, lo:lo + nkb] += pw
            return
        # Rows [a, c) in pooling groups: a partial first group when a is not on a group
        # boundary (a fixed block_size), whole groups, a partial last group.
        up = min(c, -(-a // f) * f)
        end = up + (c - up) // f * f
        parts = []
        if up > a:
            parts.append(pw[:, :, :up - a].sum(2, keepdim=True))
        if end > up:
            parts.append(pw[:, :, up - a:end - a].unflatten(2, ((end - up) // f, f)).sum(3))
        if c > end:
            parts.append(pw[:, :, end - a:].sum(2, keepdim=True))
        row_sums = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]  # [b, h, groups, nkb]
        if self.received is not None:
            self.received[:, :, lo:lo + nkb] += row_sums.sum(-2)
        keys = _sum_groups(row_sums, f)
        g_first = a // f
        self.pooled[:, :, g_first:g_first + row_sums.shape[2], lo // f:lo // f + keys.shape[-1]] += keys

    def finish(self) -> dict[str, Tensor]:
        """The statistics, in the order asked for (``_finish.finish``: pooled sums become means)."""
        parts = {**self.rows, "received": self.received, "visible": self.visible, "topk_idx": self.topk_idx,
                 "topk_val": self.topk_val, "pooled": self.pooled, "pattern": self.pattern}
        return finish(self.call, parts, self.f)


def _sum_groups(x: Float[Tensor, "... n"], f: int) -> Float[Tensor, "... g"]:
    """Sums of consecutive groups of f along the last dim (the last group may be short)."""
    n = x.shape[-1]
    whole = n - n % f
    out = x[..., :whole].unflatten(-1, (whole // f, f)).sum(-1)
    if whole < n:
        out = torch.cat([out, x[..., whole:].sum(-1, keepdim=True)], dim=-1)
    return out
