"""The Triton backend: output, lse and every statistic from two fused kernels on a GPU.

Same contract as ``_eager`` (the reference it is tested against): ``run(call) ->
AttentionResult``. Pass 1 (a flash-attention forward) returns the output with the head
edits applied, the lse, the per-row statistics and each row's top-k candidate key spans,
which a small kernel rescans for the exact top-k; pass 2 recomputes ``p``
from the stored lse for the column sums (``received``) and the ``pooled`` map; it runs
only when one of those is asked for. What is left is cheap torch on the host:
``visible`` (prefix sums of the query mask, or the caller's mask block by block),
``entropy_norm`` (entropy / ln n_visible), ``learned_sink_mass`` (exp(sink - lse)) and
``pattern`` (the few requested heads recomputed from the kernel's lse). Kernels and their
math: ``_triton_kernels`` (passes 1 and 2), ``_triton_topk`` (the top-k rescan), ``_triton_common``.

Supported in-kernel: causal with the query offset, sliding window, a general bool
``mask`` (strided loads, broadcast dims read with stride 0), ``query_mask``, GQA, key_bias,
head_gate, head_add, ``softcap`` (Gemma-2 tanh soft-capping, before masks and key_bias),
``sinks`` (learned per-head sink logits in every row's denominator, gpt-oss; the lse
includes them, every other statistic covers the real keys only), head sizes up to 256,
fp32/fp16/bf16 inputs with fp32 accumulation.
On a CPU it runs only under ``TRITON_INTERPRET=1`` set before this module is imported
(tests; tiny shapes), with every tile upcast to fp32.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton
from jaxtyping import Float
from torch import Tensor

from . import _triton_kernels as _k
from . import _triton_topk as _kt
from ._finish import finish, normalised_entropy
from ._stats import ROW_STATS, pattern_rows, pool_factor
from ._triton_common import LOG2E
from ._types import AttentionResult, Call

__all__ = ["INTERPRETED", "Blocks", "run"]

#: True when the kernels were built by the Triton interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED: bool = type(_k.attn_rows_kernel).__name__ == "InterpretedFunction"

#: Row statistics the host finishes from pass 1's output (entropy / ln n_visible; exp(sink - lse)).
HOST_ROWS = frozenset({"entropy_norm", "learned_sink_mass"})
#: The kernel constexpr naming each pass-1 row slot (``_n_visible``: the visible-key count, a helper).
_SLOT_ARGS = {
    "sink_mass": "S_SINK", "sink_mass_k": "S_SINKK", "entropy": "S_ENT", "distance": "S_DIST",
    "waad": "S_WAAD", "prev_token": "S_PREV", "diag_mass": "S_DIAG", "dup_token": "S_DUP",
    "induction": "S_IND", "_n_visible": "S_NVIS",
}
#: Per-row statistics finished in pass 1 (the registry's rows but ``HOST_ROWS``), and each one's slot.
ROW_SLOTS: dict[str, str] = {n: _SLOT_ARGS[n] for n in (*(r for r in ROW_STATS if r not in HOST_ROWS), "_n_visible")}
assert set(ROW_SLOTS) == set(_SLOT_ARGS), "a row statistic of the registry has no pass-1 slot nor host finish"
MAX_HEAD_DIM = 256
#: fp32 inputs: three tf32 tensor-core products (about fp32 accuracy) instead of slow FMA dots.
FP32_DOT_PRECISION = "tf32x3"
#: Precision of the one-hot dots that group p into pooled cells on a GPU: three tf32
#: products give about fp32 accuracy on the tensor cores (the interpreter uses ieee).
POOL_DOT_PRECISION = "tf32x3"


#: Warps of the top-k rescan (one row a program, one candidate span of keys at a time).
TOPK_WARPS = 1
#: Keys per top-k candidate span (pass 1 keeps each row's k spans with the largest maxima,
#: the rescan reads k spans a row); capped by pass 1's BLOCK_N. Static sm_90 cost
#: (benchmarks/kernel_static_cost.py, n 32K, k 8, pass 1 + rescan, G warp-cycles): d 64
#: 3.10 + 0.57 at 16 keys, 2.65 + 0.83 at 32, 2.35 + 1.24 at 64; d 128 12.67 + 2.47,
#: 11.04 + 3.80, 9.98 + 6.03. 16: within 5% of the best estimate and half the rescan's key
#: reads from L2 of 32 (not in the model: 34 against 67 GB a call at d 128, 32/8 heads).
TOPK_SPAN = 16


@dataclass(frozen=True)
class Blocks:
    """Tile sizes and launch shape of one pass (powers of two, >= 16)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


