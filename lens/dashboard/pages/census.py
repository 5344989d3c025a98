"""Census of a store (``--store DIR``, written by ``lens capture --dataset``): each head's statistics
across all inputs, the share of inputs on which each head is dormant, and the inputs that are
outliers for one head, each a click away from its token strip.

Every number comes from DuckDB over the store's Parquet index (``lens.dashboard._saved_work.Census``),
so the page costs the same for ten inputs or a million; only a clicked input's shard is loaded.
"""

from __future__ import annotations

import dash_mantine_components as dmc
import numpy as np
from dash import Input, Output, State, html, no_update
from dash.exceptions import PreventUpdate

from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, visible
from lens.dashboard._saved_work import DORMANT_AT, OUTLIER_KINDS, Census

PATH = "/census"
NAME = "Census"

NO_STORE = "No store: start lens dashboard --store DIR (write one with lens capture --dataset FILE --out DIR)."
ALL = "all"
#: Up to this many heads in the whole model, the distributions show every head at once.
ALL_HEADS_MAX = 48
OUTLIERS_K = 12


def layout(ctx: Context) -> html.Div:
    if ctx.store is None:
        return html.Div(dmc.Alert(NO_STORE, title="No store", color="gray", variant="light", id=ids.CE_NOTE))
    return html.Div([
        dmc.Text(id=ids.CE_NOTE, size="sm", mb="sm"),
        ui.card("Each head across inputs", dmc.Group([
            ui.select(ids.CE_STAT, [], label="statistic", width=200),
            ui.select(ids.CE_LAYER, [], label="heads of layer", width=160),
        ], align="flex-start", mb="xs"), ui.graph(ids.CE_DIST, 380, empty="reading the store's index", responsive=True)),
        dmc.SimpleGrid([
            ui.card(f"Share of inputs on which each head is dormant (s(x) >= {DORMANT_AT})",
                    dmc.Text("click a head to list its outlier inputs", size="xs", c="dimmed"),
                    ui.graph(ids.CE_DORMANT, 360, empty="reading the store's index", responsive=True)),
            ui.card("Outlier inputs of one head", dmc.Group([
                ui.select(ids.CE_OUT_LAYER, [], label="layer", width=110),
                ui.select(ids.CE_HEAD, [], label="head", width=110),
                ui.select(ids.CE_KIND, OUTLIER_KINDS, value="|z| largest", label="which", width=150),
            ], align="flex-start", mb="xs"),
                dmc.Text("click a row to see that input's tokens coloured by the statistic", size="xs", c="dimmed",
                         mb=4),
                _outlier_grid()),
        ], cols={"base": 1, "lg": 2}, spacing="md"),
        ui.card("Token strip", dmc.Text(id=ids.CE_STRIP_NOTE, size="sm", c="dimmed"),
                ui.graph(ids.CE_STRIP, 200, empty="click an outlier input above to see its tokens", responsive=True)),
    ])


def _outlier_grid():
    grid = ui.table(ids.CE_OUTLIERS)
    grid.getRowId = "params.data.row_id"  # the input as text (ag-grid's row ids are strings)
    grid.style = {"width": "100%"}
    grid.columnSize = "responsiveSizeToFit"  # refit once the page is shown (a hidden grid has no width)
    # autoHeight: all OUTLIERS_K rows in the page, none clipped under the grid's scroll
    grid.dashGridOptions = {**grid.dashGridOptions, "pagination": False, "domLayout": "autoHeight"}
    return grid


# --- plain render functions ---------------------------------------------------------------------
def setup(census: Census) -> dict:
    """The store's summary line and every picker's choices and first value."""
    info = census.info()
    st = census.store
    L, H = info["n_layers"], info["n_heads"]
    layers = [(ALL, "all heads")] if L * H <= ALL_HEADS_MAX else []
    layers += [(str(i), f"layer {i}") for i in info["layers"]]
    stats = census.statistics()
    first = "dormancy" if "dormancy" in stats else stats[0]
    note = (f"{st.path}: {info['model']}, {info['n_inputs']:,} inputs in {st.n_shards} shard(s) of {st.shard_size}, "
            f"{L} layers x {H} heads")
    missing = st.missing()
    if missing:
        note += f"; {len(missing)} shard(s) missing (finish it with lens capture ... --resume)"
    return {"note": note, "stats": stats, "stat": first, "layers": layers, "layer": layers[0][0],
            "out_layers": [(str(i), f"L{i}") for i in info["layers"]], "heads": [(str(h), f"H{h}") for h in range(H)]}


def distributions(census: Census, stat: str, layer: str | None):
    layer_i = None if layer in (None, ALL) else int(layer)
    frame = census.distributions(stat, layer_i)
    where = "every head" if layer_i is None else f"layer {layer_i}"
    return viz.head_distributions(frame, stat, title=f"{stat} across {census.info()['n_inputs']:,} inputs, "
                                                     f"{where} (box: quartiles; whiskers: min to max; dashed: mean)")


def dormant_grid(census: Census):
    frame = census.dormant_share()
    return viz.head_grid(frame, "dormant_share", zmin=0.0, zmax=1.0, hover_columns=["mean_dormancy", "n"],
                         title=f"share of inputs with s(x) >= {DORMANT_AT}")


def outliers(census: Census, stat: str, layer, head, kind: str) -> tuple[list[dict], list[dict]]:
    frame = census.outliers(stat, int(layer), int(head), kind, OUTLIERS_K)
    frame = frame[["rank", "input", "value", "z", "tokens"]].rename(columns={"value": stat})
    cols = ui.columns(frame, pinned=("rank",)) + [{"field": "row_id", "hide": True}]
    return [{**r, "row_id": str(r["input"])} for r in ui.rows(frame)], cols


