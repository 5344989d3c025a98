"""The record layer (``lens.capture`` lives here): one routed forward pass that records what attention did, and its file.

``capture(subject, inputs, stats=..., edits=...)`` (or ``capture(subject, inputs, spec)`` with a
frozen ``CaptureSpec`` holding the same fields) runs the model with its attention routed
through ``lens.kernels`` and returns a ``Capture``: token ids, per-head statistics, optional
patterns and residual norms. A Capture saves to safetensors plus a JSON sidecar with a
checksum (``Capture.save`` / ``Capture.load``), never pickle. ``_executor`` runs capture jobs
here or on Ray actors.
"""

from lens.record._capture import DEFAULT_STATS, NonFiniteAttention, capture, estimate_bytes
from lens.record._data import Capture, CaptureFileError
from lens.record._executor import cached_subject, make_executor
from lens.record._spec import CaptureSpec
from lens.record._summary import summarize
from lens.record._vocab import CAPTURE_STATS

__all__ = ["CAPTURE_STATS", "DEFAULT_STATS", "Capture", "CaptureFileError", "CaptureSpec", "NonFiniteAttention",
           "cached_subject", "capture", "estimate_bytes", "make_executor", "summarize"]