def default_blocks(head_dim: int, dtype: torch.dtype, row_stats: bool) -> tuple[Blocks, Blocks]:
    """(pass 1, pass 2) tiles: 16 x 16 in the interpreter; on a GPU, the fastest measured.

    Measured on an H200 (bf16, causal, n = 32K; ``benchmarks/gpu/2026-11-28-h200.md``, tile
    sweep and ablation): pass 1 with statistics on 64 x 64 tiles over 4 warps took 20.7 ms
    against 34.0 ms over 8 warps at d 64 (9/3 heads), and 82.2 against 139.9 ms at d 128
    (32/8 heads); 4 warps won every statistic set of the ablation. Without statistics the
    128 x 64, 8-warp tile stays (0.71x sdpa against 0.75x). Pass 2 on 64 x 64 tiles over 4
    warps: the tile sweep timed it at 5.34 against 5.45 ms over 8 warps (received + pooled,
    d 64), the ablation's received / pooled rows put pass 2 at 0.77 / 0.91x sdpa over 4
    warps against 0.90 / 1.16x over 8, and the static model of the redesigned pass 2
    (benchmarks/kernel_static_cost.py) at about half the warp-cycles (d 64: 1.74 against
    3.31 G for received + pooled)."""
    if INTERPRETED:
        return Blocks(16, 16, 1, 1), Blocks(16, 16, 1, 1)
    stages = 2 if dtype == torch.float32 else 3
    first = Blocks(64, 64, 4, stages) if row_stats else Blocks(128, 64, 8, stages)
    return first, Blocks(64, 64, 4, stages)


