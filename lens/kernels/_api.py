"""The attention function: one signature, input checks, backend dispatch.

``attention`` validates and normalises its inputs once into a ``Call`` and hands that
to a backend; backends are pure functions ``Call -> AttentionResult`` and never see
raw user input, so each check lives here and only here.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable
from typing import Literal, get_args

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import _chunked, _eager, _sdpa
from ._geometry import Geometry
from ._stats import TOKEN_STATS, StatOptions, check_stat_names
from ._types import AttentionResult, Call, HeadEdits, apply_head_edits

__all__ = ["BACKENDS", "AttentionResult", "Call", "HeadEdits", "attention", "apply_head_edits"]

Backend = Literal["eager", "chunked", "triton", "auto"]
#: The backends ``attention`` (and so ``lens.capture``) accepts.
BACKENDS: tuple[str, ...] = get_args(Backend)

#: Above this many keys the CPU ``auto`` backend switches from eager to chunked. Measured on
#: a full SmolLM2 capture (all statistics, 2 threads): 256 keys eager 1.6-1.7 s vs chunked
#: 1.4-1.5 s; 512 keys 3.3-4.2 s vs 2.4-2.7 s; 1,024 keys 19.7 s vs 6.9 s; at 64 they tie.
AUTO_CHUNKED_MIN_KEYS = 256


def attention(
    q: Float[Tensor, "batch head query_pos d_head"],
    k: Float[Tensor, "batch kv_head key_pos d_head"],
    v: Float[Tensor, "batch kv_head key_pos d_v"],
    *,
    causal: bool = True,
    scale: float | None = None,
    mask: Bool[Tensor, "..."] | None = None,
    query_mask: Bool[Tensor, "batch query_pos"] | None = None,
    sliding_window: int | None = None,
    token_ids: Int[Tensor, "batch key_pos"] | None = None,
    stats: Iterable[str] = (),
    options: StatOptions = StatOptions(),
    edits: HeadEdits | None = None,
    backend: Backend = "auto",
    block_size: int | None = None,
    softcap: float | None = None,
    sinks: Float[Tensor, " head"] | None = None,
) -> AttentionResult:
    """Attention output, log-sum-exp, per-head statistics and head edits in one pass.

    Head h reads key/value head h // (head // kv_head). Query row i sits at absolute
    position key_pos - query_pos + i; ``causal`` hides later keys, ``sliding_window``
    W also hides keys with position difference >= W, ``mask`` (bool, broadcastable
    to [batch, head, query_pos, key_pos], True = may attend) is AND-ed with both.
    ``query_mask`` False rows still get an output but enter no statistic; rows that
    see no key get output 0 (before head_add) and lse -inf. ``stats`` names come from
    ``STAT_NAMES``; none asked is the fast path. ``backend``: "eager" (reference,
    materialises the pattern), "chunked" (blockwise, memory linear in key_pos),
    "triton" (fused GPU kernels; on a CPU only under TRITON_INTERPRET=1) or "auto"
    (triton for CUDA tensors when triton is installed, else eager for short and
    chunked for long inputs). ``block_size`` fixes the chunked query block (default: sized to a
    memory budget). ``softcap`` (Gemma-2's tanh logit soft-capping) and ``sinks`` (learned
    per-head sink logits, gpt-oss) change the attention itself: see ``Call``.