def strip(census: Census, input: int, stat: str, layer, head):
    """(figure, caption) of one input's tokens coloured by head (layer, head)'s per-position ``stat``."""
    tokens, values, what = census.strip(int(input), int(layer), int(head), stat)
    caption = (f"input {int(input)} ({len(tokens)} tokens), head L{int(layer)} H{int(head)}: {what} per position; "
               f"its {stat} in the index is the mean over positions >= 1"
               if stat != "top_key_share" else
               f"input {int(input)} ({len(tokens)} tokens), head L{int(layer)} H{int(head)}: each key's share of the "
               f"attention received (top key {int(np.nanargmax(values))})")
    fig = viz.token_strip(tokens, values, name=stat,
                          title=f"input {int(input)}: {what}, L{int(layer)} H{int(head)}")
    fig.update_layout(height=max(int(fig.layout.height or 0), 240))  # room for the colour bar's ticks
    return fig, caption


def register(app, ctx: Context) -> None:
    if ctx.store is None:
        return
    census = Census(ctx.store)

    def opts(pairs):
        return [{"value": str(v), "label": str(label)} for v, label in pairs]

    @app.callback(Output(ids.CE_NOTE, "children"),
                  Output(ids.CE_STAT, "data"), Output(ids.CE_STAT, "value"),
                  Output(ids.CE_LAYER, "data"), Output(ids.CE_LAYER, "value"),
                  Output(ids.CE_OUT_LAYER, "data"), Output(ids.CE_OUT_LAYER, "value"),
                  Output(ids.CE_HEAD, "data"), Output(ids.CE_HEAD, "value"),
                  Input(ids.URL, "pathname"), State(ids.CE_STAT, "value"))
    def _setup(path, stat):
        if not visible(path, PATH) or stat:  # filled once per page load; later visits keep the picks
            raise PreventUpdate
        s = setup(census)
        return (s["note"], opts((v, v) for v in s["stats"]), s["stat"], opts(s["layers"]), s["layer"],
                opts(s["out_layers"]), "0", opts(s["heads"]), "0")

    @app.callback(Output(ids.CE_DIST, "figure"), Output(ids.CE_DIST, "style"), Output(ids.CE_DIST + "-empty", "style"),
                  Input(ids.CE_STAT, "value"), Input(ids.CE_LAYER, "value"), Input(ids.THEME, "data"),
                  Input(ids.URL, "pathname"))
    def _dist(stat, layer, theme, path):
        if not visible(path, PATH) or not stat:
            raise PreventUpdate
        fig = distributions(census, stat, layer)
        return (*ui.shown(fig, theme), ui.empty_style(fig))

    @app.callback(Output(ids.CE_DORMANT, "figure"), Output(ids.CE_DORMANT, "style"),
                  Output(ids.CE_DORMANT + "-empty", "style"), Output(ids.CE_DORMANT + "-empty", "children"),
                  Input(ids.THEME, "data"), Input(ids.URL, "pathname"))
    def _dormant(theme, path):
        if not visible(path, PATH):
            raise PreventUpdate
        fig = dormant_grid(census) if "dormancy" in census.statistics() else None
        why = "this store has no dormancy column: capture it with the sink_mass statistic (lens capture --stats)"
        return (*ui.shown(fig, theme), ui.empty_style(fig), why)

    @app.callback(Output(ids.CE_OUT_LAYER, "value", allow_duplicate=True),
                  Output(ids.CE_HEAD, "value", allow_duplicate=True),
                  Input(ids.CE_DORMANT, "clickData"), prevent_initial_call=True)
    def _pick_head(click):
        if not click or not click.get("points"):
            raise PreventUpdate
        p = click["points"][0]
        return str(int(p["y"])), str(int(p["x"]))

    @app.callback(Output(ids.CE_OUTLIERS, "rowData"), Output(ids.CE_OUTLIERS, "columnDefs"),
                  Input(ids.CE_STAT, "value"), Input(ids.CE_OUT_LAYER, "value"), Input(ids.CE_HEAD, "value"),
                  Input(ids.CE_KIND, "value"), Input(ids.URL, "pathname"))
    def _outliers(stat, layer, head, kind, path):
        if not visible(path, PATH) or not stat or layer is None or head is None:
            raise PreventUpdate
        return outliers(census, stat, layer, head, kind or "|z| largest")

    @app.callback(Output(ids.CE_STRIP, "figure"), Output(ids.CE_STRIP, "style"),
                  Output(ids.CE_STRIP + "-empty", "style"), Output(ids.CE_STRIP_NOTE, "children"),
                  Output(ids.NOTIFY, "sendNotifications", allow_duplicate=True),
                  Input(ids.CE_OUTLIERS, "selectedRows"), Input(ids.THEME, "data"),
                  Input(ids.CE_STAT, "value"), Input(ids.CE_OUT_LAYER, "value"), Input(ids.CE_HEAD, "value"),
                  State(ids.URL, "pathname"), prevent_initial_call=True)
    def _strip(selected, theme, stat, layer, head, path):
        if not visible(path, PATH) or not stat or layer is None or head is None:
            raise PreventUpdate
        if not selected:
            return (*ui.shown(None, theme), {}, "", no_update)
        try:
            fig, caption = strip(census, selected[0]["input"], stat, layer, head)
        except (OSError, ValueError) as err:  # a shard missing or failing its checksum: say so, keep the page
            msg = f"{type(err).__name__}: {err}"
            return (*ui.shown(None, theme), {}, msg, ui.notice("Could not load the input", msg, "error"))
        return (*ui.shown(fig, theme), ui.empty_style(fig), caption, no_update)
