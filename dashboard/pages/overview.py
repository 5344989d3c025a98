"""Overview: the atlas of one text (sinks, dormant and collapsed heads, massive activations, head grid)."""

from __future__ import annotations

from dash import Input, Output, dcc, html

import viz
from dashboard import ids
from dash.exceptions import PreventUpdate

from dashboard._context import Context, labelled, placeholder, visible

PATH = "/"
NAME = "Overview"

# Per-head columns of the atlas offered in the head grid, in this order when present.
GRID_COLUMNS = ("sink_alpha", "sink_score", "dormant_share", "entropy_norm", "entropy", "value_drain",
                "prev_token", "induction", "dup_token", "distance")
HEADLINES = ("sinks", "dormant_heads", "entropy", "massive_activations", "value_drains", "residual_peaks",
             "hidden_sinks", "head_types", "preplan_anchor")


def layout(ctx: Context) -> html.Div:
    return html.Div([
        html.H3("Overview"),
        html.Div(id=ids.OV_SUMMARY, children=html.P("Enter a text above and press Analyze.")),
        labelled("head grid statistic", dcc.Dropdown(id=ids.OV_STAT, options=list(GRID_COLUMNS), value="sink_alpha",
                                                     clearable=False), width="260px"),
        dcc.Graph(id=ids.OV_GRID, figure=placeholder("head grid: analyze a text")),
        html.Div([
            html.Div(dcc.Graph(id=ids.OV_MASSIVE, figure=placeholder("massive activations")),
                     style={"width": "50%", "display": "inline-block"}),
            html.Div(dcc.Graph(id=ids.OV_ENTROPY, figure=placeholder("entropy by layer")),
                     style={"width": "50%", "display": "inline-block"}),
        ]),
    ])


def summary(ctx: Context, analysis) -> list:
    """The atlas headline, one line per analyzer (the analyzers' own text), plus the heads named."""
    atlas, cap = analysis.atlas, analysis.capture
    rows = [html.P(f"{ctx.model}: {int(cap.lengths[0])} tokens, {cap.n_layers} layers x {cap.n_heads} heads; "
                   f"captured and analyzed in {analysis.seconds:.2f} s", id="overview-meta")]
    items = []
    for name in HEADLINES:
        if name in atlas and atlas[name].text:
            items.append(html.Li([html.B(name.replace("_", " ") + ": "), atlas[name].text.replace("\n", "; ")]))
    if "dormant_heads" in atlas:
        f = atlas["dormant_heads"].frame
        dormant = [f"L{r.layer}H{r.head}" for r in f.itertuples() if r.state == "dormant"]
        items.append(html.Li([html.B("dormant heads: "), ", ".join(dormant[:40]) or "none"
                              + ("" if len(dormant) <= 40 else f" ... ({len(dormant)})")]))
    if "entropy" in atlas:
        f = atlas["entropy"].frame
        collapsed = [f"L{r.layer}H{r.head}" for r in f.itertuples() if r.collapsed]
        items.append(html.Li([html.B("collapsed heads: "), ", ".join(collapsed[:40]) or "none"]))
    for name, why in atlas.skipped.items():
        items.append(html.Li(f"{name}: skipped ({why})"))
    return rows + [html.Ul(items, style={"fontSize": "13px"})]


def render(ctx: Context, key: str | None, stat: str):
    """Figures for the tab's current analysis (plain function: the callback only forwards)."""
    analysis = ctx.analysis(key)
    if analysis is None:
        empty = placeholder("analyze a text to see this")
        return [html.P("Enter a text above and press Analyze.")], empty, empty, empty
    atlas = analysis.atlas
    table = atlas.to_frame()
    column = stat if stat in table.columns else "sink_alpha"
    grid = viz.head_grid(table, column, title=f"{column} per head (click a cell to open it on the Attention page)",
                         hover_columns=[c for c in ("sink_alpha", "entropy_norm", "value_drain", "state", "role")
                                        if c in table.columns and c != column])
    massive = (viz.massive_profile(atlas["massive_activations"]) if "massive_activations" in atlas
               else placeholder("no massive-activation statistics"))
    ent = viz.entropy_by_layer(atlas["entropy"]) if "entropy" in atlas else placeholder("no entropy statistics")
    return summary(ctx, analysis), grid, massive, ent


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.OV_SUMMARY, "children"), Output(ids.OV_GRID, "figure"), Output(ids.OV_MASSIVE, "figure"),
                  Output(ids.OV_ENTROPY, "figure"), Input(ids.RESULT_KEY, "data"), Input(ids.OV_STAT, "value"),
                  Input(ids.URL, "pathname"))
    def _render(key, stat, path):
        if not visible(path, PATH):
            raise PreventUpdate
        return render(ctx, key, stat)
