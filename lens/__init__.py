"""lens: load a model, capture what its attention does, analyze it, edit it.

The flow: ``lens.load`` -> ``Subject`` -> ``lens.capture`` -> ``Capture`` -> analyzers
-> Findings -> ``lens.viz``. Importing ``lens`` only defines things: nothing is patched until
a capture or an edit asks for it (``lens.model._routing.register`` says what it changes).

The package is layered along that flow; each layer imports only the ones before it
(import-linter checks it, see docs/DESIGN.md):
``kernels`` <- ``model`` <- ``edits`` <- ``record`` <- ``analyzers`` <- ``store`` <-
``experiments`` <- ``circuits`` <- ``probes`` <- ``viz`` <- ``dashboard`` <- ``cli``.
"""

from importlib import metadata as _metadata

from lens import edits
from lens.analyzers import Atlas, Findings, analyze
from lens.record import DEFAULT_STATS, Capture, CaptureSpec, capture, summarize
from lens.model import BUILTIN, Subject, load, organisms
from lens.store import Store

try:
    __version__ = _metadata.version("attention-workbench")
except _metadata.PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BUILTIN", "DEFAULT_STATS", "Atlas", "Capture", "CaptureSpec", "Findings", "Store", "Subject", "__version__",
    "analyze", "capture", "edits", "load", "organisms", "summarize",
]
