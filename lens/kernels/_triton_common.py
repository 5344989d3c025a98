"""What the Triton programs share: scores in base 2, soft-capping, visibility, and their conventions.

Scores are kept in base 2 (``s * log2 e``, the key bias and the sink logits pre-scaled by
the host) so every exponential is an ``exp2``; the host converts the lse and the entropy
back to nats. Soft-capping commutes with the change of base: ``c tanh(s / c) * log2 e =
c2 tanh(s2 / c2)`` with ``c2 = c log2 e``, so the kernels cap base-2 scores by ``c2``.
Learned sinks (one virtual key per head, no value) enter pass 1 only: each row's running
max starts at the sink logit, ``l`` keeps the REAL keys' sum, and the sink's term
``2^(sink - m)`` is added to the denominator in the epilogue. Pass 2 needs nothing: it
reads the stored lse, which already includes the sink.
Masked scores are -inf; products with them are guarded (``e > 0``) on every tile that can
hold one, so no 0 * inf reaches a result (pass 1's branch-free entropy sum computes one on
such a tile and replaces it with the guarded sum there).
All block sizes, flags and stat slots are constexprs: a disabled statistic costs nothing.
Token ids arrive as int32 rows padded to whole tiles (``_triton._token_rows``).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: log2(e) and ln(2): scores live in base 2 inside the kernels (host code reads ``.value``).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
#: Below this |x|, tanh uses its odd Taylor polynomial to x^9 (truncation < 1e-8 relative
#: at 0.3); above, (1 - e) / (1 + e) with e = exp(-2|x|) cancels by at most ~3 ulp.
#: Measured in numpy fp32 against float64 over [-12, 12] and 1e-8..10: max 2.4e-7 relative.
TANH_SMALL = tl.constexpr(0.3)


@triton.jit
def _tanh(x):
    """tanh in fp32 from exp2 alone (no tl.tanh in every Triton; libdevice has no interpreter)."""
    ax = tl.abs(x)
    e = tl.exp2(ax * (-2.0 * LOG2E))  # in (0, 1]: never overflows
    far = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    near = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    t = tl.where(ax < TANH_SMALL, near, far)
    return tl.where(x < 0, -t, t)


@triton.jit
def _scores(q, k, qk_scale, softcap2, DOT_PREC: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """Base-2 scores of one tile, soft-capped (before any mask or bias) when asked."""
    s = tl.dot(q, k, input_precision=DOT_PREC) * qk_scale
    if HAS_SOFTCAP:
        s = softcap2 * _tanh(s * (1.0 / softcap2))
    return s


@triton.jit
def _visibility(offs_m, offs_n, pos_m, m_valid, n_valid, b, h, MASK,
                stride_mb, stride_mh, stride_mm, stride_mn, SLIDE,
                CAUSAL: tl.constexpr, HAS_SLIDE: tl.constexpr, HAS_MASK: tl.constexpr):
    """Who may attend to whom in one tile: key bounds, causal, sliding window, the caller's mask.

    A Triton device function takes scalars, pointers, strides and constexpr switches one by one
    (no structs), hence sixteen parameters; the three kernels share it so the rule is written once.
    """
    vis = m_valid[:, None] & n_valid[None, :]
    if CAUSAL:
        vis = vis & (offs_n[None, :] <= pos_m[:, None])
    if HAS_SLIDE:
        vis = vis & (pos_m[:, None] - offs_n[None, :] < SLIDE)
    if HAS_MASK:
        mk = tl.load(MASK + b * stride_mb + h * stride_mh + offs_m.to(tl.int64)[:, None] * stride_mm
                     + offs_n[None, :] * stride_mn, mask=vis, other=0)
        vis = vis & (mk != 0)
    return vis
