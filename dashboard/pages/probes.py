"""Probes: train probes on a built-in task and see accuracy by layer against a control (``probes`` package)."""

from __future__ import annotations

from dash import html

from dashboard._context import Context

PATH = "/probes"
NAME = "Probes"


def available() -> str | None:
    """None when the probes API the page needs exists, else why not."""
    return "the probes package has no probe API yet"


def layout(ctx: Context) -> html.Div:
    why = available()
    return html.Div([html.H3("Probes"), html.P(f"Not yet available: {why}.", id="probes-unavailable")])


def register(app, ctx: Context) -> None:
    return None
