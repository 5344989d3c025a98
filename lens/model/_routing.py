"""Routing a transformers model's attention through the workbench's attention function.

``register()`` adds an attention implementation named ``"lens"`` to transformers'
``AttentionInterface`` (and a matching mask builder). Inside ``routed(model)`` the model's
config names it *for forwards run in the context that entered the block* (this thread or
task), whose attention calls go to ``kernels.attention``; what that call should record and
which edits it should apply come from the *active session* (a context variable set by
``lens.capture`` or ``Subject.edited``). A forward from any other thread or context reads
the config's own implementation throughout, so it is untouched.

``routed`` holds the model's re-entrant lock (``model_lock``): the workbench's own routed
passes on one model run one at a time; plain forwards from other threads need no lock.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

import torch

from lens.kernels import attention
from lens.model import _lazy

IMPLEMENTATION = "lens"
_active: ContextVar[Session | None] = ContextVar("lens_attention_session", default=None)
# Called with (module, query, key, value, call, result) by every routed attention call; see ``traced``.
_tracer: ContextVar = ContextVar("lens_attention_tracer", default=None)
# ids of the configs (the model's and its sub-configs) routed by a block entered in this context
_routed: ContextVar[frozenset[int]] = ContextVar("lens_routed_configs", default=frozenset())
_registered = False
_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its RLock
_locks_guard = threading.Lock()


class Session(Protocol):
    """What the attention function asks of whoever activated it, once per layer call.

    ``subject.layer_of(module)`` maps the calling attention module to its layer.
    """

    subject: object

    def attention_kwargs(self, layer: int, module: torch.nn.Module, n_keys: int) -> dict: ...

    def record(self, layer: int, module: torch.nn.Module, value: torch.Tensor, result) -> None: ...


def register() -> None:
    """Register the ``"lens"`` attention implementation with transformers (idempotent).

    Changes transformers' global ``ALL_ATTENTION_FUNCTIONS`` and
    ``ALL_MASK_ATTENTION_FUNCTIONS`` registries by adding one entry each; nothing else.
    The mask builder is transformers' own sdpa one: a boolean mask, or None when it is
    purely causal, which the attention function then applies without building it.
    """
    global _registered
    if _registered:
        return
    # transformers.modeling_utils is imported here, not by `import lens` (~1 s; see _lazy)
    _lazy.ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, lens_attention_forward)
    _lazy.ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, _lazy.sdpa_mask)
    _registered = True


#: Keywords transformers' attention modules pass that change the attention, and are honoured.
HONOURED = ("scaling", "dropout", "sliding_window", "softcap", "s_aux", "is_causal")
#: Keywords accepted only with the values that leave attention as computed here: no head
#: mask, and no request for the [b, h, q, k] pattern (ask ``lens.capture`` for patterns).
HONOURED_IF_OFF = ("head_mask", "output_attentions",
                   # cross-attention inputs and loss targets that some decoders pass on to every
                   # attention call: None is plain causal self-attention
                   "encoder_hidden_states", "encoder_attention_mask", "cross_attention_mask", "labels")
#: Keywords that reach the attention function from the model's forward but do not change
#: what it computes: positions were already applied to q and k (RoPE) and packing or
#: padding arrive through ``attention_mask``; the rest are caching and MoE bookkeeping.
IGNORED = frozenset({"position_ids", "cache_position", "use_cache", "output_router_logits",
                     "output_hidden_states", "return_dict", "past_key_values", "token_type_ids",
                     "logits_to_keep"})


class UnsupportedAttention(ValueError):
    """An attention keyword (or a value of one) the workbench does not implement."""


def lens_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The transformers attention-interface entry point: ``[b, h, q, d]`` in, ``[b, q, h, d]`` out.

    Every keyword is either honoured (``HONOURED``), known not to change the attention
    (``IGNORED``), or refused with an error naming it, the model type and the layer: an
    attention the workbench cannot reproduce exactly is never computed approximately.
    """
    session = _active.get()
    layer = session.subject.layer_of(module) if session is not None else None
    call = attention_call(module, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    tracer = _tracer.get()
    if session is not None and layer is not None:
        call.update(session.attention_kwargs(layer, module, key.shape[-2]))
    result = attention(query, key, value, **call)
    if tracer is not None:
        tracer(module, query, key, value, call, result)
    if session is not None and layer is not None:
        session.record(layer, module, value, result)
    return result.output.transpose(1, 2).contiguous(), None


def attention_call(module, attention_mask, *, scaling=None, dropout=0.0, **kwargs) -> dict:
    """The ``kernels.attention`` keywords for one interface call, or an error naming what is refused."""

    def refuse(keyword: str, why: str):
        model_type = getattr(getattr(module, "config", None), "model_type", type(module).__name__)
        where = getattr(module, "layer_idx", None)
        raise UnsupportedAttention(
            f"attention keyword {keyword!r} {why} ({model_type}, layer {where if where is not None else '?'}, "
            f"{type(module).__name__}); the workbench's attention would differ from the model's, so it refuses. "
            "Run the model with its own attention (outside lens.capture / Subject.edited), or open an issue.")

    for name in sorted(set(kwargs) - set(HONOURED) - set(HONOURED_IF_OFF) - IGNORED):
        refuse(name, f"= {_short(kwargs[name])} is not known to the workbench")
    for name in HONOURED_IF_OFF:
        value = kwargs.get(name)
        if value is not None and value is not False:
            refuse(name, f"= {_short(value)} is not implemented (only None or False)")
    if dropout and module.training:
        refuse("dropout", f"= {dropout} in train mode (random attention) is not implemented; call model.eval()")
    sliding = kwargs.get("sliding_window")
    if sliding is not None and (isinstance(sliding, bool) or not isinstance(sliding, int) or sliding < 1):
        refuse("sliding_window", f"= {sliding!r} is not a positive int")
    softcap = kwargs.get("softcap")
    if softcap is not None and (not isinstance(softcap, (int, float)) or softcap <= 0):
        refuse("softcap", f"= {softcap!r} is not a positive number")
    sinks = kwargs.get("s_aux")
    if sinks is not None and (not isinstance(sinks, torch.Tensor) or sinks.ndim != 1):
        refuse("s_aux", f"= {_short(sinks)} is not a [head] tensor of sink logits")
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2  # an additive float mask from a caller
    causal = kwargs.get("is_causal")
    return dict(causal=getattr(module, "is_causal", True) if causal is None else bool(causal), scale=scaling,
                mask=mask, sliding_window=sliding, softcap=softcap, sinks=sinks)


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises everything changing ``model``'s state (one per model object).

    Held by ``routed`` (the config switch), by every block that registers hooks on the
    model (captures, ``Subject.edited``, patching runs) and by the workbench's plain
    forwards, so a forward never sees another thread's routing or hooks. Re-entrant:
    a capture inside an ``edited`` block, or nested blocks, in one thread do not deadlock.
    """
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def _configs(config) -> list:
    """``config`` and its sub-configs, recursively (each may name its own attention implementation)."""
    out = [config]
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "_attn_implementation_internal"):
            out.extend(_configs(sub))
    return out


@contextlib.contextmanager
def routed(model) -> Iterator[None]:
    """Within the block, ``model``'s forwards run in this context use ``lens_attention_forward``.

    The implementation is a field of the model's config, shared by every thread. For the
    block each config (and sub-config) is given a subclass whose ``_attn_implementation``
    reads ``"lens"`` in the contexts that route it and the config's own value everywhere
    else, so a forward from another thread sees one implementation from its first layer to
    its last, whenever this block opens or closes. Holds ``model_lock(model)`` throughout.
    """
    register()
    with model_lock(model):
        configs = _configs(model.config)
        swapped = [(c, type(c)) for c in configs if not isinstance(c, _Routable)]  # an outer block swapped the rest
        token = _routed.set(_routed.get() | {id(c) for c in configs})
        try:
            for c, base in swapped:
                c.__class__ = _routable(base)
            yield
        finally:
            for c, base in swapped:
                c.__class__ = base
            _routed.reset(token)


class _Routable:
    """Marks a config class made by ``_routable``."""


@functools.cache
def _routable(base: type) -> type:
    """``base`` with an ``_attn_implementation`` that reads ``"lens"`` only in contexts routing the instance."""
    own = next((vars(k)["_attn_implementation"] for k in base.__mro__ if "_attn_implementation" in vars(k)), None)

    def get(config):
        if id(config) in _routed.get():
            return IMPLEMENTATION
        return own.fget(config) if isinstance(own, property) else vars(config).get("_attn_implementation")

    def set_(config, value):
        if isinstance(own, property):
            own.fset(config, value)
        else:  # a config that is not a transformers PretrainedConfig: a plain attribute
            vars(config)["_attn_implementation"] = value

    return type(base.__name__, (base, _Routable), {"_attn_implementation": property(get, set_),
                                                   "__module__": base.__module__, "__qualname__": base.__qualname__})


@contextlib.contextmanager
def active(session: Session) -> Iterator[None]:
    """Make ``session`` the one the attention function reports to, for this block."""
    token = _active.set(session)
    try:
        yield
    finally:
        _active.reset(token)


@contextlib.contextmanager
def traced(fn) -> Iterator[None]:
    """Within the block every routed attention call also calls ``fn(module, q, k, v, call, result)``."""
    token = _tracer.set(fn)
    try:
        yield
    finally:
        _tracer.reset(token)
