"""The record layer (``lens.capture`` lives here): one routed forward pass that records what attention did, and its file.

``capture(subject, inputs, stats=..., edits=...)`` runs the model with its attention routed
through ``lens.kernels`` and returns a ``Capture``: token ids, per-head statistics, optional
patterns and residual norms. A Capture saves to safetensors plus a JSON sidecar with a
checksum (``Capture.save`` / ``Capture.load``), never pickle. ``_executor`` runs capture jobs
here or on Ray actors.
"""

from lens.record._capture import DEFAULT_STATS, NonFiniteAttention, capture
from lens.record._data import Capture, CaptureFileError
from lens.record._executor import make_executor
from lens.record._summary import summarize

__all__ = ["DEFAULT_STATS", "Capture", "CaptureFileError", "NonFiniteAttention", "capture", "make_executor",
           "summarize"]
