"""Head-level edits (public names). See ``lens.edits._data`` for the algebra behind them.

Attention-function edits (work in every backend and in ``lens.capture``): ``ScaleAttention``
(ZeroTuning is ``keys=0``), ``KeyBias``, ``MoveToBOS``, ``AblateHead`` (zero, or mean with
``mean_ablation``), ``GateHead``. Post-softmax row edits (``subject.edited``):
``CalibrateSinks`` (ACT, ``act_from_capture``) and ``RedistributeAttention`` (VAR,
``var_sinks``). Residual-stream edits (``subject.edited``, or ``nnsight_logits``):
``SteerResidual`` and ``PatchResidual``.
"""

from lens.edits._data import (
    HOOK_EDITS,
    AblateHead,
    CalibrateSinks,
    Edit,
    GateHead,
    KeyBias,
    MoveToBOS,
    PatchResidual,
    RedistributeAttention,
    ResidualEdit,
    RowEdit,
    ScaleAttention,
    SteerResidual,
)
from lens.edits._apply import act_from_capture, head_means, mean_ablation, nnsight_logits, var_sinks
from lens.edits._reads import head_outputs, residual_from_prompt
from lens.model import compile_edits, edited

__all__ = [
    "HOOK_EDITS", "AblateHead", "CalibrateSinks", "Edit", "GateHead", "KeyBias", "MoveToBOS", "PatchResidual",
    "RedistributeAttention", "ResidualEdit", "RowEdit", "ScaleAttention", "SteerResidual", "act_from_capture",
    "compile_edits", "edited", "head_means", "head_outputs", "mean_ablation", "nnsight_logits", "residual_from_prompt",
    "var_sinks",
]
