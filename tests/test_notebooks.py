"""The notebooks: committed with their outputs, figures that render where notebooks are read, and
every one still runs top to bottom (nbclient); a failing cell fails the build.

Two tiers:

* the committed ``notebooks/*.ipynb`` (fast): their cells are exactly those of the jupytext
  percent script paired with each (``notebooks/0N_name.py``, ``notebooks/jupytext.toml``), they
  carry the outputs of one top-to-bottom run of those cells (``notebooks/_build.py`` records a
  digest of the cells it ran), and every figure is an interactive plotly output followed by a
  non-blank PNG of the figure (what GitHub shows), with no tqdm "IProgress not found" warning;
* each notebook executed afresh (``notebook`` marker, minutes): the same output checks, then
  ``jupyter nbconvert --to html`` on the executed copy and that page opened in headless chromium
  with the network cut: every plotly figure draws from the plotly.js embedded once in the page,
  and its PNG twin is hidden. The notebooks check their own claims with ``assert`` cells (e.g.
  the plain run collapses and the sigmaReparam run does not), so a wrong number fails here too.
  The executed copies and their HTML are written to ``test-output/notebooks/``.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
OUT_DIR = ROOT / "test-output" / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
# The committed copies load plotly.js from the CDN; what remains is the PNGs (~50 KB each),
# the figures' JSON and the text. 1.5 MB leaves room while catching an embedded plotly.js (4.8 MB).
MAX_COMMITTED_BYTES = 1_500_000
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CDN_SCRIPT = 'src="https://cdn.plot.ly/'  # (plotly.js itself mentions cdn.plot.ly, so match the tag)


def _load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NB_DIR / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params():
    out = []
    for path in NOTEBOOKS:
        marks = [pytest.mark.notebook]
        if 'lens.load("smollm2")' in path.read_text():
            marks.append(pytest.mark.smollm2)
        if "lens.model.organisms.train(" in path.read_text():
            marks.append(pytest.mark.organism)
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


def _png_size_and_rows(data: bytes) -> tuple[int, int, int]:
    """(width, height, number of distinct pixel rows) of an 8-bit RGB/RGBA PNG, with the stdlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    width, height, depth, color = ihdr
    assert depth == 8 and color in (2, 6), (depth, color)
    stride = 1 + width * (3 if color == 2 else 4)
    raw = zlib.decompress(idat)
    # Rows still carry their filter byte, which keeps equal rows equal: a blank image has one or
    # two distinct rows, a plot hundreds.
    rows = {raw[i + 1:i + stride] if raw[i] == 0 else raw[i:i + stride] for i in range(0, len(raw), stride)}
    return width, height, len(rows)


def check_outputs(nb, name: str, *, embedded: bool) -> int:
    """Assert what a reader needs from an executed notebook; return the number of figures.

    embedded: plotly.js is inlined (a fresh run) rather than loaded from the CDN (the committed copy).
    """
    from lens.viz._show import INTERACTIVE, LIBRARY, OUTPUT_KEY, STATIC

    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{name}: not one top-to-bottom run: {counts}"
    outputs = [o for c in code for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors}"
    for o in outputs:
        text = o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        assert "IProgress not found" not in text, f"{name}: tqdm fell back to text bars: {text[:200]}"
        assert "Traceback" not in text, f"{name}: {text[:500]}"
        if WIDGET_VIEW in o.get("data", {}) and not embedded:
            # readers without widgets (GitHub) see text/plain: the bar where it ended, not at 0 %
            assert "100%|" in text, f"{name}: progress bar as first drawn: {text!r}"

    kinds = [o.get("metadata", {}).get(OUTPUT_KEY) for o in outputs]
    assert kinds.count(LIBRARY) == (1 if INTERACTIVE in kinds else 0), f"{name}: plotly.js must come once"
    for c in code:
        shown = [o.get("metadata", {}).get(OUTPUT_KEY) for o in c.outputs]
        assert shown.count(INTERACTIVE) == c.source.count("viz.show("), f"{name}: {c.source[:80]}"
        assert "fig.show()" not in c.source, f"{name}: fig.show() renders nowhere but JupyterLab; use viz.show"
    n_figures = 0
    for i, (o, kind) in enumerate(zip(outputs, kinds)):
        if kind == LIBRARY:
            html = o.data["text/html"]
            assert INTERACTIVE not in kinds[:i], f"{name}: plotly.js must precede the first figure"
            assert ("Copyright 2012-" in html) == embedded and (CDN_SCRIPT in html) != embedded, name
        # fig.show()'s only output: drawn by JupyterLab alone, invisible on GitHub and in nbconvert HTML.
        assert PLOTLY_MIME not in o.get("data", {}), f"{name}: a plotly figure shown without viz.show"
        if kind != INTERACTIVE:
            continue
        n_figures += 1
        assert 'class="plotly-graph-div"' in o.data["text/html"] and "Plotly.newPlot" in o.data["text/html"]
        twin = outputs[i + 1] if i + 1 < len(outputs) else None
        assert twin is not None and kinds[i + 1] == STATIC, f"{name}: figure {n_figures} has no PNG after it"
        meta = twin.metadata["image/png"]
        width, height, rows = _png_size_and_rows(base64.b64decode(twin.data["image/png"]))
        assert (width, height) == (meta["width"], meta["height"]), f"{name}: figure {n_figures} PNG size"
        assert rows > 50, f"{name}: figure {n_figures}'s PNG is blank ({rows} distinct rows)"
    return n_figures


