"""``CaptureSpec``: what a capture records and how, as one frozen value.

Everything ``lens.capture`` takes but the model, the inputs and the progress bar lives
here, checked once when the spec is made; the capture's internals (the per-layer
session, the memory estimate), the command line, the Store's manifest and the Ray
actors carry the spec instead of a dozen loose parameters. It is frozen and picklable
(the Ray executor ships it to actors inside each job).

Two steps of checking: ``__post_init__`` refuses what is wrong whatever the model (a
statistic name, a backend, a batch size, a pair that is not a pair), each error naming
its field; ``for_subject`` checks what needs the model (layers, heads, edits, value norms
on a model with a norm after the heads) and resolves ``stats="default"``,
``patterns="all"`` and ``value_norm=None`` into what will actually be recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from lens.edits import Edit
from lens.kernels import BACKENDS, DEFAULT_STATS, StatOptions, check_stat_names
from lens.model import Subject
from lens.record._vocab import ASKABLE_STATS

__all__ = ["CaptureSpec"]

_STATS_HINT = (" (stats='default' asks for all of them; full patterns are asked for with "
               "patterns=[(layer, head), ...])")


@dataclass(frozen=True)
class CaptureSpec:
    """What ``lens.capture`` records: statistics, patterns, residual reads, edits, backend, batching.

    stats: statistic names (``lens.kernels.STATS``), or "default" (all of them but full
        patterns; plus ``learned_sink_mass`` on models with learned sinks).
    patterns: (layer, head) pairs, or "all", whose full pattern is kept for ``pattern_window``.
    pattern_window: (start, stop) query rows of those patterns (None = all rows).
    resid_layers: blocks whose residual stream (output) is kept whole.
    value_norm: record ||W_O^h v_j|| (None: wherever it is defined, i.e. unless a norm or
        gate sits between the attention and the output projection, as in BitNet).
    resid_norm, massive: record the residual stream's norms and its largest entries per block.
    edits: ``lens.edits`` objects applied during the pass; the statistics describe the edited model.
    backend: "eager", "chunked", "triton" or "auto" (``lens.kernels.BACKENDS``).
    batch_size: inputs per forward pass.
    options: ``lens.kernels.StatOptions`` (sink_k, window, topk, pool_max); its
        ``pattern_window`` is always the spec's.
    allow_beyond_context: run inputs longer than the model's context instead of refusing them.
    """

    stats: tuple[str, ...] | str = "default"
    patterns: tuple[tuple[int, int], ...] | str = ()
    pattern_window: tuple[int, int] | None = None
    resid_layers: tuple[int, ...] = ()
    value_norm: bool | None = None
    resid_norm: bool = True
    massive: bool = True
    edits: tuple[Edit, ...] = ()
    backend: str = "auto"
    batch_size: int = 8
    options: StatOptions = StatOptions()
    allow_beyond_context: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalising the fields of a frozen dataclass, once, here
        set_(self, "stats", _stats(self.stats))
        set_(self, "patterns", _patterns(self.patterns))
        set_(self, "resid_layers", _layers(self.resid_layers))
        set_(self, "edits", _edits(self.edits))
        for name in ("resid_norm", "massive", "allow_beyond_context", "value_norm"):
            value = getattr(self, name)
            if not (isinstance(value, (bool, np.bool_)) or (value is None and name == "value_norm")):
                raise ValueError(f"{name}: must be True or False{' or None' if name == 'value_norm' else ''}, "
                                 f"got {value!r}")
            set_(self, name, None if value is None else bool(value))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not _is_index(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size: must be a positive int, got {self.batch_size!r}")
        set_(self, "batch_size", int(self.batch_size))
        set_(self, "options", _options(self.options, self.pattern_window))
        set_(self, "pattern_window", self.options.pattern_window)

    @classmethod
    def of(cls, spec: CaptureSpec | None = None, /, **changes: Any) -> CaptureSpec:
        """``spec`` with ``changes`` (keyword fields), or a new spec from them; an unknown keyword is refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown capture option(s) {unknown}: the options are {', '.join(sorted(known))} "
                            "(and progress)")
        if spec is None:
            return cls(**changes)
        if not isinstance(spec, CaptureSpec):
            raise TypeError(f"spec: must be a lens.CaptureSpec, got {type(spec).__name__}")
        return replace(spec, **changes) if changes else spec

    @property
    def resolved(self) -> bool:
        """True once ``for_subject`` has turned "default", "all" and None into what will be recorded."""
        return self.stats != "default" and self.patterns != "all" and self.value_norm is not None

    def for_subject(self, subject: Subject) -> CaptureSpec:
        """This spec checked against ``subject`` (layers, heads, edits), with "default", "all" and None resolved."""
        stats = self.stats
        if stats == "default":
            stats = DEFAULT_STATS + (("learned_sink_mass",) if subject.arch.has_learned_sinks else ())
        patterns = self.patterns
        if patterns == "all":
            patterns = tuple((l, h) for l in subject.attn_layers for h in range(subject.n_heads))
        try:
            subject.check_heads(patterns)
        except ValueError as err:
            raise ValueError(f"patterns: {err}") from None
        for layer in self.resid_layers:
            if layer >= subject.n_layers:
                raise ValueError(f"resid_layers: layer {layer!r} does not exist in {subject.name}: layers are "
                                 f"0..{subject.n_layers - 1}; pass indices in that range")
        for e in self.edits:
            try:
                e.targets(subject.attn_layers, subject.n_heads)  # fails clearly on heads that do not exist
            except ValueError as err:
                raise ValueError(f"edits: {subject.name} ({subject.n_layers} layers x {subject.n_heads} heads): "
                                 f"{err}") from None
        return replace(self, stats=stats, patterns=patterns, value_norm=_value_norm(subject, self.value_norm))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (edits by their repr): what a Store's manifest records."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["options"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.options).items()}
        out["edits"] = [repr(e) for e in self.edits]
        return {k: _jsonable(v) for k, v in out.items()}


