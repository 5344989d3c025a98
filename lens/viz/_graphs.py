"""Circuit graphs and probe curves.

Both take plain tables, so they draw whatever ``circuits`` and ``probes`` return as long as
it names its columns: edges as (source, target, weight), probe results as one row per
(layer, target) with a score and, when a control task was run, the control score.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lens.viz._common import LAYOUT, frame_of, need_columns

__all__ = ["circuit_graph", "node_layer", "probe_curves"]

_LAYER = re.compile(r"(?:^|[^a-z])(?:L|layer|blocks?\.?|mlp|MLP|m|a)(\d+)", re.IGNORECASE)


def node_layer(name: str, n_layers: int | None = None) -> float:
    """Where a node sits left to right: its layer from names like "L3H5", "a3.5", "MLP 4", "m4";
    "embed"/"tokens" go first (-1), "logits"/"output"/"resid_post" last; an MLP sits half a layer
    after the attention of its layer."""
    s = str(name)
    low = s.lower()
    if low.startswith(("embed", "tok", "input", "resid_pre")):
        return -1.0
    if low.startswith(("logit", "output", "unembed", "resid_post")):
        return float(n_layers) if n_layers is not None else float("inf")
    m = _LAYER.search(s)
    if m is None:
        return float("nan")
    layer = float(m.group(1))
    return layer + 0.5 if "mlp" in low or low.startswith("m") else layer


def circuit_graph(edges, nodes=None, *, weight: str = "weight", source: str = "source", target: str = "target",
                  node: str = "node", score: str | None = None, min_abs: float = 0.0,
                  title: str | None = None) -> go.Figure:
    """A circuit as a layered graph: nodes left to right by layer, edges coloured and sized by weight.

    edges: a table (Findings, DataFrame or list of dicts) with ``source``, ``target`` and
    ``weight`` columns (edges with |weight| < ``min_abs`` are dropped); nodes: optional table
    with a ``node`` column and a ``score`` column for the node size/colour. Traces: one per
    edge (``fig.data[i].customdata`` = [source, target, weight]), then one trace of nodes
    whose ``text`` are the node names.

    Why nine parameters: five of them name the columns to read (``source``, ``target``, ``weight``,
    ``node``, ``score``), so any table of edges draws without renaming its columns first.
    """
    e = frame_of(pd.DataFrame(edges) if isinstance(edges, list) else edges, "circuit_graph")
    need_columns(e, "circuit_graph", source, target, weight)
    e = e[e[weight].abs() >= min_abs]
    names = list(dict.fromkeys([*e[source].astype(str), *e[target].astype(str)]))
    node_scores: dict[str, float] = {}
    if nodes is not None:
        nf = frame_of(pd.DataFrame(nodes) if isinstance(nodes, list) else nodes, "circuit_graph nodes")
        need_columns(nf, "circuit_graph nodes", node)
        for n in nf[node].astype(str):
            if n not in names:
                names.append(n)
        if score is not None:
            need_columns(nf, "circuit_graph nodes", score)
            node_scores = dict(zip(nf[node].astype(str), nf[score].astype(float)))
    finite = [node_layer(n) for n in names]
    top = max([x for x in finite if np.isfinite(x)], default=0.0)
    xs = {}
    for n, x in zip(names, finite):
        xs[n] = top + 1 if x == float("inf") else (x if np.isfinite(x) else -1.0)
    columns: dict[float, list[str]] = {}
    for n in names:
        columns.setdefault(xs[n], []).append(n)
    ys = {}
    for x, members in columns.items():
        for i, n in enumerate(sorted(members)):
            ys[n] = i - (len(members) - 1) / 2
    wmax = float(e[weight].abs().max()) if len(e) else 1.0
    fig = go.Figure()
    for r in e.itertuples(index=False):
        row = r._asdict()
        s, t, w = str(row[source]), str(row[target]), float(row[weight])
        fig.add_trace(go.Scatter(
            x=[xs[s], xs[t]], y=[ys[s], ys[t]], mode="lines", showlegend=False,
            line=dict(width=1 + 6 * abs(w) / (wmax or 1), color="crimson" if w > 0 else "royalblue"),
            opacity=0.3 + 0.7 * abs(w) / (wmax or 1), customdata=[[s, t, w], [s, t, w]],
            hovertemplate="%{customdata[0]} \u2192 %{customdata[1]}<br>weight %{customdata[2]:.4g}<extra></extra>"))
    sizes = [node_scores.get(n, np.nan) for n in names]
    smax = np.nanmax(np.abs(sizes)) if node_scores else 1.0
    fig.add_trace(go.Scatter(
        x=[xs[n] for n in names], y=[ys[n] for n in names], mode="markers+text", text=names,
        textposition="top center", name="nodes",
        marker=dict(size=[14 + 16 * (abs(s) / smax if smax and np.isfinite(s) else 0) for s in sizes],
                    color="white", line=dict(width=2, color="black")),
        customdata=[None if np.isnan(s) else s for s in sizes],
        hovertemplate="%{text}<br>score %{customdata}<extra></extra>"))
    fig.update_layout(**LAYOUT, title=title or f"circuit: {len(names)} nodes, {len(e)} edges",
                      xaxis=dict(title="layer", zeroline=False), yaxis=dict(visible=False), showlegend=False)
    return fig


def probe_curves(results, *, x: str = "layer", y: str = "accuracy", control: str | None = "control",
                 group: str | None = None, error: str | None = None, title: str | None = None) -> go.Figure:
    """Probe score by layer: one line per ``group`` (e.g. the probed property or the site), the
    control task's score dashed beside it; selectivity = score - control shows in the hover.

    results: a table (Findings or DataFrame) with columns ``x``, ``y`` and optionally
    ``control``, ``group`` and ``error`` (a +- bar). Traces come in pairs per group: the
    score line, then (when present) its control line.
    """
    f = frame_of(results, "probe_curves")
    need_columns(f, "probe_curves", x, y)
    has_control = control is not None and control in f.columns
    groups = [(None, f)] if group is None or group not in f.columns else list(f.groupby(group, sort=False))
    fig = go.Figure()
    for g, sub in groups:
        sub = sub.sort_values(x)
        label = y if g is None else str(g)
        sel = (sub[y] - sub[control]).astype(float).tolist() if has_control else [float("nan")] * len(sub)
        fig.add_trace(go.Scatter(
            x=sub[x].tolist(), y=sub[y].astype(float).tolist(), mode="lines+markers", name=label,
            customdata=sel,
            error_y=dict(type="data", array=sub[error].astype(float).tolist()) if error and error in sub else None,
            hovertemplate=f"{label}<br>{x} %{{x}}: {y} %{{y:.3f}}<br>selectivity %{{customdata:.3f}}<extra></extra>"))
        if has_control:
            # markers too: a model with one layer has one point, and a line of one point draws nothing
            fig.add_trace(go.Scatter(x=sub[x].tolist(), y=sub[control].astype(float).tolist(), mode="lines+markers",
                                     name=f"{label} (control)", line=dict(dash="dash"),
                                     marker=dict(symbol="circle-open", size=8),
                                     hovertemplate=f"{label} control<br>{x} %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(**LAYOUT, title=title or f"probe {y} by {x}", xaxis=dict(title=x), yaxis=dict(title=y))
    return fig
