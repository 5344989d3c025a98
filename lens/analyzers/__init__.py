"""Analyzers: pure functions from Captures to Findings (no model calls, no hooks, no plots).

Each returns a ``Findings``: a tidy pandas table (one row per head, layer, token or input)
plus the parameters used. ``analyze(capture)`` runs them all and returns an ``Atlas``
(``print(atlas)`` for one screen, ``atlas.to_frame()`` for one row per head).
Definitions: docs/METHODS.md sections 1-4, 6 and 10; each function cites its section.
Checks that need the model (loss under move-to-BOS, retrieval by generation) live in
``lens.experiments._model_checks``. The masks and means the analyzers share (``real``,
``later_queries``, ``masked_mean``, ``head_frame``, ``top_heads``) are public for code that
summarises captures the same way (the Store's index, the experiments).
"""

from lens.analyzers._atlas import ANALYZERS, analyze
from lens.analyzers._common import head_frame, later_queries, masked_mean, real, top_heads
from lens.analyzers._dormant import dormant_heads, dormant_inputs, dormant_tokens, sink_scores
from lens.analyzers._entropy import entropy, entropy_series
from lens.analyzers._extreme import massive_activations, residual_peaks, value_drains
from lens.analyzers._findings import Atlas, Findings
from lens.analyzers._heads import head_types, induction_test
from lens.analyzers._reasoning import anchor_coupling, head_distance, preplan_anchor
from lens.analyzers._sinks import hidden_sinks, sink_rate

__all__ = [
    "ANALYZERS",
    "Atlas",
    "Findings",
    "analyze",
    "anchor_coupling",
    "dormant_heads",
    "dormant_inputs",
    "dormant_tokens",
    "entropy",
    "entropy_series",
    "head_distance",
    "head_frame",
    "head_types",
    "hidden_sinks",
    "induction_test",
    "later_queries",
    "masked_mean",
    "massive_activations",
    "preplan_anchor",
    "real",
    "residual_peaks",
    "sink_rate",
    "sink_scores",
    "top_heads",
    "value_drains",
]
