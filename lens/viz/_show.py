"""Show a figure in a notebook so that it renders wherever the notebook is read.

``fig.show()`` emits only plotly's own mimetype, which JupyterLab draws but
``jupyter nbconvert --to html``, GitHub and nbviewer do not: they show nothing. ``show`` emits
two outputs instead:

1. the interactive figure as ``text/html``: a div drawn by ``Plotly.newPlot`` (JupyterLab and
   the classic notebook run it in a trusted notebook, as do nbconvert's HTML and nbviewer), and
2. a static PNG rendered by kaleido (``viz.export``, the system chromium, offline), which is
   what GitHub and any reader without JavaScript sees.

plotly.js itself (about 4.8 MB) is embedded once per kernel, in an output of its own before
the first figure, so an executed notebook converted to HTML works without internet. Once the
interactive figure has drawn, a line of JavaScript hides the PNG output right after it, so a
page that runs scripts shows each figure once; where plotly.js is missing or scripts do not run
(GitHub, an untrusted notebook), the interactive part stays collapsed and the PNG shows.
plotly's own mimetype is left out on purpose: it would store the figure's data a second time
(measured: 11 MB instead of 5.6 MB for two 512 x 512 float64 heatmaps) and, where JupyterLab draws
it, the PNG would show as well.

Every output carries ``metadata[OUTPUT_KEY]``, one of ``LIBRARY``, ``INTERACTIVE``, ``STATIC``,
so that tools (``notebooks/_build.py``, the notebook tests) can find them.
"""

from __future__ import annotations

import base64
import tempfile
import uuid
import warnings
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from lens.viz._export import export, find_browser

__all__ = ["OUTPUT_KEY", "LIBRARY", "INTERACTIVE", "STATIC", "show", "plotlyjs_html", "plotlyjs_cdn_html"]

OUTPUT_KEY = "lens_viz"
LIBRARY, INTERACTIVE, STATIC = "plotly.js", "interactive", "static"

_library_shown = False  # per kernel process: a restarted kernel embeds the library again

# Runs after Plotly.newPlot resolves: un-collapse the interactive figure and hide the PNG output
# that follows it (only if that output is nothing but a data: PNG, so nothing else is hidden).
# The PNG output may not exist yet (the HTML parser has not reached it, or the kernel has not
# sent it), so a MutationObserver on the output list waits for it. The selectors are the output
# containers of nbconvert's lab and classic templates and of JupyterLab / the classic notebook.
_POST_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var box = gd.closest('.lens-figure');
if (box) { box.style.height = ''; box.style.overflow = ''; }
var out = gd.closest('.jp-OutputArea-child, .output_area');
function lensHidePng() {
    var next = out && out.nextElementSibling;
    if (next && !next.textContent.trim() && next.querySelectorAll('img').length === 1
        && next.querySelector('img[src^="data:image/png"]')) { next.style.display = 'none'; return true; }
    return !!next;
}
if (out && out.parentElement && !lensHidePng()) {
    var lensWatch = new MutationObserver(function () { if (lensHidePng()) lensWatch.disconnect(); });
    lensWatch.observe(out.parentElement, {childList: true});
    setTimeout(function () { lensWatch.disconnect(); }, 60000);
}
"""

def plotlyjs_html() -> str:
    """The ``text/html`` that defines ``window.Plotly``: the whole plotly.js bundled with plotly.py."""
    return (f"<script type=\"text/javascript\">window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>\n"
            f"<script type=\"text/javascript\">/* plotly.js {get_plotlyjs_version()}, embedded by viz.show */\n"
            f"{get_plotlyjs()}</script>")


def plotlyjs_cdn_html() -> str:
    """Like ``plotlyjs_html`` but loading the same plotly.js version from plotly's CDN (needs internet)."""
    return (f"<script type=\"text/javascript\">window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>\n"
            f"<script type=\"text/javascript\" charset=\"utf-8\" "
            f"src=\"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js\"></script>")


def _interactive_html(fig: go.Figure, height: int) -> str:
    html = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"lens-{uuid.uuid4().hex[:12]}",
                       post_script=_POST_SCRIPT, default_width="100%", default_height=f"{height}px",
                       validate=False)
    # Collapsed until the figure has drawn (the post script opens it), so a page without
    # plotly.js shows no empty frame above the PNG.
    return f'<div class="lens-figure" style="height:0; overflow:hidden">{html}</div>'


def _png(fig: go.Figure, width: int, height: int, scale: float) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return export(fig, Path(tmp) / "figure.png", width=width, height=height, scale=scale).read_bytes()


def show(fig: go.Figure, *, width: int = 900, height: int | None = None, scale: float = 1.0,
         static: bool = True) -> None:
    """Display ``fig`` interactively and, unless ``static=False``, as a PNG fallback beside it.

    width, height: the PNG's size in CSS pixels (height defaults to the figure's, else 500; the
    interactive figure gets the same height and the notebook's full width). scale: pixel density
    of the PNG (2 for sharper images at four times the bytes). Without a chromium for kaleido the
    PNG is left out with a warning, and the interactive figure is still shown.
    """
    global _library_shown
    from IPython.display import display  # optional: IPython comes with Jupyter, not with lens

    height = int(height or fig.layout.height or 500)
    if not _library_shown:
        display({"text/html": plotlyjs_html()}, raw=True, metadata={OUTPUT_KEY: LIBRARY})
        _library_shown = True
    title = fig.layout.title.text or "figure"
    interactive = {"text/html": _interactive_html(fig, height), "text/plain": f"<interactive plotly figure: {title}>"}
    display(interactive, raw=True, metadata={OUTPUT_KEY: INTERACTIVE})
    if static and find_browser() is None:
        # No chromium for kaleido: still show the figure, say why the PNG is missing.
        warnings.warn("viz.show: no PNG fallback (kaleido needs chromium: `apt-get install chromium` or "
                      "BROWSER_PATH); readers without JavaScript will not see this figure", stacklevel=2)
    elif static:
        png = base64.b64encode(_png(fig, width, height, scale)).decode("ascii")
        display({"image/png": png, "text/plain": f"<PNG of the figure: {title}>"}, raw=True,
                metadata={OUTPUT_KEY: STATIC, "image/png": {"width": width, "height": height}})
