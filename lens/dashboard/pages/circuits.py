"""Circuits: discover a circuit on a built-in task (``circuits.discover``, EAP) and see its graph."""

from __future__ import annotations

import dash
import dash_mantine_components as dmc
from dash import Input, Output, State, html, no_update

from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, job_slots, poll_job, start_job
from lens.dashboard._jobs import make_key
from lens.dashboard._work import circuit_tasks, find_circuit, is_organism

PATH = "/circuits"
NAME = "Circuits"
HEIGHT = 520
EMPTY = "Choose a task and press Find circuit: the circuit's graph shows here."


def layout(ctx: Context) -> html.Div:
    live = ctx.subject is not None
    tasks = circuit_tasks(ctx.subject) if live else []
    controls = ui.card(
        None,
        dmc.Group([
            ui.select(ids.CI_TASK, tasks, value=tasks[0] if tasks else None, label="task", width=200),
            dmc.NumberInput(id=ids.CI_PAIRS, value=16, min=2, max=64, step=1, allowDecimal=False, label="pairs",
                            w=110),
            dmc.NumberInput(id=ids.CI_TOPK, value=20, min=1, max=500, step=1, allowDecimal=False,
                            label="edges (top k)", w=120),
            dmc.NumberInput(id=ids.CI_IG, value=3 if live and is_organism(ctx.subject) else 0, min=0, max=16,
                            step=1, allowDecimal=False, label="IG steps", w=110),
            dmc.Button("Find circuit", id=ids.CI_RUN, n_clicks=0),
        ], align="flex-end", gap="md", wrap="wrap"),
        *job_slots(ids.CI_STATUS, ids.CI_POLL, ids.CI_PENDING, ids.CI_KEY),
        ui.graph(ids.CI_GRAPH, HEIGHT, empty=EMPTY),
    )
    return html.Div([
        dmc.Title("Circuits", order=3, mb="xs"),
        dmc.Text("Edge attribution patching (EAP) on clean/corrupted prompt pairs of a built-in task: the top edges "
                 "by |attribution| that lie on an input \u2192 logits path, then the circuit run alone "
                 "(faithfulness = circuit metric / full-model metric). IG steps > 0: EAP-IG, gradients averaged "
                 "over runs interpolated between corrupted and clean prompts (closer to real patching, one "
                 "backward pass per step).", size="sm", mb="sm"),
        *([] if live else [ui.needs_model("Finding a circuit")]),
        html.Div(controls, style={} if live else ui.HIDDEN),
    ])


def render(ctx: Context, key):
    """The circuit graph of the tab's last run, or None before one has finished."""
    circuit = ctx.jobs.get(key) if key else None
    if circuit is None:
        return None
    f = "?" if circuit.faithfulness is None else f"{circuit.faithfulness:.2f}"
    fig = viz.circuit_graph(circuit.to_frame(), source="sender", target="receiver", weight="score",
                            title=f"{circuit.task} circuit ({circuit.method}, {circuit.metric}): {len(circuit.nodes)} "
                                  f"nodes, {len(circuit.edges)} edges, faithfulness {f}")
    fig.update_layout(height=HEIGHT)
    return fig


def start_circuit(ctx: Context, task, n_pairs, top_k, ig_steps):
    """Check the fields and start ``find_circuit``: (pending, poll disabled, shown key, status, notifications)."""
    def refuse(message):
        return None, True, no_update, message, ui.notice("Cannot find a circuit", message, "error")

    if ctx.subject is None:
        return refuse("No model is loaded (--model none): finding a circuit runs the model.")
    if task not in circuit_tasks(ctx.subject):
        return refuse(f"Choose a task: one of {', '.join(circuit_tasks(ctx.subject))}.")
    try:
        n_pairs, top_k, ig_steps = int(n_pairs), int(top_k), int(ig_steps)
    except (TypeError, ValueError, OverflowError):
        return refuse("pairs, edges and IG steps must be whole numbers")
    key = make_key("circuit", ctx.model, task, n_pairs, top_k, ig_steps)
    started = start_job(ctx, key, lambda progress: find_circuit(ctx.subject, task, n_pairs, top_k, progress,
                                                                ig_steps))
    return (*started, no_update)


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.CI_PENDING, "data"), Output(ids.CI_POLL, "disabled"), Output(ids.CI_KEY, "data"),
                  Output(ids.CI_STATUS, "children"), Output(ids.NOTIFY, "sendNotifications", allow_duplicate=True),
                  Input(ids.CI_RUN, "n_clicks"), Input(ids.CI_POLL, "n_intervals"),
                  State(ids.CI_TASK, "value"), State(ids.CI_PAIRS, "value"), State(ids.CI_TOPK, "value"),
                  State(ids.CI_IG, "value"), State(ids.CI_PENDING, "data"), prevent_initial_call=True)
    def _run(_n, _tick, task, n_pairs, top_k, ig_steps, pending):
        if dash.ctx.triggered_id == ids.CI_RUN:
            return start_circuit(ctx, task, n_pairs, top_k, ig_steps)
        return poll_job(ctx, pending, "circuit", lambda c: f"found {len(c.edges)} edges; {repr(c)}")

    @app.callback(Output(ids.CI_GRAPH, "figure"), Output(ids.CI_GRAPH, "style"),
                  Output(ids.CI_GRAPH + "-empty", "style"), Input(ids.CI_KEY, "data"), Input(ids.THEME, "data"))
    def _render(key, theme):
        fig = render(ctx, key)
        return (*ui.shown(fig, theme, HEIGHT), ui.empty_style(fig))
