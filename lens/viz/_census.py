"""Figures of saved work: per-head distributions of a store, runs compared with their CIs, a sweep as a heatmap.

Builders take the small tables the queries return (quantiles per head, summary rows, a
sweep grid), never the raw data, so a figure of a store with a million inputs is as small
as one of ten.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lens.viz._common import LAYOUT, need_columns

__all__ = ["head_distributions", "run_comparison", "sweep_heatmap"]

CONDITION_ORDER = ("baseline", "edited", "delta")


def _num(v):
    return None if v is None or pd.isna(v) else float(v)


def head_distributions(frame: pd.DataFrame, stat: str, *, title: str | None = None) -> go.Figure:
    """One box per head from precomputed quartiles: whiskers from min to max, the mean dashed.

    frame: one row per head with layer, head, q1, median, q3, min, max, mean (and n), as
    ``Census.distributions`` returns. ``fig.data[0].x[k]`` names head k ("L1 H3"), and
    ``q1/median/q3/lowerfence/upperfence/mean`` hold its numbers.
    """
    need_columns(frame, "head_distributions", "layer", "head", "q1", "median", "q3", "min", "max", "mean")
    labels = [f"L{int(r.layer)} H{int(r.head)}" for r in frame.itertuples()]
    n = frame["n"].astype(int).tolist() if "n" in frame else [None] * len(frame)
    fig = go.Figure(go.Box(
        x=labels, q1=[_num(v) for v in frame["q1"]], median=[_num(v) for v in frame["median"]],
        q3=[_num(v) for v in frame["q3"]], lowerfence=[_num(v) for v in frame["min"]],
        upperfence=[_num(v) for v in frame["max"]], mean=[_num(v) for v in frame["mean"]], boxmean=True,
        name=stat, marker_color="#4c6ef5", customdata=n, showlegend=False,
        hovertemplate="%{x}<br>" + stat + ": median %{median:.4g}, IQR [%{q1:.4g}, %{q3:.4g}], "
                      "range [%{lowerfence:.4g}, %{upperfence:.4g}], mean %{mean:.4g}<extra></extra>"))
    fig.update_layout(**LAYOUT, title=title or f"{stat} across inputs, per head (box: quartiles; whiskers: min-max)",
                      height=380, xaxis=dict(title="head", tickangle=-45 if len(labels) > 16 else 0),
                      yaxis=dict(title=stat))
    return fig


def run_comparison(frame: pd.DataFrame, *, labels: dict[str, str] | None = None,
                   title: str | None = None) -> go.Figure:
    """Runs side by side: one panel per metric, bars per condition (baseline, edited, delta), one colour per run,
    the bootstrap CI as error bars.

    frame: long summary rows (run_id, metric, condition, value, ci_low, ci_high), e.g.
    ``Runs.compare``. Trace k is one (run, metric): ``x`` the conditions, ``y`` the values,
    ``error_y.array`` = ci_high - value and ``error_y.arrayminus`` = value - ci_low.
    """
    need_columns(frame, "run_comparison", "run_id", "metric", "condition", "value", "ci_low", "ci_high")
    runs = list(dict.fromkeys(frame["run_id"]))
    metrics = list(dict.fromkeys(frame["metric"]))
    labels = labels or {}
    colors = ("#4c6ef5", "#f59f00", "#12b886", "#e64980", "#7950f2", "#868e96")
    fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=metrics, horizontal_spacing=0.08)
    for m, metric in enumerate(metrics):
        for r, rid in enumerate(runs):
            g = frame[(frame["run_id"] == rid) & (frame["metric"] == metric)]
            g = g.assign(_c=g["condition"].map({c: i for i, c in enumerate(CONDITION_ORDER)})).sort_values("_c")
            v, lo, hi = (g[c].to_numpy(dtype=float) for c in ("value", "ci_low", "ci_high"))
            fig.add_trace(go.Bar(
                x=g["condition"].tolist(), y=v.tolist(), name=labels.get(rid, rid), legendgroup=rid,
                showlegend=m == 0, marker_color=colors[r % len(colors)],
                error_y=dict(type="data", symmetric=False, array=(hi - v).tolist(), arrayminus=(v - lo).tolist()),
                customdata=np.stack([lo, hi], axis=-1).tolist(), meta=metric,
                hovertemplate=f"{labels.get(rid, rid)}<br>{metric} %{{x}}: %{{y:.4g}} "
                              "[%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra></extra>"),
                row=1, col=m + 1)
    fig.update_layout(**LAYOUT, barmode="group", height=380,
                      title=title or "runs compared (bars: value; error bars: bootstrap CI)",
                      legend=dict(orientation="h", y=-0.15))
    return fig


def sweep_heatmap(grid: dict, *, x: str, y: str, metric: str, title: str | None = None) -> go.Figure:
    """A sweep over two swept keys: ``metric`` as colour (the mean of a cell's runs), each run's value and
    CI in the hover.

    grid: ``lens.dashboard._saved_work.sweep_grid``'s dict (x, y labels; z rows; runs per cell).
    ``fig.data[0].z[i][j]`` is the cell at y value i, x value j.
    """
    hover = []
    for i, yv in enumerate(grid["y"]):
        row = []
        for j, xv in enumerate(grid["x"]):
            lines = []
            for rid, v, lo, hi, others in grid["runs"][i][j]:
                where = ", ".join(f"{k} = {o}" for k, o in others.items())
                num = "no value" if v is None or pd.isna(v) else f"{v:.4g} [{lo:.4g}, {hi:.4g}]"
                lines.append(f"{rid}: {num}" + (f" ({where})" if where else ""))
            row.append("<br>".join(lines) or "no complete run")
        hover.append(row)
    z = grid["z"]
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(v) for v in grid["x"]], y=[str(v) for v in grid["y"]], customdata=hover,
        colorscale="RdBu" if _signed(z) else "Viridis", zmid=0 if _signed(z) else None,
        colorbar=dict(title=dict(text=metric)), texttemplate="%{z:.3g}",
        hovertemplate=f"{x} = %{{x}}<br>{y} = %{{y}}<br>{metric} = %{{z:.4g}}<br>%{{customdata}}<extra></extra>"))
    avg = f" (mean over {', '.join(grid['others'])})" if grid.get("others") else ""
    fig.update_layout(**LAYOUT, title=title or f"{metric} over the sweep{avg}", height=int(
        min(640, max(300, 160 + 48 * len(grid["y"])))), xaxis=dict(title=x, type="category"),
                      yaxis=dict(title=y, type="category", autorange="reversed"))  # first value on top
    return fig


def _signed(z) -> bool:
    vals = [v for row in z for v in row if v is not None]
    return bool(vals) and min(vals) < 0 < max(vals)
