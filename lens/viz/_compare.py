"""Before/after an edit: next-token distributions side by side (patterns: ``viz.pattern_comparison``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from lens.viz._common import LAYOUT, as_array, clean

__all__ = ["distribution_shift", "next_token_comparison"]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    e = np.exp(z)
    return e / e.sum()


def distribution_shift(before: np.ndarray, after: np.ndarray) -> dict:
    """KL(before || after) in nats, total variation distance and whether the top-1 token changed.

    before, after: probability vectors ``[vocab]`` (each sums to 1).
    """
    p, q = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    mask = p > 0
    with np.errstate(divide="ignore"):
        kl = float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-300)))))
    return {"kl": kl, "tv": float(0.5 * np.abs(p - q).sum()), "top1_before": int(p.argmax()),
            "top1_after": int(q.argmax()), "top1_changed": bool(p.argmax() != q.argmax())}


def next_token_comparison(before, after, labels: Sequence[str] | None = None, *, k: int = 10,
                          logits: bool = True, title: str | None = None) -> go.Figure:
    """Grouped bars of the next-token probabilities before and after an edit.

    before, after: ``[vocab]`` logits (``logits=True``, softmaxed here) or probabilities.
    labels: token strings indexed by token id, or None to use the ids; only the tokens in
    either top-``k`` are drawn (ordered by the probability before). Trace 0 = before,
    trace 1 = after; ``fig.data[i].customdata`` holds the token ids. The title gives
    KL(before || after), the total variation and the top-1 tokens.
    """
    b = as_array(before, "before", ndim=1)
    a = as_array(after, "after", ndim=1)
    if b.shape != a.shape:
        raise ValueError(f"before and after have different vocabularies: {b.shape} vs {a.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, q = (_softmax(b), _softmax(a)) if logits else (b, a)
    order_p, order_q = np.argsort(-p, kind="stable")[:k].tolist(), np.argsort(-q, kind="stable")[:k].tolist()
    top = list(dict.fromkeys([*order_p, *order_q]))
    top.sort(key=lambda i: (-p[i], -q[i]))
    name = (lambda i: clean(labels[i])) if labels is not None else (lambda i: str(i))
    x = [f"{name(i)} ({i})" if labels is not None else name(i) for i in top]
    shift = distribution_shift(p, q)
    fig = go.Figure([
        go.Bar(x=x, y=[float(p[i]) for i in top], name="before", customdata=top,
               hovertemplate="%{x}<br>before p = %{y:.4f}<extra></extra>"),
        go.Bar(x=x, y=[float(q[i]) for i in top], name="after", customdata=top,
               hovertemplate="%{x}<br>after p = %{y:.4f}<extra></extra>"),
    ])
    t1b, t1a = name(shift["top1_before"]), name(shift["top1_after"])
    fig.update_layout(**LAYOUT, barmode="group",
                      title=title or (f"next token: KL(before||after) = {shift['kl']:.4f} nats, "
                                      f"TV = {shift['tv']:.3f}; "
                                      f"top-1 {t1b!r} \u2192 {t1a!r}"),
                      xaxis=dict(title="token", type="category", tickangle=-45), yaxis=dict(title="probability"))
    return fig
