"""lens: load a model, capture what its attention does, analyze it, edit it.

The flow: ``lens.load`` -> ``Subject`` -> ``lens.capture`` -> ``Capture`` -> analyzers
-> Findings -> ``viz``. Importing ``lens`` only defines things: nothing is patched until
a capture or an edit asks for it.
"""

from lens._models import BUILTIN, load
from lens._subject import Subject

__all__ = ["BUILTIN", "Subject", "load"]
