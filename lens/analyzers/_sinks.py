"""Attention sinks: the Sink_k^eps metric (METHODS sec 1) and first-token / hidden sinks (sec 6, ACT).

Both read one number per key: alpha_j, the mean attention key j receives from the
queries that can see it (``Capture.alpha()``, i.e. ``received / visible``). Under plain
causal masking ``visible_j = T - j``, so alpha_j is also ACT's column score
``c_j = sum_i A[i, j] / (T - j)``; under a sliding window ``visible`` counts the queries
that really see the key, which is what "mean over the queries that can see it" means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd
import torch

from lens.record import Capture
from lens.analyzers._common import block_numbers, head_frame, need, real, seq_len_param, top_heads
from lens.analyzers._findings import Findings

__all__ = ["hidden_sinks", "sink_rate"]


def sink_rate(capture: Capture, *, k: int = 1, eps: float = 0.3) -> Findings:
    """Sink_k^eps per head and overall (METHODS sec 1; Gu et al., When Attention Sink Emerges).

    For each input, layer and head: 1[alpha_{k-1} > eps], with alpha the mean attention the
    key at position k-1 receives from the queries that see it. Per head the table gives the
    mean alpha_{k-1} (``sink_alpha``) and 100 x the share of inputs over eps (``sink_rate``);
    ``summary["sink_rate"]`` is 100 x the mean over (input, layer, head): the paper's metric.

    Learned sinks (gpt-oss): when the capture has ``learned_sink_mass`` (the share of each
    row its head's learned sink logit takes; the keys' attention sums to 1 minus it), the
    table also gives its mean over real queries and inputs (``learned_sink_mass``), and
    ``sink_head`` is True for a head whose key-(k-1) alpha *or* learned sink mass exceeds
    eps: a head that parks its attention on its learned sink is a sink head.

    T is each input's own length (from ``capture.lengths``; recorded in params). METHODS and
    the paper cut every prompt to exactly T = 64 tokens: the metric depends on T (uniform
    attention gives alpha_0 = H_T / T), so compare figures only at the same T. Inputs
    shorter than k tokens are left out.
    """
    need(capture, "received", "visible", analyzer="sink_rate")
    part = sink_partial(capture, k=k, eps=eps)
    return sink_finish(part, k=k, eps=eps, T=seq_len_param(capture), layers=capture.blocks,
                       n_heads=capture.n_heads)


def sink_partial(capture: Capture, *, k: int = 1, eps: float = 0.3) -> dict:
    """Sums over inputs behind ``sink_rate``: shards' partials add up to the whole dataset's."""
    if k < 1:
        raise ValueError(f"k counts positions from 1 (Sink_1 is the first token), got {k}")
    j = k - 1
    keep = capture.lengths > j
    a = capture.alpha()[keep][..., j].double()  # [inputs, layer, head]
    part = {"n": int(keep.sum()), "alpha": a.sum(0), "over": (a > eps).double().sum(0)}
    if "learned_sink_mass" in capture.stats:
        rows = real(capture)[keep][:, None, None, :].double().expand_as(capture.stats["learned_sink_mass"][keep])
        part["learned"] = (capture.stats["learned_sink_mass"][keep].double() * rows).sum(dim=(0, 3))
        part["learned_n"] = rows.sum(dim=(0, 3))
    return part


def sink_finish(part: dict, *, k: int, eps: float, T, layers: Sequence[int], n_heads: int) -> Findings:
    """The ``sinks`` Findings from (summed) ``sink_partial`` results."""
    j, n = k - 1, part["n"]
    if n == 0:
        raise ValueError(f"no input has {k} tokens: Sink_{k} is undefined")
    per_head_alpha = part["alpha"] / n
    per_head_rate = 100 * part["over"] / n
    overall = float(100 * part["over"].sum() / (n * len(layers) * n_heads))
    mean_alpha = float(part["alpha"].sum() / (n * len(layers) * n_heads))
    params = {"k": k, "eps": eps, "T": T, "n_inputs": n, "reference_T": 64}
    columns = {"sink_alpha": per_head_alpha, "sink_rate": per_head_rate}
    sink_head = per_head_alpha > eps
    learned = None
    if "learned" in part:
        cnt = part["learned_n"]
        learned = torch.where(cnt > 0, part["learned"] / cnt.clamp(min=1), torch.full_like(cnt, float("nan")))
        columns["learned_sink_mass"] = learned
        sink_head = sink_head | (learned > eps)
    columns["sink_head"] = sink_head
    frame = head_frame(layers, n_heads, **columns)
    per_layer = (100 * part["over"].sum(1) / (n * n_heads)).tolist()
    summary = {"sink_rate": overall, "mean_alpha": mean_alpha, "per_layer_rate": per_layer,
               "sink_heads": int(sink_head.sum())}
    text = (f"Sink_{k}^{eps:g} = {overall:.1f}% (mean alpha_{j} = {mean_alpha:.3f}; "
            f"T = {T}, METHODS uses T = 64)\n"
            f"strongest: {top_heads(per_head_alpha, layers=layers)}")
    if learned is not None:
        summary["mean_learned_sink_mass"] = float(learned.mean())
        text += (f"\nlearned sinks: mean mass {float(learned.mean()):.3f}; "
                 f"{int((learned > eps).sum())} head(s) over {eps:g}; strongest: {top_heads(learned, layers=layers)}")
    return Findings("sinks", frame, params, level="head", summary=summary, text=text)


def hidden_sinks(capture: Capture, *, theta: float = 0.1, scale: float | None = None,
                 min_queries: int = 1) -> Findings:
    """First-token and hidden sinks per (input, layer, head), at any position (METHODS sec 6, ACT).

    Column score c_j = sum_i A[i, j] / (T - j) (= alpha_j under causal masking); the sinks of
    a head are S = {j : c_j > theta}, with theta fixed (default 0.1) or ``scale / T`` per
    input when ``scale`` is given. ACT leaves the first element of S alone (usually BOS):
    it is reported with ``kind = "first"``, the rest with ``kind = "hidden"``.

    min_queries: keys seen by fewer queries are skipped (default 1 = every key, the formula
    as written). The last keys are seen by few queries, so their score is mostly their
    own diagonal entry; raise this to ignore them.
    One row per sink: input, layer, head, pos, token, score, kind.
    """
    need(capture, "received", "visible", analyzer="hidden_sinks")
    c = capture.alpha()  # [b, L, H, pos]
    visible = capture.stats["visible"]
    if visible.dim() == 3:
        visible = visible.unsqueeze(2)
    ok = real(capture)[:, None, None, :] & (visible >= min_queries)
    if scale is None:
        thr = torch.full((capture.n_inputs, 1, 1, 1), float(theta))
    else:
        thr = (scale / capture.lengths.double()).reshape(-1, 1, 1, 1)
    sink = ok & (c.double() > thr)
    first = torch.where(sink.any(-1), sink.double().argmax(-1), torch.full(sink.shape[:-1], -1.0)).long()
    b, layer, head, pos = torch.nonzero(sink, as_tuple=True)
    kind = ["first" if f else "hidden" for f in (pos == first[b, layer, head]).tolist()]
    tokens = [capture.str_tokens[i][p] if p < len(capture.str_tokens[i]) else ""
              for i, p in zip(b.tolist(), pos.tolist())]
    frame = pd.DataFrame({"input": b.numpy(), "layer": block_numbers(capture, layer).numpy(), "head": head.numpy(),
                          "pos": pos.numpy(), "token": tokens, "score": c[b, layer, head, pos].double().numpy(),
                          "kind": kind})
    n_pairs = capture.n_inputs * capture.n_layers * capture.n_heads
    params = {"theta": theta, "scale": scale, "min_queries": min_queries, "T": seq_len_param(capture)}
    return hidden_finish(frame, n_pairs=n_pairs, params=params)


def hidden_finish(frame: pd.DataFrame, *, n_pairs: int, params: dict) -> Findings:
    """The ``hidden_sinks`` Findings from its rows (those of several shards concatenated, inputs offset)."""
    theta, scale = params["theta"], params["scale"]
    hidden = frame[frame["kind"] == "hidden"]
    first_bos = float(((frame["kind"] == "first") & (frame["pos"] == 0)).sum() / n_pairs)
    with_hidden = hidden.groupby(["input", "layer", "head"]).ngroups / n_pairs
    common = Counter(hidden["token"]).most_common(5)
    summary = {"first_at_pos0": first_bos, "heads_with_hidden": with_hidden,
               "hidden_per_head": len(hidden) / n_pairs, "hidden_tokens": [[t, n] for t, n in common],
               "hidden_positions": [[int(p), int(n)] for p, n in Counter(hidden["pos"]).most_common(5)]}
    thr_txt = f"theta={theta:g}" if scale is None else f"theta={scale:g}/T"
    text = (f"({thr_txt}) first sink at position 0 in {100 * first_bos:.0f}% of (input, head); "
            f"hidden sinks in {100 * with_hidden:.0f}%\n"
            f"hidden-sink tokens: {', '.join(f'{t!r} x{n}' for t, n in common) or '-'}")
    return Findings("hidden_sinks", frame, params, level="sink", summary=summary, text=text)
