"""Statistics along positions for inputs of any length: WebGL traces with min/max decimation.

A 128K-token capture has 128K points per series; a browser draws that, but sending and
redrawing it on every zoom does not feel instant. ``decimate`` keeps, for each of at most
``buckets`` equal slices of the visible range, the slice's minimum and maximum in their
original order, so a spike one position wide is still drawn at its height (a plain stride
would drop it). Inside a range with fewer points than ``2 * buckets`` every point is kept.
The dashboard redraws on zoom with the new range (``x_range``), so zooming in ends at the
exact values.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from lens.viz._common import LAYOUT, as_array, marked

__all__ = ["decimate", "position_plot"]


def decimate(y, buckets: int = 2000, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, values) of ``y[start:stop]`` reduced to the min and max of each of ``buckets`` slices.

    Every extreme of the range survives: the global min and max of ``y[start:stop]`` are
    always among the returned values. NaN positions are skipped.
    """
    y = as_array(y, "values", ndim=1)
    n = len(y)
    start = max(0, int(start))
    stop = n if stop is None else min(n, int(stop))
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    if stop <= start:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    x = np.arange(start, stop)
    seg = y[start:stop]
    if len(seg) <= 2 * buckets:
        keep = ~np.isnan(seg)
        return x[keep], seg[keep]
    size = -(-len(seg) // buckets)  # ceil: every bucket but the last is full
    pad = size * buckets - len(seg)
    grid = np.concatenate([seg, np.full(pad, np.nan)]).reshape(buckets, size)
    filled = ~np.all(np.isnan(grid), axis=1)
    grid, base = grid[filled], np.arange(buckets)[filled] * size + start
    lo = np.nanargmin(grid, axis=1)
    hi = np.nanargmax(grid, axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)  # keep each bucket's two points in position order
    xs = np.stack([base + first, base + second], axis=1).ravel()
    ys = np.stack([grid[np.arange(len(grid)), first], grid[np.arange(len(grid)), second]], axis=1).ravel()
    same = np.concatenate([[False], xs[1:] == xs[:-1]])  # min and max at one position: keep it once
    return xs[~same], ys[~same]


def position_plot(series: dict[str, object], *, x_range: tuple[float, float] | None = None, buckets: int = 2000,
                  tokens: list[str] | None = None, title: str | None = None, height: int = 300) -> go.Figure:
    """One WebGL line per named series of per-position values, decimated to ``buckets`` min/max pairs.

    x_range: the positions in view (from a zoom); only they are decimated and sent, and
    the axis keeps that range. tokens: per-position token labels for the hover (inputs of
    any length; only the points drawn carry one).
    """
    if not series:
        raise ValueError("position_plot needs at least one series")
    n = max(len(as_array(v, name, ndim=1)) for name, v in series.items())
    a, b = (0, n) if x_range is None else (max(0, int(np.floor(x_range[0]))), min(n, int(np.ceil(x_range[1])) + 1))
    fig = go.Figure()
    exact = True
    for name, values in series.items():
        xs, ys = decimate(values, buckets, a, b)
        exact &= len(xs) == min(b, len(as_array(values, name))) - a
        hover = None
        if tokens is not None:
            hover = [marked(tokens[int(i)]) if int(i) < len(tokens) else "" for i in xs]
        fig.add_trace(go.Scattergl(x=xs.astype(np.int32), y=ys, mode="lines", name=name, text=hover, line=dict(width=1),
                                   hovertemplate="pos %{x}" + (" %{text}" if hover else "") + "<br>%{y:.4g}<extra>"
                                                 + name + "</extra>"))
    what = "every position" if exact else f"min and max of {buckets} slices of the range (zoom for exact values)"
    fig.update_layout(**LAYOUT, height=height, title=title or f"along positions ({what})",
                      xaxis=dict(title="position", range=[a, max(a + 1, b - 1)]), yaxis=dict(title="value"),
                      legend=dict(orientation="h", y=-0.25), uirevision="positions",
                      meta={"decimated": not exact, "range": [a, b], "n": n})
    return fig
