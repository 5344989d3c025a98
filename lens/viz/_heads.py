"""Per-head figures: the head grid of any statistic, the active/dormant matrix, entropy by layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lens.viz._common import LAYOUT, as_array, frame_of, need_columns

__all__ = ["active_dormant_matrix", "entropy_by_layer", "head_grid"]


def head_grid(data, column: str | None = None, *, title: str | None = None, colorscale: str = "Viridis",
              hover_columns: list[str] | None = None, zmin: float | None = None,
              zmax: float | None = None) -> go.Figure:
    """Heatmap of one per-head statistic: rows are layers, columns heads; hover shows the other columns.

    data: a per-head Findings, an Atlas (its ``to_frame()``), a DataFrame with ``layer`` and
    ``head`` columns, or a ``[layer, head]`` array/tensor (then ``column`` only names it).
    ``fig.data[0].z[l][h]`` is the value of head (l, h); heads missing from the table are None.
    Boolean columns are drawn as 0/1.
    """
    if not isinstance(data, (pd.DataFrame,)) and not hasattr(data, "frame") and not hasattr(data, "to_frame"):
        z = as_array(data, "head_grid values", ndim=2)
        n_layers, n_heads = z.shape
        frame = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), n_heads),
                              "head": np.tile(np.arange(n_heads), n_layers), column or "value": z.reshape(-1)})
        column = column or "value"
    else:
        frame = frame_of(data, "head_grid")
        if column is None:
            raise ValueError("head_grid: name the column to draw")
    need_columns(frame, "head_grid", "layer", "head", column)
    n_layers = int(frame["layer"].max()) + 1
    n_heads = int(frame["head"].max()) + 1
    z: list[list] = [[None] * n_heads for _ in range(n_layers)]
    extra = hover_columns if hover_columns is not None else [
        c for c in frame.columns if c not in ("layer", "head", column) and frame[c].map(_scalar).all()][:6]
    custom: list[list] = [[[""] * len(extra) for _ in range(n_heads)] for _ in range(n_layers)]
    for row in frame.itertuples(index=False):
        r = row._asdict()
        l, h = int(r["layer"]), int(r["head"])
        v = r[column]
        z[l][h] = None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
        custom[l][h] = [_fmt(r[c]) for c in extra]
    hover = "layer %{y}, head %{x}<br>" + f"{column} = " + "%{z:.4g}"
    hover += "".join(f"<br>{c} = %{{customdata[{i}]}}" for i, c in enumerate(extra)) + "<extra></extra>"
    fig = go.Figure(go.Heatmap(z=z, x=list(range(n_heads)), y=list(range(n_layers)), customdata=custom,
                               hovertemplate=hover, colorscale=colorscale, zmin=zmin, zmax=zmax,
                               colorbar=dict(title=dict(text=column))))
    height = int(min(760, max(260, 110 + 20 * n_layers)))
    dtick = 1 if n_layers <= 12 else max(1, n_layers // 10)
    fig.update_layout(**LAYOUT, title=title or f"{column} per head", height=height, xaxis=dict(title="head", dtick=1),
                      yaxis=dict(title="layer", autorange="reversed", dtick=dtick))
    return fig


def _scalar(v) -> bool:
    return isinstance(v, (int, float, bool, str, np.number, np.bool_)) or v is None


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def active_dormant_matrix(findings, *, title: str | None = None) -> go.Figure:
    """Heads x inputs heatmap of the sink score s(x) from ``lens.analyzers.dormant_inputs``.

    Rows are heads ("L{layer}H{head}"), columns inputs (``capture:input`` when several
    captures); colour is s(x) = mean_(i>=1) A[i, 0] on [0, 1]; hover gives the state
    (dormant when s(x) >= tau). ``fig.data[0].z[r][c]`` is the score of head row r on input c.
    """
    frame = frame_of(findings, "active_dormant_matrix")
    need_columns(frame, "active_dormant_matrix", "input", "layer", "head", "sink_score", "state")
    tau = getattr(findings, "params", {}).get("tau") if hasattr(findings, "params") else None
    if "capture" not in frame.columns:
        frame = frame.assign(capture=0)
    several = frame["capture"].nunique() > 1
    cols = sorted({(int(c), int(i)) for c, i in zip(frame["capture"], frame["input"])})
    heads = sorted({(int(l), int(h)) for l, h in zip(frame["layer"], frame["head"])})
    col_of = {k: n for n, k in enumerate(cols)}
    row_of = {k: n for n, k in enumerate(heads)}
    z: list[list] = [[None] * len(cols) for _ in heads]
    state: list[list] = [[""] * len(cols) for _ in heads]
    for r in frame.itertuples(index=False):
        i, j = row_of[(int(r.layer), int(r.head))], col_of[(int(r.capture), int(r.input))]
        z[i][j] = None if np.isnan(r.sink_score) else float(r.sink_score)
        state[i][j] = r.state
    x = [f"{c}:{i}" if several else str(i) for c, i in cols]
    y = [f"L{l}H{h}" for l, h in heads]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, customdata=state, zmin=0, zmax=1, colorscale="RdBu_r",
                               colorbar=dict(title=dict(text="s(x)")),
                               hovertemplate="%{y}, input %{x}<br>s(x) = %{z:.3f}<br>%{customdata}<extra></extra>"))
    sub = f" (dormant: s(x) >= {tau:g})" if tau is not None else ""
    fig.update_layout(**LAYOUT, title=title or f"active / dormant heads per input{sub}",
                      xaxis=dict(title="input", type="category"), yaxis=dict(title="head", autorange="reversed",
                                                                             type="category"))
    return fig


def entropy_by_layer(findings, *, column: str = "entropy_norm", title: str | None = None) -> go.Figure:
    """Attention entropy per layer: every head as a dot, the layer mean as a line.

    findings: ``lens.analyzers.entropy`` (one row per head with ``entropy`` and
    ``entropy_norm``). Trace 0 holds the heads (x = layer, y = value), trace 1 the per-layer
    mean; the collapse threshold (``params["collapse_below"]``) is drawn for ``entropy_norm``.
    """
    frame = frame_of(findings, "entropy_by_layer")
    need_columns(frame, "entropy_by_layer", "layer", "head", column)
    means = frame.groupby("layer")[column].mean()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=frame["layer"].tolist(), y=frame[column].astype(float).tolist(), mode="markers",
                             name="head", customdata=frame["head"].tolist(), marker=dict(size=6, opacity=0.6),
                             hovertemplate="layer %{x}, head %{customdata}<br>" + column
                             + " = %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=means.index.tolist(), y=means.astype(float).tolist(), mode="lines+markers",
                             name="layer mean", line=dict(width=3)))
    params = getattr(findings, "params", {}) or {}
    if column == "entropy_norm" and "collapse_below" in params:
        fig.add_hline(y=params["collapse_below"], line_dash="dot", line_color="firebrick",
                      annotation_text=f"collapsed below {params['collapse_below']:g}")
    unit = "normalised entropy (H / ln keys)" if column == "entropy_norm" else f"{column} (nats)"
    fig.update_layout(**LAYOUT, title=title or "attention entropy by layer", xaxis=dict(title="layer"),
                      yaxis=dict(title=unit))
    return fig
