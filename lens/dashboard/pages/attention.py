"""Attention: one head's pattern (exact, or pooled for long inputs) with a query window, its statistics
along positions (any length: WebGL, min/max decimated, exact on zoom) and, for inputs short enough
to read, a token strip."""

from __future__ import annotations

import json

import dash
import dash_mantine_components as dmc
from dash import Input, Output, dcc, html, no_update
from dash.exceptions import PreventUpdate

import lens
from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, visible
from lens.dashboard._jobs import make_key
from lens.dashboard._work import layer_progress

PATH = "/attention"
NAME = "Attention"
EXACT_ROWS = 256  # a query window this short on a pooled input gets its exact rows captured (model loaded)
STRIP_MAX = 2048  # longer inputs get no token strip (one cell per token stops being readable)

# token strip value -> (label, how to read it from the tab's analysis)
STRIP_VALUES = {
    "received": "attention received by each key (mean over the queries that see it)",
    "sink_mass": "attention each query puts on position 0",
    "entropy_norm": "normalised entropy of each query's row",
    "value_norm": "value norm ||W_O v|| of each key",
    "fai": "FAI (reasoning: attention from later tokens, global heads)",
    "waad": "WAAD (reasoning: windowed distance, local heads)",
}
# per-head statistics along positions offered in the positions plot
POSITION_VALUES = ("sink_mass", "entropy_norm", "received", "distance", "prev_token", "diag_mass", "dup_token",
                   "induction", "value_norm", "learned_sink_mass")


def layout(ctx: Context) -> html.Div:
    # layer/head pickers list the model's attention blocks, or the largest saved capture's when there is none
    n_layers, n_heads = _shape(ctx)
    window = dict(min=0, step=1, w=130, allowDecimal=False, allowNegative=False)
    return html.Div([
        ui.card(None, dmc.Group([
            ui.index_select(ids.AT_LAYER, n_layers, "layer", prefix="L"),
            ui.index_select(ids.AT_HEAD, n_heads, "head", prefix="H"),
            dmc.NumberInput(id=ids.AT_START, label="window from", placeholder="0", **window),
            dmc.NumberInput(id=ids.AT_STOP, label="to (exclusive)", placeholder="end", **window),
            ui.select(ids.AT_STRIP_VALUE, [(k, v) for k, v in STRIP_VALUES.items()], value="received",
                      label="token strip", width=380),
        ], align="flex-end", gap="md", wrap="wrap"),
            dmc.Text(id=ids.AT_NOTE, size="sm", c="dimmed", mt=8)),
        dcc.Interval(id=ids.AT_POLL, interval=300, disabled=True),
        dcc.Store(id=ids.AT_ZOOM, storage_type="memory"),
        ui.card("Pattern", ui.graph(ids.AT_PATTERN, 560, empty="analyze a text or open a saved capture to see its "
                                                              "patterns")),
        ui.card("Along positions", dmc.MultiSelect(
            id=ids.AT_POS_STATS, label="statistics of this head", value=["sink_mass", "entropy_norm"],
            data=list(POSITION_VALUES), w=520, maxValues=4, clearable=False, mb="xs"),
            ui.graph(ids.AT_POSITIONS, 300, empty="no input yet")),
        ui.card("Tokens", ui.graph(ids.AT_STRIP, 220, empty="no input yet")),
    ])


def _shape(ctx: Context) -> tuple[list[int], int]:
    """(the layer numbers to offer: the blocks with attention, the number of heads)."""
    if ctx.subject is not None:
        return list(ctx.subject.attn_layers), ctx.subject.n_heads
    shapes = [(list(s.get("blocks", range(int(s["n_layers"])))), int(s["n_heads"]))
              for s in (_peek(i.path) for i in ctx.saved.values()) if s]
    return (max((s[0] for s in shapes), key=len), max(s[1] for s in shapes)) if shapes else ([0], 1)


def _listed(blocks) -> str:
    blocks = list(blocks)
    return f"0-{len(blocks) - 1}" if blocks == list(range(len(blocks))) else ", ".join(map(str, blocks))


