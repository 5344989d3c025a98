"""Overview: the atlas of one input (sinks, dormant and collapsed heads, massive activations, head grid,
every per-head number in a sortable table). Works the same for a live text and a saved capture."""

from __future__ import annotations

import dash_mantine_components as dmc
from dash import Input, Output, html
from dash.exceptions import PreventUpdate

from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, visible

PATH = "/"
NAME = "Overview"

# Per-head columns of the atlas offered in the head grid, in this order when present.
GRID_COLUMNS = ("sink_alpha", "sink_score", "dormant_share", "entropy_norm", "entropy", "value_drain",
                "prev_token", "induction", "dup_token", "distance", "learned_sink_mass")
HEADLINES = ("sinks", "dormant_heads", "entropy", "massive_activations", "value_drains", "residual_peaks",
             "hidden_sinks", "head_types", "preplan_anchor")
EMPTY = "Analyze a text, or open a saved capture, in the card above."


def layout(ctx: Context) -> html.Div:
    return html.Div([
        html.Div(id=ids.OV_CARDS),
        html.Div(id=ids.OV_SUMMARY, children=dmc.Text(EMPTY, c="dimmed", size="sm")),
        ui.card("Head grid", dmc.Group([
            ui.select(ids.OV_STAT, GRID_COLUMNS, value="sink_alpha", label="statistic", width=220),
            dmc.Text("click a cell to open that head on the Attention page", size="xs", c="dimmed", mt=24),
        ], align="flex-start"), ui.graph(ids.OV_GRID, 420, empty="the head grid appears once an input is analyzed")),
        dmc.SimpleGrid([
            ui.card("Massive activations", ui.graph(ids.OV_MASSIVE, 340, empty="no input yet")),
            ui.card("Entropy by layer", ui.graph(ids.OV_ENTROPY, 340, empty="no input yet")),
        ], cols={"base": 1, "lg": 2}, spacing="md"),
        ui.card("Every head (sort and filter any column)", ui.table(ids.OV_TABLE, 420)),
    ])


def stat_cards(ctx: Context, analysis) -> dmc.SimpleGrid:
    """The headline numbers of an analysis as small cards."""
    atlas, cap = analysis.atlas, analysis.capture
    n = int(cap.lengths[0])

    def count(name, column, value=True):
        if name not in atlas or column not in atlas[name].frame.columns:
            return "-"
        return str(int((atlas[name].frame[column] == value).sum()))

    items = [("tokens", f"{n:,}"), ("layers x heads", f"{layers_text(cap)} x {cap.n_heads}"),
             ("dormant heads", count("dormant_heads", "state", "dormant")),
             ("collapsed heads", count("entropy", "collapsed")),
             ("source", f"{cap.meta.get('model', '?')}, {cap.meta.get('backend', '?')}")]
    return dmc.SimpleGrid([dmc.Card([dmc.Text(k, size="xs", c="dimmed"), dmc.Text(v, fw=700, size="lg")], p="sm")
                           for k, v in items], cols={"base": 2, "sm": 3, "lg": 5}, spacing="sm", mb="md")


def layers_text(cap) -> str:
    """'30', or for a hybrid model '48 (attention in blocks 3, 7, ...)': layers are named by block."""
    if cap.n_blocks == cap.n_layers:
        return str(cap.n_layers)
    return f"{cap.n_blocks} (attention in blocks {', '.join(map(str, cap.blocks))})"


def summary(ctx: Context, analysis) -> dmc.Card:
    """The atlas headline, one line per analyzer (the analyzers' own text), plus the heads named."""
    atlas, cap = analysis.atlas, analysis.capture
    where = "captured and analyzed" if analysis.text is not None else f"opened from {analysis.source}; analyzed"
    meta = dmc.Text(f"{cap.meta.get('model', ctx.model)}: {int(cap.lengths[0])} tokens, {layers_text(cap)} layers x "
                    f"{cap.n_heads} heads; {where} in {analysis.seconds:.2f} s", id="overview-meta", size="sm", mb=6)
    items = []
    for name in HEADLINES:
        if name in atlas and atlas[name].text:
            items.append(dmc.ListItem([html.B(name.replace("_", " ") + ": "), atlas[name].text.replace("\n", "; ")]))
    if "dormant_heads" in atlas:
        f = atlas["dormant_heads"].frame
        dormant = [f"L{r.layer}H{r.head}" for r in f.itertuples() if r.state == "dormant"]
        more = "" if len(dormant) <= 40 else f" ... ({len(dormant)})"
        items.append(dmc.ListItem([html.B("dormant heads: "), (", ".join(dormant[:40]) + more) or "none"]))
    if "entropy" in atlas:
        f = atlas["entropy"].frame
        collapsed = [f"L{r.layer}H{r.head}" for r in f.itertuples() if r.collapsed]
        items.append(dmc.ListItem([html.B("collapsed heads: "), ", ".join(collapsed[:40]) or "none"]))
    for name, why in atlas.skipped.items():
        items.append(dmc.ListItem(f"{name}: skipped ({why})"))
    return ui.card("Findings", meta, dmc.List(items, size="sm", spacing=2))


def render(ctx: Context, key: str | None, stat: str | None, theme: str | None = None):
    """(cards, summary, grid, massive, entropy figures and styles, table rows and columns) for the tab's analysis.

    A plain function: the callback only forwards. Figures are None-free: a missing one
    comes back hidden (``ui.shown``).
    """
    analysis = ctx.analysis(key)
    if analysis is None:
        hidden = ui.shown(None, theme)
        return ([], dmc.Text(EMPTY, c="dimmed", size="sm"), *hidden, *hidden, *hidden, [], [])
    atlas = analysis.atlas
    table = atlas.to_frame()
    column = stat if stat in table.columns else "sink_alpha"
    grid = viz.head_grid(table, column, title=f"{column} per head",
                         hover_columns=[c for c in ("sink_alpha", "entropy_norm", "value_drain", "state", "role")
                                        if c in table.columns and c != column])
    massive = viz.massive_profile(atlas["massive_activations"]) if "massive_activations" in atlas else None
    ent = viz.entropy_by_layer(atlas["entropy"]) if "entropy" in atlas else None
    return (stat_cards(ctx, analysis), summary(ctx, analysis), *ui.shown(grid, theme, 420),
            *ui.shown(massive, theme, 340), *ui.shown(ent, theme, 340), ui.rows(table), ui.columns(table))


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.OV_CARDS, "children"), Output(ids.OV_SUMMARY, "children"),
                  Output(ids.OV_GRID, "figure"), Output(ids.OV_GRID, "style"),
                  Output(ids.OV_MASSIVE, "figure"), Output(ids.OV_MASSIVE, "style"),
                  Output(ids.OV_ENTROPY, "figure"), Output(ids.OV_ENTROPY, "style"),
                  Output(ids.OV_TABLE, "rowData"), Output(ids.OV_TABLE, "columnDefs"),
                  Output(ids.OV_GRID + "-empty", "style"), Output(ids.OV_MASSIVE + "-empty", "style"),
                  Output(ids.OV_ENTROPY + "-empty", "style"),
                  Input(ids.RESULT_KEY, "data"), Input(ids.OV_STAT, "value"), Input(ids.URL, "pathname"),
                  Input(ids.THEME, "data"))
    def _render(key, stat, path, theme):
        if not visible(path, PATH):
            raise PreventUpdate
        out = render(ctx, key, stat, theme)
        empties = [ui.HIDDEN if style.get("display") == "block" else {} for style in (out[3], out[5], out[7])]
        return (*out, *empties)
