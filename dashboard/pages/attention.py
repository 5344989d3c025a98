"""Attention: one head's pattern (exact, or pooled for long inputs) with a query window, and a token strip."""

from __future__ import annotations

import dash
from dash import Input, Output, dcc, html, no_update

import lens
import viz
from dashboard import ids
from dash.exceptions import PreventUpdate

from dashboard._context import Context, labelled, placeholder, visible
from dashboard._jobs import make_key
from dashboard._work import layer_progress

PATH = "/attention"
NAME = "Attention"
EXACT_ROWS = 256  # a query window this short on a pooled input gets its exact rows captured

# token strip value -> (label, how to read it from the tab's analysis)
STRIP_VALUES = {
    "received": "attention received by each key (mean over the queries that see it)",
    "sink_mass": "attention each query puts on position 0",
    "entropy_norm": "normalised entropy of each query's row",
    "value_norm": "value norm ||W_O v|| of each key",
    "fai": "FAI (reasoning: attention from later tokens, global heads)",
    "waad": "WAAD (reasoning: windowed distance, local heads)",
}


def layout(ctx: Context) -> html.Div:
    s = ctx.subject
    num = dict(type="number", debounce=False, style={"width": "90px"})
    return html.Div([
        html.H3("Attention"),
        html.Div([
            labelled(f"layer (0-{s.n_layers - 1})", dcc.Input(id=ids.AT_LAYER, value=0, step=1, **num)),
            labelled(f"head (0-{s.n_heads - 1})", dcc.Input(id=ids.AT_HEAD, value=0, step=1, **num)),
            labelled("query window from", dcc.Input(id=ids.AT_START, value=None, step=1, placeholder="0", **num)),
            labelled("to (exclusive)", dcc.Input(id=ids.AT_STOP, value=None, step=1, placeholder="end", **num)),
            labelled("token strip", dcc.Dropdown(id=ids.AT_STRIP_VALUE, value="received", clearable=False,
                                                 options=[{"label": v, "value": k} for k, v in STRIP_VALUES.items()]),
                     width="380px"),
        ]),
        html.Div(id=ids.AT_NOTE, style={"fontSize": "13px", "color": "#555", "margin": "6px 0"}),
        dcc.Interval(id=ids.AT_POLL, interval=300, disabled=True),
        dcc.Graph(id=ids.AT_PATTERN, figure=placeholder("pattern: analyze a text", 560)),
        dcc.Graph(id=ids.AT_STRIP, figure=placeholder("token strip", 200)),
    ])


def strip_values(analysis, layer: int, head: int, which: str):
    """Per-token values for the strip, ``[pos]`` over the real tokens, and their label."""
    cap = analysis.capture
    n = int(cap.lengths[0])
    if which in ("fai", "waad"):
        f = analysis.atlas["preplan_anchor"].frame
        f = f[f["input"] == 0].sort_values("pos")
        return f[which].to_numpy()[:n], which.upper() + " (all local/global heads)"
    if which == "received":
        return cap.alpha()[0, layer, head, :n], f"L{layer}H{head} attention received"
    if which not in cap.stats:
        raise KeyError(f"the capture has no {which}")
    return cap.stats[which][0, layer, head, :n], f"L{layer}H{head} {which}"


def exact_window(ctx: Context, analysis, layer: int, head: int, window: tuple[int, int]):
    """The exact rows ``window`` of one head, from the cache or started in the background.

    Returns (capture or None, job key). The capture keeps only that head's pattern for
    those query rows (``lens.capture(patterns=..., pattern_window=...)``), the design's
    way to look closely at a long input without materialising every pattern.
    """
    a, b = window
    key = make_key("window", ctx.model, analysis.text, layer, head, a, b)
    cap = ctx.jobs.get(key)
    if cap is None:
        text = analysis.text

        def job(progress):
            with layer_progress(ctx.subject, progress, f"exact rows {a}-{b - 1} of L{layer}H{head}"):
                return lens.capture(ctx.subject, text, stats=["sink_mass"], patterns=[(layer, head)],
                                    pattern_window=(a, b), value_norm=False, resid_norm=False, massive=False)

        ctx.jobs.submit(key, job)
    return cap, key


