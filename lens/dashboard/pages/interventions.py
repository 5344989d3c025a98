"""Interventions: build edits from ``lens.edits``, run them on the tab's text, compare before and after,
and save them as an experiment spec (TOML) for ``lens run``.

An edit runs the model again on the text, so it needs the loaded model and a live text:
a saved capture holds tokens and statistics, not the text and model an edited pass needs.
"""

from __future__ import annotations

import dash
import dash_mantine_components as dmc
from dash import Input, Output, State, dcc, html, no_update

from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, job_slots, poll_job, start_job
from lens.dashboard._jobs import make_key
from lens.dashboard._work import EDIT_TYPES, build_edit, describe, edit_fields, run_edits, spec_toml, task_names

PATH = "/interventions"
NAME = "Interventions"
NEXT_EMPTY = "Add an edit and press Run edits: the next-token distributions before and after it show here."
PATTERNS_EMPTY = "The chosen head's pattern before and after the edits shows here once they have run."
KEYED = ("scale_attention", "key_bias")  # edit types that take keys


class _Decoder:
    """Token id -> string, decoded on demand (the vocabulary can be large)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getitem__(self, i: int) -> str:
        return self.tokenizer.decode([int(i)])


def layout(ctx: Context) -> html.Div:
    s = ctx.subject
    live = s is not None
    layers, n_heads = (list(s.attn_layers), s.n_heads) if live else ([0], 1)  # block numbers with attention
    listed = f"0-{len(layers) - 1}" if layers == list(range(len(layers))) else ",".join(map(str, layers))
    tasks = task_names()
    build = ui.card(
        "Edits",
        dmc.Group([
            ui.select(ids.IV_TYPE, [(k, f"{k}: {v[0]}") for k, v in EDIT_TYPES.items()], value="scale_attention",
                      label="edit", description="applied inside the edited pass (lens.edits)", width=430),
            dmc.TextInput(id=ids.IV_LAYER, value=str(layers[0]), label="layer(s)", w=110,
                          description=f"{listed}, a list or all"),
            dmc.TextInput(id=ids.IV_HEAD, value="0", label="head(s)", w=110,
                          description=f"0-{n_heads - 1}, 0,1 or all"),
            dmc.TextInput(id=ids.IV_KEYS, value="0", label="keys", w=110, description="positions, e.g. 0"),
            dmc.TextInput(id=ids.IV_VALUE, value="0.1", label="factor", w=110, description=_value_hint("factor")),
        ], align="flex-end", gap="md", wrap="wrap"),
        dmc.Group([
            dmc.Button("Add edit", id=ids.IV_ADD, n_clicks=0),
            dmc.Button("Clear", id=ids.IV_CLEAR, n_clicks=0, variant="default"),
        ], gap="sm", mt="sm"),
        dcc.Store(id=ids.IV_EDITS, storage_type="memory", data=[]),
        dmc.List(id=ids.IV_EDITS_VIEW, children=_edit_items([]), size="sm", mt="sm", spacing=2),
    )
    run = ui.card(
        "Run on the text",
        dmc.Group([
            dmc.Button("Run edits on the text", id=ids.IV_RUN, n_clicks=0),
            ui.index_select(ids.IV_SHOW_LAYER, layers, "show layer", prefix="L"),
            ui.index_select(ids.IV_SHOW_HEAD, n_heads, "show head", prefix="H"),
        ], align="flex-end", gap="md", wrap="wrap"),
        *job_slots(ids.IV_STATUS, ids.IV_POLL, ids.IV_PENDING, ids.IV_KEY, interval_ms=250),
        ui.graph(ids.IV_NEXT, 380, empty=NEXT_EMPTY),
        ui.graph(ids.IV_PATTERNS, 460, empty=PATTERNS_EMPTY),
    )
    spec = ui.card(
        "Save as an experiment spec",
        dmc.Text("The edits above on a built-in task, as a spec for lens run.", size="sm", c="dimmed", mb="xs"),
        dmc.Group([
            ui.select(ids.IV_TASK, tasks, value=tasks[0] if tasks else None, label="task", width=200,
                      disabled=not tasks),
            dmc.NumberInput(id=ids.IV_TEST, value=100, min=1, step=1, allowDecimal=False, label="test examples",
                            w=140),
            dmc.Button("Download spec", id=ids.IV_DOWNLOAD_BUTTON, n_clicks=0, variant="light"),
        ], align="flex-end", gap="md", wrap="wrap"),
        dmc.Textarea(id=ids.IV_SPEC, value="", readOnly=True, autosize=True, minRows=8, maxRows=20, mt="sm",
                     styles={"input": {"fontFamily": "ui-monospace, SFMono-Regular, Menlo, monospace",
                                       "fontSize": "12px"}}),
        dcc.Download(id=ids.IV_DOWNLOAD),
    )
    hide = {} if live else ui.HIDDEN
    return html.Div([
        dmc.Title("Interventions", order=3, mb="xs"),
        dmc.Text("Edit attention (lens.edits), run the edited model on the text analyzed above, and compare the "
                 "next token and a head's pattern before and after.", size="sm", mb="sm"),
        *([] if live else [ui.needs_model("Running edits")]),
        html.Div([build, run, spec], style=hide),
    ])


def _value_hint(field: str | None) -> str:
    return {"factor": "a number >= 0", "bias": "a number, or -inf", None: "not used"}[field]


def _edit_items(edits) -> list:
    if not edits:
        return [dmc.ListItem(dmc.Text("no edits yet", size="sm", c="dimmed"))]
    return [dmc.ListItem(describe(f)) for f in edits]


def value_field(kind) -> tuple[str, str, bool, bool]:
    """(value label, value hint, value disabled, keys disabled) for an edit type."""
    field = EDIT_TYPES[kind][1] if kind in EDIT_TYPES else "factor"
    return field or "value", _value_hint(field), field is None, kind not in KEYED


def render(ctx: Context, key, layer, head):
    """(next-token figure, pattern comparison figure, pattern note) for the tab's last edit run.

    A figure is None when there is nothing to draw; the note then says why (the empty line).
    """
    result = ctx.jobs.get(key) if key else None
    if result is None or ctx.subject is None:
        return None, None, PATTERNS_EMPTY
    before, after = result["before"], result["after"]
    nxt = viz.next_token_comparison(before.logits[0], after.logits[0], _Decoder(ctx.subject.tokenizer), k=10)
    try:
        layer, head = int(layer), int(head)
        pat = viz.pattern_comparison(viz.pattern_view(before, layer, head), viz.pattern_view(after, layer, head))
    except (TypeError, ValueError, IndexError, KeyError) as err:
        return nxt, None, f"Cannot show that head: {err}"
    return nxt, pat, PATTERNS_EMPTY


def add_edit(ctx: Context, kind, layer, head, keys, value, current):
    """(new edit list, message) for the page's edit fields, or (no_update, why not) when they are bad."""
    if ctx.subject is None:
        return no_update, "Cannot add this edit: no model is loaded (--model none)."
    try:
        fields = edit_fields(kind, layer, head, keys, value)
        build_edit(fields).targets(ctx.subject.attn_layers, ctx.subject.n_heads)
    except ValueError as err:
        return no_update, f"Cannot add this edit: {err}"
    return [*(current or []), fields], f"added {describe(fields)}"


