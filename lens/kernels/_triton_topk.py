"""The top-k rescan: the exact top-k of each query row from the k key spans pass 1 chose.

Pass 1 (``_triton_kernels.attn_rows_kernel``) keeps, branch-free, each row's k spans of
SPAN keys with the largest maxima. The true top-k lies inside them: a span that holds a
top-k key has a maximum at least the k-th value, and at most k spans hold them. This
program rescans only those spans, so its work is k spans a row, not the row's n keys
(issue 15: the per-tile insertion loop it replaces cost more than every other statistic
together). Scores follow pass 1's rules exactly (``_triton_common``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_common import LOG2E, _tanh, _visibility


@triton.jit
def attn_topk_kernel(
    Q, K, BIAS, MASK, QMASK, LSE, CAND,
    TOPV, TOPI,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_bb, stride_bh, stride_bn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    H, NQ, NK, OFFSET, SLIDE, qk_scale, softcap2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SPAN: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_SLIDE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_QMASK: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    TOPK: tl.constexpr, TOPK_P: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """The exact top-k of one query row from the k candidate key spans pass 1 chose (CAND).

    Rescores the row's candidate spans (SPAN keys each) with the same scale, soft-cap, bias
    and visibility rules, then takes the k best, best first, the lower key first among equal
    scores; p = 2^(s - L) with pass 1's lse. Work per row: k spans, not the row's n keys.
    The scores come from the tensor cores like pass 1's: each span's keys times a matrix
    whose first column is the query and the rest zeros (summing its 16 columns is exact).
    Its 43 parameters are the pointers, strides, sizes and constexpr switches a Triton kernel
    takes one by one (computed by the host's ``_triton._topk``).
    """
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP
    b64, h64, kvh64 = b.to(tl.int64), h.to(tl.int64), kvh.to(tl.int64)
    row = bh.to(tl.int64) * NQ + i
    offs_d = tl.arange(0, BLOCK_D)
    offs_sl = tl.arange(0, SPAN)
    slots = tl.arange(0, TOPK_P)
    offs_m = tl.zeros([1], dtype=tl.int32) + i  # the row, as a one-row tile for _visibility
    pos_m = OFFSET + offs_m
    m_valid = offs_m < NQ

    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + i * stride_qm + offs_d, mask=offs_d < HEAD_DIM, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    cols = tl.arange(0, 16)
    q_col = tl.where(cols[None, :] == 0, q[:, None], 0.0).to(q.dtype)  # [BLOCK_D, 16]
    lse = tl.load(LSE + row)
    ok = lse > float("-inf")
    if HAS_QMASK:
        ok = ok & (tl.load(QMASK + b64 * NQ + i) != 0)
    k_base = K + b64 * stride_kb + kvh64 * stride_kh

    tiles = tl.load(CAND + row * TOPK + slots, mask=slots < TOPK, other=-1)
    keys = tiles[:, None] * SPAN + offs_sl[None, :]  # [TOPK_P, SPAN]; < 0 in empty slots
    s_all = tl.zeros([TOPK_P, SPAN], dtype=tl.float32) - float("inf")
    for r in range(TOPK):
        t = tl.load(CAND + row * TOPK + r)
        offs_n = t * SPAN + offs_sl
        n_valid = (offs_n >= 0) & (offs_n < NK)  # empty slots (t < 0) give offs_n < 0
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                    mask=n_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.sum(tl.dot(k, q_col, input_precision=DOT_PREC), 1) * qk_scale
        if HAS_SOFTCAP:
            s = softcap2 * _tanh(s * (1.0 / softcap2))
        if HAS_BIAS:
            s = s + tl.load(BIAS + b64 * stride_bb + h64 * stride_bh + offs_n * stride_bn, mask=n_valid, other=0.0)
        vis = _visibility(offs_m, offs_n, pos_m, m_valid, n_valid, b64, h64, MASK,
                          stride_mb, stride_mh, stride_mm, stride_mn, SLIDE, CAUSAL, HAS_SLIDE, HAS_MASK)
        s_all = tl.where(slots[:, None] == r, tl.where(vis, s[None, :], float("-inf")), s_all)

    # Best first; among equal scores the lower key first.
    v = tl.reshape(s_all, [TOPK_P * SPAN])
    idx = tl.reshape(keys, [TOPK_P * SPAN])
    lse2 = lse * LOG2E
    for r in tl.static_range(TOPK):
        best = tl.max(v, 0)
        pick = tl.min(tl.where(v == best, idx, 2147483647), 0)
        good = ok & (best > float("-inf"))
        tl.store(TOPV + row * TOPK + r, tl.where(good, tl.exp2(best - lse2), 0.0))
        tl.store(TOPI + row * TOPK + r, tl.where(good, pick, -1).to(tl.int64))
        v = tl.where(idx == pick, float("-inf"), v)
