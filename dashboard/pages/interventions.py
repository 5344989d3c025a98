"""Interventions: build edits from ``lens.edits``, run them on the tab's text, compare before and after,
and save them as an experiment spec (TOML) for ``lens run``."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html, no_update

import viz
from dashboard import ids
from dashboard._context import Context, job_slots, labelled, placeholder, poll_job, start_job
from dashboard._jobs import make_key
from dashboard._work import EDIT_TYPES, build_edit, describe, edit_fields, run_edits, spec_toml, task_names

PATH = "/interventions"
NAME = "Interventions"


class _Decoder:
    """Token id -> string, decoded on demand (the vocabulary can be large)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getitem__(self, i: int) -> str:
        return self.tokenizer.decode([int(i)])


def layout(ctx: Context) -> html.Div:
    s = ctx.subject
    txt = dict(type="text", debounce=False, style={"width": "80px"})
    num = dict(type="number", step=1, style={"width": "80px"})
    tasks = task_names()
    return html.Div([
        html.H3("Interventions"),
        html.Div([
            labelled("edit", dcc.Dropdown(id=ids.IV_TYPE, value="scale_attention", clearable=False,
                                          options=[{"label": f"{k}: {v[0]}", "value": k}
                                                   for k, v in EDIT_TYPES.items()]),
                     width="420px"),
            labelled(f"layer(s) 0-{s.n_layers - 1} / all", dcc.Input(id=ids.IV_LAYER, value="0", **txt)),
            labelled(f"head(s) 0-{s.n_heads - 1} / all", dcc.Input(id=ids.IV_HEAD, value="0", **txt)),
            labelled("keys", dcc.Input(id=ids.IV_KEYS, value="0", **txt)),
            labelled("factor / bias", dcc.Input(id=ids.IV_VALUE, value="0.1", **txt)),
            html.Button("Add edit", id=ids.IV_ADD, n_clicks=0, style={"marginTop": "18px"}),
            html.Button("Clear", id=ids.IV_CLEAR, n_clicks=0, style={"marginTop": "18px", "marginLeft": "6px"}),
        ]),
        dcc.Store(id=ids.IV_EDITS, storage_type="memory", data=[]),
        html.Ul(id=ids.IV_EDITS_VIEW, children=[html.Li("no edits yet")], style={"fontSize": "13px"}),
        html.Div([
            html.Button("Run edits on the text", id=ids.IV_RUN, n_clicks=0),
            labelled("show layer", dcc.Input(id=ids.IV_SHOW_LAYER, value=0, **num)),
            labelled("show head", dcc.Input(id=ids.IV_SHOW_HEAD, value=0, **num)),
        ]),
        *job_slots(ids.IV_STATUS, ids.IV_POLL, ids.IV_PENDING, ids.IV_KEY, interval_ms=250),
        dcc.Graph(id=ids.IV_NEXT, figure=placeholder("next-token distributions: add an edit and run it")),
        dcc.Graph(id=ids.IV_PATTERNS, figure=placeholder("patterns before / after", 460)),
        html.H4("Save as an experiment spec"),
        html.Div([
            labelled("task", dcc.Dropdown(id=ids.IV_TASK, options=tasks, value=tasks[0] if tasks else None,
                                          clearable=False), width="200px"),
            labelled("test examples", dcc.Input(id=ids.IV_TEST, type="number", value=100, min=1, step=1,
                                                style={"width": "90px"})),
            html.Button("Download spec", id=ids.IV_DOWNLOAD_BUTTON, n_clicks=0, style={"marginTop": "18px"}),
        ]),
        dcc.Textarea(id=ids.IV_SPEC, value="", readOnly=True,
                     style={"width": "100%", "height": "220px", "fontFamily": "monospace", "fontSize": "12px"}),
        dcc.Download(id=ids.IV_DOWNLOAD),
    ])


def render(ctx: Context, key, layer, head):
    """(next-token figure, pattern comparison figure) for the tab's last edit run."""
    result = ctx.jobs.get(key)
    if result is None:
        return (placeholder("next-token distributions: add an edit and run it"),
                placeholder("patterns before / after", 460))
    before, after = result["before"], result["after"]
    s = ctx.subject
    nxt = viz.next_token_comparison(before.logits[0], after.logits[0], _Decoder(s.tokenizer), k=10)
    try:
        layer, head = int(layer), int(head)
        pat = viz.pattern_comparison(viz.pattern_view(before, layer, head), viz.pattern_view(after, layer, head))
    except (TypeError, ValueError) as err:
        pat = placeholder(f"cannot show that head: {err}", 460)
    return nxt, pat