def start_edits(ctx: Context, result_key, edits):
    """Run the edits on the tab's analysis: (pending, poll disabled, shown key, status, notifications)."""
    def refuse(message):
        return None, True, no_update, message, ui.notice("Cannot run the edits", message, "error")

    if ctx.subject is None:
        return refuse("No model is loaded (--model none): edits run the model.")
    analysis = ctx.analysis(result_key)
    if analysis is None:
        return refuse("Analyze a text first (the box at the top).")
    if analysis.text is None:
        return refuse(f"This tab shows a saved capture ({analysis.source}). Edits run the model again on a live "
                      "text: choose 'live text' at the top, paste the text, press Analyze, then run the edits.")
    if not ctx.same_model(analysis):
        return refuse(f"This analysis comes from {analysis.capture.meta.get('model', 'another model')}, not "
                      f"{ctx.model}: analyze the text again with the loaded model.")
    if not edits:
        return refuse("Add at least one edit first.")
    key = make_key("edit", ctx.model, analysis.text, edits)
    before, text = analysis.capture, analysis.text

    def job(progress):
        return {"before": before, "after": run_edits(ctx.subject, text, edits, progress), "edits": edits}

    started = start_job(ctx, key, job, cached=f"{len(edits)} edit(s) applied (cached)",
                        queued="running the edited pass...")
    return (*started, no_update)


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.IV_EDITS, "data"), Output(ids.IV_STATUS, "children", allow_duplicate=True),
                  Output(ids.NOTIFY, "sendNotifications", allow_duplicate=True),
                  Input(ids.IV_ADD, "n_clicks"), Input(ids.IV_CLEAR, "n_clicks"),
                  State(ids.IV_TYPE, "value"), State(ids.IV_LAYER, "value"), State(ids.IV_HEAD, "value"),
                  State(ids.IV_KEYS, "value"), State(ids.IV_VALUE, "value"), State(ids.IV_EDITS, "data"),
                  prevent_initial_call=True)
    def _edit_list(_add, _clear, kind, layer, head, keys, value, current):
        if dash.ctx.triggered_id == ids.IV_CLEAR:
            return [], "edits cleared", no_update
        edits, message = add_edit(ctx, kind, layer, head, keys, value, current)
        return edits, message, ui.notice("Edit refused", message, "error") if edits is no_update else no_update

    @app.callback(Output(ids.IV_VALUE, "label"), Output(ids.IV_VALUE, "description"),
                  Output(ids.IV_VALUE, "disabled"), Output(ids.IV_KEYS, "disabled"), Input(ids.IV_TYPE, "value"))
    def _fields(kind):
        return value_field(kind)

    @app.callback(Output(ids.IV_EDITS_VIEW, "children"), Input(ids.IV_EDITS, "data"))
    def _show_edits(edits):
        return _edit_items(edits)

    @app.callback(Output(ids.IV_SPEC, "value"), Input(ids.IV_EDITS, "data"), Input(ids.IV_TASK, "value"),
                  Input(ids.IV_TEST, "value"))
    def _spec(edits, task, n_test):
        if not task:
            return "# the experiments package (lens.experiments) is not available"
        if ctx.subject is None:
            return "# no model is loaded (--model none): a spec names the model its edits run on"
        try:
            return spec_toml(ctx.model, edits or [], task=task, n_test=int(n_test or 1))
        except (ValueError, TypeError) as err:
            return f"# cannot write a valid spec: {err}"

    @app.callback(Output(ids.IV_DOWNLOAD, "data"), Input(ids.IV_DOWNLOAD_BUTTON, "n_clicks"),
                  State(ids.IV_SPEC, "value"), prevent_initial_call=True)
    def _download(_n, text):
        return dict(content=text or "", filename="dashboard-edit.toml")

    @app.callback(Output(ids.IV_PENDING, "data"), Output(ids.IV_POLL, "disabled"), Output(ids.IV_KEY, "data"),
                  Output(ids.IV_STATUS, "children"), Output(ids.NOTIFY, "sendNotifications", allow_duplicate=True),
                  Input(ids.IV_RUN, "n_clicks"), Input(ids.IV_POLL, "n_intervals"),
                  State(ids.RESULT_KEY, "data"), State(ids.IV_EDITS, "data"), State(ids.IV_PENDING, "data"),
                  prevent_initial_call=True)
    def _run(_n, _tick, result_key, edits, pending):
        if dash.ctx.triggered_id == ids.IV_RUN:
            return start_edits(ctx, result_key, edits)
        return poll_job(ctx, pending, "edits", lambda res: (
            f"{len(res['edits'])} edit(s) applied to the {int(res['before'].lengths[0])}-token text analyzed "
            "when Run was pressed"))

    @app.callback(Output(ids.IV_NEXT, "figure"), Output(ids.IV_NEXT, "style"), Output(ids.IV_NEXT + "-empty", "style"),
                  Output(ids.IV_PATTERNS, "figure"), Output(ids.IV_PATTERNS, "style"),
                  Output(ids.IV_PATTERNS + "-empty", "style"), Output(ids.IV_PATTERNS + "-empty", "children"),
                  Input(ids.IV_KEY, "data"), Input(ids.IV_SHOW_LAYER, "value"), Input(ids.IV_SHOW_HEAD, "value"),
                  Input(ids.THEME, "data"))
    def _render(key, layer, head, theme):
        nxt, pat, note = render(ctx, key, layer, head)
        return (*ui.shown(nxt, theme, 380), ui.empty_style(nxt), *ui.shown(pat, theme), ui.empty_style(pat), note)
