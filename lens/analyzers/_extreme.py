"""Extreme-token phenomena: value-state drains, residual-state peaks, massive activations.

METHODS sec 2 (Active-Dormant Attention Heads) and sec 10 (Massive Activations). A sink
head parks attention on position 0 *and* position 0's value is small (a drain), so the
parked attention writes almost nothing; the residual stream at position 0 is often much
larger than elsewhere (a peak), carried by a few huge hidden dimensions (massive activations).
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import torch

from lens._capture_data import Capture
from lens.analyzers._common import head_frame, need, seq_len_param, token_at, top_heads
from lens.analyzers._findings import Findings

__all__ = ["massive_activations", "residual_peaks", "value_drains"]


def _first_vs_rest(x: torch.Tensor, lengths: torch.Tensor, reduce: str) -> torch.Tensor:
    """x[..., 0] / (mean or max over real positions 1..T-1 of x), per input: ``x`` is [b, ..., pos]."""
    n = x.shape[-1]
    rest = (torch.arange(n)[None] < lengths[:, None]) & (torch.arange(n)[None] >= 1)  # [b, pos]
    rest = rest.reshape(rest.shape[0], *([1] * (x.dim() - 2)), n).expand_as(x)
    xd = x.double()
    if reduce == "mean":
        denom = (xd * rest).sum(-1) / rest.sum(-1).clamp(min=1)
    else:
        denom = torch.where(rest, xd, torch.full_like(xd, -torch.inf)).amax(-1)
    return xd[..., 0] / denom


def value_drains(capture: Capture, *, drain_below: float = 0.3) -> Findings:
    """Value-state drain ratio per head: ||W_O^h v_0|| / mean_{j>=1} ||W_O^h v_j|| (METHODS sec 2).

    Read from ``value_norm`` (the value vector after the head's slice of the output
    projection), ratio per input, then the mean over inputs (inputs of one token are left
    out). A small ratio is a drain; ``drain`` flags ratio < ``drain_below`` (our constant:
    the paper gives none; the Bigram-Backcopy sink head measures 0.13-0.19).
    """
    need(capture, "value_norm", analyzer="value_drains")
    keep = capture.lengths >= 2
    ratio = _first_vs_rest(capture.stats["value_norm"][keep], capture.lengths[keep], "mean")  # [b, L, H]
    per_head = ratio.mean(0)
    frame = head_frame(capture.n_layers, capture.n_heads, value_drain=per_head, drain=per_head < drain_below)
    n_drain = int((per_head < drain_below).sum())
    params = {"drain_below": drain_below, "T": seq_len_param(capture), "n_inputs": int(keep.sum())}
    summary = {"n_drain_heads": n_drain, "min_ratio": float(per_head.min()), "median_ratio": float(per_head.median())}
    text = (f"{n_drain} head(s) with value-drain ratio < {drain_below:g}; "
            f"smallest: {top_heads(per_head, largest=False)}")
    return Findings("value_drains", frame, params, level="head", summary=summary, text=text)


def residual_peaks(capture: Capture, *, peak_above: float = 2.0) -> Findings:
    """Residual-state peak ratio per layer: ||h_0^l|| / max_{j>=1} ||h_j^l|| after each block (METHODS sec 2).

    Ratio per input from ``resid_norm``, mean over inputs. ``peak`` flags ratio > ``peak_above``
    (our constant; a 3-layer Bigram-Backcopy model shows a weak ~1.5, pretrained LMs far more).
    """
    need(capture, "resid_norm", analyzer="residual_peaks")
    keep = capture.lengths >= 2
    ratio = _first_vs_rest(capture.stats["resid_norm"][keep], capture.lengths[keep], "max")  # [b, L]
    per_layer = ratio.mean(0)
    frame = pd.DataFrame({"layer": range(capture.n_layers), "peak_ratio": per_layer.numpy(),
                          "peak": (per_layer > peak_above).numpy()})
    peaks = [int(i) for i in torch.nonzero(per_layer > peak_above).flatten()]
    params = {"peak_above": peak_above, "T": seq_len_param(capture), "n_inputs": int(keep.sum())}
    best = int(per_layer.argmax())
    summary = {"peak_layers": peaks, "max_ratio": float(per_layer[best]), "max_layer": best}
    text = (f"{len(peaks)} layer(s) with ||h_0|| > {peak_above:g} x max_(j>=1) ||h_j||"
            f"{' (from layer ' + str(peaks[0]) + ')' if peaks else ''}; largest {float(per_layer[best]):.1f} "
            f"at layer {best}")
    return Findings("residual_peaks", frame, params, level="layer", summary=summary, text=text)


def massive_activations(capture: Capture, *, min_abs: float = 100.0, min_ratio: float = 1000.0,
                        per_input: bool = False) -> Findings:
    """Massive activations per layer: hidden-state entries with |x| > min_abs and > min_ratio x median |x|.

    METHODS sec 10 (Sun et al.): report the top 3 |x| per layer with their dimension and
    token position, and the median. Reads ``massive_val/pos/dim`` and ``massive_median``
    (the three largest entries of each layer's output per input). Per layer the table gives
    the largest |x| over inputs, the median of the medians, their ratio, the share of inputs
    with a massive entry, and the dimensions, positions and tokens where they occur.
    ``per_input=True`` returns the raw rows instead: one per (input, layer, rank).
    """
    need(capture, "massive_val", "massive_pos", "massive_dim", "massive_median", analyzer="massive_activations")
    s = capture.stats
    val, pos, dim = s["massive_val"].double(), s["massive_pos"].long(), s["massive_dim"].long()
    med = s["massive_median"].double()  # [b, L]
    ratio = val / med[..., None].clamp(min=1e-30)
    massive = (val > min_abs) & (ratio > min_ratio)  # [b, L, 3]
    params = {"min_abs": min_abs, "min_ratio": min_ratio, "T": seq_len_param(capture)}
    if per_input:
        b, layer, rank = torch.meshgrid(*(torch.arange(n) for n in val.shape), indexing="ij")
        frame = pd.DataFrame({
            "input": b.flatten().numpy(), "layer": layer.flatten().numpy(), "rank": rank.flatten().numpy(),
            "value": val.flatten().numpy(), "pos": pos.flatten().numpy(), "dim": dim.flatten().numpy(),
            "median": med[..., None].expand_as(val).flatten().numpy(), "ratio": ratio.flatten().numpy(),
            "massive": massive.flatten().numpy()})
        frame["token"] = [token_at(capture, i, p) for i, p in zip(frame["input"], frame["pos"])]
        return Findings("massive_activations", frame, params, level="entry",
                        summary={"n_massive": int(massive.sum())})
    rows = []
    for layer in range(capture.n_layers):
        m = massive[:, layer]
        hit_b, hit_r = torch.nonzero(m, as_tuple=True)
        dims = sorted({int(dim[b, layer, r]) for b, r in zip(hit_b.tolist(), hit_r.tolist())})
        positions = sorted({int(pos[b, layer, r]) for b, r in zip(hit_b.tolist(), hit_r.tolist())})
        tokens = Counter(token_at(capture, b, int(pos[b, layer, r])) for b, r in zip(hit_b.tolist(), hit_r.tolist()))
        top = val[:, layer, 0]
        i = int(top.argmax())
        rows.append({"layer": layer, "top_abs": float(top[i]), "top_dim": int(dim[i, layer, 0]),
                     "top_pos": int(pos[i, layer, 0]), "median": float(med[:, layer].median()),
                     "ratio": float(top[i] / max(float(med[:, layer].median()), 1e-30)),
                     "share": float(m.any(-1).double().mean()), "dims": tuple(dims), "positions": tuple(positions),
                     "tokens": tuple(t for t, _ in tokens.most_common(3))})
    frame = pd.DataFrame(rows)
    layers = [int(r["layer"]) for r in rows if r["share"] > 0]
    all_dims = Counter(dim[massive].tolist())  # over every massive entry, so the usual dimension comes first
    all_pos = Counter(pos[massive].tolist())
    summary = {"layers": layers, "dims": [d for d, _ in all_dims.most_common(5)],
               "positions": [p for p, _ in all_pos.most_common(5)], "max_abs": float(val.max()) if val.numel() else 0.0}
    if layers:
        text = (f"in {len(layers)} layer(s) from {layers[0]}: dims {summary['dims']}, positions "
                f"{summary['positions']}, max |x| {summary['max_abs']:.0f}")
    else:
        text = f"none (max |x| {summary['max_abs']:.1f}; needs > {min_abs:g} and > {min_ratio:g} x median)"
    return Findings("massive_activations", frame, params, level="layer", summary=summary, text=text)