def test_notebooks_exist_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert [n[:2] for n in names] == sorted(n[:2] for n in names)
    assert {"01", "02", "03", "06"} <= {n[:2] for n in names}, names


def test_committed_notebooks_match_their_script_and_carry_outputs():
    """The .ipynb cells are its paired script's; the outputs are one run of them."""
    import nbformat

    build = _load_build()
    assert [p.name for p in NOTEBOOKS] == build.NOTEBOOKS, "every notebook has its script and vice versa"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        script = build.read_script(path)  # the .py that notebooks/jupytext.toml pairs with it
        why = build.problems(nb, script)
        assert why is None, f"{path.name}: {why}: run python notebooks/_build.py --execute {path.name[:2]}"
        assert any(c.cell_type == "markdown" for c in nb.cells)
        check_outputs(nb, path.name, embedded=False)
        size = path.stat().st_size
        assert size < MAX_COMMITTED_BYTES, f"{path.name} is {size} bytes"


def _render_offline(html_path: Path) -> dict:
    """Open the page in headless chromium with every network request refused; what got drawn."""
    from playwright.sync_api import sync_playwright

    from lens.viz import find_browser

    browser_path = find_browser()
    assert browser_path, "the notebooks need chromium (kaleido renders their PNGs with it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route(re.compile(r"^https?://"), lambda route: route.abort())
            page.goto(html_path.as_uri(), wait_until="load")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.plotly-graph-div')].every(g => g.querySelector('.main-svg'))",
                timeout=60_000)
            page.wait_for_timeout(300)  # the PNG-hiding observers run after the last figure
            seen = page.evaluate("""() => ({
                graphs: [...document.querySelectorAll('.plotly-graph-div')].map(g => g.getBoundingClientRect().height),
                pngs: [...document.querySelectorAll('img[src^="data:image/png"]')].map(i => i.getBoundingClientRect().height),
            })""")
        finally:
            browser.close()
    seen["errors"] = errors
    return seen


@pytest.mark.parametrize("path", _params())
def test_notebook_runs(path: Path):
    import nbformat

    build = _load_build()
    nb = build.fresh(path)  # the script's cells, nothing left from the committed outputs
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / path.name
    t0 = time.perf_counter()
    try:
        build.execute(nb)
    finally:
        nbformat.write(nb, out)
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s")
    n_figures = check_outputs(nb, path.name, embedded=True)
    assert n_figures > 0 or "viz.show(" not in path.read_text()

    # What a reader gets from `jupyter nbconvert --to html`: each figure as a plotly div and a PNG,
    # plotly.js inlined once, nothing fetched from plotly's CDN.
    done = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--log-level", "ERROR",
                           "--output-dir", str(OUT_DIR), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    html = out.with_suffix(".html").read_text()
    assert html.count('class="plotly-graph-div"') == n_figures
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == n_figures
    assert html.count("embedded by viz.show") == (1 if n_figures else 0)
    assert CDN_SCRIPT not in html
    if not n_figures:
        return
    seen = _render_offline(out.with_suffix(".html"))
    assert len(seen["graphs"]) == n_figures and min(seen["graphs"]) > 100, seen
    assert len(seen["pngs"]) == n_figures and max(seen["pngs"]) == 0, f"PNG twins not hidden: {seen}"
    assert not seen["errors"], seen["errors"]
