"""Pass 1 and pass 2 of the fused attention-statistics backend (host side: ``_triton``; the top-k rescan:
``_triton_topk``; what they share: ``_triton_common``).

Pass 1 (``attn_rows_kernel``) is a flash-attention forward: one program per (query block,
batch * head), key tiles streamed, tiles the causal / sliding-window rules hide are never
loaded. Besides the output and the log-sum-exp it carries one running accumulator per row
statistic, rescaled by ``alpha = 2^(m - m')`` whenever the running max moves, exactly
like ``l`` (docs/METHODS.md "Kernel math", "Pass 1"); sums over a few tiles only (sink tiles, the diagonal
band) keep their own reference max instead and are rescaled once. For the top-k it keeps,
branch-free, each row's k key spans (SPAN keys) with the largest maxima; ``attn_topk_kernel``
then rescans only those k spans per row for the exact top-k (issue 15: the per-tile insertion loop it
replaces cost more than every other statistic together).

Pass 2 (``attn_columns_kernel``) needs the final log-sum-exp: one program per (key block,
batch * head) keeps its K tile resident, walks the query tiles that can see it (from the
diagonal down), recomputes ``p = 2^(s - L)`` and accumulates column sums and the pooled map.
Every output element has exactly one writer: deterministic, no atomics.
Scores are in base 2 and masked scores are -inf (``_triton_common`` says why and how).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_common import LOG2E, LN2, _scores, _visibility


@triton.jit
def attn_rows_kernel(
    Q, K, V, BIAS, MASK, QMASK, TOK, GATE, ADD, SINKS,
    OUT, LSE, ROWS, CAND,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_bb, stride_bh, stride_bn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_tb, TOK_PREV,
    H, NQ, NK, OFFSET, SLIDE, qk_scale, softcap2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_SLIDE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_QMASK: tl.constexpr, HAS_GATE: tl.constexpr, HAS_ADD: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    SINK_K: tl.constexpr, WAAD_W: tl.constexpr,
    S_SINK: tl.constexpr, S_SINKK: tl.constexpr, S_ENT: tl.constexpr, S_DIST: tl.constexpr,
    S_WAAD: tl.constexpr, S_PREV: tl.constexpr, S_DIAG: tl.constexpr, S_DUP: tl.constexpr,
    S_IND: tl.constexpr, S_NVIS: tl.constexpr,
    TOPK: tl.constexpr, TOPK_P: tl.constexpr, SPAN: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Output, lse, row statistics and top-k for one block of query rows of one head.

    ROWS[slot, b, h, i] holds statistic slot ``S_*`` (-1 = not computed); row sums are
    finished here (divided by l, zeroed on invalid rows), so the host only converts units.
    With sinks the real keys' probabilities sum to ``l / l_tot < 1``; entropy and waad are
    finished with that mass, never with 1.

    Long by nature: a Triton kernel takes every pointer, stride, size and constexpr switch as
    its own argument (the host's ``_triton.run`` computes them), and its body is one fused loop
    over key blocks (online softmax, every row statistic and the top-k candidates in one pass)
    whose parts share registers; split into device functions it would pass that state back and
    forth.
    """
    # Heaviest causal blocks (the last rows) first: better tail balance on the GPU.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP
    b64, h64, kvh64 = b.to(tl.int64), h.to(tl.int64), kvh.to(tl.int64)

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_valid = offs_m < NQ
    pos_m = OFFSET + offs_m  # absolute positions of the rows
    pos_min = OFFSET + m0
    pos_max = OFFSET + m0 + BLOCK_M - 1
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_nl = tl.arange(0, BLOCK_N)

    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=m_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b64 * stride_kb + kvh64 * stride_kh
    v_base = V + b64 * stride_vb + kvh64 * stride_vh

    if S_DUP >= 0 or S_IND >= 0:
        tok_q = tl.load(TOK + b64 * stride_tb + pos_m, mask=m_valid, other=-1)

    # Keys [lo, hi) the rules let some row of the block see.
    lo = 0
    hi = NK
    if CAUSAL:
        hi = tl.minimum(NK, pos_max + 1)
    if HAS_SLIDE:
        lo = tl.maximum(0, pos_min - SLIDE + 1)
        lo = (lo // BLOCK_N) * BLOCK_N

    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    ninf = zero - float("inf")
    m_i = ninf
    if HAS_SINKS:  # the sink is a key every row sees first: the running max starts at it
        sink2 = tl.load(SINKS + h)  # base 2; -inf = no sink
        m_i = zero + sink2
        seen = zero  # 1 once a row has a visible real key (l may underflow under a big sink)
    l_i = zero       # sum over the REAL keys of 2^(s - m)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    a_ent = zero     # u = sum e (s - m)  (base 2)
    a_dist = zero    # sum e (pos - j)
    a_dup = zero
    a_ind = zero
    n_vis = zero
    # Sums over a few tiles only (the sink tiles, the diagonal band) keep their own reference
    # max and meet the final one once, in the epilogue: no rescaling on the other tiles.
    a_sink = zero    # sum_{j = 0} 2^(s - m_sink)
    a_sinkk = zero   # sum_{j < SINK_K} 2^(s - m_sink)
    m_sink = ninf
    a_waad = zero    # sum e max(W - (pos - j), 0) (at m_band): waad = (W l - a_waad) / l_tot
    a_prev = zero
    a_diag = zero
    m_band = ninf
    BAND: tl.constexpr = WAAD_W if WAAD_W > 2 else 2
    offs_nlf = offs_nl.to(tl.float32)
    if TOPK > 0:
        # Top-k candidates: per row the k key spans with the largest maxima, as (max, span index).
        # Empty slots: -inf with distinct negative indices; padded slots: +inf, never replaced.
        slots = tl.arange(0, TOPK_P)
        cand_v = tl.where(slots[None, :] < TOPK, float("-inf"), float("inf")) + tl.zeros([BLOCK_M, TOPK_P], tl.float32)
        cand_t = tl.zeros([BLOCK_M, TOPK_P], dtype=tl.int32) - 1 - slots[None, :]

    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_nl
        n_valid = offs_n < NK
        k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                    mask=n_valid[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = _scores(q, k, qk_scale, softcap2, DOT_PREC, HAS_SOFTCAP)
        if HAS_BIAS:  # already in base 2, -inf on removed keys
            bias = tl.load(BIAS + b64 * stride_bb + h64 * stride_bh + offs_n * stride_bn, mask=n_valid, other=0.0)
            s = s + bias[None, :]

        # Only tiles cut by a rule (or any tile under a caller mask) pay for the mask.
        need = start_n + BLOCK_N > NK
        if CAUSAL:
            need = need | (start_n + BLOCK_N - 1 > pos_min)
        if HAS_SLIDE:
            need = need | (start_n <= pos_max - SLIDE)
        if HAS_MASK or S_NVIS >= 0:
            vis = _visibility(offs_m, offs_n, pos_m, m_valid, n_valid, b64, h64, MASK,
                              stride_mb, stride_mh, stride_mm, stride_mn, SLIDE, CAUSAL, HAS_SLIDE, HAS_MASK)
            s = tl.where(vis, s, float("-inf"))
            if S_NVIS >= 0:
                n_vis += tl.sum(vis.to(tl.float32), 1)
        elif need:
            vis = _visibility(offs_m, offs_n, pos_m, m_valid, n_valid, b64, h64, MASK,
                              stride_mb, stride_mh, stride_mm, stride_mn, SLIDE, CAUSAL, HAS_SLIDE, HAS_MASK)
            s = tl.where(vis, s, float("-inf"))

        tile_max = tl.max(s, 1)
        if HAS_SINKS:
            seen = tl.where(tile_max > float("-inf"), 1.0, seen)
        m_new = tl.maximum(m_i, tile_max)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
        alpha = tl.exp2(m_i - m_use)
        e = tl.exp2(s - m_use[:, None])  # 0 on masked entries
        e_sum = tl.sum(e, 1)
        l_old = l_i
        l_i = l_i * alpha + e_sum

        if S_ENT >= 0:
            # u' = alpha (u - delta l_old) when the max moves by delta (docs/METHODS.md "Kernel math").
            delta = tl.where(l_old > 0, m_use - m_i, 0.0)
            a_ent = alpha * (a_ent - delta * l_old)
            if HAS_MASK or HAS_BIAS:  # -inf scores may sit in any tile: 0 * -inf must not reach u
                a_ent += tl.sum(e * tl.where(e > 0, s - m_use[:, None], 0.0), 1)
            else:  # only the tiles a rule cuts hold -inf scores
                part = tl.sum(e * (s - m_use[:, None]), 1)
                if need:
                    part = tl.sum(e * tl.where(e > 0, s - m_use[:, None], 0.0), 1)
                a_ent += part
        if S_DIST >= 0:
            # sum e (pos - j) = (pos - start) sum e - sum e (j - start): one FMA a score, and
            # small numbers near the diagonal (no cancellation of pos against j).
            a_dist = a_dist * alpha + (pos_m - start_n).to(tl.float32) * e_sum - tl.sum(e * offs_nlf[None, :], 1)
        if S_SINK >= 0 or S_SINKK >= 0:
            if start_n < SINK_K:  # sinks live in the first tile(s) only
                r = tl.exp2(m_sink - m_use)
                m_sink = m_use
                if S_SINK >= 0:
                    a_sink = a_sink * r + tl.sum(tl.where(offs_n[None, :] == 0, e, 0.0), 1)
                if S_SINKK >= 0:
                    a_sinkk = a_sinkk * r + tl.sum(tl.where(offs_n[None, :] < SINK_K, e, 0.0), 1)
        if S_WAAD >= 0 or S_PREV >= 0 or S_DIAG >= 0:
            # min(d, W) = W - max(W - d, 0): only keys with d < W (a band) need work.
            if start_n + BLOCK_N - 1 > pos_min - BAND:
                r = tl.exp2(m_band - m_use)
                m_band = m_use
                dist = pos_m[:, None] - offs_n[None, :]
                if S_WAAD >= 0:
                    a_waad = a_waad * r + tl.sum(e * tl.maximum(WAAD_W - dist, 0).to(tl.float32), 1)
                if S_PREV >= 0:
                    a_prev = a_prev * r + tl.sum(tl.where(dist == 1, e, 0.0), 1)
                if S_DIAG >= 0:
                    a_diag = a_diag * r + tl.sum(tl.where(dist == 0, e, 0.0), 1)
        if S_DUP >= 0 or S_IND >= 0:
            # TOK[b] is two int32 rows of TOK_PREV ids each, padded with -1 to whole tiles: the
            # keys' own ids, then the ids one place earlier (tok_{j-1}). The loads need no mask
            # (padded keys have e = 0) and are aligned: vector loads, no per-element defaults.
            # Only tiles reaching the block's first row (and tile 0 for induction's j >= 1)
            # need the position tests.
            edge = start_n + BLOCK_N - 1 >= pos_min
        if S_DUP >= 0:
            tok_k = tl.load(TOK + b64 * stride_tb + offs_n)
            part = tl.sum(tl.where(tok_k[None, :] == tok_q[:, None], e, 0.0), 1)
            if edge:  # j < pos: the row's own key and later ones do not count
                hit = (tok_k[None, :] == tok_q[:, None]) & (offs_n[None, :] < pos_m[:, None])
                part = tl.sum(tl.where(hit, e, 0.0), 1)
            a_dup = a_dup * alpha + part
        if S_IND >= 0:
            tok_p = tl.load(TOK + b64 * stride_tb + TOK_PREV + offs_n)
            part = tl.sum(tl.where(tok_p[None, :] == tok_q[:, None], e, 0.0), 1)
            if edge | (start_n == 0):  # 1 <= j <= pos
                hit = (tok_p[None, :] == tok_q[:, None]) & (offs_n[None, :] >= 1) & (offs_n[None, :] <= pos_m[:, None])
                part = tl.sum(tl.where(hit, e, 0.0), 1)
            a_ind = a_ind * alpha + part

        if TOPK > 0:
            # Cut the keys into spans of SPAN (a tile or a slice of one). The row's top-k keys
            # lie in its k spans with the largest maxima: a span holding one has max >= the k-th
            # value, and k other spans with larger maxima (or equal ones earlier: ties go to
            # the lower key) would each hold a better key. Keep those k (max, span) per row,
            # branch-free; attn_topk_kernel rescans them (k * SPAN keys a row). A span enters
            # on a strictly larger max and replaces the smallest, the latest span among equals.
            for c in tl.static_range(BLOCK_N // SPAN):
                if SPAN == BLOCK_N:
                    c_max = tile_max
                else:
                    c_max = tl.max(tl.where((offs_nl // SPAN == c)[None, :], s, float("-inf")), 1)
                low = tl.min(cand_v, 1)
                last = tl.max(tl.where(cand_v == low[:, None], cand_t, -TOPK_P - 1), 1)
                take = (cand_t == last[:, None]) & (c_max > low)[:, None]
                cand_v = tl.where(take, c_max[:, None], cand_v)
                cand_t = tl.where(take, start_n // SPAN + c, cand_t)

        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
                    mask=n_valid[:, None] & (offs_dv[None, :] < V_DIM), other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(e.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    # ---- epilogue: output, lse, finished row statistics
    if HAS_SINKS:
        has_key = seen > 0
        # The sink's own term, rescaled like l since the start: 2^(sink - m) <= 1 (m starts at
        # the sink), 0 for a -inf sink; m_i is -inf only then, on a row with no key.
        l_tot = l_i + tl.exp2(sink2 - tl.where(m_i > float("-inf"), m_i, 0.0))
    else:
        has_key = l_i > 0
        l_tot = l_i
    l_safe = tl.where(has_key, l_tot, 1.0)
    inv_l = tl.where(has_key, 1.0 / l_safe, 0.0)  # p_j = e_j / l_tot
    log2_l = tl.log2(l_safe)
    lse2 = tl.where(has_key, m_i, 0.0) + log2_l  # finite everywhere (no -inf - -inf below)
    row = bh.to(tl.int64) * NQ + offs_m  # index into [b, h, q]

    out = acc * inv_l[:, None]
    if HAS_GATE:
        out = out * tl.load(GATE + h)
    if HAS_ADD:
        out = out + tl.load(ADD + h64 * V_DIM + offs_dv, mask=offs_dv < V_DIM, other=0.0)[None, :]
    tl.store(OUT + row[:, None] * V_DIM + offs_dv[None, :], out.to(OUT.dtype.element_ty),
             mask=m_valid[:, None] & (offs_dv[None, :] < V_DIM))
    tl.store(LSE + row, tl.where(has_key, lse2 * LN2, float("-inf")), mask=m_valid)

    ok = has_key & m_valid
    if HAS_QMASK:
        ok = ok & (tl.load(QMASK + b64 * NQ + offs_m, mask=m_valid, other=0) != 0)
    w = tl.where(ok, inv_l, 0.0)  # 1/l on rows that enter the statistics, else 0
    m_fin = tl.where(m_i == float("-inf"), 0.0, m_i)  # the last tile's m_use
    if S_SINK >= 0 or S_SINKK >= 0:
        r = tl.exp2(m_sink - m_fin)
        a_sink = a_sink * r
        a_sinkk = a_sinkk * r
    if S_WAAD >= 0 or S_PREV >= 0 or S_DIAG >= 0:
        r = tl.exp2(m_band - m_fin)
        a_waad = a_waad * r
        a_prev = a_prev * r
        a_diag = a_diag * r
    plane = tl.num_programs(1).to(tl.int64) * NQ  # elements of one ROWS slot: b * h * q
    if S_SINK >= 0:
        tl.store(ROWS + S_SINK * plane + row, a_sink * w, mask=m_valid)
    if S_SINKK >= 0:
        tl.store(ROWS + S_SINKK * plane + row, a_sinkk * w, mask=m_valid)
    if S_ENT >= 0:  # H = -sum p log p = (l log l_tot - u) / l_tot  (l = l_tot without sinks)
        tl.store(ROWS + S_ENT * plane + row, tl.where(ok, (log2_l * l_i - a_ent) * inv_l * LN2, 0.0), mask=m_valid)
    if S_DIST >= 0:
        tl.store(ROWS + S_DIST * plane + row, a_dist * w, mask=m_valid)
    if S_WAAD >= 0:  # sum p min(d, W) = (W l - sum e max(W - d, 0)) / l_tot
        tl.store(ROWS + S_WAAD * plane + row, tl.where(ok, (WAAD_W * l_i - a_waad) * inv_l, 0.0), mask=m_valid)
    if S_PREV >= 0:
        tl.store(ROWS + S_PREV * plane + row, a_prev * w, mask=m_valid)
    if S_DIAG >= 0:
        tl.store(ROWS + S_DIAG * plane + row, a_diag * w, mask=m_valid)
    if S_DUP >= 0:
        tl.store(ROWS + S_DUP * plane + row, a_dup * w, mask=m_valid)
    if S_IND >= 0:
        tl.store(ROWS + S_IND * plane + row, a_ind * w, mask=m_valid)
    if S_NVIS >= 0:
        tl.store(ROWS + S_NVIS * plane + row, n_vis, mask=m_valid)

    if TOPK > 0:
        tl.store(CAND + row[:, None] * TOPK + slots[None, :], cand_t, mask=m_valid[:, None] & (slots[None, :] < TOPK))


@triton.jit
def attn_columns_kernel(
    Q, K, BIAS, MASK, QMASK, LSE,
    RECV, POOL,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_bb, stride_bh, stride_bn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    H, NQ, NK, OFFSET, SLIDE, qk_scale, softcap2, POOL_Q, POOL_K,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_SLIDE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_QMASK: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DO_RECV: tl.constexpr, DO_POOL: tl.constexpr,
    POOL_F: tl.constexpr, POOL_RESHAPE: tl.constexpr,
    ROWS_PER_GROUP: tl.constexpr, Q_SUBS: tl.constexpr, GQ: tl.constexpr, GQ_P: tl.constexpr,
    KEYS_PER_GROUP: tl.constexpr, K_SUBS: tl.constexpr, GK: tl.constexpr, GK_P: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, POOL_PREC: tl.constexpr,
):
    """Column sums of p and pooled f x f block sums for one key block of one head.

    The key axis is cut into groups of KEYS_PER_GROUP keys (GK whole pooled columns, or
    one pooled column split into K_SUBS sub-blocks) and the query axis into groups of
    ROWS_PER_GROUP rows (GQ pooled rows, or one split into Q_SUBS chunks), so a pooled
    cell never straddles two groups: each program writes POOL[b, h, sub, :, its columns]
    once. Without pooling both groups are plain blocks.

    Long by nature, as ``attn_rows_kernel``: every pointer, stride, size and constexpr switch is
    its own argument (computed by the host's ``_triton._columns``), and the body is one loop
    whose column sums and pooled sums share the same tile of probabilities.
    """
    kt = tl.program_id(0)  # key block 0 sees the most queries and starts first
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP
    b64, h64, kvh64 = b.to(tl.int64), h.to(tl.int64), kvh.to(tl.int64)

    cg = kt // K_SUBS
    ks = kt % K_SUBS
    kbase = cg * KEYS_PER_GROUP
    kstart = kbase + ks * BLOCK_N
    kend = tl.minimum(tl.minimum(kstart + BLOCK_N, kbase + KEYS_PER_GROUP), NK)
    offs_nl = tl.arange(0, BLOCK_N)
    offs_n = kstart + offs_nl
    n_valid = offs_n < kend
    offs_d = tl.arange(0, BLOCK_D)
    offs_ml = tl.arange(0, BLOCK_M)

    k = tl.load(K + b64 * stride_kb + kvh64 * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None],
                mask=n_valid[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + b64 * stride_bb + h64 * stride_bh + offs_n * stride_bn, mask=n_valid, other=0.0)

    # Query rows that may see some key of the block.
    q_lo = 0
    q_hi = NQ
    if CAUSAL:
        q_lo = tl.maximum(kstart - OFFSET, 0)
    if HAS_SLIDE:
        q_hi = tl.minimum(NQ, kend - 1 + SLIDE - OFFSET)
    g_lo = q_lo // ROWS_PER_GROUP
    g_hi = (tl.maximum(q_hi, 0) + ROWS_PER_GROUP - 1) // ROWS_PER_GROUP

    if DO_RECV:  # p summed elementwise, reduced over the rows once after the loop
        colacc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if DO_POOL:
        gq = tl.arange(0, GQ_P)
        gk = tl.arange(0, GK_P)
        col_of = (offs_n - kbase) // POOL_F  # pooled column (within the group) of each key
        onehot_k = (col_of[:, None] == gk[None, :]).to(tl.float32)  # [BLOCK_N, GK_P]
    for g in range(g_lo, g_hi):
        rbase = g * ROWS_PER_GROUP
        rend = tl.minimum(rbase + ROWS_PER_GROUP, NQ)
        if DO_POOL:
            cells = tl.zeros([GQ_P, GK_P], dtype=tl.float32)
        for t in range(Q_SUBS):
            offs_m = rbase + t * BLOCK_M + offs_ml
            m_valid = offs_m < rend
            pos_m = OFFSET + offs_m
            q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                        mask=m_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
            lse = tl.load(LSE + bh.to(tl.int64) * NQ + offs_m, mask=m_valid, other=float("-inf"))
            ok = m_valid & (lse > float("-inf"))
            if HAS_QMASK:
                ok = ok & (tl.load(QMASK + b64 * NQ + offs_m, mask=m_valid, other=0) != 0)
            lse2 = tl.where(ok, lse * LOG2E, float("inf"))  # invalid rows: p = 2^(s - inf) = 0

            s = _scores(q, k, qk_scale, softcap2, DOT_PREC, HAS_SOFTCAP)
            if HAS_BIAS:
                s = s + bias[None, :]
            # Rows outside [rbase, rend) already get p = 0 from lse2 = inf; mask only cut tiles.
            need = kend < kstart + BLOCK_N
            if CAUSAL:
                need = need | (kstart + BLOCK_N - 1 > OFFSET + rbase + t * BLOCK_M)
            if HAS_SLIDE:
                need = need | (kstart <= OFFSET + rbase + t * BLOCK_M + BLOCK_M - 1 - SLIDE)
            if HAS_MASK:
                vis = _visibility(offs_m, offs_n, pos_m, m_valid, n_valid, b64, h64, MASK,
                                  stride_mb, stride_mh, stride_mm, stride_mn, SLIDE, CAUSAL, HAS_SLIDE, HAS_MASK)
                s = tl.where(vis, s, float("-inf"))
            elif need:
                vis = _visibility(offs_m, offs_n, pos_m, m_valid, n_valid, b64, h64, MASK,
                                  stride_mb, stride_mh, stride_mm, stride_mn, SLIDE, CAUSAL, HAS_SLIDE, HAS_MASK)
                s = tl.where(vis, s, float("-inf"))
            p = tl.exp2(s - lse2[:, None])
            if DO_RECV:
                colacc += p
            if DO_POOL:
                if GQ_P == 1 and GK_P == 1:  # the tile lies in one cell: its total, rows first
                    cells += tl.sum(tl.sum(p, 1), 0)
                elif POOL_RESHAPE:  # f a power of two that divides the tile: cells by reshaping
                    f4 = tl.reshape(p, [BLOCK_M // POOL_F, POOL_F, BLOCK_N // POOL_F, POOL_F])
                    cells += tl.sum(tl.sum(f4, 3), 1)
                else:
                    if GQ_P == 1:
                        rows_sum = tl.sum(p, 0)[None, :]
                    else:
                        row_of = (offs_m - rbase) // POOL_F
                        onehot_q = (gq[:, None] == row_of[None, :]).to(tl.float32)  # [GQ_P, BLOCK_M]
                        rows_sum = tl.dot(onehot_q, p, input_precision=POOL_PREC)  # [GQ_P, BLOCK_N]
                    if GK_P == 1:
                        cells += tl.sum(rows_sum, 1)[:, None]
                    elif GQ_P == 1:
                        cells += tl.sum(tl.trans(rows_sum) * onehot_k, 0)[None, :]
                    else:
                        cells += tl.dot(rows_sum, onehot_k, input_precision=POOL_PREC)
        if DO_POOL:
            prow = g * GQ + gq
            pcol = cg * GK + gk
            dst = POOL + ((bh.to(tl.int64) * K_SUBS + ks) * POOL_Q + prow[:, None]) * POOL_K + pcol[None, :]
            tl.store(dst, cells, mask=((gq < GQ) & (prow < POOL_Q))[:, None] & ((gk < GK) & (pcol < POOL_K))[None, :])
    if DO_RECV:
        tl.store(RECV + bh.to(tl.int64) * NK + offs_n, tl.sum(colacc, 0), mask=n_valid)
