"""Static export (PNG, SVG, PDF) through kaleido, offline, with the system's chromium.

kaleido 1.x drives a headless Chrome. It finds one through ``BROWSER_PATH``; we point that
at Debian's ``/usr/bin/chromium`` (or ``chromium-browser``, ``google-chrome``) when it is
unset. We never call ``kaleido.get_chrome_sync``: it downloads a browser.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import plotly.graph_objects as go

__all__ = ["export", "find_browser"]

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FORMATS = ("png", "svg", "pdf", "jpeg", "jpg", "webp")


def find_browser() -> str | None:
    """Path of a chromium/chrome kaleido can drive: ``BROWSER_PATH`` if set, else a system one, else None."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for c in CANDIDATES:
        if Path(c).exists():
            return c
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def export(fig: go.Figure, path: str | Path, *, format: str | None = None, width: int = 1000, height: int | None = None,
           scale: float = 1.0) -> Path:
    """Write ``fig`` to ``path`` as a static image (format from the suffix unless given); returns the path."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ValueError(f"cannot export to {fmt!r}: use one of {FORMATS}")
    browser = find_browser()
    if browser is None:
        raise RuntimeError("static export needs chromium (e.g. `apt-get install chromium`) or BROWSER_PATH "
                           "pointing at a Chrome; this workbench never downloads one")
    os.environ.setdefault("BROWSER_PATH", browser)
    height = height or int(fig.layout.height or 500)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_image(str(path), format=fmt, width=width, height=height, scale=scale)
    return path
