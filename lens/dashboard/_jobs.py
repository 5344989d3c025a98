"""Background work for the dashboard: one worker thread, progress, and a bounded result cache.

Model work runs on a single worker thread, in submission order: the attention routing and
the hooks a capture installs belong to the model, so two captures on one model must not
overlap. Callbacks never wait for it; they submit a job under a key and the page polls
(``dcc.Interval``) until ``status(key)`` says done. Results stay cached by key (the key
hashes model, text and options), so going back to an earlier text is instant and two
browser tabs asking for the same thing share one computation, while tabs with different
texts hold different keys in their own ``dcc.Store`` and never see each other's results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("lens.dashboard")


def make_key(*parts) -> str:
    """A short stable key for JSON-able ``parts`` (model name, text, options...)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()[:20]  # a broken paste still gets a key


class Progress:
    """What a running job reports: a message and a fraction done (None = unknown)."""

    def __init__(self) -> None:
        self.message = "queued"
        self.fraction: float | None = None
        self.started = time.perf_counter()

    def update(self, message: str, fraction: float | None = None) -> None:
        self.message, self.fraction = message, fraction


class Jobs:
    """Run ``fn(progress)`` in the background under ``key``; keep the last ``max_results`` results."""

    def __init__(self, max_results: int = 24):
        self.max_results = max_results
        self._lock = threading.Lock()
        self._done: OrderedDict[str, tuple[str, object]] = OrderedDict()  # key -> ("done", value) | ("error", msg)
        self._running: dict[str, Progress] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lens-dashboard")

    def get(self, key: str | None):
        """The cached result for ``key``, or None."""
        if key is None:
            return None
        with self._lock:
            item = self._done.get(key)
            if item is None or item[0] != "done":
                return None
            self._done.move_to_end(key)
            return item[1]

    def put(self, key: str, value) -> None:
        with self._lock:
            self._store(key, ("done", value))

    def _store(self, key: str, item: tuple[str, object]) -> None:
        self._done[key] = item
        self._done.move_to_end(key)
        while len(self._done) > self.max_results:
            self._done.popitem(last=False)

    def submit(self, key: str, fn: Callable[[Progress], object]) -> None:
        """Start ``fn`` under ``key`` unless it is done or already running."""
        with self._lock:
            if key in self._running or (key in self._done and self._done[key][0] == "done"):
                return
            self._done.pop(key, None)  # a failed run may be retried
            progress = self._running[key] = Progress()
        self._pool.submit(self._run, key, fn, progress)

    def _run(self, key: str, fn, progress: Progress) -> None:
        progress.started = time.perf_counter()
        progress.update("running")
        try:
            value = fn(progress)
            item = ("done", value)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:  # bad input or a clear failure: tell the page
            log.info("dashboard job %s failed: %s", key, err)
            item = ("error", f"{type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - never leave the page waiting on a dead job
            log.exception("dashboard job %s crashed", key)
            item = ("error", f"internal error ({type(err).__name__}: {err})")
        with self._lock:
            self._running.pop(key, None)
            self._store(key, item)

    def status(self, key: str | None) -> dict:
        """{"state": "none" | "running" | "done" | "error", "message": str, "fraction", "elapsed"}."""
        if key is None:
            return {"state": "none", "message": "", "fraction": None, "elapsed": 0.0}
        with self._lock:
            if key in self._running:
                p = self._running[key]
                return {"state": "running", "message": p.message, "fraction": p.fraction,
                        "elapsed": time.perf_counter() - p.started}
            item = self._done.get(key)
        if item is None:
            return {"state": "none", "message": "", "fraction": None, "elapsed": 0.0}
        if item[0] == "error":
            return {"state": "error", "message": str(item[1]), "fraction": None, "elapsed": 0.0}
        return {"state": "done", "message": "", "fraction": 1.0, "elapsed": 0.0}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
