"""Row edits of a post-softmax pattern: ACT (METHODS sec 6) and VAR (sec 7), as pure functions.

Shapes: ``p`` is ``[batch, head, query_pos, key_pos]`` with the queries being the last
``query_pos`` positions; ``valid`` is ``[batch, query_pos]`` (False = padding, left
untouched). Every function returns a new tensor whose edited rows still sum to 1.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["act_column_scores", "act_rows", "act_sinks", "var_rows"]


def act_column_scores(p: Float[Tensor, "batch head query_pos key_pos"], valid: Bool[Tensor, "batch query_pos"]
                      ) -> tuple[Float[Tensor, "batch head key_pos"], Float[Tensor, "batch key_pos"]]:
    """c_j = sum_i A[i, j] / #(valid queries that see j) and that count (METHODS sec 6 step 1).

    For a full causal prefill of T real tokens the count is T - j.
    """
    nq, nk = p.shape[-2:]
    qpos = torch.arange(nk - nq, nk, device=p.device)
    sees = valid[:, :, None] & (qpos[None, :, None] >= torch.arange(nk, device=p.device)[None, None, :])
    n_see = sees.sum(1).float()  # [b, k]
    col = (p * valid[:, None, :, None]).sum(-2)
    return col / n_see.clamp(min=1)[:, None], n_see


def act_sinks(p: Float[Tensor, "batch head query_pos key_pos"], valid: Bool[Tensor, "batch query_pos"], *,
              theta: float = 0.1, alpha: float | None = None) -> Bool[Tensor, "batch head key_pos"]:
    """Hidden sinks S = {j : c_j > theta} minus the first of them (METHODS sec 6 step 2).

    theta is fixed, or ``alpha / T`` per input when alpha is given (T = its real tokens).
    """
    c, n_see = act_column_scores(p, valid)
    nq, nk = p.shape[-2:]
    if alpha is not None:
        n_tokens = (nk - nq) + valid.sum(-1).float()  # cached keys + real queries
        thr = (alpha / n_tokens.clamp(min=1))[:, None, None]
    else:
        thr = theta
    sinks = (c > thr) & (n_see > 0)[:, None]
    first = sinks.float().argmax(-1, keepdim=True)  # index of the first True (0 when none)
    has = sinks.any(-1, keepdim=True)
    return sinks & ~(torch.zeros_like(sinks).scatter_(-1, first, True) & has)


def act_rows(p: Float[Tensor, "batch head query_pos key_pos"], valid: Bool[Tensor, "batch query_pos"],
             sinks: Bool[Tensor, "batch head key_pos"], *, beta: float = 0.4, renormalise: bool = False
             ) -> Float[Tensor, "batch head query_pos key_pos"]:
    """A'[i, S] = beta A[i, S]; the freed (1 - beta) sum_S A[i] goes to the other keys in proportion.

    METHODS sec 6 step 3; rows with no mass outside S are left unchanged. With
    ``renormalise`` the whole row is instead renormalised after scaling S (= a key bias
    of ln beta on S).
    """
    s = sinks[:, :, None, :].to(p.device)
    m_s = (p * s).sum(-1, keepdim=True)
    scaled = torch.where(s, beta * p, p)
    if renormalise:
        denom = 1.0 - (1.0 - beta) * m_s
        ok = denom > 0
        out = scaled / torch.where(ok, denom, torch.ones_like(denom))
    else:
        rest = (p * ~s).sum(-1, keepdim=True)
        ok = rest > 0
        gain = 1.0 + (1.0 - beta) * m_s / torch.where(ok, rest, torch.ones_like(rest))
        out = torch.where(s, scaled, p * gain)
    keep = ~(ok & valid[:, None, :, None])
    return torch.where(keep, p, out)


def var_rows(p: Float[Tensor, "batch head query_pos key_pos"], valid: Bool[Tensor, "batch query_pos"],
             sinks: Bool[Tensor, "batch key_pos"], target: Bool[Tensor, "batch key_pos"], *, keep: float = 0.6,
             min_target: float = 0.2, max_sink_share: float = 0.5) -> Float[Tensor, "batch head query_pos key_pos"]:
    """VAR redistribution (METHODS sec 7) on the rows it selects.

    Row i is selected when sum_T A[i] >= min_target and sum_{T and S} A[i] / sum_T A[i]
    <= max_sink_share (T = target span, S = sinks). There: A'[i, S] = keep A[i, S] and
    the freed (1 - keep) sum_S A[i] goes to the keys of T outside S in proportion.
    """
    s = sinks[:, None, None, :]
    t = target[:, None, None, :]
    recv = t & ~s
    t_mass = (p * t).sum(-1, keepdim=True)
    share = (p * (t & s)).sum(-1, keepdim=True) / t_mass.clamp(min=1e-30)
    r_mass = (p * recv).sum(-1, keepdim=True)
    m_s = (p * s).sum(-1, keepdim=True)
    sel = valid[:, None, :, None] & (t_mass >= min_target) & (share <= max_sink_share) & (r_mass > 0)
    gain = (1.0 - keep) * m_s / torch.where(r_mass > 0, r_mass, torch.ones_like(r_mass))
    out = torch.where(s, keep * p, p) + torch.where(recv, gain * p, torch.zeros_like(p))
    return torch.where(sel, out, p)
