"""The dashboard's look, in one place: Mantine components (dash-mantine-components), themed figures,
hidden-until-drawn graphs, notifications and sortable tables (dash-ag-grid).

Why Mantine and not dash-bootstrap-components: both were tried. Mantine ships its CSS inside
the component bundle, so the app is styled with no stylesheet from a CDN (no machine here
reaches one), and its colour scheme switches light/dark at run time; Bootstrap needs its CSS
served from our own assets and a separate dark mode. Every page builds its controls from
the helpers below, so the pages look alike and a change of look happens here.
"""

from __future__ import annotations

import dash_ag_grid as dag
import dash_mantine_components as dmc
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dcc, html

#: The theme store's values; figures take plotly's matching template.
LIGHT, DARK = "light", "dark"
TEMPLATES = {LIGHT: "plotly_white", DARK: "plotly_dark"}
HIDDEN = {"display": "none"}
SHOWN = {"display": "block"}

THEME = {
    "primaryColor": "indigo",
    "fontFamily": "Inter, system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    "defaultRadius": "md",
    "components": {"Card": {"defaultProps": {"withBorder": True, "shadow": "xs", "padding": "md"}}},
}


def themed(fig: go.Figure, theme: str | None) -> go.Figure:
    """``fig`` in the page's colour scheme: plotly's light or dark template, transparent paper.

    Every ``viz`` figure is built on the light template, so the light theme only clears the
    paper: setting a template copies it into the figure, a third of a 16K Overview's
    server time when it was done for every figure.
    """
    if theme == DARK:
        fig.update_layout(template=TEMPLATES[DARK], plot_bgcolor="#1f2023")
    fig.update_layout(paper_bgcolor="rgba(0,0,0,0)")
    return fig


def card(title: str | None, *children, id: str | None = None, **style) -> dmc.Card:
    """A titled card; ``style`` goes to the card (e.g. ``mb="md"``)."""
    head = [dmc.Text(title, fw=600, size="sm", mb="xs")] if title else []
    kw = {"id": id} if id else {}
    return dmc.Card(head + list(children), mb=style.pop("mb", "md"), **kw, **style)


def graph(graph_id: str, height: int = 360, empty: str | None = None, responsive: bool = False) -> html.Div:
    """A figure that takes no room until its callback draws it (``shown``).

    responsive: resize with the card. Needed for a figure drawn while its page is hidden
    (plotly then keeps its default width); it costs every page switch a redraw of the
    figure (0.3 -> 0.8 s to show a 16K Overview), so pages that draw only while visible
    leave it off.

    ``empty``: a quiet line shown in its place until then (what to do to get the figure);
    its id is ``graph_id + "-empty"``, and the callback hides it with ``shown``.
    """
    parts = [dcc.Graph(id=graph_id, style={**HIDDEN, "height": f"{height}px"}, config={"displaylogo": False},
                       responsive=True if responsive else "auto")]
    if empty:
        parts.insert(0, dmc.Text(empty, id=graph_id + "-empty", c="dimmed", size="sm", py="xs"))
    return html.Div(parts)


def shown(fig: go.Figure | None, theme: str | None, height: int | None = None):
    """(figure, graph style) for a ``graph``: hidden while ``fig`` is None.

    The box takes the figure's own height when it has one (a head grid grows with the
    layers), else ``height``: a box lower than its figure would cut it off.
    """
    if fig is None:
        return go.Figure(), HIDDEN
    style = {**SHOWN}
    height = fig.layout.height or height
    if height:
        style["height"] = f"{int(height)}px"
    return themed(fig, theme), style


def empty_style(fig: go.Figure | None) -> dict:
    """The style of a graph's empty-state line: shown only while there is no figure."""
    return {"display": "none"} if fig is not None else {}


def field(label: str, component, width: int | str | None = None, **kw):
    """A labelled control (Mantine draws labels itself for inputs; this is for the others)."""
    style = {"minWidth": width} if width else {}
    return dmc.Stack([dmc.Text(label, size="xs", c="dimmed"), component], gap=4, style=style, **kw)


