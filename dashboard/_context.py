"""What every page shares: the model, the job runner, limits, and small layout helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import plotly.graph_objects as go
from dash import dcc, html, no_update

import lens
from dashboard._jobs import Jobs, make_key
from dashboard._work import DEFAULT_MAX_TOKENS, POOL_MAX


@dataclass
class Context:
    """The app's server-side state. Per-tab state lives in ``dcc.Store``s, never here."""

    subject: lens.Subject
    jobs: Jobs = field(default_factory=Jobs)
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def model(self) -> str:
        return self.subject.name

    def analysis_key(self, text: str) -> str:
        """Cache key of one text's analysis: (model, text, capture options)."""
        return make_key("analysis", self.model, text, {"pool_max": POOL_MAX})

    def analysis(self, key: str | None):
        return self.jobs.get(key)


PATHS = ("/", "/attention", "/reasoning", "/interventions", "/circuits", "/probes")


def visible(pathname: str | None, page_path: str) -> bool:
    """Whether the page at ``page_path`` is the one shown for the URL (unknown URLs show the Overview).

    Pages render only while visible, so one analysis does not redraw six pages at once.
    """
    path = pathname or "/"
    return path == page_path or (page_path == "/" and path not in PATHS)


def placeholder(message: str, height: int = 320) -> go.Figure:
    """An empty figure that says what to do (instead of a blank axis)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=15, color="#666"), x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_layout(template="plotly_white", height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=20, r=20, t=30, b=20))
    return fig


def status_text(st: dict, what: str) -> str:
    """'capturing: layer 12/30 (3.1 s)' for a running job."""
    frac = st.get("fraction")
    pct = f" {100 * frac:.0f}%" if frac is not None else ""
    return f"{what}: {st.get('message') or 'running'}{pct} ({st.get('elapsed', 0.0):.1f} s)"


def labelled(label: str, component, width: str | None = None) -> html.Div:
    style = {"display": "inline-block", "marginRight": "14px", "verticalAlign": "top"}
    if width:
        style["width"] = width
    return html.Div([html.Label(label, style={"display": "block", "fontSize": "12px", "color": "#555"}), component],
                    style=style)


# --- background jobs on a page --------------------------------------------------------------
# A job page keeps four things: a status line, a poll timer, the key of the job it waits for
# ("pending") and the key of the result it shows. Its run callback returns
# (pending, poll disabled, shown key, status text).
def job_slots(status: str, poll: str, pending: str, key: str, interval_ms: int = 400) -> list:
    """The status line, poll timer and the two per-tab stores of a job page."""
    return [html.Div(id=status, style={"fontSize": "13px", "color": "#555", "margin": "6px 0"}),
            dcc.Interval(id=poll, interval=interval_ms, disabled=True),
            dcc.Store(id=pending, storage_type="memory"),
            dcc.Store(id=key, storage_type="memory")]


def start_job(ctx: Context, key: str, work: Callable, *, cached: str = "from the cache", queued: str = "queued"):
    """Show a cached result at once, else submit ``work(progress)`` and start polling."""
    if ctx.jobs.get(key) is not None:
        return None, True, key, cached
    ctx.jobs.submit(key, work)
    return key, False, no_update, queued


def poll_job(ctx: Context, pending: str | None, what: str, done: Callable[[object], str]):
    """One poll tick: progress while running, the error or ``done(result)`` when it ends."""
    st = ctx.jobs.status(pending)
    if st["state"] == "running":
        return no_update, False, no_update, status_text(st, what)
    if st["state"] == "error":
        return None, True, no_update, st["message"]
    if st["state"] == "done":
        return None, True, pending, done(ctx.jobs.get(pending))
    return None, True, no_update, ""
