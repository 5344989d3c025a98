"""Reasoning: generate a trace with the model (or paste one above); WAAD and FAI with preplan and anchor tokens.

The numbers come from ``lens.analyzers.preplan_anchor`` (METHODS sec 4) on the tab's
analysis; generation is greedy and runs in the background with a token counter.
"""

from __future__ import annotations

from dash import Input, Output, State, dcc, html, no_update

import viz
from dashboard import ids
from dash.exceptions import PreventUpdate

from dashboard._context import Context, labelled, placeholder, visible, status_text
from dashboard._jobs import make_key
from dashboard._work import check_unicode, generate

PATH = "/reasoning"
NAME = "Reasoning"


def layout(ctx: Context) -> html.Div:
    return html.Div([
        html.H3("Reasoning"),
        html.P("Paste a reasoning trace into the text box above and press Analyze, or generate one here: "
               "the prompt and the model's greedy continuation become the text.", style={"fontSize": "13px"}),
        html.Div([
            labelled("prompt", dcc.Textarea(id=ids.RS_PROMPT, value="", style={"width": "520px", "height": "60px"})),
            labelled("new tokens", dcc.Input(id=ids.RS_NEW_TOKENS, type="number", value=48, min=1, max=512, step=1,
                                             style={"width": "80px"})),
            html.Button("Generate", id=ids.RS_GENERATE, n_clicks=0, style={"marginTop": "18px"}),
        ]),
        html.Div(id=ids.RS_STATUS, style={"fontSize": "13px", "color": "#555", "margin": "6px 0"}),
        dcc.Interval(id=ids.RS_POLL, interval=300, disabled=True),
        dcc.Store(id=ids.RS_PENDING, storage_type="memory"),
        html.Div(id=ids.RS_SUMMARY),
        dcc.Graph(id=ids.RS_PROFILE, figure=placeholder("WAAD and FAI: analyze a text", 520)),
        dcc.Graph(id=ids.RS_FAI, figure=placeholder("tokens by FAI", 200)),
        dcc.Graph(id=ids.RS_WAAD, figure=placeholder("tokens by WAAD", 200)),
    ])


def render(ctx: Context, key):
    analysis = ctx.analysis(key)
    if analysis is None or "preplan_anchor" not in analysis.atlas:
        msg = "analyze a text to see its preplan and anchor tokens"
        return [], placeholder(msg, 520), placeholder("tokens by FAI", 200), placeholder("tokens by WAAD", 200)
    f = analysis.atlas["preplan_anchor"]
    rows = f.frame[f.frame["input"] == 0].sort_values("pos")
    toks = rows["token"].tolist()
    pre = rows.loc[rows["preplan"], "pos"].tolist()
    anc = rows.loc[rows["anchor"], "pos"].tolist()
    summary = [html.P(f.text), html.P(f"local heads (WAAD): {_heads(f.summary['local_heads'])}; global heads (FAI): "
                                      f"{_heads(f.summary['global_heads'])}", style={"fontSize": "12px"})]
    profile = viz.reasoning_profile(f)
    fai = viz.token_strip(toks, rows["fai"].to_numpy(), name="FAI", marks={"anchor": anc, "preplan": pre},
                          per_row=20,
                          title="tokens coloured by FAI (stars: anchors, triangles: preplan)")
    waad = viz.token_strip(toks, rows["waad"].to_numpy(), name="WAAD", marks={"preplan": pre}, colorscale="Blues",
                           per_row=20,
                           title="tokens coloured by WAAD (triangles: preplan)")
    return summary, profile, fai, waad


def _heads(hs) -> str:
    return ", ".join(f"L{l}H{h}" for l, h in hs[:12]) + (" ..." if len(hs) > 12 else "")


def start_generation(ctx: Context, prompt, n_new):
    """Check the prompt and start generating: (pending key, poll disabled, status, text, generated)."""
    if not prompt or not str(prompt).strip():
        return None, True, "The prompt is empty: type a question first.", no_update, no_update
    try:
        n_new = int(n_new)
    except (TypeError, ValueError, OverflowError):  # None, "", NaN, inf
        n_new = 0
    if not 1 <= n_new <= 512:
        return None, True, "new tokens must be a number from 1 to 512.", no_update, no_update
    try:
        check_unicode(str(prompt), "The prompt")
    except ValueError as err:
        return None, True, str(err), no_update, no_update
    key = make_key("generate", ctx.model, prompt, n_new)
    ctx.jobs.submit(key, lambda progress: generate(ctx.subject, prompt, n_new, progress))
    return key, False, "generating...", no_update, no_update


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.RS_SUMMARY, "children"), Output(ids.RS_PROFILE, "figure"), Output(ids.RS_FAI, "figure"),
                  Output(ids.RS_WAAD, "figure"), Input(ids.RESULT_KEY, "data"),
                  Input(ids.URL, "pathname"))
    def _render(key, path):
        if not visible(path, PATH):
            raise PreventUpdate
        return render(ctx, key)

    @app.callback(Output(ids.RS_PENDING, "data"), Output(ids.RS_POLL, "disabled"), Output(ids.RS_STATUS, "children"),
                  Output(ids.TEXT, "value"), Output(ids.GENERATED, "data"),
                  Input(ids.RS_GENERATE, "n_clicks"), Input(ids.RS_POLL, "n_intervals"),
                  State(ids.RS_PROMPT, "value"), State(ids.RS_NEW_TOKENS, "value"), State(ids.RS_PENDING, "data"),
                  prevent_initial_call=True)
    def _generate(_clicks, _tick, prompt, n_new, pending):
        from dash import ctx as dash_ctx

        if dash_ctx.triggered_id == ids.RS_GENERATE:
            return start_generation(ctx, prompt, n_new)
        st = ctx.jobs.status(pending)
        if st["state"] == "running":
            return no_update, False, status_text(st, "generation"), no_update, no_update
        if st["state"] == "error":
            return None, True, st["message"], no_update, no_update
        if st["state"] == "done":
            text = ctx.jobs.get(pending)
            return None, True, "generated: analyzing the trace", text, {"text": text, "key": pending}
        return None, True, "", no_update, no_update