def _stats(stats) -> tuple[str, ...] | str:
    if isinstance(stats, str) and stats == "default":
        return stats
    return check_stat_names(stats, allowed=ASKABLE_STATS, hint=_STATS_HINT)


def _patterns(patterns) -> tuple[tuple[int, int], ...] | str:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        if patterns != "all":
            raise ValueError(f"patterns: {patterns!r} is not 'all'; pass patterns=[(layer, head), ...] or "
                             "patterns='all'")
        return patterns
    out = []
    for p in patterns:
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_index(i) for i in p)):
            raise ValueError(f"patterns: {p!r} is not a (layer, head) pair; pass patterns=[(layer, head), ...] "
                             "or patterns='all'")
        out.append((int(p[0]), int(p[1])))
    return tuple(out)


def _layers(layers) -> tuple[int, ...]:
    if isinstance(layers, (int, np.integer)):
        layers = (layers,)
    for layer in layers:
        if not _is_index(layer) or layer < 0:
            raise ValueError(f"resid_layers: layer {layer!r} is not a block number (an int >= 0); pass indices "
                             "such as resid_layers=[0, 3]")
    return tuple(int(layer) for layer in layers)


def _edits(edits) -> tuple[Edit, ...]:
    edits = (edits,) if isinstance(edits, Edit) else tuple(edits or ())
    for e in edits:
        if not isinstance(e, Edit):
            raise TypeError(f"edits: not an edit: {e!r}; pass lens.edits objects, e.g. "
                            "lens.edits.AblateHead(layer=0, head=1)")
    return edits


def _options(options, window) -> StatOptions:
    options = StatOptions() if options is None else options
    if not isinstance(options, StatOptions):
        raise ValueError(f"options: must be a lens.kernels.StatOptions, got {type(options).__name__}")
    if window is None:
        return options
    if not (isinstance(window, Sequence) and len(window) == 2 and all(_is_index(i) for i in window)):
        raise ValueError(f"pattern_window: must be (start, stop) query rows, got {window!r}")
    try:
        return replace(options, pattern_window=tuple(window))
    except ValueError as err:
        raise ValueError(f"pattern_window: {err}") from None


def _value_norm(subject: Subject, value_norm: bool | None) -> bool:
    """Whether to record value norms on ``subject``: refused where a norm or gate follows the heads."""
    arch = subject.arch
    norm_between = (f"the norm {arch.attn_out_norm!r}" if arch.attn_out_norm else
                    "an output gate" if arch.attn_out_gated else None)
    if value_norm and norm_between:
        raise ValueError(f"{subject.name}: value_norm (||W_O^h v_j||) needs the heads' outputs to reach the output "
                         f"projection unchanged, but {norm_between} sits between them; capture with "
                         "value_norm=False (the default leaves it out on this model)")
    return not norm_between if value_norm is None else value_norm


def _is_index(i) -> bool:
    return isinstance(i, (int, np.integer)) and not isinstance(i, bool)


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v
