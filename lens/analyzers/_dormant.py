"""Active and dormant heads, per input and per head (METHODS sec 2, Active-Dormant Attention Heads).

A head is *dormant* on input x when it parks its attention on position 0:
s(x) = mean_{i>=1} A[i, 0] >= tau (default 0.5). The full operational definition also asks
that moving all its attention to position 0 barely changes the loss (< 1% relative); that
check runs the model, so it lives in ``lens.experiments._model_checks.confirm_dormant``. What is here
is the pure, attention-only half, which is also the candidate list for that check.
A head dormant on some inputs and active on others is *active-dormant*: that input
dependence is the finding (in Bigram-Backcopy, active exactly on trigger tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from lens.record import Capture
from lens.analyzers._common import (block_numbers, capture_heads, head_frame, later_queries, masked_mean, need,
                                    same_shape, seq_len_param)
from lens.analyzers._findings import Findings

__all__ = ["dormant_heads", "dormant_inputs", "dormant_tokens", "sink_scores"]

Queries = torch.Tensor | Sequence[torch.Tensor | None] | None


def sink_scores(capture: Capture, queries: torch.Tensor | None = None) -> torch.Tensor:
    """s(x) = mean over queries i >= 1 of A[i, 0], per input: ``[batch, layer, head]``.

    queries: optional bool ``[batch, pos]`` selecting which queries count (e.g. only
    trigger tokens); always intersected with the real positions >= 1. NaN where none is left.
    With learned sinks (gpt-oss; ``learned_sink_mass`` in the capture) a head can park its
    attention on its learned sink instead of on position 0, so s(x) counts both:
    mean_{i>=1} (A[i, 0] + learned_sink_mass_i).
    """
    need(capture, "sink_mass", analyzer="sink_scores")
    mask = later_queries(capture)
    if queries is not None:
        q = torch.as_tensor(queries, dtype=torch.bool)
        if q.shape != mask.shape:
            raise ValueError(f"queries must be bool [batch, pos] = {list(mask.shape)}, got {list(q.shape)}")
        mask = mask & q
    parked = capture.stats["sink_mass"]
    if "learned_sink_mass" in capture.stats:
        parked = parked + capture.stats["learned_sink_mass"]
    return masked_mean(parked, mask[:, None, None, :], dims=[-1]).float()


def _per_capture(queries: Queries, n: int) -> list[torch.Tensor | None]:
    if queries is None or isinstance(queries, torch.Tensor):
        if isinstance(queries, torch.Tensor) and n != 1:
            raise ValueError("with several captures pass one queries mask per capture (a list)")
        return [queries] * n
    queries = list(queries)
    if len(queries) != n:
        raise ValueError(f"got {len(queries)} queries masks for {n} captures")
    return queries


def dormant_inputs(*captures: Capture, tau: float = 0.5, queries: Queries = None) -> Findings:
    """Dormant or active per (capture, input, layer, head): s(x) >= tau means dormant.

    ``queries`` restricts s(x) to some queries (one bool ``[batch, pos]`` mask per capture),
    e.g. the trigger positions of a Bigram-Backcopy input. Rows where no query is selected
    have ``sink_score`` NaN and ``state`` "none".
    """
    same_shape(captures, "dormant_inputs")
    frames = []
    for c, (cap, q) in enumerate(zip(captures, _per_capture(queries, len(captures)))):
        s = sink_scores(cap, q)  # [b, L, H]
        b, layer, head = torch.meshgrid(*(torch.arange(n) for n in s.shape), indexing="ij")
        flat = s.flatten()
        state = ["none" if v != v else "dormant" if v >= tau else "active" for v in flat.tolist()]
        frames.append(pd.DataFrame({"capture": c, "input": b.flatten().numpy(),
                                    "layer": block_numbers(cap, layer.flatten()).numpy(),
                                    "head": head.flatten().numpy(), "sink_score": flat.numpy(), "state": state}))
    frame = pd.concat(frames, ignore_index=True)
    frame["dormant"] = frame["state"] == "dormant"
    params = {"tau": tau, "queries": "all i >= 1" if queries is None else "selected",
              "T": [seq_len_param(c) for c in captures], "loss_check": "not run (lens.experiments._model_checks.confirm_dormant)"}
    rows = frame[frame["state"] != "none"]
    summary = {"dormant_share": float(rows["dormant"].mean()) if len(rows) else float("nan")}
    return Findings("dormant_inputs", frame, params, level="input", summary=summary,
                    text=f"dormant on {100 * summary['dormant_share']:.0f}% of (input, head) (s(x) >= {tau:g})")


def dormant_heads(*captures: Capture, tau: float = 0.5, queries: Queries = None) -> Findings:
    """Per head: mean s(x), the share of inputs where it is dormant, and its state.

    state: "dormant" (dormant on every input), "active" (on none) or "active-dormant"
    (it switches between inputs). Pass several Captures (or one with many inputs): the
    state is over all their inputs.
    """
    layers, n_heads = same_shape(captures, "dormant_heads")
    parts = [dormant_partial(c, tau=tau, queries=q) for c, q in zip(captures, _per_capture(queries, len(captures)))]
    part = {k: sum(p[k] for p in parts) for k in parts[0]}
    params = {"tau": tau, "queries": "all i >= 1" if queries is None else "selected",
              "T": [seq_len_param(c) for c in captures], "loss_check": "not run (lens.experiments._model_checks.confirm_dormant)"}
    return dormant_finish(part, params=params, layers=layers, n_heads=n_heads)


def dormant_partial(capture: Capture, *, tau: float = 0.5, queries: torch.Tensor | None = None) -> dict:
    """Per-head sums over inputs behind ``dormant_heads`` (shards' partials add up to the dataset's)."""
    s = sink_scores(capture, queries).double()  # [b, L, H]
    valid = ~torch.isnan(s)
    return {"sum": torch.where(valid, s, torch.zeros(())).sum(0), "count": valid.sum(0),
            "dormant": (valid & (s >= tau)).sum(0)}


def dormant_finish(part: dict, *, params: dict, layers: Sequence[int], n_heads: int) -> Findings:
    """The ``dormant_heads`` Findings from (summed) ``dormant_partial`` results."""
    tau = params["tau"]
    count = part["count"].double()
    nan = torch.full_like(count, float("nan"))
    frame = head_frame(layers, n_heads, sink_score=torch.where(count > 0, part["sum"] / count.clamp(min=1), nan),
                       dormant_share=torch.where(count > 0, part["dormant"] / count.clamp(min=1), nan))
    share = frame["dormant_share"]
    frame["state"] = ["none" if v != v else "dormant" if v == 1 else "active" if v == 0 else "active-dormant"
                      for v in share]
    counts = frame["state"].value_counts().to_dict()
    params = dict(params, n_inputs=int(part["count"].sum()) // max(1, len(frame)))
    summary = {"n_dormant": int(counts.get("dormant", 0)), "n_active": int(counts.get("active", 0)),
               "n_active_dormant": int(counts.get("active-dormant", 0)),
               "active_dormant_heads": [[int(r.layer), int(r.head)] for r in frame.itertuples()
                                        if r.state == "active-dormant"]}
    text = (f"{summary['n_dormant']} dormant, {summary['n_active_dormant']} active-dormant, "
            f"{summary['n_active']} active heads (s(x) = mean_(i>=1) A[i,0] >= {tau:g}; loss check not run)")
    return Findings("dormant_heads", frame, params, level="head", summary=summary, text=text)


def dormant_tokens(capture: Capture, *, tau: float = 0.5, heads: Sequence[tuple[int, int]] | None = None) -> Findings:
    """Per query token: is the head parked on position 0 (sink_mass >= tau) or doing something?

    One row per (input, layer, head, pos) for real queries i >= 1 of the ``heads`` asked for
    (default all: large for big models). Columns: token, sink_mass, prev_token (when
    captured), state. On Bigram-Backcopy the sink head is active exactly at trigger tokens.
    """
    need(capture, "sink_mass", analyzer="dormant_tokens")
    heads = capture_heads(capture, heads, "dormant_tokens")
    mask = later_queries(capture)
    b_idx, p_idx = torch.nonzero(mask, as_tuple=True)
    frames = []
    for layer, head in heads:
        li = capture.layer_index(layer)
        sink = capture.stats["sink_mass"][b_idx, li, head, p_idx]
        data = {"input": b_idx.numpy(), "layer": layer, "head": head, "pos": p_idx.numpy(),
                "token": [capture.str_tokens[b][p] for b, p in zip(b_idx.tolist(), p_idx.tolist())],
                "sink_mass": sink.numpy()}
        if "prev_token" in capture.stats:
            data["prev_token"] = capture.stats["prev_token"][b_idx, li, head, p_idx].numpy()
        frames.append(pd.DataFrame(data))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(frame):
        frame["state"] = ["dormant" if v >= tau else "active" for v in frame["sink_mass"]]
    params = {"tau": tau, "heads": [list(h) for h in heads], "T": seq_len_param(capture)}
    share = float((frame["state"] == "dormant").mean()) if len(frame) else float("nan")
    return Findings("dormant_tokens", frame, params, level="token", summary={"dormant_share": share})
