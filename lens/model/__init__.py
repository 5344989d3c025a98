"""The model layer: loading, structure discovery, attention routing, the Subject, inputs.

``load(name_or_path)`` gives a ``Subject``: a transformers causal LM with its tokenizer and
the structure the workbench needs (decoder blocks, the attention modules and their output
projections, the MLPs, the final norm), discovered from the module tree and one traced pass
(``_structure``). ``_routing`` registers the workbench's attention function with transformers'
AttentionInterface and routes a model through it inside a scope; nothing is patched at
import. ``organisms`` trains the small model organisms whose ground truth the tests use.

What the layers above use is exported here: ``routed`` and ``active`` (a routed pass with a
session), ``compile_edits`` and ``edited`` (applying edits), and the file digests that the
cache, saved Captures and Stores share (``file_digest``, ``same_digest``, ...).

Imports only ``lens.kernels`` from the rest of the package.
"""

from lens.model import organisms
from lens.model._cache import DIGEST_NAMES, WRITTEN_DIGEST, file_digest, file_sha256, recorded_digest, same_digest
from lens.model._editing import compile_edits, edited
from lens.model._inputs import normalise_inputs
from lens.model._load import BUILTIN, ModelRef, OfflineModelError, load
from lens.model._placement import DTYPES, Placement, resolve_placement
from lens.model._routing import UnsupportedAttention, active, model_lock, routed
from lens.model._structure import Structure, StructureError, discover
from lens.model._subject import Subject

__all__ = ["BUILTIN", "DIGEST_NAMES", "DTYPES", "ModelRef", "OfflineModelError", "Placement", "Structure",
           "StructureError", "Subject", "UnsupportedAttention", "WRITTEN_DIGEST", "active", "compile_edits", "discover",
           "edited", "file_digest", "file_sha256", "load", "model_lock", "normalise_inputs", "organisms",
           "recorded_digest", "resolve_placement", "routed", "same_digest"]
