"""Attention patterns with token labels: exact or pooled, one head or before/after an edit.

Convention (lens.record._data): a pattern is ``[query_pos, key_pos]`` for one input and
head. A *pooled* map (the ``pooled`` statistic) has one cell per f x f block of positions,
holding the block mean; the figure says so in its title and in every hover. Its axes are
categorical: "pos token" per row/column, or "first-last" positions per pooled block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lens.viz._common import LAYOUT, clean

__all__ = ["PatternView", "attention_pattern", "pattern_comparison", "pattern_heatmap", "pattern_view"]


@dataclass(frozen=True, eq=False)  # eq=False: a numpy matrix has no single truth value to compare by
class PatternView:
    """One head's pattern ready to draw: ``matrix [rows, cols]`` and where its cells sit.

    rows/cols: the token position each cell starts at; ``pool``: positions per cell (1 =
    exact); ``source``: "pattern" (the full rows kept by the capture) or "pooled".
    """

    matrix: np.ndarray
    rows: list[int]
    cols: list[int]
    pool: int
    source: str
    tokens: list[str]
    layer: int
    head: int
    n_tokens: int


def pattern_view(capture, layer: int, head: int, *, input: int = 0,
                 window: tuple[int, int] | None = None) -> PatternView:
    """The best pattern the capture holds for (layer, head) and input, cut to the query ``window``.

    Uses the exact rows in ``capture.patterns[(layer, head)]`` when the capture kept them
    (and they cover the window), else the ``pooled`` statistic (pool factor from
    ``stats["pool_factor"]``). window: (start, stop) query positions, None = all real ones.
    Keys are cut to the real tokens (and, causally, to ``stop``).
    """
    li = capture.layer_index(layer)  # layer is a block number; a block without attention raises
    if not 0 <= head < capture.n_heads:
        raise ValueError(f"head ({layer}, {head}) does not exist: {capture.n_heads} heads")
    if not 0 <= input < capture.n_inputs:
        raise ValueError(f"input {input} does not exist: the capture holds {capture.n_inputs}")
    n = int(capture.lengths[input])
    tokens = list(capture.str_tokens[input])
    start, stop = (0, n) if window is None else (int(window[0]), int(window[1]))
    if not 0 <= start < stop:
        raise ValueError(f"window must be (start, stop) with 0 <= start < stop, got {window!r}")
    stop = min(stop, n)
    if start >= stop:
        raise ValueError(f"window {window!r} lies past the input's {n} tokens")
    kept = capture.patterns.get((layer, head))
    pw = capture.meta.get("pattern_window")
    w0, w1 = (0, n) if pw is None else (int(pw[0]), min(int(pw[1]), n))
    if kept is not None and w0 <= start and stop <= w1:
        p = kept[input].detach().cpu().double().numpy()  # [rows of the window, key_pos]
        mat = p[start - w0:stop - w0, :stop]
        return PatternView(mat, list(range(start, stop)), list(range(stop)), 1, "pattern", tokens, layer, head, n)
    if "pooled" not in capture.stats:
        raise KeyError("the capture holds neither this head's pattern nor the pooled statistic: capture with "
                       f"patterns=[({layer}, {head})] or stats including 'pooled'")
    pooled = capture.stats["pooled"][input, li, head].detach().cpu().double().numpy()
    f = int(capture.stats["pool_factor"][input, li]) if "pool_factor" in capture.stats else 1
    n_blocks = -(-n // f)
    r0, r1 = start // f, -(-stop // f)
    mat = pooled[r0:r1, :min(r1, n_blocks)]
    return PatternView(mat, [i * f for i in range(r0, r1)], [j * f for j in range(mat.shape[1])], f, "pooled",
                       tokens, layer, head, n)


def pattern_heatmap(view: PatternView, *, max_labels: int = 48, zmax: float | None = None,
                    colorscale: str = "Blues", showscale: bool = True) -> go.Heatmap:
    """A heatmap trace of a PatternView: x = key labels, y = query labels, hover with tokens.

    The axes are categorical with one unique label per row/column ("pos token" for exact
    maps, "first-last" position ranges for pooled ones), so the hover reads the tokens from
    x and y: no per-cell text, which kept a 128-token map at 0.7 MB of JSON and slowed
    every redraw in the browser.
    """
    pooled = f" (block mean, {view.pool}x{view.pool})" if view.pool > 1 else ""
    hover = f"q %{{y}} \u2192 k %{{x}}{pooled}<br>p = %{{z:.4f}}<extra></extra>"
    # numpy arrays, not lists: plotly validates and serialises them ~10x faster (base64 typed arrays)
    return go.Heatmap(z=np.asarray(view.matrix, dtype=float), x=axis_labels(view, view.cols),
                      y=axis_labels(view, view.rows), colorscale=colorscale,
                      zmin=0, zmax=zmax, showscale=showscale, hovertemplate=hover)


def axis_labels(view: PatternView, positions) -> list[str]:
    """One unique category label per row or column: "pos token", or "first-last" when pooled."""
    if view.pool == 1:
        return [f"{p} {clean(view.tokens[p])}" if p < len(view.tokens) else str(p) for p in positions]
    last = view.n_tokens - 1
    return [f"{p}-{min(p + view.pool - 1, last)}" for p in positions]


def _axes(fig: go.Figure, view: PatternView, max_labels: int, row: int | None = None, col: int | None = None):
    kw = {} if row is None else dict(row=row, col=col)
    for update, positions, title in ((fig.update_xaxes, view.cols, "key"), (fig.update_yaxes, view.rows, "query")):
        labels = axis_labels(view, positions)
        step = max(1, math.ceil(len(labels) / max_labels))
        extra = dict(tickangle=-60) if title == "key" else dict(autorange="reversed")
        update(type="category", tickvals=labels[::step], ticktext=labels[::step], title_text=title, **extra, **kw)


def _pool_note(view: PatternView) -> str:
    if view.pool == 1:
        return "exact"
    return f"pooled {view.pool}x{view.pool}: each cell is a block mean"


def attention_pattern(capture, layer: int, head: int, *, input: int = 0, window: tuple[int, int] | None = None,
                      max_labels: int = 32, title: str | None = None) -> go.Figure:
    """One head's attention pattern with token labels (``pattern_view`` says which source is used).

    ``fig.data[0].z`` is the matrix drawn ([query rows, key columns]); the title gives the
    head as "L{layer} H{head}" and whether the map is exact or pooled (and by how much).
    """
    view = pattern_view(capture, layer, head, input=input, window=window)
    fig = go.Figure(pattern_heatmap(view, max_labels=max_labels))
    _axes(fig, view, max_labels)
    rows = f"queries {view.rows[0]}-{min(view.rows[-1] + view.pool, view.n_tokens) - 1}"
    fig.update_layout(**LAYOUT, title=title or f"L{layer} H{head} attention ({_pool_note(view)}; {rows})",
                      height=560)
    fig.update_layout(margin=dict(l=110, r=20, t=50, b=110))
    return fig


def pattern_comparison(before: PatternView, after: PatternView, *, max_labels: int = 32,
                       title: str | None = None) -> go.Figure:
    """Before, after and after - before for one head under an edit (three panels, shared axes).

    ``fig.data`` = [before, after, difference]; the difference has the same shape as the
    inputs (they must come from the same text and pooling).
    """
    if before.matrix.shape != after.matrix.shape or before.pool != after.pool:
        raise ValueError(f"before and after differ in shape {before.matrix.shape} vs {after.matrix.shape} or "
                         f"pooling {before.pool} vs {after.pool}: compare patterns of the same text and window")
    diff = after.matrix - before.matrix
    fig = make_subplots(rows=1, cols=3, subplot_titles=("before", "after", "after \u2212 before"),
                        horizontal_spacing=0.06)
    zmax = float(max(before.matrix.max(initial=0), after.matrix.max(initial=0))) or 1.0
    fig.add_trace(pattern_heatmap(before, zmax=zmax, showscale=False), row=1, col=1)
    fig.add_trace(pattern_heatmap(after, zmax=zmax, showscale=False), row=1, col=2)
    m = float(np.abs(diff).max(initial=0)) or 1.0
    d = pattern_heatmap(PatternView(diff, before.rows, before.cols, before.pool, before.source, before.tokens,
                                    before.layer, before.head, before.n_tokens), colorscale="RdBu_r")
    d.update(zmin=-m, zmax=m, zmid=0, hovertemplate=d.hovertemplate.replace("p = %{z:.4f}", "\u0394p = %{z:+.4f}"),
             colorbar=dict(title=dict(text="\u0394p")))
    fig.add_trace(d, row=1, col=3)
    for c in (1, 2, 3):
        _axes(fig, before, max_labels, row=1, col=c)
    fig.update_layout(**LAYOUT, height=460,
                      title=title or f"L{before.layer} H{before.head} pattern under the edit ({_pool_note(before)}; "
                                     f"max |\u0394p| = {float(np.abs(diff).max(initial=0)):.3f})")
    fig.update_layout(margin=dict(l=90, r=20, t=70, b=100))
    return fig
