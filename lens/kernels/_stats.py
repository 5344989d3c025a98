"""The per-head attention statistics: names, shapes, definitions, options.

This docstring is the one place where every statistic is defined; the eager backend
computes each one straight from the definition below, the chunked backend from the
same probabilities block by block, and the parity tests hold the two together.
``STATS`` below is the registry of the same table as data (name, kind, axes, dtype,
fill): every list of statistic names in the workbench is derived from it, and
``check_stat_names`` is the one check of a name.

Notation (docs/METHODS.md conventions): ``p[b, h, i, j]`` is the EDITED attention
probability of query row ``i`` on key ``j`` (after masks and ``HeadEdits.key_bias``,
before the head gate), ``pos_i = key_pos - query_pos + i`` is the absolute position
of query row ``i`` (queries are the last ``query_pos`` positions, as in KV-cache
decoding), ``tok`` is ``token_ids[b, :]`` indexed by absolute position, and a row
is *valid* when ``query_mask[b, i]`` is True and at least one key is left after
masks and edits. Invalid rows (padding, fully masked rows) enter no statistic:
their per-row statistics are 0, their ``topk_idx`` is -1, and they add nothing to
``received``, ``visible``, ``pooled`` or ``pattern``. Every statistic is fp32 except
``topk_idx`` (int64).

=================  =================  ===============================================
name               shape              definition (valid rows; 0 otherwise)
=================  =================  ===============================================
``learned_sink_``   [b, h, q]          ``exp(sink_h - L_i)``: the share of row i's
``mass``                              softmax that head h's learned sink logit takes
                                      (gpt-oss ``s_aux``); 0 without ``sinks=``.
``sink_mass``      [b, h, q]          ``p[i, 0]``: attention on the first key
                                      (METHODS sec.1-2, the attention sink).
``sink_mass_k``    [b, h, q]          ``sum_{j < S} p[i, j]``, ``S = options.sink_k``.
``entropy``        [b, h, q]          ``-sum_j p log p`` in nats, ``0 log 0 = 0``
                                      (METHODS sec.3, exact: no +1e-6 inside the log).
``entropy_norm``   [b, h, q]          ``entropy / ln(n_visible_i)`` with ``n_visible_i``
                                      the keys the masks let row i see (edits do not
                                      change it); 0 when ``n_visible_i <= 1``. For a
                                      full causal row this is METHODS' ``/ log(i+1)``.
``received``       [b, h, k]          ``sum_{valid i} p[i, j]``: column sums.
``visible``        [b, k] or          ``#{valid-by-query_mask i : i may see j}`` from the
                   [b, h, k]          causal/sliding/``mask`` visibility only (never
                                      edits). ``[b, h, k]`` only when ``mask`` has a
                                      head dimension of size > 1. ``received / visible``
                                      is alpha_j of METHODS sec.1 (0/0 where unseen).
``distance``       [b, h, q]          ``sum_j p[i, j] (pos_i - j)`` (METHODS sec.4 D^h).
``waad``           [b, h, q]          ``sum_j p[i, j] min(pos_i - j, W)``,
                                      ``W = options.window`` (METHODS sec.4 WAAD).
``topk_idx``       [b, h, q, K]       the K keys with the largest p, best first;
                                      ``K = min(options.topk, key_pos)``; slots past
                                      the visible keys hold -1. Ties: torch.topk order
                                      (eager; unspecified among equal p); the Triton
                                      backend lists the lower key first.
``topk_val``       [b, h, q, K]       their probabilities; 0 in the -1 slots.
``prev_token``     [b, h, q]          ``p[i, pos_i - 1]`` (0 for ``pos_i = 0``).
``diag_mass``      [b, h, q]          ``p[i, pos_i]``: attention on itself.
``dup_token``      [b, h, q]          ``sum_{j < pos_i, tok_j = tok_{pos_i}} p[i, j]``
                                      (METHODS sec.10 duplicate-token pattern).
``induction``      [b, h, q]          ``sum_{1 <= j <= pos_i, tok_{j-1} = tok_{pos_i}}
                                      p[i, j]`` (METHODS sec.10 induction pattern).
``pooled``         [b, h, Pq, Pk]     block means of p: pool factor ``f =
                                      ceil(max(q, k) / options.pool_max)``,
                                      ``Pq = ceil(q / f)``, ``Pk = ceil(k / f)``; each
                                      entry is the sum of p over its f x f cells
                                      divided by the number of cells in the block
                                      (edge blocks have fewer), masked cells and
                                      invalid rows counting as 0. ``meta["pool_factor"]``
                                      holds f.
``pattern``        [b, H', q', k]     the full p, only for ``options.pattern_heads``
                                      (H' heads, None = all) and the query rows
                                      ``options.pattern_window = (start, stop)``
                                      (None = all); invalid rows are 0.
=================  =================  ===============================================

Learned sinks (a virtual key per head with a logit and no value, in the softmax
denominator): ``L_i`` includes it, and every statistic above but ``learned_sink_mass``
is defined over the *real* keys, from the ``p`` the model multiplies its values by. A
row's real-key masses therefore sum to ``1 - learned_sink_mass`` instead of 1 (so do
``received``, ``pooled`` and ``pattern`` rows), and ``entropy`` is ``-sum_j p log p``
over the real keys only, exactly what the model's own eager ``output_attentions``
pattern gives. Soft-capping (``softcap``) changes the scores, not these definitions.

Only ``dup_token`` and ``induction`` compare tokens and need ``token_ids``;
``prev_token`` and ``diag_mass`` are positional. To turn the token-pattern masses into
METHODS' "mul" scores, divide by the row mass (1 on valid rows, 1 - ``learned_sink_mass``
with a learned sink) and average over rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["DEFAULT_STATS", "ROW_STATS", "STATS", "STAT_NAMES", "TOKEN_STATS", "Stat", "StatOptions",
           "check_stat_names", "pattern_rows", "pool_factor"]

#: What one statistic describes, which decides how it is accumulated and assembled:
#: ``row`` one value per query row; ``key`` one value per key; ``topk`` K slots per query
#: row; ``pooled`` the block-mean map; ``pattern`` the full p of chosen heads and rows.
#: A capture adds ``position`` (per residual-stream position) and ``summary`` (a few
#: numbers per layer) for what it records beside attention (``lens.record``).
Kind = Literal["row", "key", "topk", "pooled", "pattern", "position", "summary"]

#: Axes whose entries are positions (a capture cuts them to an input's length).
POSITION_AXES = frozenset({"query_pos", "key_pos", "pos"})


@dataclass(frozen=True)
class Stat:
    """One statistic of the registry: its name, its axes, its dtype, its fill, its kind.

    axes: the shape as axis names (docs/DESIGN.md's vocabulary; ``topk`` is the K slots,
        ``pool_q pool_k`` the pooled map's sides); a capture inserts ``layer`` after ``batch``.
    fill: the value of an entry no valid row reaches (padding, fully masked rows, top-k
        slots past the visible keys), also the padding when batches of different widths join.
    tokens: compares token ids, so needs ``token_ids``.
    default: in a capture's ``stats="default"`` set.
    """

    name: str
    kind: Kind
    axes: str
    dtype: torch.dtype = torch.float32
    fill: float = 0
    tokens: bool = False
    default: bool = True

    @property
    def position_dims(self) -> tuple[int, ...]:
        """The dimensions whose entries are positions (query, key or residual stream)."""
        return tuple(d for d, axis in enumerate(self.axes.split()) if axis in POSITION_AXES)


_ROW = "batch head query_pos"

#: Every statistic the attention function can compute, in documentation order (the table above).
STATS: dict[str, Stat] = {s.name: s for s in (
    Stat("sink_mass", "row", _ROW),
    Stat("sink_mass_k", "row", _ROW),
    Stat("entropy", "row", _ROW),
    Stat("entropy_norm", "row", _ROW),
    Stat("received", "key", "batch head key_pos"),
    # [batch, head, key_pos] only when the caller's mask has a head dimension (never in a capture).
    Stat("visible", "key", "batch key_pos"),
    Stat("distance", "row", _ROW),
    Stat("waad", "row", _ROW),
    Stat("topk_idx", "topk", "batch head query_pos topk", dtype=torch.int64, fill=-1),
    Stat("topk_val", "topk", "batch head query_pos topk"),
    Stat("prev_token", "row", _ROW),
    Stat("diag_mass", "row", _ROW),
    Stat("dup_token", "row", _ROW, tokens=True),
    Stat("induction", "row", _ROW, tokens=True),
    Stat("pooled", "pooled", "batch head pool_q pool_k"),
    Stat("pattern", "pattern", "batch head query_pos key_pos", default=False),
    # Only models with learned sinks have it: a capture adds it to "default" for them.
    Stat("learned_sink_mass", "row", _ROW, default=False),
)}

#: The registry's names, in documentation order.
STAT_NAMES: tuple[str, ...] = tuple(STATS)

#: Statistics that compare token ids and therefore need ``token_ids``.
TOKEN_STATS: frozenset[str] = frozenset(n for n, s in STATS.items() if s.tokens)

#: Per-row statistics, [batch, head, query_pos] each.
ROW_STATS: tuple[str, ...] = tuple(n for n, s in STATS.items() if s.kind == "row")

#: A capture's ``stats="default"``: every per-query and per-key statistic, no full patterns.
DEFAULT_STATS: tuple[str, ...] = tuple(n for n, s in STATS.items() if s.default)


def check_stat_names(names: Iterable[str] | str, *, allowed: Iterable[str] = STAT_NAMES,
                     hint: str = "") -> tuple[str, ...]:
    """``names`` (one name or several) deduplicated in order, each checked against ``allowed``.

    The one check of statistic names: the attention function, ``lens.capture``, its
    ``CaptureSpec`` and the command line all call it. An unknown name is refused with the
    valid ones listed, and ``hint`` appended.
    """
    names = (names,) if isinstance(names, str) else tuple(dict.fromkeys(names))
    allowed = tuple(allowed)
    unknown = [s for s in names if s not in allowed]
    if unknown:
        raise ValueError(f"stats: unknown statistic(s) {unknown}; valid: {sorted(allowed)}{hint}")
    return names


@dataclass(frozen=True)
class StatOptions:
    """Constants of the statistics; defaults follow docs/METHODS.md and are recorded in meta.

    sink_k: keys counted by ``sink_mass_k`` (the first S positions).
    window: W of ``waad`` (METHODS sec.4 uses W = 10).
    topk: how many top keys per query to keep.
    pool_max: the largest side of the ``pooled`` map.
    pattern_heads: query-head indices kept by ``pattern`` (None = all heads).
    pattern_window: (start, stop) query rows kept by ``pattern`` (None = all rows).
    """

    sink_k: int = 4
    window: int = 10
    topk: int = 8
    pool_max: int = 512
    pattern_heads: tuple[int, ...] | None = None
    pattern_window: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("sink_k", "window", "topk", "pool_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StatOptions.{name} must be a positive int, got {value!r}")
        if self.pattern_heads is not None:
            object.__setattr__(self, "pattern_heads", tuple(int(h) for h in self.pattern_heads))
        if self.pattern_window is not None:
            start, stop = (int(x) for x in self.pattern_window)
            if not 0 <= start < stop:
                raise ValueError(f"StatOptions.pattern_window must be (start, stop) with 0 <= start < stop, "
                                 f"got {self.pattern_window!r}")
            object.__setattr__(self, "pattern_window", (start, stop))


def pool_factor(query_pos: int, key_pos: int, pool_max: int) -> int:
    """Pool factor f of the ``pooled`` map: the smallest f with ceil(n / f) <= pool_max."""
    return max(1, math.ceil(max(query_pos, key_pos) / pool_max))


def pattern_rows(query_pos: int, options: StatOptions) -> tuple[int, int]:
    """The query rows [start, stop) kept by ``pattern``, clipped to the sequence."""
    if options.pattern_window is None:
        return 0, query_pos
    start, stop = options.pattern_window
    return min(start, query_pos), min(stop, query_pos)
