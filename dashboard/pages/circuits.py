"""Circuits: discover a circuit on a built-in task (``circuits.discover``, EAP) and see its graph."""

from __future__ import annotations

import dash
from dash import Input, Output, State, dcc, html, no_update

import viz
from dashboard import ids
from dashboard._context import Context, job_slots, labelled, placeholder, poll_job, start_job
from dashboard._jobs import make_key
from dashboard._work import circuit_tasks, find_circuit, is_organism

PATH = "/circuits"
NAME = "Circuits"


def layout(ctx: Context) -> html.Div:
    tasks = circuit_tasks(ctx.subject)
    num = dict(type="number", step=1, style={"width": "90px"})
    return html.Div([
        html.H3("Circuits"),
        html.P("Edge attribution patching (EAP) on clean/corrupted prompt pairs of a built-in task: the top edges "
               "by |attribution| that lie on an input \u2192 logits path, then the circuit run alone "
               "(faithfulness = circuit metric / full-model metric). IG steps > 0: EAP-IG, gradients averaged "
               "over runs interpolated between corrupted and clean prompts (closer to real patching, one "
               "backward pass per step).", style={"fontSize": "13px"}),
        html.Div([
            labelled("task", dcc.Dropdown(id=ids.CI_TASK, options=tasks, value=tasks[0], clearable=False),
                     width="200px"),
            labelled("pairs", dcc.Input(id=ids.CI_PAIRS, value=16, **num)),
            labelled("edges (top k)", dcc.Input(id=ids.CI_TOPK, value=20, **num)),
            labelled("IG steps", dcc.Input(id=ids.CI_IG, value=3 if is_organism(ctx.subject) else 0, **num)),
            html.Button("Find circuit", id=ids.CI_RUN, n_clicks=0, style={"marginTop": "18px"}),
        ]),
        *job_slots(ids.CI_STATUS, ids.CI_POLL, ids.CI_PENDING, ids.CI_KEY),
        dcc.Graph(id=ids.CI_GRAPH, figure=placeholder("circuit graph: choose a task and press Find circuit", 520)),
    ])


def render(ctx: Context, key):
    circuit = ctx.jobs.get(key)
    if circuit is None:
        return placeholder("circuit graph: choose a task and press Find circuit", 520)
    f = "?" if circuit.faithfulness is None else f"{circuit.faithfulness:.2f}"
    fig = viz.circuit_graph(circuit.to_frame(), source="sender", target="receiver", weight="score",
                            title=f"{circuit.task} circuit ({circuit.method}, {circuit.metric}): {len(circuit.nodes)} "
                                  f"nodes, {len(circuit.edges)} edges, faithfulness {f}")
    fig.update_layout(height=520)
    return fig


def register(app, ctx: Context) -> None:
    @app.callback(Output(ids.CI_PENDING, "data"), Output(ids.CI_POLL, "disabled"), Output(ids.CI_KEY, "data"),
                  Output(ids.CI_STATUS, "children"), Input(ids.CI_RUN, "n_clicks"), Input(ids.CI_POLL, "n_intervals"),
                  State(ids.CI_TASK, "value"), State(ids.CI_PAIRS, "value"), State(ids.CI_TOPK, "value"),
                  State(ids.CI_IG, "value"), State(ids.CI_PENDING, "data"), prevent_initial_call=True)
    def _run(_n, _tick, task, n_pairs, top_k, ig_steps, pending):
        if dash.ctx.triggered_id == ids.CI_RUN:
            try:
                n_pairs, top_k, ig_steps = int(n_pairs), int(top_k), int(ig_steps)
            except (TypeError, ValueError):
                return None, True, no_update, "pairs, edges and IG steps must be whole numbers"
            key = make_key("circuit", ctx.model, task, n_pairs, top_k, ig_steps)
            return start_job(ctx, key, lambda progress: find_circuit(ctx.subject, task, n_pairs, top_k, progress,
                                                                     ig_steps))
        return poll_job(ctx, pending, "circuit", lambda c: f"found {len(c.edges)} edges; {repr(c)}")

    @app.callback(Output(ids.CI_GRAPH, "figure"), Input(ids.CI_KEY, "data"))
    def _render(key):
        return render(ctx, key)