def run(call: Call, *, blocks: tuple[Blocks, Blocks] | None = None) -> AttentionResult:
    """Attention output, lse and the requested statistics (``blocks`` overrides the tiles)."""
    geo, opt = call.geo, call.options
    b, h, nq, nk = geo.batch, geo.heads, geo.query_pos, geo.key_pos
    dev = call.q.device
    _check_device(dev)
    q, k, v = (_unit_last_stride(t) for t in (call.q, call.k, call.v))
    d, dv = q.shape[-1], v.shape[-1]
    if max(d, dv) > MAX_HEAD_DIM:
        raise ValueError(f"the Triton backend handles head sizes up to {MAX_HEAD_DIM}, got {max(d, dv)}")
    want = set(call.stats)
    f = pool_factor(nq, nk, opt.pool_max)
    topk = min(opt.topk, nk) if want & {"topk_idx", "topk_val"} else 0

    wanted_rows = [n for n in ROW_SLOTS if n in want or (n == "entropy" and "entropy_norm" in want)]
    if "entropy_norm" in want and geo.mask is not None:
        wanted_rows.append("_n_visible")  # with a caller mask the count comes from the kernel
    slot = {name: i for i, name in enumerate(wanted_rows)}
    p1, p2 = blocks or default_blocks(d, q.dtype, bool(wanted_rows) or topk > 0)

    f32 = dict(dtype=torch.float32, device=dev)
    dummy_f = torch.zeros(1, **f32)
    out = torch.empty(b, h, nq, dv, dtype=q.dtype, device=dev)
    lse = torch.empty(b, h, nq, **f32)
    rows = torch.empty(max(1, len(slot)), b, h, nq, **f32)
    cand = torch.empty(b, h, nq, max(1, topk), dtype=torch.int32, device=dev)  # top-k candidate spans
    bias, bias_strides = _bias(call, dummy_f)
    mask, mask_strides = _mask(call)
    qmask = call.query_mask.to(torch.uint8).contiguous() if call.query_mask is not None else mask
    tok, tok_strides = _token_rows(call, p1, want)
    gate = call.head_gate.contiguous() if call.head_gate is not None else dummy_f
    add = call.head_add.contiguous() if call.head_add is not None else dummy_f
    sinks = (call.sinks * LOG2E.value).contiguous() if call.sinks is not None else dummy_f  # base 2
    common = dict(
        GROUP=geo.group, HEAD_DIM=d, BLOCK_D=_pow2(d), CAUSAL=geo.causal, HAS_SLIDE=geo.window is not None,
        HAS_BIAS=call.key_bias is not None, HAS_MASK=geo.mask is not None, HAS_QMASK=call.query_mask is not None,
        HAS_SOFTCAP=call.softcap is not None, UPCAST=INTERPRETED, DOT_PREC=_dot_precision(q.dtype),
    )
    # Scale and soft-cap in base 2 (the cap commutes with the change of base: _triton_common).
    softcap2 = call.softcap * LOG2E.value if call.softcap is not None else 0.0
    shape_args = (h, nq, nk, nk - nq, geo.window or 0, call.scale * LOG2E.value, softcap2)

    _k.attn_rows_kernel[(triton.cdiv(nq, p1.block_m), b * h)](
        q, k, v, bias, mask, qmask, tok, gate, add, sinks,
        out, lse, rows, cand,
        *_strides3(q), *_strides3(k), *_strides3(v), *bias_strides, *mask_strides, *tok_strides,
        *shape_args,
        V_DIM=dv, BLOCK_M=p1.block_m, BLOCK_N=p1.block_n, BLOCK_DV=_pow2(dv),
        HAS_GATE=call.head_gate is not None, HAS_ADD=call.head_add is not None,
        HAS_SINKS=call.sinks is not None, SINK_K=opt.sink_k, WAAD_W=opt.window,
        **{arg: slot.get(name, -1) for name, arg in ROW_SLOTS.items()},
        TOPK=topk, TOPK_P=max(2, _pow2(topk, 1)), SPAN=_span(p1),
        num_warps=p1.num_warps, num_stages=p1.num_stages, **common,
    )

    top_i = top_v = None
    if topk > 0:
        top_v, top_i = _topk(call, q, k, lse, cand, bias, bias_strides, mask, mask_strides, qmask,
                             shape_args, common, p1, topk)

    received = pooled = None
    if want & {"received", "pooled"}:
        received, pooled = _columns(call, q, k, lse, bias, bias_strides, mask, mask_strides, qmask,
                                    shape_args, common, p2, f, "received" in want, "pooled" in want)

    parts = {name: rows[i] for name, i in slot.items()}
    parts.update(received=received, pooled=pooled, topk_idx=top_i, topk_val=top_v, **_host_parts(call, rows, slot, lse))
    stats = finish(call, parts, f)
    meta = {"fast_path": not call.stats, "pool_factor": f, "topk": min(opt.topk, nk), "sink_k": opt.sink_k, "window": opt.window,
            "scale": call.scale, "backend": "triton", "interpreted": INTERPRETED,
            "blocks": (p1.block_m, p1.block_n, p2.block_m, p2.block_n)}
    return AttentionResult(output=out, lse=lse, stats=stats, meta=meta)


def _host_parts(call: Call, rows: Tensor, slot: dict[str, int], lse: Tensor) -> dict[str, Tensor]:
    """The statistics asked for that the host finishes in torch from pass 1's rows and lse."""
    want, parts = set(call.stats), {}
    if "entropy_norm" in want:
        parts["entropy_norm"] = _entropy_norm(call, rows[slot["entropy"]],
                                              rows[slot["_n_visible"]] if "_n_visible" in slot else None)
    if "learned_sink_mass" in want:
        parts["learned_sink_mass"] = _learned_sink_mass(call, lse)
    if "visible" in want:
        parts["visible"] = _visible(call)
    if "pattern" in want:
        parts["pattern"] = _pattern(call, lse)
    return parts


