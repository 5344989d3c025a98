"""The Dash app: an app shell (header, navigation, the input card, notifications) around eight pages.

Pages are modules in ``lens.dashboard.pages`` with ``PATH``, ``NAME``, ``layout(ctx)`` and
``register(app, ctx)``. We do not use ``dash.register_page``: its registry is global to the
process, and ``create_app`` must be able to build several apps (on different models) in
one process, e.g. in tests. Every page's layout stays in the DOM and the URL only toggles
which one is visible, so switching pages keeps each page's inputs and figures.

Per-tab state (the session id, the analysis the tab shows, the job it waits for, its edit
list, the colour scheme) lives in ``dcc.Store``s in the browser: nothing about "the current
text" is global on the server, so two tabs never see each other's results.

What a tab shows comes from one of two sources, picked in the input card: a live text
(captured by the loaded model in the background) or a capture saved with ``lens capture
--out`` and opened with ``--capture DIR``. With ``--model none`` only saved work is shown,
and nothing runs a forward pass.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dash
import dash_mantine_components as dmc
from dash import Input, Output, State, dcc, html, no_update

import lens
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import SAVED_PREFIX, Context, status_text
from lens.dashboard._work import analyze_text, check_text
from lens.kernels import AUTO_CHUNKED_MIN_KEYS, auto_backend
from lens.dashboard.pages import attention, census, circuits, interventions, overview, probes, reasoning, runs

PAGES = (overview, attention, reasoning, interventions, circuits, probes, runs, census)
OWN_INPUTS = (runs, census)  # pages that read saved work of their own, not the tab's analysis: no input card
LIVE = "live"  # the source value of the live text

EXAMPLE_TEXT = {
    "bigram_backcopy": "t03 t17 t42 t05 t11 t30 t08 t03 t21 t09 t14 t30 t02 t44 t07 t19",
    "induction": "t05 t12 t33 t47 t08 t21 t60 t02 t05 t12 t33 t47 t08 t21 t60 t02",
}
DEFAULT_TEXT = ("When Mary and John went to the store, John gave a drink to Mary. The attention of a language model "
                "often rests on the first token, which acts as a sink for heads that have nothing to do.")


def create_app(subject: lens.Subject | str | None = "smollm2", *, captures=(), store=None, runs=None,
               max_tokens: int | None = None, poll_ms: int = 200, device=None, dtype="auto",
               device_map=None) -> dash.Dash:
    """A Dash app over ``subject`` (a loaded ``lens.Subject``, a model name for ``lens.load``, or
    None / "none" for no model) and the saved work named on the command line.

    captures: directories written by ``Capture.save`` (``lens capture --out``), opened in the
    background at once. store: a store directory (``lens capture --dataset --out``) for the
    Census page. runs: the DuckDB file of ``lens run`` for the Runs page (default:
    ``./runs.duckdb`` when it exists). max_tokens: a lower cap on live texts than the
    model's context. device, dtype, device_map: where a model named by ``subject`` is loaded
    (``lens.load``'s placement; the header shows where it runs).

    Why nine parameters: ``serve``'s model and saved-work options (one per option of ``lens dashboard``), plus
    ``poll_ms``, how often the analysis card asks for a job's progress.
    """
    if isinstance(subject, str):
        subject = (None if subject.lower() == "none"
                   else lens.load(subject, device=device, dtype=dtype, device_map=device_map))
    if subject is not None and not isinstance(subject, lens.Subject):
        raise TypeError(f"create_app takes a lens.Subject, a model name or None, got {type(subject).__name__}")
    if max_tokens is not None and int(max_tokens) < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    if runs is None and Path("runs.duckdb").is_file():
        runs = Path("runs.duckdb")
    for p in captures:
        if not Path(p).is_dir():
            raise FileNotFoundError(f"--capture {p}: no such directory (give a directory written by lens capture --out)")
    ctx = Context(subject=subject, max_tokens=None if max_tokens is None else int(max_tokens),
                  store=None if store is None else lens.Store(store), runs=None if runs is None else Path(runs))
    ctx.open_saved(captures)
    title = f"attention workbench: {ctx.model}"
    app = dash.Dash(__name__, title=title, suppress_callback_exceptions=False, update_title=None)
    app.layout = lambda: _layout(ctx, poll_ms)  # a function: every page load gets a fresh session id
    for page in PAGES:
        page.register(app, ctx)
    _register_shell(app, ctx)
    app._lens_context = ctx  # for tests and notebooks: the server-side state of this app
    return app


def _sources(ctx: Context) -> list[dict]:
    out = [{"value": LIVE, "label": "live text"}] if ctx.subject is not None else []
    for name, item in ctx.saved.items():
        out.append({"value": SAVED_PREFIX + name, "label": f"saved: {name}"})
    return out


def _input_card(ctx: Context) -> dmc.Card:
    s = ctx.subject
    sources = _sources(ctx)
    first = sources[0]["value"] if sources else None
    if s is not None:
        what = (f"live texts up to {ctx.limit:,} tokens ({_limit_reason(ctx)}); {s.n_layers} layers x "
                f"{s.n_heads} heads")
    else:
        what = "no model loaded (--model none): saved captures, runs and stores only"
    text_box = dmc.Textarea(id=ids.TEXT, value=EXAMPLE_TEXT.get(getattr(s, "name", ""), DEFAULT_TEXT),
                            autosize=True, minRows=2, maxRows=8, w="100%",
                            style={} if s is not None else ui.HIDDEN)
    return dmc.Card([
        dmc.Group([
            ui.select(ids.SOURCE, [(o["value"], o["label"]) for o in sources], value=first, width=260,
                      disabled=len(sources) < 2, **{"aria-label": "what this tab shows"}),
            dmc.Button("Analyze", id=ids.ANALYZE, n_clicks=0, disabled=s is None),
            dmc.Text(what, id=ids.LIMIT, size="xs", c="dimmed", style={"flex": "1 1 300px"}),
        ], align="center", gap="md", wrap="wrap"),
        html.Div(text_box, style={"marginTop": "8px"}),
        dmc.Progress(id=ids.PROGRESS, value=0, size="sm", mt=8, animated=True, style=ui.HIDDEN),
        dmc.Text(id=ids.STATUS, size="sm", c="dimmed", mt=4),
        html.Div(id=ids.MESSAGE, role="alert", style={"color": "var(--mantine-color-red-6)", "fontWeight": 600,
                                                      "fontSize": "14px", "marginTop": "4px"}),
    ], id=ids.INPUT_CARD, mb="md")


def _limit_reason(ctx: Context) -> str:
    s = ctx.subject
    why = f"{s.name}'s context" if ctx.limit == s.n_ctx else "this dashboard's --max-tokens"
    backend = ("the Triton kernels" if auto_backend(s.device) == "triton" else
               f"beyond {AUTO_CHUNKED_MIN_KEYS} tokens the chunked backend streams the keys")
    return f"{why}; {backend}"


def _layout(ctx: Context, poll_ms: int) -> dmc.MantineProvider:
    nav = [dmc.NavLink(label=p.NAME, href=p.PATH, id=ids.NAV_PREFIX + p.NAME.lower(), active=p is overview)
           for p in PAGES]
    header = dmc.Group([
        dmc.Group([dmc.Title("attention workbench", order=4),
                   dmc.Badge(ctx.model, variant="light", size="lg"),
                   dmc.Tooltip(dmc.Badge(ctx.placement, id=ids.PLACEMENT, variant="outline", size="lg", tt="none"),
                               label="device · dtype · attention backend")], gap="sm"),
        dmc.Switch(id=ids.THEME_SWITCH, label="dark", checked=False, persistence=True, persistence_type="local"),
    ], justify="space-between", h="100%", px="md")
    shell = dmc.AppShell([
        dmc.AppShellHeader(header),
        dmc.AppShellNavbar(nav, p="xs"),
        dmc.AppShellMain([
            _input_card(ctx),
            *[html.Div(p.layout(ctx), id=ids.PAGE_PREFIX + p.NAME.lower(),
                       style={"display": "block" if p is overview else "none"}) for p in PAGES],
        ]),
    ], header={"height": 56}, navbar={"width": 180, "breakpoint": "xs"}, padding="md")
    return dmc.MantineProvider([
        dcc.Location(id=ids.URL, refresh=False),
        dcc.Store(id=ids.SESSION, storage_type="memory", data=uuid.uuid4().hex[:12]),
        # a saved capture shown first and already open is in the page itself: one round trip less
        dcc.Store(id=ids.RESULT_KEY, storage_type="memory", data=_first_open(ctx)),
        dcc.Store(id=ids.PENDING, storage_type="memory"),
        dcc.Store(id=ids.GENERATED, storage_type="memory"),
        dcc.Store(id=ids.THEME, storage_type="memory", data=ui.LIGHT),
        dcc.Interval(id=ids.POLL, interval=poll_ms, disabled=True),
        dmc.NotificationContainer(id=ids.NOTIFY, position="top-right", autoClose=6000),
        shell,
    ], id=ids.PROVIDER, theme=ui.THEME, forceColorScheme="light")


def _first_open(ctx: Context) -> str | None:
    sources = _sources(ctx)
    first = sources[0]["value"] if sources else None
    return first if first and first.startswith(SAVED_PREFIX) and ctx.analysis(first) is not None else None


def analyze_request(ctx: Context, text: str | None) -> tuple[str | None, str]:
    """Check ``text`` and start (or find) its analysis: (key, "") or (None, message for the page)."""
    if ctx.subject is None:
        return None, "No model is loaded (--model none): open a saved capture instead."
    try:
        n = check_text(ctx.subject, text, ctx.limit)
    except ValueError as err:
        return None, str(err)
    key = ctx.analysis_key(text)
    if ctx.analysis(key) is None:
        ctx.jobs.submit(key, lambda progress: analyze_text(ctx.subject, text, progress))
    return key, f"{n:,} tokens"


def _register_shell(app, ctx: Context) -> None:
    # The page switch runs in the browser: as a server callback it queued behind the renders the
    # same URL change starts on every page (2-3.5 s to show the Runs page on a loaded machine).
    paths = [p.PATH for p in PAGES]
    own = [p.PATH for p in OWN_INPUTS]
    app.clientside_callback(
        f"""function(path) {{
            const paths = {paths!r}, own = {own!r};
            path = path || "/";
            const shown = paths.includes(path) ? path : "/";
            const styles = paths.map(p => ({{display: p === shown ? "block" : "none"}}));
            const active = paths.map(p => p === shown);
            return [...styles, ...active, own.includes(shown) ? {{display: "none"}} : {{}}];
        }}""",
        *[Output(ids.PAGE_PREFIX + p.NAME.lower(), "style") for p in PAGES],
        *[Output(ids.NAV_PREFIX + p.NAME.lower(), "active") for p in PAGES], Output(ids.INPUT_CARD, "style"),
        Input(ids.URL, "pathname"))

    @app.callback(Output(ids.THEME, "data"), Output(ids.PROVIDER, "forceColorScheme"), Input(ids.THEME_SWITCH, "checked"))
    def _theme(dark):
        theme = ui.DARK if dark else ui.LIGHT
        return theme, theme

    # AG Grid's theming API reads its colour scheme from an attribute on the page
    app.clientside_callback(
        """function(theme) { document.body.dataset.agThemeMode = theme; return window.dash_clientside.no_update; }""",
        Output(ids.THEME, "id"), Input(ids.THEME, "data"))

    @app.callback(Output(ids.TEXT, "style"), Output(ids.ANALYZE, "disabled"), Input(ids.SOURCE, "value"))
    def _source_controls(source):
        live = source == LIVE and ctx.subject is not None
        return ({} if live else ui.HIDDEN), not live

    @app.callback(Output(ids.RESULT_KEY, "data"), Output(ids.PENDING, "data"), Output(ids.POLL, "disabled"),
                  Output(ids.MESSAGE, "children"), Output(ids.STATUS, "children"),
                  Output(ids.PROGRESS, "value"), Output(ids.PROGRESS, "style"),
                  Output(ids.NOTIFY, "sendNotifications", allow_duplicate=True), Output(ids.SOURCE, "value"),
                  Input(ids.ANALYZE, "n_clicks"), Input(ids.POLL, "n_intervals"), Input(ids.GENERATED, "data"),
                  Input(ids.SOURCE, "value"),
                  State(ids.TEXT, "value"), State(ids.PENDING, "data"), State(ids.SESSION, "data"),
                  prevent_initial_call="initial_duplicate")
    def _analyze(_clicks, _tick, generated, source, text, pending, session):
        # a generated trace is a live text: the picker follows it (it may have shown a saved capture)
        follow = LIVE if dash.ctx.triggered_id == ids.GENERATED and source != LIVE else no_update
        return (*_analysis_step(ctx, dash.ctx.triggered_id, generated, source, text, pending, session), follow)


def _analysis_step(ctx: Context, trigger, generated, source, text, pending, session) -> tuple:
    """The analysis card's next state after ``trigger`` (a component id, None at page load): result key,
    pending key, poll disabled, message, status, progress value and style, notification."""
    quiet = (no_update, ui.HIDDEN, no_update)
    if trigger == ids.SOURCE or trigger is None:
        if source and source.startswith(SAVED_PREFIX):
            if ctx.analysis(source) is not None:  # opened at start: show it at once
                key = no_update if trigger is None else source  # at page load the layout holds it already
                return key, None, True, "", f"saved capture: {_describe(ctx.analysis(source))}", *quiet
            return (no_update, source, False, "", "opening the saved capture", 0, ui.SHOWN, no_update)
        return no_update, None, True, "", "", *quiet
    if trigger in (ids.ANALYZE, ids.GENERATED):
        if trigger == ids.GENERATED:
            text = (generated or {}).get("text")
        key, note = analyze_request(ctx, text)
        if key is None:
            return no_update, None, True, note, "", *quiet
        if ctx.analysis(key) is not None:
            return key, None, True, "", f"{note}; shown from the cache (session {session})", *quiet
        return no_update, key, False, "", f"{note}: queued", 0, ui.SHOWN, no_update
    if pending and pending.startswith(SAVED_PREFIX):  # a saved capture opening in the background
        state, message = ctx.saved_status(pending[len(SAVED_PREFIX):])
        if state == "running":
            return no_update, no_update, False, "", message, 50, ui.SHOWN, no_update
        if state == "error":
            return no_update, None, True, message, "", *ui_error("Opening the capture failed", message)
        a = ctx.analysis(pending)
        return pending, None, True, "", f"saved capture: {_describe(a)}", *quiet
    st = ctx.jobs.status(pending)
    if st["state"] == "running":
        frac = st.get("fraction")
        return (no_update, no_update, False, "", status_text(st, "analysis"), 100 * (frac or 0), ui.SHOWN,
                no_update)
    if st["state"] == "done":
        a = ctx.analysis(pending)
        msg = f"{int(a.capture.lengths[0]):,} tokens analyzed in {a.seconds:.2f} s (session {session})"
        return pending, None, True, "", msg, 100, ui.HIDDEN, ui.notice("Analysis done", msg, "success")
    if st["state"] == "error":
        return no_update, None, True, st["message"], "", *ui_error("Analysis failed", st["message"])
    return no_update, None, True, "", "", *quiet


def ui_error(title: str, message: str) -> tuple:
    """(progress value, progress style, notification) for a failed job."""
    return no_update, ui.HIDDEN, ui.notice(title, message, "error")


def _describe(a) -> str:
    cap = a.capture
    return (f"{cap.meta.get('model', '?')}, {int(cap.lengths[0]):,} tokens, {overview.layers_text(cap)} layers x "
            f"{cap.n_heads} heads, backend {cap.meta.get('backend', '?')} ({a.source})")

