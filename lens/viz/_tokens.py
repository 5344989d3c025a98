"""Per-token figures: a token strip coloured by any per-token value, and the WAAD/FAI reasoning profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lens.viz._common import LAYOUT, as_array, clean, frame_of, marked, nan_to_none, need_columns, tick_labels

__all__ = ["reasoning_profile", "token_strip"]

MARK_SYMBOLS = ("diamond", "circle", "square", "cross")
KNOWN_MARKS = {"anchor": ("star", "crimson"), "preplan": ("triangle-down", "darkorange")}


def token_strip(tokens: Sequence[str], values, *, name: str = "value",
                marks: Mapping[str, Sequence[int]] | None = None, per_row: int = 32,
                colorscale: str = "YlOrRd", title: str | None = None) -> go.Figure:
    """The tokens of one input in reading order, each cell coloured by ``values[pos]``.

    tokens: the input's tokens (strings); values: ``[pos]`` numbers (NaN = no value, drawn
    blank), e.g. FAI, WAAD, sink mass or attention received. Long inputs wrap after
    ``per_row`` tokens. marks: {label: positions} drawn as symbols on the marked tokens
    (e.g. {"anchor": [...], "preplan": [...]}).
    ``fig.data[0].z`` is the grid of values ([rows, per_row], None past the end) and
    ``fig.data[0].customdata`` the position of each cell.
    """
    vals = as_array(values, "token_strip values", ndim=1)
    tokens = list(tokens)
    if len(tokens) != vals.shape[0]:
        raise ValueError(f"token_strip: {len(tokens)} tokens but {vals.shape[0]} values")
    if not tokens:
        raise ValueError("token_strip: no tokens to draw")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    n = len(tokens)
    width = min(per_row, n)
    n_rows = -(-n // width)
    z = [[None] * width for _ in range(n_rows)]
    text = [[""] * width for _ in range(n_rows)]
    full = [[""] * width for _ in range(n_rows)]  # the whole token in the hover (cells show it cut to 12)
    pos = [[None] * width for _ in range(n_rows)]
    for p in range(n):
        r, c = divmod(p, width)
        v = float(vals[p])
        z[r][c] = None if np.isnan(v) else v
        text[r][c] = clean(tokens[p])
        full[r][c] = marked(tokens[p])
        pos[r][c] = p
    fig = go.Figure(go.Heatmap(z=z, text=text, hovertext=full, customdata=pos, texttemplate="%{text}",
                               textfont=dict(size=11), colorscale=colorscale,
                               xgap=2, ygap=2, colorbar=dict(title=dict(text=name)),
                               hovertemplate="pos %{customdata}: %{hovertext}<br>" + name + " = %{z:.4g}<extra></extra>"))
    for k, (label, where) in enumerate((marks or {}).items()):
        where = [int(p) for p in where if 0 <= int(p) < n]
        symbol, color = KNOWN_MARKS.get(label, (MARK_SYMBOLS[k % len(MARK_SYMBOLS)], ["black", "royalblue"][k % 2]))
        fig.add_trace(go.Scatter(
            x=[p % width for p in where], y=[p // width - 0.38 for p in where], mode="markers", name=label,
            marker=dict(symbol=symbol, size=11, color=color, line=dict(width=1, color="white")),
            customdata=where, hovertemplate=label + " at pos %{customdata}<extra></extra>"))
    fig.data[0].colorbar.update(thickness=12, len=1.0, y=0.5, yanchor="middle")
    fig.update_layout(**LAYOUT, title=title or f"tokens coloured by {name}", height=130 + 36 * n_rows,
                      xaxis=dict(visible=False), yaxis=dict(visible=False, autorange="reversed"),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return fig


def reasoning_profile(findings, *, input: int = 0, max_labels: int = 40, title: str | None = None) -> go.Figure:
    """WAAD (top) and FAI (bottom) along one input, preplan and anchor tokens marked.

    findings: ``lens.analyzers.preplan_anchor`` (one row per (input, pos) with token, waad,
    fai, preplan, anchor). Traces: 0 = WAAD line, 1 = preplan markers, 2 = FAI line,
    3 = anchor markers; x is the token position, ticks show the tokens.
    """
    frame = frame_of(findings, "reasoning_profile")
    need_columns(frame, "reasoning_profile", "input", "pos", "token", "waad", "fai", "preplan", "anchor")
    f = frame[frame["input"] == input].sort_values("pos")
    if f.empty:
        raise ValueError(f"reasoning_profile: no rows for input {input}")
    pos = f["pos"].astype(int).tolist()
    toks = f["token"].astype(str).tolist()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("WAAD (local heads): windowed attention distance",
                                        "FAI (global heads): attention received from later tokens"))
    hover = [f"{p} {marked(t)}" for p, t in zip(pos, toks)]
    fig.add_trace(go.Scatter(x=pos, y=nan_to_none(f["waad"].astype(float).tolist()), mode="lines", name="WAAD",
                             text=hover, hovertemplate="%{text}<br>WAAD %{y:.3f}<extra></extra>"), row=1, col=1)
    pre = f[f["preplan"]]
    fig.add_trace(go.Scatter(x=pre["pos"].tolist(), y=pre["waad"].astype(float).tolist(), mode="markers",
                             name="preplan", marker=dict(symbol="triangle-down", size=11, color="darkorange"),
                             text=[clean(t) for t in pre["token"]],
                             hovertemplate="preplan %{x} %{text}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=pos, y=nan_to_none(f["fai"].astype(float).tolist()), mode="lines", name="FAI",
                             text=hover, hovertemplate="%{text}<br>FAI %{y:.4f}<extra></extra>"), row=2, col=1)
    anc = f[f["anchor"]]
    fig.add_trace(go.Scatter(x=anc["pos"].tolist(), y=anc["fai"].astype(float).tolist(), mode="markers",
                             name="anchor", marker=dict(symbol="star", size=12, color="crimson"),
                             text=[clean(t) for t in anc["token"]],
                             hovertemplate="anchor %{x} %{text}<extra></extra>"), row=2, col=1)
    tv, tt = tick_labels(toks, list(range(len(toks))), max_labels)
    fig.update_xaxes(tickvals=[pos[i] for i in tv], ticktext=tt, tickangle=-60, row=2, col=1)
    summary = getattr(findings, "summary", {}) or {}
    sub = ""
    if summary.get("coupling") is not None and summary.get("chance") is not None:
        sub = (f": {100 * summary['coupling']:.0f}% of anchors at/after a preplan token "
               f"(chance {100 * summary['chance']:.0f}%)")
    fig.update_layout(**LAYOUT, height=520, title=title or f"preplan and anchor tokens{sub}")
    fig.update_layout(margin=dict(l=60, r=20, t=70, b=110))
    return fig