def add_edit(ctx: Context, kind, layer, head, keys, value, current):
    """(new edit list, message) for the page's edit fields, or (no_update, why not) when they are bad."""
    try:
        fields = edit_fields(kind, layer, head, keys, value)
        build_edit(fields).targets(ctx.subject.n_layers, ctx.subject.n_heads)
    except ValueError as err:
        return no_update, f"Cannot add this edit: {err}"
    return [*(current or []), fields], f"added {describe(fields)}"


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.IV_EDITS, "data"), Output(ids.IV_STATUS, "children", allow_duplicate=True),
                  Input(ids.IV_ADD, "n_clicks"), Input(ids.IV_CLEAR, "n_clicks"),
                  State(ids.IV_TYPE, "value"), State(ids.IV_LAYER, "value"), State(ids.IV_HEAD, "value"),
                  State(ids.IV_KEYS, "value"), State(ids.IV_VALUE, "value"), State(ids.IV_EDITS, "data"),
                  prevent_initial_call=True)
    def _edit_list(_add, _clear, kind, layer, head, keys, value, current):
        from dash import ctx as dash_ctx

        if dash_ctx.triggered_id == ids.IV_CLEAR:
            return [], "edits cleared"
        return add_edit(ctx, kind, layer, head, keys, value, current)

    @app.callback(Output(ids.IV_EDITS_VIEW, "children"), Input(ids.IV_EDITS, "data"))
    def _show_edits(edits):
        return [html.Li(describe(f)) for f in edits] if edits else [html.Li("no edits yet")]

    @app.callback(Output(ids.IV_SPEC, "value"), Input(ids.IV_EDITS, "data"), Input(ids.IV_TASK, "value"),
                  Input(ids.IV_TEST, "value"))
    def _spec(edits, task, n_test):
        if not task:
            return "# the experiments package (lens.experiments) is not available"
        try:
            return spec_toml(ctx.model, edits or [], task=task, n_test=int(n_test or 1))
        except (ValueError, TypeError) as err:
            return f"# cannot write a valid spec: {err}"

    @app.callback(Output(ids.IV_DOWNLOAD, "data"), Input(ids.IV_DOWNLOAD_BUTTON, "n_clicks"),
                  State(ids.IV_SPEC, "value"), prevent_initial_call=True)
    def _download(_n, text):
        return dict(content=text or "", filename="dashboard-edit.toml")

    @app.callback(Output(ids.IV_PENDING, "data"), Output(ids.IV_POLL, "disabled"), Output(ids.IV_KEY, "data"),
                  Output(ids.IV_STATUS, "children"),
                  Input(ids.IV_RUN, "n_clicks"), Input(ids.IV_POLL, "n_intervals"),
                  State(ids.RESULT_KEY, "data"), State(ids.IV_EDITS, "data"), State(ids.IV_PENDING, "data"),
                  prevent_initial_call=True)
    def _run(_n, _tick, result_key, edits, pending):
        from dash import ctx as dash_ctx

        if dash_ctx.triggered_id == ids.IV_RUN:
            analysis = ctx.analysis(result_key)
            if analysis is None:
                return None, True, no_update, "Analyze a text first (the box at the top)."
            if not edits:
                return None, True, no_update, "Add at least one edit first."
            key = make_key("edit", ctx.model, analysis.text, edits)
            before, text = analysis.capture, analysis.text

            def job(progress):
                return {"before": before, "after": run_edits(ctx.subject, text, edits, progress), "edits": edits}

            return start_job(ctx, key, job, cached=f"{len(edits)} edit(s) applied (cached)",
                             queued="running the edited pass...")
        return poll_job(ctx, pending, "edits", lambda res: (
            f"{len(res['edits'])} edit(s) applied to the {int(res['before'].lengths[0])}-token text analyzed "
            "when Run was pressed"))

    @app.callback(Output(ids.IV_NEXT, "figure"), Output(ids.IV_PATTERNS, "figure"), Input(ids.IV_KEY, "data"),
                  Input(ids.IV_SHOW_LAYER, "value"), Input(ids.IV_SHOW_HEAD, "value"))
    def _render(key, layer, head):
        return render(ctx, key, layer, head)
