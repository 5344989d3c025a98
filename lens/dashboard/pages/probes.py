"""Probes: linear probes per layer on a built-in task (``probes.probe_layers``), against a control task."""

from __future__ import annotations

import dash
import dash_mantine_components as dmc
from dash import Input, Output, State, html, no_update

from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, job_slots, poll_job, start_job
from lens.dashboard._jobs import make_key
from lens.dashboard._work import probe_tasks, run_probes

PATH = "/probes"
NAME = "Probes"
HEIGHT = 420
EMPTY = "Choose a task and press Run probes: accuracy by layer, against the control task, shows here."


def layout(ctx: Context) -> html.Div:
    live = ctx.subject is not None
    tasks = probe_tasks(ctx.subject) if live else []
    controls = ui.card(
        None,
        dmc.Group([
            ui.select(ids.PR_TASK, tasks, value=tasks[0] if tasks else None, label="task", width=200,
                      disabled=not tasks),
            dmc.NumberInput(id=ids.PR_N, value=64, min=8, max=512, step=1, allowDecimal=False, label="examples",
                            w=120),
            dmc.Button("Run probes", id=ids.PR_RUN, n_clicks=0),
        ], align="flex-end", gap="md", wrap="wrap"),
        *job_slots(ids.PR_STATUS, ids.PR_POLL, ids.PR_PENDING, ids.PR_KEY),
        ui.graph(ids.PR_CURVES, HEIGHT, empty=EMPTY),
    )
    return html.Div([
        dmc.Title("Probes", order=3, mb="xs"),
        dmc.Text("A logistic probe on the residual stream after each layer, scored by 5-fold cross-validation "
                 "grouped by sequence (bars: std over the folds); the dashed line is the control task (each token type gets a random label), so accuracy - control = selectivity "
                 "says what the layer encodes beyond token identity.", size="sm", mb="sm"),
        *([] if live else [ui.needs_model("Probing")]),
        html.Div(controls, style={} if live else ui.HIDDEN),
    ])


def render(ctx: Context, key):
    """Probe curves of the tab's last run, or None before one has finished."""
    result = ctx.jobs.get(key) if key else None
    if result is None:
        return None
    task, frame = result
    best = frame.loc[frame["selectivity"].idxmax()]
    spread = f" +- {best['selectivity_std']:.2f}" if "selectivity_std" in frame else ""
    fig = viz.probe_curves(frame, x="layer", y="accuracy", control="control_accuracy",
                           error="accuracy_std" if "accuracy_std" in frame else None,  # std over the CV folds
                           title=f"{task}: probe accuracy by layer (best selectivity {best['selectivity']:.2f}{spread} "
                                 f"at layer {int(best['layer'])}; majority {frame['majority'].iloc[0]:.2f})")
    fig.update_layout(height=HEIGHT)
    return fig


def start_probes(ctx: Context, task, n):
    """Check the fields and start ``run_probes``: (pending, poll disabled, shown key, status, notifications)."""
    def refuse(message):
        return None, True, no_update, message, ui.notice("Cannot run the probes", message, "error")

    if ctx.subject is None:
        return refuse("No model is loaded (--model none): probing runs the model.")
    if not task:
        return refuse("no built-in probing task for this model")
    try:
        n = int(n)
    except (TypeError, ValueError, OverflowError):
        return refuse("examples must be a whole number")
    key = make_key("probes", ctx.model, task, n)
    started = start_job(ctx, key, lambda progress: (task, run_probes(ctx.subject, task, n, progress)))
    return (*started, no_update)


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.PR_PENDING, "data"), Output(ids.PR_POLL, "disabled"), Output(ids.PR_KEY, "data"),
                  Output(ids.PR_STATUS, "children"), Output(ids.NOTIFY, "sendNotifications", allow_duplicate=True),
                  Input(ids.PR_RUN, "n_clicks"), Input(ids.PR_POLL, "n_intervals"),
                  State(ids.PR_TASK, "value"), State(ids.PR_N, "value"), State(ids.PR_PENDING, "data"),
                  prevent_initial_call=True)
    def _run(_n, _tick, task, n, pending):
        if dash.ctx.triggered_id == ids.PR_RUN:
            return start_probes(ctx, task, n)
        return poll_job(ctx, pending, "probes", lambda result: (
            f"{len(result[1])} layer{'s' if len(result[1]) != 1 else ''} probed on "
            f"{int(result[1]['n_test'].iloc[0])} held-out tokens"))

    @app.callback(Output(ids.PR_CURVES, "figure"), Output(ids.PR_CURVES, "style"),
                  Output(ids.PR_CURVES + "-empty", "style"), Input(ids.PR_KEY, "data"), Input(ids.THEME, "data"))
    def _render(key, theme):
        fig = render(ctx, key)
        return (*ui.shown(fig, theme, HEIGHT), ui.empty_style(fig))
