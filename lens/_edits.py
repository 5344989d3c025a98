"""Head-level edits as plain, frozen data.

Almost every attention edit in the literature is one of two things per head
(DESIGN.md, KERNELS.md "Edits in the kernel"):

* an additive bias on the pre-softmax score of chosen keys. Scaling the post-softmax
  attention to keys S by c and renormalising is *exactly* adding ln(c) to their scores:
  p'_ij = c p_ij / D for j in S, p_ij / D otherwise, D = 1 + (c - 1) sum_S p. ZeroTuning
  is S = {0}; ACT is c = beta on its hidden sinks; move-to-BOS is -inf on every key but 0.
* a gate on the head's output: zero ablation (gate 0) and mean ablation (gate 0 plus the
  head's mean output).

Each edit compiles to ``kernels.HeadEdits`` per layer; several edits compose (biases add,
gates multiply). The attention function applies them, so an edit works in every backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

Heads = int | Sequence[int] | None  # None = every layer / every head


def _indices(sel: Heads, n: int, what: str) -> list[int]:
    if sel is None:
        return list(range(n))
    items = [sel] if isinstance(sel, int) else list(sel)
    for i in items:
        if not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"{what} {i!r} does not exist: valid {what}s are 0..{n - 1}")
    return items


def _keys(keys: int | Sequence[int] | slice, n_keys: int) -> torch.Tensor:
    if isinstance(keys, slice):
        return torch.arange(n_keys)[keys]
    items = [keys] if isinstance(keys, int) else list(keys)
    idx = torch.tensor([k if k >= 0 else n_keys + k for k in items], dtype=torch.long)
    return idx[(idx >= 0) & (idx < n_keys)]


@dataclass(frozen=True)
class Edit:
    """Base class: an edit on heads ``head`` of layers ``layer`` (None = all)."""

    layer: Heads = None
    head: Heads = None

    def targets(self, n_layers: int, n_heads: int) -> tuple[list[int], list[int]]:
        return _indices(self.layer, n_layers, "layer"), _indices(self.head, n_heads, "head")

    def key_bias(self, n_keys: int) -> torch.Tensor | None:
        """Additive bias over the keys ``[key_pos]`` for each targeted head, or None."""
        return None

    def gate(self) -> tuple[float, torch.Tensor | None] | None:
        """(multiplier, added vector or None) for each targeted head's output, or None."""
        return None


@dataclass(frozen=True)
class ScaleAttention(Edit):
    """Scale attention to ``keys`` by ``factor`` after renormalisation (ZeroTuning: keys=0)."""

    keys: int | Sequence[int] | slice = 0
    factor: float = 1.0

    def key_bias(self, n_keys):
        if self.factor < 0:
            raise ValueError(f"attention scale factor must be >= 0, got {self.factor}")
        bias = torch.zeros(n_keys)
        bias[_keys(self.keys, n_keys)] = math.log(self.factor) if self.factor > 0 else -math.inf
        return bias


@dataclass(frozen=True)
class KeyBias(Edit):
    """Add ``bias`` to the pre-softmax scores of ``keys`` (the primitive behind ScaleAttention)."""

    keys: int | Sequence[int] | slice = 0
    bias: float = 0.0

    def key_bias(self, n_keys):
        b = torch.zeros(n_keys)
        b[_keys(self.keys, n_keys)] = self.bias
        return b


@dataclass(frozen=True)
class MoveToBOS(Edit):
    """Every query attends only position 0 (METHODS sec. 2): -inf on every other key."""

    def key_bias(self, n_keys):
        b = torch.full((n_keys,), -math.inf)
        b[0] = 0.0
        return b


@dataclass(frozen=True)
class AblateHead(Edit):
    """Replace the head's output by zero, or by ``mean`` (a [d_head] vector) for mean ablation."""

    mean: tuple[float, ...] | None = None

    def gate(self):
        return 0.0, (torch.tensor(self.mean, dtype=torch.float32) if self.mean is not None else None)


@dataclass(frozen=True)
class GateHead(Edit):
    """Multiply the head's output by ``gate``."""

    factor: float = 1.0

    def gate(self):
        return float(self.factor), None


def compile_edits(edits: Iterable[Edit], *, n_layers: int, n_heads: int, d_head: int, n_keys: int) -> dict:
    """Turn edits into ``{layer: kernels.HeadEdits}``; biases add up, gates multiply."""
    from kernels import HeadEdits

    bias: dict[int, torch.Tensor] = {}
    gate: dict[int, torch.Tensor] = {}
    add: dict[int, torch.Tensor] = {}
    for edit in edits:
        if not isinstance(edit, Edit):
            raise TypeError(f"not an edit: {edit!r} (use the classes in lens.edits)")
        layers, heads = edit.targets(n_layers, n_heads)
        kb = edit.key_bias(n_keys)
        gt = edit.gate()
        for layer in layers:
            if kb is not None:
                b = bias.setdefault(layer, torch.zeros(n_heads, n_keys))
                b[heads] = b[heads] + kb
            if gt is not None:
                g = gate.setdefault(layer, torch.ones(n_heads))
                a = add.setdefault(layer, torch.zeros(n_heads, d_head))
                factor, vec = gt
                g[heads] = g[heads] * factor
                a[heads] = a[heads] * factor + (vec if vec is not None else 0.0)
    out = {}
    for layer in sorted(set(bias) | set(gate)):
        out[layer] = HeadEdits(
            key_bias=bias[layer].unsqueeze(0) if layer in bias else None,
            head_gate=gate.get(layer),
            head_add=add[layer] if layer in add and bool(add[layer].any()) else None,
        )
    return out
