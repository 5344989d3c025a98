"""The types every backend shares: the validated ``Call``, the ``AttentionResult``, ``HeadEdits``.

They live here, apart from ``_api`` (which validates and dispatches) and the backends
(which compute), so that imports point one way: ``_api`` -> backends -> ``_types``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Bool, Float, Int
from torch import Tensor

from ._geometry import Geometry
from ._stats import StatOptions

__all__ = ["AttentionResult", "Call", "HeadEdits", "apply_head_edits"]


@dataclass(frozen=True)
class HeadEdits:
    """Head-level edits applied inside the attention function (all optional tensors).

    key_bias: fp32, broadcastable to [batch, head, key_pos], added to the pre-softmax
        scores of every query. Scaling post-softmax attention on a key set S by c and
        renormalising is exactly adding ln(c) to those keys' scores (ZeroTuning, ACT,
        VAR); -inf removes a key (move-to-BOS = -inf on every key but BOS). Values at
        or below -1e30 count as -inf.
    head_gate: [head], multiplies each head's output (0 = zero ablation).
    head_add: [head, d_head], added to each head's output after the gate
        (mean ablation = gate 0 + add the mean output).
    Statistics describe the edited pattern, i.e. after key_bias; gate and add change
    only the output.
    """

    key_bias: Float[Tensor, "*#batch #head key_pos"] | None = None
    head_gate: Float[Tensor, " head"] | None = None
    head_add: Float[Tensor, "head d_head"] | None = None

    @property
    def empty(self) -> bool:
        return self.key_bias is None and self.head_gate is None and self.head_add is None


@dataclass(frozen=True)
class AttentionResult:
    """What one attention call returns.

    output: [batch, head, query_pos, d_head] in the dtype of q.
    lse: [batch, head, query_pos] fp32 log-sum-exp of the edited scores, the learned
        sink logit included when there is one (-inf where a row sees no key).
    stats: name -> fp32 tensor (``topk_idx`` int64); see ``lens.kernels._stats``.
    meta: the constants used (pool_factor, topk, window, sink_k, backend, ...).
    """

    output: Float[Tensor, "batch head query_pos d_head"]
    lse: Float[Tensor, "batch head query_pos"]
    stats: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """A validated attention call: what every backend receives.

    q, k, v keep the caller's dtype; backends compute in fp32. key_bias is fp32
    [batch|1, head|1, key_pos], head_gate fp32 [head], head_add fp32 [head, d_v].

    softcap: tanh logit soft-capping (Gemma-2): the scaled score ``s`` becomes
        ``softcap * tanh(s / softcap)`` before masks and key_bias. None = off.
    sinks: fp32 [head] learned sink logits (gpt-oss ``s_aux``): one extra virtual key
        per head, with that score and no value, in every row's softmax denominator.
        ``lse`` includes it; ``p`` over the real keys then sums to 1 - its mass.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    geo: Geometry
    query_mask: Bool[Tensor, "batch query_pos"] | None
    token_ids: Int[Tensor, "batch key_pos"] | None
    stats: tuple[str, ...]
    options: StatOptions
    key_bias: Float[Tensor, "bb bh key_pos"] | None
    head_gate: Float[Tensor, " head"] | None
    head_add: Float[Tensor, "head d_v"] | None
    block_size: int | None
    softcap: float | None = None
    sinks: Float[Tensor, " head"] | None = None

    @property
    def has_edits(self) -> bool:
        return self.key_bias is not None or self.head_gate is not None or self.head_add is not None


def apply_head_edits(out: Float[Tensor, "batch head query_pos d_v"], call: Call
                     ) -> Float[Tensor, "batch head query_pos d_v"]:
    """Gate then add, per head, on an fp32 output (in place); the shared epilogue."""
    if call.head_gate is not None:
        out.mul_(call.head_gate[None, :, None, None])
    if call.head_add is not None:
        out.add_(call.head_add[None, :, None, :])
    return out


