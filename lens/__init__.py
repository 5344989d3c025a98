"""lens: load a model, capture what its attention does, analyze it, edit it.

The flow: ``lens.load`` -> ``Subject`` -> ``lens.capture`` -> ``Capture`` -> analyzers
-> Findings -> ``viz``. Importing ``lens`` only defines things: nothing is patched until
a capture or an edit asks for it (``lens._hook.register`` says what it changes).
"""

from lens import edits, organisms
from lens.analyzers import Atlas, Findings, analyze
from lens._capture import DEFAULT_STATS, capture
from lens._capture_data import Capture
from lens._models import BUILTIN, load
from lens._store import Store
from lens._subject import Subject
from lens._summary import summarize

__all__ = [
    "BUILTIN", "DEFAULT_STATS", "Atlas", "Capture", "Findings", "Store", "Subject",
    "analyze", "capture", "edits", "load", "organisms", "summarize",
]
