"""The Dash app: a shell (text box, Analyze, progress, messages, navigation) around six pages.

Pages are modules in ``dashboard.pages`` with ``PATH``, ``NAME``, ``layout(ctx)`` and
``register(app, ctx)``. We do not use ``dash.register_page``: its registry is global to the
process, and ``create_app`` must be able to build several apps (on different models) in
one process, e.g. in tests. Every page's layout stays in the DOM and the URL only toggles
which one is visible, so switching pages keeps each page's inputs and figures.

Per-tab state (the session id, the analysis the tab shows, the job it waits for, its edit
list) lives in ``dcc.Store(storage_type="memory")``: nothing about "the current text" is
global on the server, so two tabs never see each other's results.
"""

from __future__ import annotations

import uuid

import dash
from dash import Input, Output, State, dcc, html, no_update

import lens
from dashboard import ids
from dashboard._context import Context, status_text
from dashboard._work import DEFAULT_MAX_TOKENS, analyze_text, check_text
from dashboard.pages import attention, circuits, interventions, overview, probes, reasoning

PAGES = (overview, attention, reasoning, interventions, circuits, probes)

EXAMPLE_TEXT = {
    "bigram_backcopy": "t03 t17 t42 t05 t11 t30 t08 t03 t21 t09 t14 t30 t02 t44 t07 t19",
    "induction": "t05 t12 t33 t47 t08 t21 t60 t02 t05 t12 t33 t47 t08 t21 t60 t02",
}
DEFAULT_TEXT = ("When Mary and John went to the store, John gave a drink to Mary. The attention of a language model "
                "often rests on the first token, which acts as a sink for heads that have nothing to do.")


def create_app(subject: lens.Subject | str = "smollm2", *, max_tokens: int = DEFAULT_MAX_TOKENS,
               poll_ms: int = 200) -> dash.Dash:
    """A Dash app over ``subject`` (a loaded ``lens.Subject`` or a model name for ``lens.load``).

    max_tokens: longer texts get a message instead of a capture (also capped by the model's
    context). poll_ms: how often a waiting page asks whether its job is done.
    """
    if isinstance(subject, str):
        subject = lens.load(subject)
    if not isinstance(subject, lens.Subject):
        raise TypeError(f"create_app takes a lens.Subject or a model name, got {type(subject).__name__}")
    if int(max_tokens) < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    ctx = Context(subject=subject, max_tokens=int(max_tokens))
    app = dash.Dash(__name__, title=f"attention workbench: {subject.name}", suppress_callback_exceptions=False,
                    update_title=None)
    app.layout = lambda: _layout(ctx, poll_ms)  # a function: every page load gets a fresh session id
    for page in PAGES:
        page.register(app, ctx)
    _register_shell(app, ctx)
    app._lens_context = ctx  # for tests and notebooks: the server-side state of this app
    return app


def _layout(ctx: Context, poll_ms: int) -> html.Div:
    s = ctx.subject
    nav = [dcc.Link(p.NAME, href=p.PATH, id=f"nav-{p.NAME.lower()}", style={"marginRight": "18px"}) for p in PAGES]
    limit = min(ctx.max_tokens, s.n_ctx)
    return html.Div([
        dcc.Location(id=ids.URL, refresh=False),
        dcc.Store(id=ids.SESSION, storage_type="memory", data=uuid.uuid4().hex[:12]),
        dcc.Store(id=ids.RESULT_KEY, storage_type="memory"),
        dcc.Store(id=ids.PENDING, storage_type="memory"),
        dcc.Store(id=ids.GENERATED, storage_type="memory"),
        dcc.Interval(id=ids.POLL, interval=poll_ms, disabled=True),
        html.Div([
            html.B(f"attention workbench \u00b7 {s.name}", style={"marginRight": "24px"}),
            *nav,
        ], style={"padding": "8px 0", "borderBottom": "1px solid #ddd"}),
        html.Div([
            dcc.Textarea(id=ids.TEXT, value=EXAMPLE_TEXT.get(s.name, DEFAULT_TEXT),
                         style={"width": "100%", "height": "70px"}),
            html.Button("Analyze", id=ids.ANALYZE, n_clicks=0),
            html.Span(f"  up to {limit} tokens; {s.n_layers} layers x {s.n_heads} heads", style={"color": "#777",
                                                                                                   "fontSize": "12px"}),
            html.Div(id=ids.STATUS, style={"fontSize": "13px", "color": "#555", "marginTop": "4px"}),
            html.Div(id=ids.MESSAGE, role="alert",
                     style={"color": "#b00020", "fontWeight": "bold", "marginTop": "4px"}),
        ], style={"margin": "8px 0"}),
        *[html.Div(p.layout(ctx), id=ids.PAGE_PREFIX + p.NAME.lower(),
                   style={"display": "block" if p is overview else "none"}) for p in PAGES],
    ], style={"fontFamily": "sans-serif", "margin": "0 18px"})


def analyze_request(ctx: Context, text: str | None) -> tuple[str | None, str]:
    """Check ``text`` and start (or find) its analysis: (key, "") or (None, message for the page)."""
    try:
        n = check_text(ctx.subject, text, ctx.max_tokens)
    except ValueError as err:
        return None, str(err)
    key = ctx.analysis_key(text)
    if ctx.analysis(key) is None:
        ctx.jobs.submit(key, lambda progress: analyze_text(ctx.subject, text, progress))
    return key, f"{n} tokens"


def _register_shell(app, ctx: Context) -> None:
    @app.callback(*[Output(ids.PAGE_PREFIX + p.NAME.lower(), "style") for p in PAGES], Input(ids.URL, "pathname"))
    def _route(path):
        path = path or "/"
        known = any(path == p.PATH for p in PAGES)
        return [{"display": "block" if (path == p.PATH or (not known and p is overview)) else "none"} for p in PAGES]

    @app.callback(Output(ids.RESULT_KEY, "data"), Output(ids.PENDING, "data"), Output(ids.POLL, "disabled"),
                  Output(ids.MESSAGE, "children"), Output(ids.STATUS, "children"),
                  Input(ids.ANALYZE, "n_clicks"), Input(ids.POLL, "n_intervals"), Input(ids.GENERATED, "data"),
                  State(ids.TEXT, "value"), State(ids.PENDING, "data"), State(ids.SESSION, "data"),
                  prevent_initial_call=True)
    def _analyze(_clicks, _tick, generated, text, pending, session):
        trigger = dash.ctx.triggered_id
        if trigger in (ids.ANALYZE, ids.GENERATED):
            if trigger == ids.GENERATED:
                text = (generated or {}).get("text")
            key, note = analyze_request(ctx, text)
            if key is None:
                return no_update, None, True, note, ""
            if ctx.analysis(key) is not None:
                return key, None, True, "", f"{note}; shown from the cache (session {session})"
            return no_update, key, False, "", f"{note}: queued"
        st = ctx.jobs.status(pending)
        if st["state"] == "running":
            return no_update, no_update, False, "", status_text(st, "analysis")
        if st["state"] == "done":
            a = ctx.analysis(pending)
            return pending, None, True, "", (f"{int(a.capture.lengths[0])} tokens analyzed in {a.seconds:.2f} s "
                                             f"(session {session})")
        if st["state"] == "error":
            return no_update, None, True, st["message"], ""
        return no_update, None, True, "", ""
