"""Reasoning: generate a trace with the model (or paste one above); WAAD and FAI with preplan and anchor tokens.

The numbers come from ``lens.analyzers.preplan_anchor`` (METHODS sec 4) on the tab's
analysis, a live text's or a saved capture's (no model needed to read them); generation is
greedy and runs in the background with a token counter, so it needs a loaded model.
"""

from __future__ import annotations

import dash
import dash_mantine_components as dmc
from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, status_text, visible
from lens.dashboard._jobs import make_key
from lens.dashboard._work import check_unicode, generate

PATH = "/reasoning"
NAME = "Reasoning"
MAX_NEW = 512
EMPTY = "Analyze a text with the box at the top (or generate one here) to see its preplan and anchor tokens."


def layout(ctx: Context) -> html.Div:
    live = ctx.subject is not None
    controls = ui.card(
        "Generate a trace",
        dmc.Text("The prompt and the model's greedy continuation become the text above, and it is analyzed.",
                 size="sm", c="dimmed", mb="xs"),
        dmc.Group([
            dmc.Textarea(id=ids.RS_PROMPT, value="", label="prompt", placeholder="a question to reason about",
                         autosize=True, minRows=2, maxRows=6, style={"flex": "1 1 380px"}),
            dmc.NumberInput(id=ids.RS_NEW_TOKENS, value=48, min=1, max=MAX_NEW, step=1, allowDecimal=False,
                            label="new tokens", w=120),
            dmc.Button("Generate", id=ids.RS_GENERATE, n_clicks=0),
        ], align="flex-end", gap="md", wrap="wrap"),
        dmc.Text(id=ids.RS_STATUS, size="sm", c="dimmed", mt=6),
        style={} if live else ui.HIDDEN,
    )
    return html.Div([
        dmc.Title("Reasoning", order=3, mb="xs"),
        dmc.Text("Which tokens a reasoning trace plans ahead from (preplan: high WAAD, local heads) and which it "
                 "keeps returning to (anchors: high FAI, global heads). Paste a trace into the text box above and "
                 "press Analyze, or generate one here.", size="sm", mb="sm"),
        *([] if live else [html.Div(ui.needs_model("Generating a trace"), style={"marginBottom": "12px"})]),
        controls,
        dcc.Interval(id=ids.RS_POLL, interval=300, disabled=True),
        dcc.Store(id=ids.RS_PENDING, storage_type="memory"),
        ui.card(None,
                html.Div(id=ids.RS_SUMMARY),
                ui.graph(ids.RS_PROFILE, 520, empty=EMPTY),
                ui.graph(ids.RS_FAI, 200),
                ui.graph(ids.RS_WAAD, 200)),
    ])


def render(ctx: Context, key):
    """(summary children, profile figure, FAI strip, WAAD strip) for the tab's analysis; figures None when absent."""
    analysis = ctx.analysis(key)
    if analysis is None:
        return [], None, None, None
    if "preplan_anchor" not in analysis.atlas:
        return [dmc.Text("This analysis has no preplan/anchor findings: its capture lacks the WAAD and FAI "
                         "statistics they are read from.", size="sm", c="dimmed")], None, None, None
    f = analysis.atlas["preplan_anchor"]
    rows = f.frame[f.frame["input"] == 0].sort_values("pos")
    toks = rows["token"].tolist()
    pre = rows.loc[rows["preplan"], "pos"].tolist()
    anc = rows.loc[rows["anchor"], "pos"].tolist()
    summary = [dmc.Text(f.text, size="sm"),
               dmc.Text(f"local heads (WAAD): {_heads(f.summary['local_heads'])}; global heads (FAI): "
                        f"{_heads(f.summary['global_heads'])}", size="xs", c="dimmed", mt=2, mb="xs")]
    profile = viz.reasoning_profile(f)
    fai = viz.token_strip(toks, rows["fai"].to_numpy(), name="FAI", marks={"anchor": anc, "preplan": pre},
                          per_row=20,
                          title="tokens coloured by FAI (stars: anchors, triangles: preplan)")
    waad = viz.token_strip(toks, rows["waad"].to_numpy(), name="WAAD", marks={"preplan": pre}, colorscale="Blues",
                           per_row=20,
                           title="tokens coloured by WAAD (triangles: preplan)")
    return summary, profile, fai, waad


