"""Attention entropy per head and entropy collapse (METHODS sec 3, sigmaReparam).

Ent(A_i) = -sum_j A[i, j] ln A[i, j], reported raw (nats) and normalised by ln(i + 1), the
entropy of uniform attention over the i + 1 keys row i sees, so heads compare across
lengths. The capture's kernel computes the exact entropy (0 ln 0 = 0); METHODS writes
ln(A + 1e-6), which differs by at most ~1e-6 x (i + 1) nats. Row 0 sees one key (entropy
0, normalisation undefined) and is left out of every mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from lens.record import Capture
from lens.analyzers._common import head_frame, later_queries, need, same_shape, seq_len_param, top_heads
from lens.analyzers._findings import Findings

__all__ = ["entropy", "entropy_series"]


def _head_entropy(capture: Capture) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean raw and normalised entropy over real queries i >= 1 and inputs: two ``[layer, head]``."""
    return _entropy_means(entropy_partial(capture))


def entropy_partial(capture: Capture) -> dict:
    """Sums of raw and normalised entropy over real queries i >= 1 and inputs, and their count (``[layer, head]``)."""
    need(capture, "entropy", "entropy_norm", analyzer="entropy")
    mask = later_queries(capture)[:, None, None, :].double().expand_as(capture.stats["entropy"])
    return {"raw": (capture.stats["entropy"].double() * mask).sum(dim=(0, 3)),
            "norm": (capture.stats["entropy_norm"].double() * mask).sum(dim=(0, 3)), "count": mask.sum(dim=(0, 3))}


def _entropy_means(part: dict) -> tuple[torch.Tensor, torch.Tensor]:
    c = part["count"]
    nan = torch.full_like(c, float("nan"))
    return (torch.where(c > 0, part["raw"] / c.clamp(min=1), nan),
            torch.where(c > 0, part["norm"] / c.clamp(min=1), nan))


def entropy(capture: Capture, *, collapse_below: float = 0.05) -> Findings:
    """Per head: mean row entropy (nats) and normalised entropy; ``collapsed`` when normalised < collapse_below.

    Means are over real queries i >= 1 of every input. The 0.05 threshold is ours (the
    paper gives none, METHODS sec 3).
    """
    return entropy_finish(entropy_partial(capture), collapse_below=collapse_below, T=seq_len_param(capture),
                          layers=capture.blocks, n_heads=capture.n_heads)


def entropy_finish(part: dict, *, collapse_below: float, T, layers: Sequence[int], n_heads: int) -> Findings:
    """The ``entropy`` Findings from (summed) ``entropy_partial`` results."""
    raw, norm = _entropy_means(part)
    collapsed = norm < collapse_below
    frame = head_frame(layers, n_heads, entropy=raw, entropy_norm=norm, collapsed=collapsed)
    n = int(collapsed.sum())
    params = {"collapse_below": collapse_below, "T": T, "queries": "real i >= 1"}
    summary = {"n_collapsed": n, "mean_entropy": float(raw.mean()), "mean_entropy_norm": float(norm.mean()),
               "per_layer_norm": norm.mean(1).tolist()}
    text = (f"mean {float(raw.mean()):.2f} nats (normalised {float(norm.mean()):.2f}); {n} collapsed head(s) "
            f"(normalised < {collapse_below:g}); sharpest: {top_heads(norm, largest=False, layers=layers)}")
    return Findings("entropy", frame, params, level="head", summary=summary, text=text)


def entropy_series(captures: Sequence[Capture], *, labels: Sequence | None = None, collapse_below: float = 0.05,
                   drop_to: float = 0.1, early: int = 0) -> Findings:
    """Per head entropy over a series of Captures (e.g. training checkpoints on the same prompts).

    One row per (checkpoint, layer, head): entropy, entropy_norm, ``ratio`` = entropy / the
    head's entropy at checkpoint index ``early`` and ``collapsed`` = normalised entropy <
    collapse_below OR ratio < drop_to (METHODS sec 3: mean entropy below 0.1x its early value).
    labels: one per capture (default 0, 1, 2, ...), e.g. training steps.
    """
    captures = list(captures)
    layers, n_heads = same_shape(captures, "entropy_series")
    labels = list(range(len(captures))) if labels is None else list(labels)
    if len(labels) != len(captures):
        raise ValueError(f"got {len(labels)} labels for {len(captures)} captures")
    if not 0 <= early < len(captures):
        raise ValueError(f"early must index a capture (0..{len(captures) - 1}), got {early}")
    per = [_head_entropy(c) for c in captures]
    base = per[early][0]
    frames = []
    for label, (raw, norm) in zip(labels, per):
        ratio = raw / base
        f = head_frame(layers, n_heads, entropy=raw, entropy_norm=norm, ratio=ratio,
                       collapsed=(norm < collapse_below) | (ratio < drop_to))
        f.insert(0, "checkpoint", label)
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    last = frame[frame["checkpoint"] == labels[-1]]
    params = {"collapse_below": collapse_below, "drop_to": drop_to, "early": labels[early],
              "labels": [str(x) for x in labels]}
    means = frame.groupby("checkpoint", sort=False)["entropy"].mean()
    summary = {"mean_entropy": [float(means[x]) for x in labels], "n_collapsed_last": int(last["collapsed"].sum())}
    text = (f"mean entropy {' -> '.join(f'{v:.2f}' for v in summary['mean_entropy'])} nats; "
            f"{summary['n_collapsed_last']} head(s) collapsed at {labels[-1]}")
    return Findings("entropy_series", frame, params, level="checkpoint", summary=summary, text=text)
