"""Head-level edits (public names). See ``lens._edits`` for the algebra behind them.

Attention-function edits (work in every backend and in ``lens.capture``): ``ScaleAttention``
(ZeroTuning is ``keys=0``), ``KeyBias``, ``MoveToBOS``, ``AblateHead`` (zero, or mean with
``mean_ablation``), ``GateHead``. Post-softmax row edits (``subject.edited``):
``CalibrateSinks`` (ACT, ``act_from_capture``) and ``RedistributeAttention`` (VAR,
``var_sinks``). Residual-stream edits (``subject.edited``, or ``nnsight_logits``):
``SteerResidual`` and ``PatchResidual``.
"""

from lens._edits import (
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
    compile_edits,
)
from lens._edits_apply import (
    act_from_capture,
    head_means,
    head_outputs,
    mean_ablation,
    nnsight_logits,
    residual_from_prompt,
    var_sinks,
)

__all__ = [
    "AblateHead", "CalibrateSinks", "Edit", "GateHead", "KeyBias", "MoveToBOS", "PatchResidual",
    "RedistributeAttention", "ResidualEdit", "RowEdit", "ScaleAttention", "SteerResidual", "act_from_capture",
    "compile_edits", "head_means", "head_outputs", "mean_ablation", "nnsight_logits", "residual_from_prompt",
    "var_sinks",
]
