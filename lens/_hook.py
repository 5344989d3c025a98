"""Routing a transformers model's attention through the workbench's attention function.

``register()`` adds an attention implementation named ``"lens"`` to transformers'
``AttentionInterface`` (and a matching mask builder). A model switched to it (see
``routed``) calls ``kernels.attention`` in every layer. What that call should record
and which edits it should apply come from the *active session* (a context variable set
by ``lens.capture`` or ``Subject.edited``); with no session it is plain attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

import torch

IMPLEMENTATION = "lens"
_active: ContextVar[Session | None] = ContextVar("lens_attention_session", default=None)
_registered = False


class Session(Protocol):
    """What the attention function asks of whoever activated it, once per layer call."""

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
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, lens_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)
    _registered = True


def lens_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The transformers attention-interface entry point: ``[b, h, q, d]`` in, ``[b, q, h, d]`` out."""
    from kernels import attention

    session = _active.get()
    layer = getattr(module, "layer_idx", None)
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2  # an additive float mask from a caller
    sliding = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    call = dict(causal=getattr(module, "is_causal", True), scale=scaling, mask=mask, sliding_window=sliding)
    if session is not None and layer is not None:
        call.update(session.attention_kwargs(layer, module, key.shape[-2]))
    result = attention(query, key, value, **call)
    if session is not None and layer is not None:
        session.record(layer, module, value, result)
    return result.output.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def routed(model) -> Iterator[None]:
    """Within the block, ``model`` runs its attention through ``lens_attention_forward``."""
    register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = before


@contextlib.contextmanager
def active(session: Session) -> Iterator[None]:
    """Make ``session`` the one the attention function reports to, for this block."""
    token = _active.set(session)
    try:
        yield
    finally:
        _active.reset(token)
