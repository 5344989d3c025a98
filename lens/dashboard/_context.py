"""What every page shares: the model (or none), saved work, the job runner, limits, and job-page helpers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dash_mantine_components as dmc
from dash import dcc, no_update

import lens
from lens.kernels import auto_backend
from lens.dashboard import _ui as ui
from lens.dashboard._jobs import Jobs, make_key
from lens.dashboard._work import POOL_MAX, Analysis, analyze_capture, token_limit

SAVED_PREFIX = "saved:"


@dataclass
class Saved:
    """A capture saved by ``lens capture --out`` (or ``Capture.save``), opened from the command line."""

    name: str
    path: Path
    analysis: Analysis | None = None
    error: str | None = None


@dataclass
class Context:
    """The app's server-side state. Per-tab state lives in ``dcc.Store``s, never here.

    subject: the loaded model, or None (``--model none``): then only what needs no forward
    pass works (saved captures, runs, stores). saved: captures given with ``--capture``,
    opened in the background at start and kept (never evicted). store: a sharded store
    (``--store``) for the Census page. runs: the DuckDB file of ``lens run`` for the Runs page.
    """

    subject: lens.Subject | None
    jobs: Jobs = field(default_factory=Jobs)
    max_tokens: int | None = None
    saved: dict[str, Saved] = field(default_factory=dict)
    store: lens.Store | None = None
    runs: Path | None = None
    _saved_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model(self) -> str:
        return self.subject.name if self.subject is not None else "no model"

    @property
    def placement(self) -> str:
        """Where the model runs, in which dtype, and the attention backend ``auto`` takes there."""
        if self.subject is None:
            return "no forward pass"
        s = self.subject
        dtype = str(s.model.dtype).removeprefix("torch.")
        backend = "triton" if auto_backend(s.device) == "triton" else "chunked / eager"
        return f"{s.device} · {dtype} · {backend}"

    @property
    def limit(self) -> int:
        return token_limit(self.subject, self.max_tokens) if self.subject is not None else 0

    def analysis_key(self, text: str) -> str:
        """Cache key of one text's analysis: (model, text, capture options)."""
        return make_key("analysis", self.model, text, {"pool_max": POOL_MAX})

    def analysis(self, key: str | None) -> Analysis | None:
        """The analysis a tab shows: a live text's (the job cache) or a saved capture's."""
        if key is not None and key.startswith(SAVED_PREFIX):
            item = self.saved.get(key[len(SAVED_PREFIX):])
            return item.analysis if item is not None else None
        return self.jobs.get(key)

    def open_saved(self, paths) -> None:
        """Register the ``--capture`` directories and open them in a background thread (in order)."""
        for p in paths:
            p = Path(p)
            name = p.name or str(p)
            while name in self.saved:
                name += "'"
            self.saved[name] = Saved(name, p)
        if self.saved:
            # not a daemon: a torch thread killed at interpreter exit aborts the process
            threading.Thread(target=self._load_saved, daemon=False, name="lens-dashboard-open").start()

    def _load_saved(self) -> None:
        for item in list(self.saved.values()):
            try:
                item.analysis = analyze_capture(lens.Capture.load(item.path), source=str(item.path))
            except (OSError, ValueError, KeyError) as err:  # a damaged or foreign directory: say so on the page
                item.error = f"{type(err).__name__}: {err}"

    def saved_status(self, name: str) -> tuple[str, str]:
        """("done" | "running" | "error", message) for one saved capture."""
        item = self.saved.get(name)
        if item is None:
            return "error", f"no saved capture {name!r}"
        if item.error:
            return "error", f"{item.path}: {item.error}"
        if item.analysis is None:
            return "running", f"opening {item.path}"
        return "done", ""

    def wait_saved(self, timeout: float = 60.0) -> None:
        """Block until every saved capture is open (for tests and scripts)."""
        t0 = time.perf_counter()
        while any(i.analysis is None and i.error is None for i in self.saved.values()):
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("saved captures still opening")
            time.sleep(0.05)

    def same_model(self, analysis: Analysis) -> bool:
        """Whether the loaded model is the one ``analysis`` was captured from (so it may add exact rows)."""
        if self.subject is None:
            return False
        meta = analysis.capture.meta
        return (meta.get("model") == self.subject.name and meta.get("n_layers") == self.subject.n_layers
                and meta.get("n_heads") == self.subject.n_heads)


PATHS = ("/", "/attention", "/reasoning", "/interventions", "/circuits", "/probes", "/runs", "/census")


def visible(pathname: str | None, page_path: str) -> bool:
    """Whether the page at ``page_path`` is the one shown for the URL (unknown URLs show the Overview).

    Pages render only while visible, so one analysis does not redraw every page at once.
    """
    path = pathname or "/"
    return path == page_path or (page_path == "/" and path not in PATHS)


def status_text(st: dict, what: str) -> str:
    """'capturing: layer 12/30 (3.1 s)' for a running job."""
    frac = st.get("fraction")
    pct = f" {100 * frac:.0f}%" if frac is not None else ""
    return f"{what}: {st.get('message') or 'running'}{pct} ({st.get('elapsed', 0.0):.1f} s)"


# --- background jobs on a page --------------------------------------------------------------
# A job page keeps four things: a status line, a poll timer, the key of the job it waits for
# ("pending") and the key of the result it shows. Its run callback returns
# (pending, poll disabled, shown key, status text).
def job_slots(status: str, poll: str, pending: str, key: str, interval_ms: int = 400) -> list:
    """The status line, poll timer and the two per-tab stores of a job page."""
    return [dmc.Text(id=status, size="sm", c="dimmed", my=6),
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
    """One poll tick: progress while running, the error or ``done(result)`` when it ends.

    Returns (pending, poll disabled, shown key, status text, notifications).
    """
    st = ctx.jobs.status(pending)
    if st["state"] == "running":
        return no_update, False, no_update, status_text(st, what), no_update
    if st["state"] == "error":
        return None, True, no_update, st["message"], ui.notice(f"{what} failed", st["message"], "error")
    if st["state"] == "done":
        msg = done(ctx.jobs.get(pending))
        return None, True, pending, msg, ui.notice(f"{what} done", msg, "success")
    return None, True, no_update, "", no_update

