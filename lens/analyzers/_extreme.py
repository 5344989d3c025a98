"""Extreme-token phenomena: value-state drains, residual-state peaks, massive activations.

METHODS sec 2 (Active-Dormant Attention Heads) and sec 10 (Massive Activations). A sink
head parks attention on position 0 *and* position 0's value is small (a drain), so the
parked attention writes almost nothing; the residual stream at position 0 is often much
larger than elsewhere (a peak), carried by a few huge hidden dimensions (massive activations).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd
import torch

from lens.record import Capture
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
    return drains_finish(drains_partial(capture), drain_below=drain_below, T=seq_len_param(capture),
                         layers=capture.blocks, n_heads=capture.n_heads)


def drains_partial(capture: Capture) -> dict:
    """Sum over inputs (of two tokens or more) of the drain ratio: ``[layer, head]``, and their count."""
    keep = capture.lengths >= 2
    ratio = _first_vs_rest(capture.stats["value_norm"][keep], capture.lengths[keep], "mean")  # [b, L, H]
    return {"n": int(keep.sum()), "sum": ratio.sum(0)}


def drains_finish(part: dict, *, drain_below: float, T, layers: Sequence[int], n_heads: int) -> Findings:
    per_head = part["sum"] / part["n"] if part["n"] else torch.full((len(layers), n_heads), float("nan"),
                                                                     dtype=torch.double)
    frame = head_frame(layers, n_heads, value_drain=per_head, drain=per_head < drain_below)
    n_drain = int((per_head < drain_below).sum())
    params = {"drain_below": drain_below, "T": T, "n_inputs": part["n"]}
    summary = {"n_drain_heads": n_drain, "min_ratio": float(per_head.min()), "median_ratio": float(per_head.median())}
    text = (f"{n_drain} head(s) with value-drain ratio < {drain_below:g}; "
            f"smallest: {top_heads(per_head, largest=False, layers=layers)}")
    return Findings("value_drains", frame, params, level="head", summary=summary, text=text)


def residual_peaks(capture: Capture, *, peak_above: float = 2.0) -> Findings:
    """Residual-state peak ratio per layer: ||h_0^l|| / max_{j>=1} ||h_j^l|| after each block (METHODS sec 2).

    Ratio per input from ``resid_norm``, mean over inputs. ``peak`` flags ratio > ``peak_above``
    (our constant; a 3-layer Bigram-Backcopy model shows a weak ~1.5, pretrained LMs far more).
    """
    need(capture, "resid_norm", analyzer="residual_peaks")
    return peaks_finish(peaks_partial(capture), peak_above=peak_above, T=seq_len_param(capture),
                        n_layers=capture.n_blocks)


def peaks_partial(capture: Capture) -> dict:
    """Sum over inputs (of two tokens or more) of the peak ratio: ``[layer]``, and their count."""
    keep = capture.lengths >= 2
    ratio = _first_vs_rest(capture.stats["resid_norm"][keep], capture.lengths[keep], "max")  # [b, L]
    return {"n": int(keep.sum()), "sum": ratio.sum(0)}


def peaks_finish(part: dict, *, peak_above: float, T, n_layers: int) -> Findings:
    per_layer = part["sum"] / part["n"] if part["n"] else torch.full((n_layers,), float("nan"), dtype=torch.double)
    frame = pd.DataFrame({"layer": range(n_layers), "peak_ratio": per_layer.numpy(),
                          "peak": (per_layer > peak_above).numpy()})
    peaks = [int(i) for i in torch.nonzero(per_layer > peak_above).flatten()]
    params = {"peak_above": peak_above, "T": T, "n_inputs": part["n"]}
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
    part = massive_partial(capture, min_abs=min_abs, min_ratio=min_ratio)
    return massive_finish(part, params=params, n_layers=capture.n_blocks)


def massive_partial(capture: Capture, *, min_abs: float = 100.0, min_ratio: float = 1000.0) -> dict:
    """What ``massive_activations`` needs from some inputs. Shards' partials merge exactly
    (``lens.analyzers._stream.merge``): per-input top entries and medians are concatenated (the
    median of medians needs them all: one number per input and layer), counts add, sets unite."""
    s = capture.stats
    val, pos, dim = s["massive_val"].double(), s["massive_pos"].long(), s["massive_dim"].long()
    med = s["massive_median"].double()  # [b, L]
    massive = (val > min_abs) & (val / med[..., None].clamp(min=1e-30) > min_ratio)  # [b, L, 3]
    part = {"top_val": [val[:, :, 0]], "top_dim": [dim[:, :, 0]], "top_pos": [pos[:, :, 0]], "med": [med],
            "hit": massive.any(-1).double().sum(0), "dims": {}, "positions": {}, "tokens": {},
            "all_dims": Counter(dim[massive].tolist()), "all_pos": Counter(pos[massive].tolist())}
    for layer in range(capture.n_blocks):  # residual statistics: one entry per block
        hit_b, hit_r = torch.nonzero(massive[:, layer], as_tuple=True)
        hits = list(zip(hit_b.tolist(), hit_r.tolist()))
        part["dims"][layer] = {int(dim[b, layer, r]) for b, r in hits}
        part["positions"][layer] = {int(pos[b, layer, r]) for b, r in hits}
        part["tokens"][layer] = Counter(token_at(capture, b, int(pos[b, layer, r])) for b, r in hits)
    return part


def massive_finish(part: dict, *, params: dict, n_layers: int) -> Findings:
    """The per-layer ``massive_activations`` Findings from (merged) ``massive_partial`` results."""
    top_val, top_dim, top_pos, med = (torch.cat(part[k]) for k in ("top_val", "top_dim", "top_pos", "med"))
    n = top_val.shape[0]
    rows = []
    for layer in range(n_layers):
        top = top_val[:, layer]
        i = int(top.argmax())
        median = float(med[:, layer].median())
        rows.append({"layer": layer, "top_abs": float(top[i]), "top_dim": int(top_dim[i, layer]),
                     "top_pos": int(top_pos[i, layer]), "median": median,
                     "ratio": float(top[i] / max(median, 1e-30)),
                     "share": float(part["hit"][layer] / n), "dims": tuple(sorted(part["dims"][layer])),
                     "positions": tuple(sorted(part["positions"][layer])),
                     "tokens": tuple(t for t, _ in part["tokens"][layer].most_common(3))})
    frame = pd.DataFrame(rows)
    layers = [int(r["layer"]) for r in rows if r["share"] > 0]
    summary = {"layers": layers, "dims": [d for d, _ in part["all_dims"].most_common(5)],
               "positions": [p for p, _ in part["all_pos"].most_common(5)],
               "max_abs": float(top_val.max()) if top_val.numel() else 0.0}
    min_abs, min_ratio = params["min_abs"], params["min_ratio"]
    if layers:
        text = (f"in {len(layers)} layer(s) from {layers[0]}: dims {summary['dims']}, positions "
                f"{summary['positions']}, max |x| {summary['max_abs']:.0f}")
    else:
        text = f"none (max |x| {summary['max_abs']:.1f}; needs > {min_abs:g} and > {min_ratio:g} x median)"
    return Findings("massive_activations", frame, params, level="layer", summary=summary, text=text)
