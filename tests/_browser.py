"""Shared pieces of the browser tests: serve an app in a thread, one headless chromium, read plots.

Playwright drives Debian's chromium (never Playwright's own download). ``overlaps(page)``
checks the layout: no two visible controls of the shown page may overlap.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from skips import CHROMIUM, needs, require

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHOTS = DOCS / "screenshots"  # the light-theme screenshot of every page, committed

needs_browser = needs("chromium")

@contextlib.contextmanager
def served(app):
    """Serve a Dash app on 127.0.0.1 and a free port in a thread; yields its URL."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        app._lens_context.jobs.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = require("playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _decode(v):
    """Plotly's base64 typed arrays ({"dtype", "bdata", "shape"}) as nested lists; everything else as is."""
    if isinstance(v, dict) and "bdata" in v and "dtype" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if v.get("shape"):
            arr = arr.reshape([int(x) for x in str(v["shape"]).split(",")])
        return arr.tolist()
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def plot_data(page, graph_id: str):
    """The plotly traces drawn inside the dcc.Graph ``graph_id`` (as the browser holds them)."""
    raw = page.evaluate(f"""() => JSON.parse(JSON.stringify(document.querySelector('#{graph_id} .js-plotly-plot').data,
                                  (k, v) => ArrayBuffer.isView(v) ? Array.from(v) : v))""")
    return _decode(raw)


def wait_plot(page, graph_id: str, predicate: str = "true", timeout: float = 60_000):
    """Wait until the graph has traces and ``predicate`` (JS over ``d`` = data, ``t`` = title) holds."""
    page.wait_for_function(
        f"""() => {{ const g = document.querySelector('#{graph_id} .js-plotly-plot');
                   if (!g || !g.data || !g.data.length) return false;
                   const d = g.data, t = (g.layout && g.layout.title && g.layout.title.text) || '';
                   return {predicate}; }}""", timeout=timeout)


def analyze(page, text: str, expect: str, timeout: float = 60_000) -> float:
    """Type ``text``, press Analyze, wait for the overview line to contain ``expect``; seconds it took."""
    page.fill("#text-input", text)
    t0 = time.perf_counter()
    page.click("#analyze-button")
    page.wait_for_function(f"() => (document.querySelector('#overview-meta') || {{}})"
                           f".textContent?.includes({expect!r})",
                           timeout=timeout)
    wait_plot(page, "overview-head-grid")
    return time.perf_counter() - t0


def go_to(page, name: str) -> None:
    """Open a page from the navigation and wait until it is the one shown."""
    page.click(f"#nav-{name}")
    page.wait_for_selector(f"#page-{name}", state="visible")



def overlaps(page, scope: str = "body") -> list[str]:
    """Pairs of visible controls (buttons, inputs, selects, switches, labels) inside ``scope`` whose boxes overlap."""
    return page.evaluate("""(scope) => {
        const sel = 'button, input:not([type=hidden]), textarea, select, label, .mantine-Select-root, .mantine-Switch-root';
        const els = [...document.querySelector(scope).querySelectorAll(sel)].filter(e => {
            const r = e.getBoundingClientRect(), s = getComputedStyle(e);
            return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && e.offsetParent !== null; });
        const name = e => e.id || e.getAttribute('aria-label') || (e.textContent || '').trim().slice(0, 30) || e.tagName;
        const out = [];
        for (let i = 0; i < els.length; i++) for (let j = i + 1; j < els.length; j++) {
            const a = els[i], b = els[j];
            if (a.contains(b) || b.contains(a)) continue;
            const ra = a.closest('.mantine-InputWrapper-root'), rb = b.closest('.mantine-InputWrapper-root');
            if (ra && ra === rb) continue;  // the parts of one Mantine input (its field, its arrows)
            const r = a.getBoundingClientRect(), q = b.getBoundingClientRect();
            const w = Math.min(r.right, q.right) - Math.max(r.left, q.left);
            const h = Math.min(r.bottom, q.bottom) - Math.max(r.top, q.top);
            if (w > 1 && h > 1) out.push(name(a) + ' / ' + name(b));
        }
        return out; }""", scope)


def pick(page, select_id: str, label: str) -> None:
    """Choose the option labelled ``label`` in the Mantine Select ``select_id`` (as a user would: open, click)."""
    page.click(f"#{select_id}")
    page.get_by_role("option", name=label, exact=True).click()


def set_theme(page, dark: bool) -> None:
    """Flip the header's light/dark switch to ``dark`` (figures redraw in the matching template)."""
    if page.is_checked("#theme-switch") != dark:
        page.dispatch_event("#theme-switch", "click")  # a notification may sit over the switch (top right)
    page.wait_for_function("(d) => document.documentElement.getAttribute('data-mantine-color-scheme') === d",
                           arg="dark" if dark else "light")


def whole_page(page, path) -> None:
    """A screenshot of the whole page through a viewport as tall as the page.

    Playwright's ``full_page=True`` stitches beyond the viewport, where AG Grid's tables
    came out blank; a tall viewport paints them like the rest.
    """
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": page.evaluate("() => document.documentElement.scrollHeight")})
    page.wait_for_timeout(300)
    try:
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