def render(ctx: Context, key, layer, head, start, stop, which):
    """(pattern figure, strip figure, note, poll disabled); the callback only forwards to this."""
    analysis = ctx.analysis(key)
    if analysis is None:
        return placeholder("analyze a text to see its patterns", 560), placeholder("token strip", 200), "", True
    s = ctx.subject
    if layer is None or head is None:
        return no_update, no_update, "Choose a layer and a head.", True
    layer, head = int(layer), int(head)
    if not (0 <= layer < s.n_layers and 0 <= head < s.n_heads):
        return (no_update, no_update,
                f"No head L{layer}H{head}: layers 0-{s.n_layers - 1}, heads 0-{s.n_heads - 1}.", True)
    cap = analysis.capture
    n = int(cap.lengths[0])
    window = None
    if start is not None or stop is not None:
        a, b = int(start or 0), min(int(stop if stop is not None else n), n)
        if not 0 <= a < b:
            return no_update, no_update, f"The window must satisfy 0 <= from < to, inside the {n} tokens.", True
        window = (a, b)
    pool = int(cap.stats["pool_factor"][0, layer]) if "pool_factor" in cap.stats else 1
    waiting = False
    source = cap
    if pool == 1:
        note = f"{n} tokens; exact pattern (every cell is one query/key pair)."
    elif window is not None and window[1] - window[0] <= EXACT_ROWS:
        exact, _ = exact_window(ctx, analysis, layer, head, window)
        if exact is not None:
            source = exact
            note = f"{n} tokens; exact rows {window[0]}-{window[1] - 1} of L{layer}H{head} (captured for this window)."
        else:
            waiting = True
            note = (f"{n} tokens, pooled {pool}x{pool}; capturing the exact rows {window[0]}-{window[1] - 1} "
                    "of this head...")
    else:
        note = (f"{n} tokens, pooled {pool}x{pool} for display (each cell is a block mean); set a query window "
                f"of at most {EXACT_ROWS} rows to see its exact pattern, or zoom the figure.")
    fig = viz.attention_pattern(source, layer, head, window=window)
    values, label = strip_values(analysis, layer, head, which)
    strip = viz.token_strip(cap.str_tokens[0][:n], values, name=label, per_row=16)
    return fig, strip, note, not waiting


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.AT_PATTERN, "figure"), Output(ids.AT_STRIP, "figure"), Output(ids.AT_NOTE, "children"),
                  Output(ids.AT_POLL, "disabled"), Input(ids.AT_POLL, "n_intervals"),
                  Input(ids.RESULT_KEY, "data"), Input(ids.AT_LAYER, "value"), Input(ids.AT_HEAD, "value"),
                  Input(ids.AT_START, "value"), Input(ids.AT_STOP, "value"), Input(ids.AT_STRIP_VALUE, "value"),
                  Input(ids.URL, "pathname"))
    def _render(_tick, key, layer, head, start, stop, which, path):
        if not visible(path, PATH):
            raise PreventUpdate
        out = render(ctx, key, layer, head, start, stop, which)
        if dash.ctx.triggered_id == ids.AT_POLL and not out[3]:  # still waiting: keep the figures drawn
            return no_update, no_update, out[2], False
        return out

    @app.callback(Output(ids.AT_LAYER, "value"), Output(ids.AT_HEAD, "value"), Output(ids.URL, "pathname"),
                  Input(ids.OV_GRID, "clickData"), prevent_initial_call=True)
    def _open_head(click):
        if not click or not click.get("points"):
            return no_update, no_update, no_update
        p = click["points"][0]
        return int(p["y"]), int(p["x"]), PATH
