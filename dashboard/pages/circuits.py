"""Circuits: run circuit discovery on a built-in task and see the graph (``circuits`` package)."""

from __future__ import annotations

from dash import html

from dashboard._context import Context

PATH = "/circuits"
NAME = "Circuits"


def available() -> str | None:
    """None when the circuits API the page needs exists, else why not."""
    return "the circuits package has no discovery API yet"


def layout(ctx: Context) -> html.Div:
    why = available()
    return html.Div([html.H3("Circuits"), html.P(f"Not yet available: {why}.", id="circuits-unavailable")])


def register(app, ctx: Context) -> None:
    return None