def select(select_id: str, options, value=None, label: str | None = None, width: int | str = 200, **kw) -> dmc.Select:
    """A Select over ``options`` (values, or (value, label) pairs)."""
    data = [{"value": str(o[0]), "label": str(o[1])} if isinstance(o, tuple) else {"value": str(o), "label": str(o)}
            for o in options]
    return dmc.Select(id=select_id, data=data, value=None if value is None else str(value), label=label,
                      w=width, allowDeselect=False, checkIconPosition="right", **kw)


def index_select(select_id: str, n, label: str, value: int | None = None, prefix: str = "",
                 width: int = 120) -> dmc.Select:
    """Pick one of ``0..n-1``, or of the numbers in ``n`` (a hybrid model's blocks with attention),
    searchable by typing the number; ``value`` defaults to the first."""
    choices = list(range(n)) if isinstance(n, int) else list(n)
    value = choices[0] if value is None and choices else value
    return dmc.Select(id=select_id, label=label, data=[{"value": str(i), "label": f"{prefix}{i}"} for i in choices],
                      value=str(value), w=width, searchable=True, allowDeselect=False, maxDropdownHeight=280)


def table(table_id: str, height: int = 360) -> dag.AgGrid:
    """A sortable, filterable grid; fill it with ``rows(frame)`` into ``rowData`` and ``columns(frame)``."""
    return dag.AgGrid(id=table_id, rowData=[], columnDefs=[],
                      defaultColDef={"sortable": True, "filter": True, "resizable": True, "floatingFilter": True,
                                     "minWidth": 90},
                      dashGridOptions={"animateRows": False, "pagination": True, "paginationPageSize": 50,
                                       "rowSelection": {"mode": "singleRow", "enableClickSelection": True}},
                      style={"height": f"{height}px", "width": "100%"})


def columns(frame: pd.DataFrame, pinned: tuple[str, ...] = ("layer", "head")) -> list[dict]:
    """ag-grid column definitions: numbers right-aligned with 4 significant digits, ids pinned left."""
    out = []
    for c in frame.columns:
        d: dict = {"field": str(c), "headerName": str(c).replace("_", " ")}
        if pd.api.types.is_float_dtype(frame[c]):
            d["valueFormatter"] = {"function": "params.value == null ? '' : d3.format('.4~g')(params.value)"}
            d["filter"] = "agNumberColumnFilter"
            d["type"] = "numericColumn"
        elif pd.api.types.is_integer_dtype(frame[c]):
            d["filter"] = "agNumberColumnFilter"
        if c in pinned:
            d["pinned"] = "left"
            d["width"] = 90
        out.append(d)
    return out


def rows(frame: pd.DataFrame) -> list[dict]:
    """JSON-safe records: NaN/inf as null, numpy scalars as Python numbers, objects as strings."""
    f = frame.copy()
    for c in f.columns:
        if pd.api.types.is_bool_dtype(f[c]):
            continue
        if pd.api.types.is_float_dtype(f[c]):
            v = f[c].to_numpy(dtype=float)
            f[c] = pd.Series(np.where(np.isfinite(v), v, np.nan), index=f.index).astype(object)
            f.loc[~np.isfinite(v), c] = None
        elif not pd.api.types.is_numeric_dtype(f[c]):
            f[c] = [None if v is None or (isinstance(v, float) and not np.isfinite(v)) else str(v) for v in f[c]]
    return f.to_dict("records")


def notice(title: str, message: str, kind: str = "info", autoclose: int | bool = 5000) -> list[dict]:
    """One notification for ``NotificationContainer.sendNotifications`` (kind: info | success | error)."""
    color = {"info": "indigo", "success": "teal", "error": "red"}[kind]
    return [{"action": "show", "id": f"n{np.random.randint(1 << 30)}", "title": title, "message": message,
             "color": color, "autoClose": autoclose if kind != "error" else False, "withBorder": True}]


def needs_model(what: str) -> dmc.Alert:
    """What a page shows when the dashboard runs without a model (``--model none``)."""
    return dmc.Alert(f"{what} runs the model, and this dashboard was started without one (--model none). "
                     "Start it with --model NAME to use this page; saved captures, runs and stores work as they are.",
                     title="No model loaded", color="gray", variant="light")