def _heads(hs) -> str:
    return ", ".join(f"L{l}H{h}" for l, h in hs[:12]) + (" ..." if len(hs) > 12 else "") if len(hs) else "none"


def start_generation(ctx: Context, prompt, n_new):
    """Check the prompt and start generating: (pending key, poll disabled, status, text, generated)."""
    if ctx.subject is None:
        return None, True, "No model is loaded (--model none): generation needs one.", no_update, no_update
    if not prompt or not str(prompt).strip():
        return None, True, "The prompt is empty: type a question first.", no_update, no_update
    try:
        n_new = int(n_new)
    except (TypeError, ValueError, OverflowError):  # None, "", NaN, inf
        n_new = 0
    if not 1 <= n_new <= MAX_NEW:
        return None, True, f"new tokens must be a number from 1 to {MAX_NEW}.", no_update, no_update
    try:
        check_unicode(str(prompt), "The prompt")
    except ValueError as err:
        return None, True, str(err), no_update, no_update
    key = make_key("generate", ctx.model, prompt, n_new)
    ctx.jobs.submit(key, lambda progress: generate(ctx.subject, prompt, n_new, progress))
    return key, False, "generating...", no_update, no_update


def poll_generation(ctx: Context, pending):
    """One poll tick: (pending, poll disabled, status, text, generated, notifications)."""
    st = ctx.jobs.status(pending)
    if st["state"] == "running":
        return no_update, False, status_text(st, "generation"), no_update, no_update, no_update
    if st["state"] == "error":
        return None, True, st["message"], no_update, no_update, ui.notice("Generation failed", st["message"], "error")
    if st["state"] == "done":
        text = ctx.jobs.get(pending)
        return (None, True, "generated: analyzing the trace", text, {"text": text, "key": pending},
                ui.notice("Generation done", "the trace is in the text box and is being analyzed", "success"))
    return None, True, "", no_update, no_update, no_update


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.RS_SUMMARY, "children"),
                  Output(ids.RS_PROFILE, "figure"), Output(ids.RS_PROFILE, "style"),
                  Output(ids.RS_PROFILE + "-empty", "style"),
                  Output(ids.RS_FAI, "figure"), Output(ids.RS_FAI, "style"),
                  Output(ids.RS_WAAD, "figure"), Output(ids.RS_WAAD, "style"),
                  Input(ids.RESULT_KEY, "data"), Input(ids.URL, "pathname"), Input(ids.THEME, "data"))
    def _render(key, path, theme):
        if not visible(path, PATH):
            raise PreventUpdate
        summary, profile, fai, waad = render(ctx, key)
        return (summary, *ui.shown(profile, theme), ui.empty_style(profile), *ui.shown(fai, theme),
                *ui.shown(waad, theme))

    @app.callback(Output(ids.RS_PENDING, "data"), Output(ids.RS_POLL, "disabled"), Output(ids.RS_STATUS, "children"),
                  Output(ids.TEXT, "value"), Output(ids.GENERATED, "data"),
                  Output(ids.NOTIFY, "sendNotifications", allow_duplicate=True),
                  Input(ids.RS_GENERATE, "n_clicks"), Input(ids.RS_POLL, "n_intervals"),
                  State(ids.RS_PROMPT, "value"), State(ids.RS_NEW_TOKENS, "value"), State(ids.RS_PENDING, "data"),
                  prevent_initial_call=True)
    def _generate(_clicks, _tick, prompt, n_new, pending):
        if dash.ctx.triggered_id == ids.RS_GENERATE:
            out = start_generation(ctx, prompt, n_new)
            note = ui.notice("Cannot generate", out[2], "error") if out[0] is None else no_update
            return (*out, note)
        return poll_generation(ctx, pending)
