"""Attention with per-head statistics and head edits, computed in one pass.

``attention(q, k, v, stats=..., edits=...)`` returns the attention output, the
log-sum-exp, and the statistics asked for (sink mass, entropy, column sums, mean
distance, WAAD, top keys, token-pattern masses, pooled maps, patterns; every one
defined in ``lens.kernels._stats``, whose registry ``STATS`` gives each one's kind, axes,
dtype and fill), describing the pattern the model actually used.

Backends (one signature, one result type, held together by parity tests):
  * ``eager``   materialises the fp32 [batch, head, query_pos, key_pos] pattern and
                reads each statistic straight off its definition: the reference.
  * ``chunked`` pure torch, blockwise over query rows against only the keys they
                can see; output and statistics from the same block probabilities;
                memory linear in key_pos. The CPU choice for long inputs.
  * ``auto``    chunked when statistics or edits are asked for and key_pos > 256,
                else eager. A Triton backend for CUDA plugs into
                ``lens.kernels._api._choose_backend``.
With no statistics asked for, both take the fast path: torch's fused CPU attention
kernel (with the log-sum-exp), per query block when a mask must be spelled out.

Edit algebra (``HeadEdits``): scaling the post-softmax attention of every query on a
key set S by c and renormalising gives ``c p_j / (1 + (c - 1) sum_S p)`` on S, which is
exactly ``softmax(s + ln(c) 1_S)``; so ZeroTuning (key 0), ACT (hidden sinks, c = beta),
VAR and move-to-BOS (c = 0, bias -inf on every key but BOS) are one additive
``key_bias`` per head and key, applied before the softmax and free in any kernel.
Zero and mean ablation act on the head output: ``out_h <- gate_h out_h + add_h``.

Positions: query row i sits at absolute position key_pos - query_pos + i (the
queries are the last positions, as in KV-cache decoding).
"""

from ._api import AUTO_CHUNKED_MIN_KEYS, BACKENDS, AttentionResult, HeadEdits, attention, auto_backend
from ._stats import (DEFAULT_STATS, ROW_STATS, STAT_NAMES, STATS, TOKEN_STATS, Stat, StatOptions, check_stat_names,
                     pattern_rows, pool_factor)

__all__ = ["AUTO_CHUNKED_MIN_KEYS", "BACKENDS", "DEFAULT_STATS", "ROW_STATS", "STATS", "STAT_NAMES", "TOKEN_STATS", "AttentionResult",
           "HeadEdits", "Stat", "StatOptions", "attention", "auto_backend", "check_stat_names", "pattern_rows",
           "pool_factor"]
