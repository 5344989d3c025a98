"""Probes: linear probes per layer on a built-in task (``probes.probe_layers``), against a control task."""

from __future__ import annotations

import dash
from dash import Input, Output, State, dcc, html, no_update

import viz
from dashboard import ids
from dashboard._context import Context, job_slots, labelled, placeholder, poll_job, start_job
from dashboard._jobs import make_key
from dashboard._work import probe_tasks, run_probes

PATH = "/probes"
NAME = "Probes"


def layout(ctx: Context) -> html.Div:
    tasks = probe_tasks(ctx.subject)
    return html.Div([
        html.H3("Probes"),
        html.P("A logistic probe on the residual stream after each layer, held out by sequence; the dashed line is "
               "the control task (each token type gets a random label), so accuracy - control = selectivity says "
               "what the layer encodes beyond token identity.", style={"fontSize": "13px"}),
        html.Div([
            labelled("task", dcc.Dropdown(id=ids.PR_TASK, options=tasks, value=tasks[0] if tasks else None,
                                          clearable=False), width="200px"),
            labelled("examples", dcc.Input(id=ids.PR_N, type="number", value=64, step=1, style={"width": "90px"})),
            html.Button("Run probes", id=ids.PR_RUN, n_clicks=0, style={"marginTop": "18px"}),
        ]),
        *job_slots(ids.PR_STATUS, ids.PR_POLL, ids.PR_PENDING, ids.PR_KEY),
        dcc.Graph(id=ids.PR_CURVES, figure=placeholder("probe curves: choose a task and press Run probes", 420)),
    ])


def render(ctx: Context, key):
    result = ctx.jobs.get(key)
    if result is None:
        return placeholder("probe curves: choose a task and press Run probes", 420)
    task, frame = result
    best = frame.loc[frame["selectivity"].idxmax()]
    return viz.probe_curves(frame, x="layer", y="accuracy", control="control_accuracy",
                            title=f"{task}: probe accuracy by layer (best selectivity {best['selectivity']:.2f} "
                                  f"at layer {int(best['layer'])}; majority {frame['majority'].iloc[0]:.2f})")


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.PR_PENDING, "data"), Output(ids.PR_POLL, "disabled"), Output(ids.PR_KEY, "data"),
                  Output(ids.PR_STATUS, "children"), Input(ids.PR_RUN, "n_clicks"), Input(ids.PR_POLL, "n_intervals"),
                  State(ids.PR_TASK, "value"), State(ids.PR_N, "value"), State(ids.PR_PENDING, "data"),
                  prevent_initial_call=True)
    def _run(_n, _tick, task, n, pending):
        if dash.ctx.triggered_id == ids.PR_RUN:
            if not task:
                return None, True, no_update, "no built-in probing task for this model"
            try:
                n = int(n)
            except (TypeError, ValueError):
                return None, True, no_update, "examples must be a whole number"
            key = make_key("probes", ctx.model, task, n)
            return start_job(ctx, key, lambda progress: (task, run_probes(ctx.subject, task, n, progress)))
        return poll_job(ctx, pending, "probes", lambda result: (
            f"{len(result[1])} layers probed on {int(result[1]['n_test'].iloc[0])} held-out tokens"))

    @app.callback(Output(ids.PR_CURVES, "figure"), Input(ids.PR_KEY, "data"))
    def _render(key):
        return render(ctx, key)