Sixteen parameters on purpose: every option of the kernels is one keyword here, checked once
into a frozen ``Call`` (``_validate``), so the signature is the documentation; the workbench's
own callers pass a ``StatOptions`` and a ``HeadEdits`` for the groups that belong together.
    """
    call = _validate(q, k, v, causal=causal, scale=scale, mask=mask, query_mask=query_mask,
                     sliding_window=sliding_window, token_ids=token_ids, stats=stats,
                     options=options, edits=edits, block_size=block_size, softcap=softcap, sinks=sinks)
    name = _choose_backend(call, backend)
    if not call.stats and call.softcap is None and (name == "chunked" or call.key_bias is None):
        # Nothing to observe: the fused library kernel is the fastest exact answer.
        result = _sdpa.run(call)
    elif name == "eager":
        result = _eager.run(call)
    elif name == "triton":
        from . import _triton  # optional dependency: imports triton, which only the [triton] extra installs

        result = _triton.run(call)
    else:
        result = _chunked.run(call)
    result.meta.setdefault("backend", name)
    return result


def _choose_backend(call: Call, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not _triton_available():
        raise ValueError("backend='triton' needs triton: pip install 'attention-workbench[triton]'")
    if backend != "auto":
        return backend
    if call.q.is_cuda and _triton_available():
        return "triton"
    if (call.stats or call.has_edits) and call.geo.key_pos > AUTO_CHUNKED_MIN_KEYS:
        return "chunked"
    return "eager"


def auto_backend(device) -> str:
    """What ``backend="auto"`` computes with on ``device`` (for a status line; each call decides for itself)."""
    if torch.device(device).type == "cuda" and _triton_available():
        return "triton"
    return f"chunked with statistics or edits past {AUTO_CHUNKED_MIN_KEYS} keys, else eager"


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _validate(q, k, v, *, causal, scale, mask, query_mask, sliding_window, token_ids, stats,
              options, edits, block_size, softcap=None, sinks=None) -> Call:
    """``attention``'s arguments checked and normalised into a ``Call``: the one place each is checked.

    It takes ``attention``'s keywords one for one, so that the public signature stays the documentation."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim != 4 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D float tensor [batch, head, pos, d_head], got {shape}")
    b, h, nq, d = q.shape
    _, kvh, nk, dk = k.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"batch sizes differ: q {b}, k {k.shape[0]}, v {v.shape[0]}")
    if v.shape[1] != kvh or v.shape[2] != nk:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree on [batch, kv_head, key_pos]")
    if dk != d:
        raise ValueError(f"q and k head sizes differ: {d} vs {dk}")
    if kvh < 1 or h % kvh != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({kvh})")
    if nq < 1 or nk < 1:
        raise ValueError(f"query_pos and key_pos must be >= 1, got {nq} and {nk}")
    if nq > nk:
        raise ValueError(f"query_pos ({nq}) must not exceed key_pos ({nk}): queries are the last positions")
    if sliding_window is not None and (not isinstance(sliding_window, int) or sliding_window < 1):
        raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float))
                                or not math.isfinite(softcap) or softcap <= 0):
        raise ValueError(f"softcap must be a positive finite number or None, got {softcap!r}")
    if sinks is not None:
        if not isinstance(sinks, Tensor) or not sinks.is_floating_point() or sinks.shape != (h,):
            shape = tuple(sinks.shape) if isinstance(sinks, Tensor) else type(sinks).__name__
            raise ValueError(f"sinks must be a float tensor [head] = [{h}] of learned sink logits, got {shape}")
        sinks = sinks.detach().to(q.device, torch.float32)
    if not isinstance(options, StatOptions):
        raise ValueError(f"options must be a StatOptions, got {type(options).__name__}")

    names = check_stat_names(stats)
    needs_tokens = sorted(TOKEN_STATS.intersection(names))
    if needs_tokens and token_ids is None:
        raise ValueError(f"statistics {needs_tokens} compare tokens: pass token_ids [batch, key_pos]")
    if token_ids is not None:
        if token_ids.shape != (b, nk) or token_ids.is_floating_point():
            raise ValueError(f"token_ids must be an integer tensor [batch, key_pos] = [{b}, {nk}], "
                             f"got {token_ids.dtype} {tuple(token_ids.shape)}")
    if options.pattern_heads is not None and any(not 0 <= i < h for i in options.pattern_heads):
        raise ValueError(f"StatOptions.pattern_heads {options.pattern_heads} out of range for {h} heads")

    geo = Geometry(batch=b, heads=h, kv_heads=kvh, query_pos=nq, key_pos=nk, causal=bool(causal),
                   window=sliding_window, mask=_normalise_mask(mask, (b, h, nq, nk), q.device))
    if query_mask is not None:
        if query_mask.dtype != torch.bool or query_mask.shape != (b, nq):
            raise ValueError(f"query_mask must be bool [batch, query_pos] = [{b}, {nq}], "
                             f"got {query_mask.dtype} {tuple(query_mask.shape)}")
        query_mask = query_mask.to(q.device)

    key_bias = head_gate = head_add = None
    if edits is not None:
        if not isinstance(edits, HeadEdits):
            raise ValueError(f"edits must be a HeadEdits, got {type(edits).__name__}")
        if edits.key_bias is not None:
            key_bias = _normalise_bias(edits.key_bias, (b, h, nk), q.device)
        if edits.head_gate is not None:
            if edits.head_gate.shape != (h,):
                raise ValueError(f"head_gate must be [head] = [{h}], got {tuple(edits.head_gate.shape)}")
            head_gate = edits.head_gate.to(q.device, torch.float32)
        if edits.head_add is not None:
            if edits.head_add.shape != (h, v.shape[-1]):
                raise ValueError(f"head_add must be [head, d_head] = [{h}, {v.shape[-1]}], "
                                 f"got {tuple(edits.head_add.shape)}")
            head_add = edits.head_add.to(q.device, torch.float32)

    return Call(q=q, k=k, v=v, scale=float(scale) if scale is not None else 1.0 / math.sqrt(d), geo=geo,
                query_mask=query_mask, token_ids=None if token_ids is None else token_ids.to(q.device),
                stats=names, options=options, key_bias=key_bias, head_gate=head_gate, head_add=head_add,
                block_size=block_size, softcap=None if softcap is None else float(softcap), sinks=sinks)


def _normalise_mask(mask, full: tuple[int, int, int, int], device) -> Tensor | None:
    """Bool mask -> 4-D with every dim either full size or 1 (no copy of the data)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor (True = may attend); convert additive masks first")
    if mask.ndim > 4:
        raise ValueError(f"mask must have at most 4 dims, got {mask.ndim}")
    m = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if any(s not in (1, f) for s, f in zip(m.shape, full)):
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to [batch, head, query_pos, key_pos] = "
                         f"{list(full)}")
    # The key dim is expanded (a view) so that per-block slices count keys correctly.
    return m.to(device).expand(*m.shape[:3], full[3])


def _normalise_bias(bias: Tensor, full: tuple[int, int, int], device) -> Tensor:
    """key_bias -> fp32 [batch|1, head|1, key_pos] (key dim expanded if given as 1)."""
    if not isinstance(bias, Tensor) or not bias.is_floating_point() or bias.ndim > 3:
        raise ValueError("key_bias must be a float tensor broadcastable to [batch, head, key_pos]")
    kb = bias.reshape((1,) * (3 - bias.ndim) + tuple(bias.shape)).to(device, torch.float32)
    if any(s not in (1, f) for s, f in zip(kb.shape, full)):
        raise ValueError(f"key_bias {tuple(bias.shape)} does not broadcast to [batch, head, key_pos] = {list(full)}")
    return kb.expand(kb.shape[0], kb.shape[1], full[2])