def _peek(path) -> dict | None:
    """n_layers/n_heads from a saved capture's JSON, without reading its tensors."""
    try:
        return json.loads((path / "capture.json").read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return None


def strip_values(analysis, layer: int, head: int, which: str):
    """Per-token values for the strip, ``[pos]`` over the real tokens, and their label."""
    cap = analysis.capture
    n = int(cap.lengths[0])
    if which in ("fai", "waad"):
        if "preplan_anchor" not in analysis.atlas:
            raise KeyError(f"the analysis has no {which.upper()} (preplan_anchor was skipped)")
        f = analysis.atlas["preplan_anchor"].frame
        f = f[f["input"] == 0].sort_values("pos")
        return f[which].to_numpy()[:n], which.upper() + " (all local/global heads)"
    li = cap.layer_index(layer)  # layer is a block number
    if which == "received":
        return cap.alpha()[0, li, head, :n], f"L{layer}H{head} attention received"
    if which not in cap.stats:
        raise KeyError(f"the capture has no {which}")
    return cap.stats[which][0, li, head, :n], f"L{layer}H{head} {which}"


def position_series(analysis, layer: int, head: int, names) -> dict:
    """{label: per-position values} of one head for the positions plot (statistics the capture holds)."""
    cap = analysis.capture
    n = int(cap.lengths[0])
    li = cap.layer_index(layer)  # layer is a block number
    out = {}
    for name in names or ():
        if name == "received" and "received" in cap.stats and "visible" in cap.stats:
            out["received (mean per query)"] = cap.alpha()[0, li, head, :n]
        elif name in cap.stats and cap.stats[name].ndim == 4:
            out[name] = cap.stats[name][0, li, head, :n]
    return out


def exact_window(ctx: Context, analysis, layer: int, head: int, window: tuple[int, int]):
    """The exact rows ``window`` of one head, from the cache or started in the background.

    Returns (capture or None, job key). The capture keeps only that head's pattern for
    those query rows (``lens.capture(patterns=..., pattern_window=...)``), the design's
    way to look closely at a long input without materialising every pattern. A saved
    capture is re-run from its token ids, and only on the model it was captured from.
    """
    a, b = window
    source = analysis.text if analysis.text is not None else analysis.source
    key = make_key("window", ctx.model, source, layer, head, a, b)
    cap = ctx.jobs.get(key)
    if cap is None:
        inputs = analysis.text if analysis.text is not None else analysis.capture.tokens[:, :int(analysis.capture.lengths[0])]

        def job(progress):
            with layer_progress(ctx.subject, progress, f"exact rows {a}-{b - 1} of L{layer}H{head}"):
                return lens.capture(ctx.subject, inputs, stats=["sink_mass"], patterns=[(layer, head)],
                                    pattern_window=(a, b), value_norm=False, resid_norm=False, massive=False)

        ctx.jobs.submit(key, job)
    return cap, key


def _int(v):
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def render(ctx: Context, key, layer, head, start, stop, which, theme=None):
    """(pattern figure, pattern style, strip figure, strip style, note, poll disabled).

    A plain function: the callback only forwards to it.
    """
    analysis = ctx.analysis(key)
    hidden = ui.shown(None, theme)
    if analysis is None:
        return (*hidden, *hidden, "", True)
    cap = analysis.capture
    layer, head = _int(layer), _int(head)
    if layer is None or head is None:
        return no_update, no_update, no_update, no_update, "Choose a layer and a head.", True
    if layer not in cap.blocks or not 0 <= head < cap.n_heads:
        return (no_update, no_update, no_update, no_update,
                f"No head L{layer}H{head}: layers {_listed(cap.blocks)}, heads 0-{cap.n_heads - 1}.", True)
    n = int(cap.lengths[0])
    window = None
    if start is not None or stop is not None:
        a, b = _int(start) or 0, min(_int(stop) if _int(stop) is not None else n, n)
        if not 0 <= a < b:
            return no_update, no_update, no_update, no_update, (
                f"The window must satisfy 0 <= from < to, inside the {n} tokens."), True
        window = (a, b)
    pool = int(cap.stats["pool_factor"][0, layer]) if "pool_factor" in cap.stats else 1
    waiting = False
    source = cap
    if pool == 1:
        note = f"{n:,} tokens; exact pattern (every cell is one query/key pair)."
    elif window is not None and window[1] - window[0] <= EXACT_ROWS and ctx.same_model(analysis):
        exact, _ = exact_window(ctx, analysis, layer, head, window)
        if exact is not None:
            source = exact
            note = f"{n:,} tokens; exact rows {window[0]}-{window[1] - 1} of L{layer}H{head} (captured for this window)."
        else:
            waiting = True
            note = (f"{n:,} tokens, pooled {pool}x{pool}; capturing the exact rows {window[0]}-{window[1] - 1} "
                    "of this head...")
    else:
        why = (f"set a query window of at most {EXACT_ROWS} rows to see its exact pattern" if ctx.same_model(analysis)
               else "exact rows need the model this capture was made with (start the dashboard with --model "
                    f"{cap.meta.get('model', '?')})")
        note = f"{n:,} tokens, pooled {pool}x{pool} for display (each cell is a block mean; zoom the figure); {why}."
    fig = viz.attention_pattern(source, layer, head, window=window)
    strip = None
    if n <= STRIP_MAX:
        try:
            values, label = strip_values(analysis, layer, head, which)
            strip = viz.token_strip(cap.str_tokens[0][:n], values, name=label, per_row=16)
        except KeyError as err:
            note += f" Token strip: {err.args[0]}."
    else:
        note += f" No token strip beyond {STRIP_MAX:,} tokens: read the positions plot (zoom in for exact values)."
    return (*ui.shown(fig, theme, 560), *ui.shown(strip, theme), note, not waiting)


def positions(ctx: Context, key, layer, head, names, x_range=None, theme=None):
    """(figure, style) of the positions plot for the current head and the zoomed range."""
    analysis = ctx.analysis(key)
    layer, head = _int(layer), _int(head)
    if analysis is None or layer is None or head is None:
        return ui.shown(None, theme)
    cap = analysis.capture
    if layer not in cap.blocks or not 0 <= head < cap.n_heads:
        return ui.shown(None, theme)
    series = position_series(analysis, layer, head, names)
    if not series:
        return ui.shown(None, theme)
    fig = viz.position_plot(series, x_range=x_range, tokens=cap.str_tokens[0], title=f"L{layer}H{head} along positions")
    return ui.shown(fig, theme, 300)


# Plotly reports every layout change (autosize, hover mode, y zoom) as a relayout event. Only a new
# x range (or a reset) reaches the server: otherwise a later, empty event would supersede the zoom.
ZOOM_FILTER = """function(r) {
    const nu = window.dash_clientside.no_update;
    if (!r) return nu;
    if ('xaxis.range[0]' in r && 'xaxis.range[1]' in r) return [r['xaxis.range[0]'], r['xaxis.range[1]']];
    if ('xaxis.range' in r) return r['xaxis.range'];
    if (r['xaxis.autorange']) return null;
    return nu;
}"""


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.AT_PATTERN, "figure"), Output(ids.AT_PATTERN, "style"), Output(ids.AT_STRIP, "figure"),
                  Output(ids.AT_STRIP, "style"), Output(ids.AT_NOTE, "children"), Output(ids.AT_POLL, "disabled"),
                  Output(ids.AT_PATTERN + "-empty", "style"), Output(ids.AT_STRIP + "-empty", "style"),
                  Input(ids.AT_POLL, "n_intervals"),
                  Input(ids.RESULT_KEY, "data"), Input(ids.AT_LAYER, "value"), Input(ids.AT_HEAD, "value"),
                  Input(ids.AT_START, "value"), Input(ids.AT_STOP, "value"), Input(ids.AT_STRIP_VALUE, "value"),
                  Input(ids.URL, "pathname"), Input(ids.THEME, "data"))
    # A Dash callback takes one parameter per Input above (nine); the work is in ``render``.
    def _render(_tick, key, layer, head, start, stop, which, path, theme):
        if not visible(path, PATH):
            raise PreventUpdate
        out = render(ctx, key, layer, head, start, stop, which, theme)
        if dash.ctx.triggered_id == ids.AT_POLL and not out[5]:  # still waiting: keep the figures drawn
            return no_update, no_update, no_update, no_update, out[4], False, no_update, no_update
        empties = [no_update if s is no_update else (ui.HIDDEN if s.get("display") == "block" else {})
                   for s in (out[1], out[3])]
        return (*out, *empties)

    @app.callback(Output(ids.AT_POSITIONS, "figure"), Output(ids.AT_POSITIONS, "style"),
                  Output(ids.AT_POSITIONS + "-empty", "style"),
                  Input(ids.AT_ZOOM, "data"), Input(ids.RESULT_KEY, "data"),
                  Input(ids.AT_LAYER, "value"), Input(ids.AT_HEAD, "value"), Input(ids.AT_POS_STATS, "value"),
                  Input(ids.URL, "pathname"), Input(ids.THEME, "data"))
    def _positions(zoom, key, layer, head, names, path, theme):
        if not visible(path, PATH):
            raise PreventUpdate
        x_range = tuple(zoom) if zoom and dash.ctx.triggered_id == ids.AT_ZOOM else None  # a new head: full range
        fig, style = positions(ctx, key, layer, head, names, x_range, theme)
        return fig, style, ui.HIDDEN if style.get("display") == "block" else {}

    app.clientside_callback(ZOOM_FILTER, Output(ids.AT_ZOOM, "data"), Input(ids.AT_POSITIONS, "relayoutData"),
                            prevent_initial_call=True)

    @app.callback(Output(ids.AT_LAYER, "value"), Output(ids.AT_HEAD, "value"), Output(ids.URL, "pathname"),
                  Input(ids.OV_GRID, "clickData"), prevent_initial_call=True)
    def _open_head(click):
        if not click or not click.get("points"):
            return no_update, no_update, no_update
        p = click["points"][0]
        return str(int(p["y"])), str(int(p["x"])), PATH