def _topk(call, q, k, lse, cand, bias, bias_strides, mask, mask_strides, qmask, shape_args, common,
          p1: Blocks, topk: int) -> tuple[Tensor, Tensor]:
    """The exact top-k: each row's k candidate spans (``_span`` keys each, chosen by pass 1) rescanned.

    Like ``_columns`` it takes pass 1's prepared inputs and their strides as they are, so none is
    prepared twice; hence the long list.
    """
    geo = call.geo
    b, h, nq = geo.batch, geo.heads, geo.query_pos
    top_v = torch.empty(b, h, nq, topk, dtype=torch.float32, device=q.device)
    top_i = torch.empty(b, h, nq, topk, dtype=torch.long, device=q.device)
    consts = common
    _kt.attn_topk_kernel[(nq, b * h)](
        q, k, bias, mask, qmask, lse, cand, top_v, top_i,
        *_strides3(q), *_strides3(k), *bias_strides, *mask_strides, *shape_args,
        SPAN=_span(p1), TOPK=topk, TOPK_P=max(2, _pow2(topk, 1)),
        num_warps=TOPK_WARPS if not INTERPRETED else 1, num_stages=1, **consts,
    )
    return top_v, top_i


def _token_rows(call: Call, p1: Blocks, want: set) -> tuple[torch.Tensor, tuple[int, int]]:
    """Token ids as pass 1 reads them: [batch, 2, L] int32, row 0 the keys' ids, row 1 the ids
    one place earlier (-1 before key 0), both padded with -1 to L, a whole number of key tiles
    (and of 16, so every row starts aligned). Returns (tensor, (batch stride, L)).

    A capture passes the same ids tensor to every layer: the padded copy is built once and
    kept while that tensor lives and is unchanged (its version counter), not once a layer."""
    if call.token_ids is None or not want & {"dup_token", "induction"}:
        return torch.zeros(1, dtype=torch.int32, device=call.q.device), (0, 0)
    ids = call.token_ids
    b, nk = ids.shape
    width = max(p1.block_n, 16)
    n_pad = -(-nk // width) * width
    hit = _TOKEN_ROWS.get(id(ids))
    if hit is not None and hit[0]() is ids and hit[1:3] == (ids._version, n_pad):
        return hit[3], (2 * n_pad, n_pad)
    tok = torch.full((b, 2, n_pad), -1, dtype=torch.int32, device=ids.device)
    tok[:, 0, :nk] = ids  # int32 compares: half the work of int64
    tok[:, 1, 1:nk] = ids[:, :-1]
    key = id(ids)  # the entry goes when the ids do: no padded copy outlives its tensor
    _TOKEN_ROWS[key] = (weakref.ref(ids, lambda _, key=key: _TOKEN_ROWS.pop(key, None)), ids._version, n_pad, tok)
    return tok, (2 * n_pad, n_pad)


#: id(token ids) -> (weak reference, version, L, padded rows): _token_rows' one-entry-a-capture memo.
_TOKEN_ROWS: dict[int, tuple] = {}


def _span(p1: Blocks) -> int:
    return min(TOPK_SPAN, p1.block_n)


def _columns(call, q, k, lse, bias, bias_strides, mask, mask_strides, qmask, shape_args, common, p2: Blocks,
             f: int, do_recv: bool, do_pool: bool) -> tuple[Tensor | None, Tensor | None]:
    """Pass 2: column sums and pooled block sums (``finish`` makes them means) from the stored lse.

    It takes pass 1's prepared inputs and their strides as they are (``_topk`` shares them) instead of
    preparing them again; hence the long list."""
    geo = call.geo
    b, h, nq, nk = geo.batch, geo.heads, geo.query_pos, geo.key_pos
    dev = q.device
    bm, bn = p2.block_m, p2.block_n
    if do_pool:  # cut both axes so that no pooled cell straddles two groups
        gq, rows_per_group, q_subs = _pool_groups(f, bm)
        gk, keys_per_group, k_subs = _pool_groups(f, bn)
    else:
        gq, rows_per_group, q_subs, gk, keys_per_group, k_subs = 1, bm, 1, 1, bn, 1
    # A power-of-two f below a tile side (and dividing both): the cells of a tile are a
    # reshape and two sums, exact in fp32, instead of two one-hot tensor-core products.
    reshape = do_pool and f & (f - 1) == 0 and f <= min(bm, bn) and f < max(bm, bn)
    pq, pk = -(-nq // f), -(-nk // f)
    recv = torch.empty(b, h, nk, dtype=torch.float32, device=dev) if do_recv else lse
    part = torch.zeros(b * h, k_subs, pq, pk, dtype=torch.float32, device=dev) if do_pool else lse
    grid = (triton.cdiv(nk, keys_per_group) * k_subs, b * h)
    _k.attn_columns_kernel[grid](
        q, k, bias, mask, qmask, lse, recv, part,
        *_strides3(q), *_strides3(k), *bias_strides, *mask_strides,
        *shape_args, pq, pk,
        BLOCK_M=bm, BLOCK_N=bn, DO_RECV=do_recv, DO_POOL=do_pool, POOL_F=f,
        ROWS_PER_GROUP=rows_per_group, Q_SUBS=q_subs, GQ=gq, GQ_P=gq if reshape else _onehot_width(gq),
        KEYS_PER_GROUP=keys_per_group, K_SUBS=k_subs, GK=gk, GK_P=gk if reshape else _onehot_width(gk),
        POOL_RESHAPE=reshape,
        POOL_PREC=_dot_precision(torch.float32, POOL_DOT_PRECISION),
        num_warps=p2.num_warps, num_stages=p2.num_stages, **common,
    )
    sums = part.view(b, h, k_subs, pq, pk).sum(2) if do_pool else None  # fixed order: deterministic
    return (recv if do_recv else None), sums


def _pool_groups(f: int, block: int) -> tuple[int, int, int]:
    """(pooled cells per group, positions per group, sub-blocks per group) along one axis.

    f <= block: a group is the most whole cells that fit one block; f > block: one cell,
    walked in ceil(f / block) sub-blocks.
    """
    if f <= block:
        cells = block // f
        return cells, cells * f, 1
    return 1, f, -(-f // block)


def _onehot_width(cells: int) -> int:
    """Padded width of the one-hot grouping matrix (tl.dot wants >= 16); 1 = plain sum."""
    return 1 if cells == 1 else max(16, _pow2(cells))


def _entropy_norm(call: Call, entropy: Float[Tensor, "b h q"], n_vis: Tensor | None) -> Tensor:
    """entropy / ln(n_visible), 0 where n_visible <= 1 (counts from the rules unless a mask is given)."""
    if n_vis is None:
        n_vis = call.geo.rule_counts(0, call.geo.query_pos, entropy.device)[None, None]
    return normalised_entropy(entropy, n_vis)


def _learned_sink_mass(call: Call, lse: Float[Tensor, "b h q"]) -> Tensor:
    """exp(sink_h - lse) on valid rows (query_mask True, some key visible: lse finite), else 0
    (everywhere 0 without sinks)."""
    if call.sinks is None:
        return torch.zeros_like(lse)
    ok = torch.isfinite(lse)
    if call.query_mask is not None:
        ok &= call.query_mask[:, None, :]
    return torch.where(ok, torch.exp(call.sinks[None, :, None] - lse), 0.0)


def _visible(call: Call) -> Tensor:
    """#{query_mask-valid rows that may see key j}, [b, 1 or h, k]: prefix sums of the query mask
    over positions (causal / sliding rules), or the caller's mask summed block by block."""
    geo = call.geo
    b, nq, nk = geo.batch, geo.query_pos, geo.key_pos
    dev = call.q.device
    qm = call.query_mask.float() if call.query_mask is not None else torch.ones(b, nq, device=dev)
    if geo.mask is not None:
        vh = geo.mask.shape[1]
        counts = torch.zeros(b, vh, nk, device=dev)
        step = max(1, 2**22 // max(1, b * vh * nk))
        for a in range(0, nq, step):
            c = min(nq, a + step)
            vis = geo.visibility(a, c, 0, nk, dev).float()
            counts += torch.einsum("bq,bhqk->bhk", qm[:, a:c], vis.expand(b, vh, c - a, nk))
        return counts  # [b, 1 or h, k]: finish drops a head dimension of 1
    at_pos = torch.zeros(b, nk + 1, dtype=torch.long, device=dev)  # prefix sums over absolute positions
    at_pos[:, 1 + geo.offset:] = torch.cumsum(qm.long(), dim=1)
    j = torch.arange(nk, device=dev)
    lo = j if geo.causal else torch.zeros_like(j)
    hi = (j + geo.window).clamp_max(nk) if geo.window is not None else torch.full_like(j, nk)
    return (at_pos[:, hi] - at_pos[:, lo]).clamp_min(0).float()[:, None]


def _pattern(call: Call, lse: Float[Tensor, "b h q"]) -> Tensor:
    """The full p of the requested heads and rows, recomputed in torch from the kernel's lse."""
    geo, opt = call.geo, call.options
    b, nk = geo.batch, geo.key_pos
    dev = call.q.device
    heads = list(opt.pattern_heads) if opt.pattern_heads is not None else list(range(geo.heads))
    start, stop = pattern_rows(geo.query_pos, opt)
    out = torch.zeros(b, len(heads), stop - start, nk, dtype=torch.float32, device=dev)
    vis = geo.visibility(start, stop, 0, nk, dev)
    for n, hh in enumerate(heads):
        s = (call.q[:, hh, start:stop].float() * call.scale) @ call.k[:, hh // geo.group].float().transpose(-1, -2)
        if call.softcap is not None:  # before masks and key_bias, as in the kernels
            s = call.softcap * torch.tanh(s / call.softcap)
        allowed = torch.ones_like(s, dtype=torch.bool)
        if vis is not None:
            allowed &= vis[:, hh if vis.shape[1] > 1 else 0]
        if call.key_bias is not None:
            kb = call.key_bias[:, hh if call.key_bias.shape[1] > 1 else 0][:, None, :]
            s = s + kb.clamp_min(-1e30)
            allowed &= kb > -1e30
        row = lse[:, hh, start:stop]
        ok = row > float("-inf")
        if call.query_mask is not None:
            ok &= call.query_mask[:, start:stop]
        out[:, n] = torch.where(allowed & ok[..., None], torch.exp(s - row[..., None]), 0.0)
    return out


def _check_device(dev: torch.device) -> None:
    if dev.type == "cuda" or INTERPRETED:
        return
    raise RuntimeError(
        f"the Triton backend runs on CUDA tensors (got {dev.type}); on a CPU it runs only under the "
        "Triton interpreter: set TRITON_INTERPRET=1 before importing lens.kernels._triton (slow, for tests)")


def _dot_precision(dtype: torch.dtype, fp32: str = FP32_DOT_PRECISION) -> str | None:
    """input_precision of fp32 dots (the interpreter computes them in plain fp32: "ieee");
    None = Triton's default, for 16-bit inputs."""
    if INTERPRETED:
        return "ieee"
    return fp32 if dtype == torch.float32 else None


def _unit_last_stride(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides3(t: Tensor) -> tuple[int, int, int]:
    """(batch, head, position) strides of a [b, h, n, d] tensor; size-1 dims read with stride 0."""
    return tuple(0 if t.shape[i] == 1 else t.stride(i) for i in range(3))


def _bias(call: Call, dummy: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """key_bias in base 2 with -inf on removed keys (<= -1e30), and its strides."""
    if call.key_bias is None:
        return dummy, (0, 0, 0)
    kb = call.key_bias
    kb = torch.where(kb <= -1e30, float("-inf"), kb * LOG2E.value)
    return kb, tuple(0 if kb.shape[i] == 1 else kb.stride(i) for i in range(3))


def _mask(call: Call) -> tuple[Tensor, tuple[int, int, int, int]]:
    """The caller's bool mask as bytes (no copy) and its strides (0 on broadcast dims)."""
    geo = call.geo
    if geo.mask is None:
        return torch.zeros(1, dtype=torch.uint8, device=call.q.device), (0, 0, 0, 0)
    m = geo.mask.view(torch.uint8)
    return m, tuple(0 if m.shape[i] == 1 else m.stride(i) for i in range(4))


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(1, n)))
