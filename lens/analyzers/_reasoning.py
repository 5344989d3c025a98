"""Preplan and anchor tokens (METHODS sec 4, Attention Illuminates LLM Reasoning).

The paper has no public code; this is our reconstruction and every constant is a parameter.

* Head sets. D^h = mean_t sum_s A[t, s] (t - s), the mean attention distance, from the
  ``distance`` statistic averaged over real queries t >= 1 and all inputs. Local heads: the
  ``local_frac`` of heads with the smallest D^h; global heads: the ``global_frac`` largest.
* WAAD_t = sum_{s<=t} A_bar[t, s] min(t - s, W), A_bar the attention averaged over local
  heads. WAAD is linear in A, so it is the mean of the ``waad`` statistic over local heads
  (W is the capture's ``options.window``, METHODS W = 10).
* FAI_s = mean_{t>s} A_bar[t, s] over global heads: the attention s receives from later
  queries. Without the full pattern: column sum minus the diagonal, over the T - 1 - s
  later queries, i.e. FAI_s = (received_s - diag_mass_s) / (T - 1 - s), where diag_mass_s
  is query s's attention on itself; then the mean over global heads. Undefined (NaN) at
  s = T - 1, which no later query sees.
* Preplan tokens: local maxima of WAAD (greater than the left neighbour, at least the right
  one) above mean + ``peak_std`` x std (population std over the input's positions).
  Anchor tokens: the top ``anchor_frac`` of positions by FAI (ceil, at least one).
  Coupling: the share of anchors at or right after a preplan token; ``chance`` is the share
  of all candidate positions that are, the value coupling takes when anchors fall at random.
* ``skip_first`` (default True) leaves position 0 out of every candidate set: it is the
  attention sink, so it would be the top anchor of every input and says nothing about
  reasoning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from lens.record import Capture
from lens.analyzers._common import (
    capture_heads,
    head_frame,
    later_queries,
    need,
    seq_len_param,
    window_param,
)
from lens.analyzers._findings import Findings

__all__ = ["anchor_coupling", "head_distance", "preplan_anchor"]

Head = tuple[int, int]


def _distance(capture: Capture) -> torch.Tensor:
    return distance_mean(distance_partial(capture))


def distance_partial(capture: Capture) -> dict:
    """Sum of ``distance`` over real queries t >= 1 of every input, and their count: ``[layer, head]``."""
    need(capture, "distance", analyzer="head_distance")
    mask = later_queries(capture)[:, None, None, :].double().expand_as(capture.stats["distance"])
    return {"sum": (capture.stats["distance"].double() * mask).sum(dim=(0, 3)), "count": mask.sum(dim=(0, 3))}


def distance_mean(part: dict) -> torch.Tensor:
    """D^h from (summed) ``distance_partial`` results."""
    c = part["count"]
    return torch.where(c > 0, part["sum"] / c.clamp(min=1), torch.full_like(c, float("nan")))


def _head_sets(d: torch.Tensor, local_frac: float, global_frac: float,
               layers: Sequence[int] | None = None) -> tuple[list[Head], list[Head]]:
    """The local and global heads as (block, head) pairs; ``layers``: the block of each row of ``d``."""
    n_heads = d.shape[1]
    blocks = list(range(d.shape[0])) if layers is None else list(layers)
    flat = d.reshape(-1)
    n = flat.numel()
    k_local, k_global = (max(1, min(n, round(f * n))) for f in (local_frac, global_frac))
    asc = flat.argsort(stable=True)
    desc = (-flat).argsort(stable=True)
    as_heads = lambda idx: [(blocks[int(i) // n_heads], int(i) % n_heads) for i in idx]  # noqa: E731
    return as_heads(asc[:k_local]), as_heads(desc[:k_global])


def head_distance(capture: Capture, *, local_frac: float = 0.1, global_frac: float = 0.1) -> Findings:
    """Per head: mean attention distance D^h and its role ("local", "global" or "").

    D^h averages the ``distance`` statistic over real queries t >= 1 of every input.
    """
    return distance_finish(distance_partial(capture), local_frac=local_frac, global_frac=global_frac,
                           T=seq_len_param(capture), layers=capture.blocks, n_heads=capture.n_heads)


def distance_finish(part: dict, *, local_frac: float, global_frac: float, T, layers: Sequence[int],
                    n_heads: int) -> Findings:
    """The ``head_distance`` Findings from (summed) ``distance_partial`` results."""
    d = distance_mean(part)
    layers = list(layers)
    local, glob = _head_sets(d, local_frac, global_frac, layers)
    role = {(l, h): "" for l in layers for h in range(n_heads)}
    for l, h in glob:
        role[l, h] = "global"
    for l, h in local:
        role[l, h] = "local"
    frame = head_frame(layers, n_heads, distance=d)
    frame["role"] = list(role.values())
    params = {"local_frac": local_frac, "global_frac": global_frac, "T": T}
    summary = {"local_heads": [list(h) for h in local], "global_heads": [list(h) for h in glob],
               "mean_distance": float(d.mean())}
    text = (f"D^h from {float(d.min()):.1f} to {float(d.max()):.1f}; local {len(local)} head(s) "
            f"(D <= {float(d[layers.index(local[-1][0]), local[-1][1]]):.1f}), global {len(glob)} "
            f"(D >= {float(d[layers.index(glob[-1][0]), glob[-1][1]]):.1f})")
    return Findings("head_distance", frame, params, level="head", summary=summary, text=text)


def _mean_over_heads(x: torch.Tensor, heads: Sequence[Head], capture: Capture) -> torch.Tensor:
    """[b, L, H, pos] -> [b, pos]: mean over the given (block, head) pairs."""
    idx_l = torch.tensor([capture.layer_index(l) for l, _ in heads])
    idx_h = torch.tensor([h for _, h in heads])
    return x[:, idx_l, idx_h, :].double().mean(1)


def _check_heads(heads: Sequence[Head], capture: Capture, what: str) -> list[Head]:
    out = [(int(l), int(h)) for l, h in heads]
    if not out:
        raise ValueError(f"{what} is empty")
    return capture_heads(capture, out, what)


def preplan_anchor(capture: Capture, *, local_frac: float = 0.1, global_frac: float = 0.1,
                   anchor_frac: float = 0.1, peak_std: float = 1.0, skip_first: bool = True,
                   local_heads: Sequence[Head] | None = None,
                   global_heads: Sequence[Head] | None = None) -> Findings:
    """WAAD and FAI per token, preplan and anchor tokens and their coupling (module docstring).

    One row per real (input, pos): token, waad, fai, preplan, anchor, coupled (an anchor at
    or right after a preplan token). ``local_heads`` / ``global_heads`` override the sets
    found from D^h (e.g. sets found on another capture).
    """
    need(capture, "waad", "received", "diag_mass", analyzer="preplan_anchor")
    if local_heads is None or global_heads is None:
        found_local, found_global = _head_sets(_distance(capture), local_frac, global_frac, capture.blocks)
        local_heads = found_local if local_heads is None else local_heads
        global_heads = found_global if global_heads is None else global_heads
    local_heads = _check_heads(local_heads, capture, "local_heads")
    global_heads = _check_heads(global_heads, capture, "global_heads")

    counts = preplan_rows(capture, local_heads, global_heads, anchor_frac=anchor_frac, peak_std=peak_std,
                          skip_first=skip_first)
    params = {"local_frac": local_frac, "global_frac": global_frac, "anchor_frac": anchor_frac,
              "peak_std": peak_std, "skip_first": skip_first, "window": window_param(capture),
              "T": seq_len_param(capture)}
    return preplan_finish(counts, params=params, local_heads=local_heads, global_heads=global_heads)


def preplan_rows(capture: Capture, local_heads: Sequence[Head], global_heads: Sequence[Head], *,
                 anchor_frac: float, peak_std: float, skip_first: bool, offset: int = 0) -> dict:
    """The per-token rows of ``preplan_anchor`` for given head sets (inputs numbered from ``offset``),
    with the anchor, coupled and chance counts; results for several shards add up (rows concatenate)."""
    waad = _mean_over_heads(capture.stats["waad"], local_heads, capture)  # [b, pos]
    col = _mean_over_heads(capture.stats["received"] - capture.stats["diag_mass"], global_heads, capture)
    n_pos = capture.tokens.shape[1]
    later = (capture.lengths[:, None] - 1 - torch.arange(n_pos)[None]).double()  # T - 1 - s
    fai = torch.where(later > 0, col / later.clamp(min=1), torch.full_like(col, float("nan")))

    rows = []
    start = 1 if skip_first else 0
    n_anchor = n_coupled = 0
    chance_num = chance_den = 0
    for b in range(capture.n_inputs):
        t_len = int(capture.lengths[b])
        w = waad[b, :t_len]
        f = fai[b, :t_len]
        preplan = _peaks(w, start, peak_std)
        cand = [s for s in range(start, t_len) if not math.isnan(float(f[s]))]
        k = max(1, math.ceil(anchor_frac * len(cand))) if cand else 0
        ranked = sorted(cand, key=lambda s: (-float(f[s]), s))
        anchors = set(ranked[:k])
        near = {s for s in range(t_len) if s in preplan or (s - 1) in preplan}
        coupled = anchors & near
        n_anchor += len(anchors)
        n_coupled += len(coupled)
        chance_num += sum(1 for s in cand if s in near)
        chance_den += len(cand)
        for s in range(t_len):
            rows.append({"input": b + offset, "pos": s,
                         "token": capture.str_tokens[b][s] if s < len(capture.str_tokens[b]) else "",
                         "waad": float(w[s]), "fai": float(f[s]), "preplan": s in preplan,
                         "anchor": s in anchors, "coupled": s in coupled})
    return {"rows": rows, "n_anchor": n_anchor, "n_coupled": n_coupled, "chance_num": chance_num,
            "chance_den": chance_den}


def preplan_finish(counts: dict, *, params: dict, local_heads: Sequence[Head],
                   global_heads: Sequence[Head]) -> Findings:
    """The ``preplan_anchor`` Findings from (summed) ``preplan_rows`` results."""
    frame = pd.DataFrame(counts["rows"])
    n_anchor = counts["n_anchor"]
    coupling = counts["n_coupled"] / n_anchor if n_anchor else float("nan")
    chance = counts["chance_num"] / counts["chance_den"] if counts["chance_den"] else float("nan")
    summary = {"coupling": coupling, "chance": chance, "n_preplan": int(frame["preplan"].sum()),
               "n_anchor": n_anchor, "local_heads": [list(h) for h in local_heads],
               "global_heads": [list(h) for h in global_heads]}
    text = (f"{summary['n_preplan']} preplan and {n_anchor} anchor tokens; {100 * coupling:.0f}% of anchors at or "
            f"right after a preplan token (chance {100 * chance:.0f}%)")
    return Findings("preplan_anchor", frame, params, level="token", summary=summary, text=text)


def _peaks(w: torch.Tensor, start: int, peak_std: float) -> set[int]:
    """Positions t >= start with w[t] > w[t-1], w[t] >= w[t+1] (neighbours inside the range) and w[t] > mean + k std."""
    vals = w[start:].double()
    if vals.numel() == 0:
        return set()
    thr = float(vals.mean() + peak_std * vals.std(unbiased=False))
    out = set()
    n = w.shape[0]
    for t in range(start, n):
        v = float(w[t])
        if v <= thr:
            continue
        if t - 1 >= start and not v > float(w[t - 1]):
            continue
        if t + 1 < n and not v >= float(w[t + 1]):
            continue
        out.add(t)
    return out


def anchor_coupling(findings: Findings) -> Findings:
    """Per input: preplan and anchor counts, the coupling and its chance level, from ``preplan_anchor``."""
    if findings.name != "preplan_anchor":
        raise ValueError(f"anchor_coupling reads preplan_anchor findings, got {findings.name!r}")
    f = findings.frame
    start = 1 if findings.params.get("skip_first", True) else 0
    rows = []
    for b, g in f.groupby("input", sort=True):
        pre = set(g.loc[g["preplan"], "pos"])
        cand = g[(g["pos"] >= start) & g["fai"].notna()]
        near = cand["pos"].map(lambda s: s in pre or (s - 1) in pre)
        n_anchor = int(g["anchor"].sum())
        rows.append({"input": int(b), "n_preplan": len(pre), "n_anchor": n_anchor, "n_coupled": int(g["coupled"].sum()),
                     "coupling": g["coupled"].sum() / n_anchor if n_anchor else float("nan"),
                     "chance": float(near.mean()) if len(near) else float("nan")})
    frame = pd.DataFrame(rows)
    return Findings("anchor_coupling", frame, dict(findings.params), level="input",
                    summary={"coupling": findings.summary.get("coupling")})
