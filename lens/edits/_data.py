"""Head-level edits as plain, frozen data.

Almost every attention edit in the literature is one of two things per head
(docs/DESIGN.md; docs/METHODS.md "Kernel math", "Edits in the kernel"):

* an additive bias on the pre-softmax score of chosen keys. Scaling the post-softmax
  attention to keys S by c and renormalising is *exactly* adding ln(c) to their scores:
  p'_ij = c p_ij / D for j in S, p_ij / D otherwise, D = 1 + (c - 1) sum_S p. ZeroTuning
  is S = {0} (METHODS sec 5); move-to-BOS is -inf on every key but 0.
* a gate on the head's output: zero ablation (gate 0) and mean ablation (gate 0 plus the
  head's mean output, the [d_head] vector the head contributes *before* the output
  projection; ``lens.edits.mean_ablation`` computes it).

Two edits are neither, and are kept separate because they are not key biases:

* ACT (METHODS sec 6) multiplies hidden-sink attention by beta *without* renormalising
  those entries and hands the freed mass to the other keys in proportion. On row i the
  ratio between a sink key and another key changes by beta (1 - m_i) / (1 - beta m_i),
  m_i = the row's sink mass, so the equivalent bias depends on the query row; VAR (sec 7)
  is row-dependent as well (it also selects rows). Both are ``RowEdit``s: applied to the
  eager post-softmax pattern of the targeted heads, after which the head output is
  recomputed as p' @ v (see ``lens.model._editing``). ``CalibrateSinks(renormalise=True)``
  is the key-bias variant (sinks scaled by beta, whole row renormalised).
* residual-stream edits (steering vectors, patching from another prompt) act on a block's
  output through a forward hook (or, equivalently, an nnsight trace).

Attention-function edits compile to ``kernels.HeadEdits`` per layer (biases add, gates
multiply) and work in every backend and in ``lens.capture``; row and residual edits need
the hooks that ``Subject.edited`` installs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lens.edits._reads import residual_from_prompt
from lens.edits._rows import act_rows, act_sinks, var_rows

Heads = int | Sequence[int] | None  # None = every layer / every head


def _indices(sel: Heads, valid: int | Sequence[int], what: str, owner=None) -> list[int]:
    """The indices ``sel`` names (None: all of ``valid``), each checked. ``valid``: a count, or the
    indices there are (a hybrid model's blocks with attention)."""
    choices = list(range(valid)) if isinstance(valid, int) else list(valid)
    if sel is None:
        return choices
    items = [sel] if isinstance(sel, int) else list(sel)
    if not items:
        raise ValueError(f"empty {what} selection: give an index, a list of indices, or None for all")
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or i not in choices:
            where = f"{type(owner).__name__}(layer={owner.layer!r}, head={owner.head!r}): " if owner is not None else ""
            contiguous = choices == list(range(len(choices)))
            listed = f"0..{len(choices) - 1}" if contiguous else f"the blocks with attention, {choices}"
            raise ValueError(f"{where}{what} {i!r} does not exist{'' if contiguous else ' or has no attention'}: "
                             f"valid {what}s are {listed}; give indices in that range, or None for every {what}")
    return items


def _keys(keys: int | Sequence[int] | slice, n_keys: int) -> torch.Tensor:
    if isinstance(keys, slice):
        return torch.arange(n_keys)[keys]
    items = [keys] if isinstance(keys, int) else list(keys)
    idx = torch.tensor([k if k >= 0 else n_keys + k for k in items], dtype=torch.long)
    return idx[(idx >= 0) & (idx < n_keys)]


def _freeze(value):
    """Lists (from TOML or JSON) -> tuples, recursively, so edits stay hashable plain data."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Edit:
    """Base class: an edit on heads ``head`` of layers ``layer`` (None = all)."""

    layer: Heads = None
    head: Heads = None
    # Who applies it (``lens.model._editing``): "attention" = compiled into kernels.HeadEdits,
    # "rows" = rewrites the post-softmax rows of the targeted heads, "residual" = a block hook.
    applied_by: ClassVar[str] = "attention"

    def __post_init__(self) -> None:
        for name in ("layer", "head"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))

    def targets(self, layers: int | Sequence[int], n_heads: int) -> tuple[list[int], list[int]]:
        """The (layers, heads) this edit acts on; ``layers``: a count, or the valid layer (block) numbers."""
        return _indices(self.layer, layers, "layer", self), _indices(self.head, n_heads, "head", self)

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

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "keys", _freeze(self.keys))
        if not self.factor >= 0:
            raise ValueError(f"attention scale factor must be >= 0, got {self.factor}")

    def key_bias(self, n_keys):
        bias = torch.zeros(n_keys)
        bias[_keys(self.keys, n_keys)] = math.log(self.factor) if self.factor > 0 else -math.inf
        return bias


@dataclass(frozen=True)
class KeyBias(Edit):
    """Add ``bias`` to the pre-softmax scores of ``keys`` (the primitive behind ScaleAttention)."""

    keys: int | Sequence[int] | slice = 0
    bias: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "keys", _freeze(self.keys))

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
    """Replace the head's output by zero, or by ``mean`` (a [d_head] vector) for mean ablation.

    The output replaced is the head's slice of the output projection's *input* (before
    o_proj). ``lens.edits.mean_ablation`` builds these edits with each head's own mean.
    """

    mean: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.mean, torch.Tensor):
            object.__setattr__(self, "mean", tuple(float(x) for x in self.mean.reshape(-1)))
        elif self.mean is not None:
            object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))

    def gate(self):
        return 0.0, (torch.tensor(self.mean, dtype=torch.float32) if self.mean is not None else None)


@dataclass(frozen=True)
class GateHead(Edit):
    """Multiply the head's output by ``factor``."""

    factor: float = 1.0

    def gate(self):
        return float(self.factor), None


# --- post-softmax row edits ----------------------------------------------------------------
@dataclass(frozen=True)
class RowEdit(Edit):
    """An edit of each query row of the post-softmax pattern (not expressible as a key bias).

    Applied by ``Subject.edited``: the targeted heads' layers run the eager backend, the
    row function below rewrites the pattern, and the head output is recomputed from it.
    """

    applied_by: ClassVar[str] = "rows"

    def rows(self, p: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Edited pattern. p: [batch, head, query_pos, key_pos] (queries are the last
        positions), valid: [batch, query_pos] bool (padding rows are False and left alone)."""
        raise NotImplementedError


def _per_input(value, what: str) -> tuple:
    """A key set (tuple of ints) or one per input (tuple of tuples) -> normalised tuple."""
    value = _freeze(value)
    if isinstance(value, int):
        return (value,)
    if not isinstance(value, tuple):
        raise ValueError(f"{what} must be a list of key positions or one list per input, got {value!r}")
    return value


def _is_per_input(value: tuple) -> bool:
    return bool(value) and all(isinstance(v, tuple) for v in value)


@dataclass(frozen=True)
class CalibrateSinks(RowEdit):
    """ACT attention calibration of hidden sinks (METHODS sec 6), exactly as specified.

    Per input and targeted head, on the prefill pattern A: column score
    c_j = sum_i A[i, j] / (number of queries that see j); hidden sinks
    S = {j : c_j > theta} (theta = ``alpha / T`` when ``alpha`` is set), minus its first
    element (usually BOS), which is left alone. Each row: A'[i, S] = beta A[i, S] and the
    freed mass (1 - beta) sum_S A[i] goes to the other keys in proportion to their
    attention; rows with no mass outside S are left unchanged.

    sinks: None = detected on the fly from the current pattern (the paper's online
    procedure); or fixed key positions, one tuple for all inputs or one tuple per input
    (``lens.edits.act_from_capture`` fills them from a Capture, already without the first).
    renormalise: True scales S by beta and renormalises the whole row instead, which is
    exactly ``KeyBias(ln beta)`` on S (the ZeroTuning-style variant, not METHODS' ACT).
    """

    beta: float = 0.4
    theta: float = 0.1
    alpha: float | None = None
    sinks: tuple | None = None
    renormalise: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.beta:
            raise ValueError(f"CalibrateSinks.beta must be >= 0, got {self.beta}")
        if self.sinks is not None:
            object.__setattr__(self, "sinks", _per_input(self.sinks, "CalibrateSinks.sinks"))

    def rows(self, p, valid):
        if self.sinks is None:
            sinks = act_sinks(p, valid, theta=self.theta, alpha=self.alpha)
        else:
            sinks = _sink_mask(self.sinks, p.shape[0], p.shape[-1], "CalibrateSinks.sinks")
            sinks = sinks[:, None].expand(-1, p.shape[1], -1)
        return act_rows(p, valid, sinks, beta=self.beta, renormalise=self.renormalise)


@dataclass(frozen=True)
class RedistributeAttention(RowEdit):
    """VAR-style redistribution from sink keys to a target span (METHODS sec 7).

    A row is edited when its attention on ``target`` (keys [start, stop)) is at least
    ``min_target`` and the sinks inside the span take at most ``max_sink_share`` of it.
    On such rows attention to every sink is multiplied by ``keep`` (p = 0.6) and the
    freed mass goes to the non-sink target keys in proportion to their attention; row
    sums stay 1. ``sinks`` and ``target`` are one value for all inputs or one per input;
    ``lens.edits.var_sinks`` finds sinks from massive activations in a Capture.
    """

    sinks: tuple = (0,)
    target: tuple = (0, 0)
    keep: float = 0.6
    min_target: float = 0.2
    max_sink_share: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "sinks", _per_input(self.sinks, "RedistributeAttention.sinks"))
        target = _freeze(self.target)
        spans = target if _is_per_input(target) else (target,)
        for span in spans:
            if len(span) != 2 or not all(isinstance(x, int) for x in span) or not 0 <= span[0] <= span[1]:
                raise ValueError(f"RedistributeAttention.target must be (start, stop) key positions with "
                                 f"0 <= start <= stop (or one per input), got {span!r}")
        object.__setattr__(self, "target", target)
        if not 0 <= self.keep <= 1:
            raise ValueError(f"RedistributeAttention.keep must be in [0, 1], got {self.keep}")

    def rows(self, p, valid):
        b, n_keys = p.shape[0], p.shape[-1]
        sinks = _sink_mask(self.sinks, b, n_keys, "RedistributeAttention.sinks")
        spans = self.target if _is_per_input(self.target) else (self.target,) * b
        if len(spans) != b:
            raise ValueError(f"RedistributeAttention.target has {len(spans)} spans for a batch of {b} inputs")
        target = torch.zeros(b, n_keys, dtype=torch.bool, device=p.device)
        for i, (start, stop) in enumerate(spans):
            target[i, start:stop] = True
        return var_rows(p, valid, sinks.to(p.device), target, keep=self.keep, min_target=self.min_target,
                        max_sink_share=self.max_sink_share)


def _sink_mask(sinks: tuple, batch: int, n_keys: int, what: str) -> torch.Tensor:
    """Key positions (shared or per input) -> bool [batch, key_pos]."""
    per = sinks if _is_per_input(sinks) else (sinks,) * batch
    if len(per) != batch:
        raise ValueError(f"{what} holds key sets for {len(per)} inputs, but the batch has {batch}: "
                         "per-input edits apply to exactly the inputs they were built from")
    mask = torch.zeros(batch, n_keys, dtype=torch.bool)
    for i, keys in enumerate(per):
        idx = _keys(tuple(keys), n_keys)
        mask[i, idx] = True
    return mask


# --- residual-stream edits ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ResidualEdit(Edit):
    """An edit of the residual stream after block ``layer`` at ``positions`` (None = all).

    positions index the sequence of the forward pass the edit runs in (negative ones
    count from its end, i.e. from the padded width in a right-padded batch).
    """

    positions: int | Sequence[int] | None = None
    applied_by: ClassVar[str] = "residual"

    # Residual edits hold tensors: compare and hash by identity, not by value.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "positions", _freeze(self.positions))
        if self.head is not None:
            raise ValueError(f"{type(self).__name__} edits the residual stream of a layer: it takes no head")

    def targets(self, layers, n_heads):
        if self.layer is None or not isinstance(self.layer, int):
            raise ValueError(f"{type(self).__name__} needs one layer (an int), got {self.layer!r}")
        return _indices(self.layer, layers, "layer", self), []

    def position_index(self, n_pos: int) -> torch.Tensor:
        if self.positions is None:
            return torch.arange(n_pos)
        return _keys(self.positions, n_pos)

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """Edited residual ``[batch, pos, d_model]`` (returns a new tensor)."""
        raise NotImplementedError


def _vector(value, what: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    if t.ndim == 0 or t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError(f"{what} must be a finite vector, got shape {tuple(t.shape)}")
    return t


@dataclass(frozen=True, eq=False)
class SteerResidual(ResidualEdit):
    """Add ``scale * vector`` ([d_model]) to the residual stream after block ``layer``."""

    vector: torch.Tensor | Sequence[float] = field(default=())
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "vector", _vector(self.vector, "SteerResidual.vector").reshape(-1))

    def apply(self, hidden):
        if hidden.shape[-1] != self.vector.shape[0]:
            raise ValueError(f"steering vector has {self.vector.shape[0]} entries, the residual stream "
                             f"{hidden.shape[-1]}")
        out = hidden.clone()
        idx = self.position_index(hidden.shape[1]).to(hidden.device)
        out[:, idx] = out[:, idx] + self.scale * self.vector.to(hidden.device, hidden.dtype)
        return out


@dataclass(frozen=True, eq=False)
class PatchResidual(ResidualEdit):
    """Replace the residual after block ``layer`` at ``positions`` by ``values``.

    values: [n_positions, d_model] (the same for every input) or [batch, n_positions,
    d_model], typically another prompt's residual (``PatchResidual.from_prompt``).
    """

    values: torch.Tensor | Sequence = field(default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        v = _vector(self.values, "PatchResidual.values")
        if v.ndim == 1:
            v = v[None]
        object.__setattr__(self, "values", v)

    @classmethod
    def from_prompt(cls, subject, prompt: str, layer: int, positions: int | Sequence[int] | None = None):
        """Patch with ``prompt``'s residual after block ``layer`` (taken through ``subject.nnsight``)."""
        resid = residual_from_prompt(subject, prompt, layer)  # [pos, d_model]
        if positions is None:
            positions = tuple(range(resid.shape[0]))
        idx = _keys(_freeze(positions), resid.shape[0])
        return cls(layer=layer, positions=tuple(int(i) for i in idx), values=resid[idx])

    def apply(self, hidden):
        idx = self.position_index(hidden.shape[1]).to(hidden.device)
        vals = self.values.to(hidden.device, hidden.dtype)
        if vals.shape[-2] != idx.numel() or vals.shape[-1] != hidden.shape[-1]:
            raise ValueError(f"PatchResidual.values {tuple(vals.shape)} do not fit {idx.numel()} position(s) "
                             f"of a d_model={hidden.shape[-1]} residual stream")
        out = hidden.clone()
        out[:, idx] = vals.expand(hidden.shape[0], *vals.shape[-2:]) if vals.ndim == 2 else vals
        return out


HOOK_EDITS = (RowEdit, ResidualEdit)  # applied by hooks in ``Subject.edited``, not by the attention function
