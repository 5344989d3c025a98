"""Residual-stream figures: the massive-activation profile per layer."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from lens.viz._common import LAYOUT, frame_of, need_columns

__all__ = ["massive_profile"]


def massive_profile(findings, *, title: str | None = None) -> go.Figure:
    """Largest |hidden-state entry| per layer against the layer's median |entry| (log scale).

    findings: ``lens.analyzers.massive_activations`` at its default per-layer level (columns
    layer, top_abs, top_dim, top_pos, median, ratio, share). Trace 0: bars of ``top_abs``
    (hover: dimension, position, ratio); trace 1: the median line. The absolute threshold
    ``params["min_abs"]`` is drawn; bars of layers with a massive entry (share > 0) are red.
    """
    frame = frame_of(findings, "massive_profile")
    need_columns(frame, "massive_profile", "layer", "top_abs", "top_dim", "top_pos", "median", "ratio")
    share = frame["share"] if "share" in frame.columns else frame["top_abs"] * 0
    colors = ["firebrick" if s > 0 else "steelblue" for s in share]
    custom = list(zip(frame["top_dim"].astype(int), frame["top_pos"].astype(int), frame["ratio"].astype(float)))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=frame["layer"].tolist(), y=frame["top_abs"].astype(float).tolist(), name="max |h|",
                         marker_color=colors, customdata=custom,
                         hovertemplate="layer %{x}: max |h| = %{y:.1f}<br>dim %{customdata[0]}, "
                                       "pos %{customdata[1]}<br>%{customdata[2]:.0f} x median<extra></extra>"))
    fig.add_trace(go.Scatter(x=frame["layer"].tolist(), y=frame["median"].astype(float).tolist(),
                             mode="lines+markers", name="median |h|"))
    params = getattr(findings, "params", {}) or {}
    if "min_abs" in params:
        fig.add_hline(y=params["min_abs"], line_dash="dot", line_color="gray",
                      annotation_text=f"|h| > {params['min_abs']:g} and > {params.get('min_ratio', 0):g} x median")
    # explicit log range: bars start at 0, which makes plotly's log autorange run away
    values = [v for v in (*frame["top_abs"].astype(float), *frame["median"].astype(float)) if v > 0]
    values.append(float(params.get("min_abs", max(values, default=1.0))))
    lo, hi = np.log10(min(values) / 2), np.log10(max(values) * 2)
    fig.update_layout(**LAYOUT, title=title or "massive activations: largest |h| per layer",
                      xaxis=dict(title="layer (output of block)", dtick=1 if len(frame) <= 12 else None),
                      yaxis=dict(title="|h|", type="log", range=[lo, hi]))
    return fig
