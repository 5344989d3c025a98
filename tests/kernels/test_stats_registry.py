"""The statistics registry (``lens.kernels.STATS``): the lists derived from it, and results shaped as it says."""

from __future__ import annotations

import pytest
import torch

from lens.kernels import (DEFAULT_STATS, ROW_STATS, STAT_NAMES, STATS, TOKEN_STATS, StatOptions, attention,
                          check_stat_names)
from lens.record import CAPTURE_STATS

#: docs/DESIGN.md's axis vocabulary, plus the registry's own: top-k slots, the pooled map's sides,
#: residual statistics per decoder block, the three largest entries.
AXES = {"batch", "layer", "head", "query_pos", "key_pos", "pos", "topk", "pool_q", "pool_k", "block", "top3"}


def test_the_lists_are_the_registry():
    assert STAT_NAMES == (
        "sink_mass", "sink_mass_k", "entropy", "entropy_norm", "received", "visible", "distance", "waad",
        "topk_idx", "topk_val", "prev_token", "diag_mass", "dup_token", "induction", "pooled", "pattern",
        "learned_sink_mass")
    assert DEFAULT_STATS == tuple(n for n in STAT_NAMES if n not in ("pattern", "learned_sink_mass"))
    assert TOKEN_STATS == {"dup_token", "induction"}
    assert set(ROW_STATS) == {"sink_mass", "sink_mass_k", "entropy", "entropy_norm", "distance", "waad", "prev_token",
                              "diag_mass", "dup_token", "induction", "learned_sink_mass"}
    assert {n for n, s in STATS.items() if s.fill != 0} == {"topk_idx"} and STATS["topk_idx"].fill == -1
    assert {n for n, s in STATS.items() if s.dtype != torch.float32} == {"topk_idx"}
    for stat in CAPTURE_STATS.values():
        assert set(stat.axes.split()) <= AXES, stat
    assert "pattern" not in CAPTURE_STATS  # full patterns live in Capture.patterns


def test_check_stat_names_is_the_one_check():
    assert check_stat_names("entropy") == ("entropy",)
    assert check_stat_names(["entropy", "sink_mass", "entropy"]) == ("entropy", "sink_mass")
    with pytest.raises(ValueError, match=r"^stats: unknown statistic\(s\) \['vibes'\]; valid: \[.*'waad'\]$"):
        check_stat_names(["vibes"])
    with pytest.raises(ValueError, match=r"^stats: unknown statistic\(s\) \['vibes'\]"):
        attention(*(torch.randn(1, 1, 3, 4) for _ in range(3)), stats=["entropy", "vibes"])


@pytest.mark.parametrize("backend", ["eager", "chunked"])
def test_results_have_the_registry_axes_dtype_and_order(backend):
    """Odd sizes (b 2, h 3, q 11 of k 13, topk 5, pooled 4 x 5): each statistic in the order asked, shaped as the registry says."""
    torch.manual_seed(0)
    b, h, nq, nk, d = 2, 3, 11, 13, 7
    q, k, v = torch.randn(b, h, nq, d), torch.randn(b, h, nk, d), torch.randn(b, h, nk, d)
    ids = torch.randint(0, 5, (b, nk))
    asked = tuple(reversed(STAT_NAMES))
    opt = StatOptions(topk=5, pool_max=5, pattern_heads=(2, 0), pattern_window=(1, 4))
    r = attention(q, k, v, stats=asked, token_ids=ids, options=opt, backend=backend, block_size=4)
    assert tuple(r.stats) == asked
    f = r.meta["pool_factor"]
    sizes = {"batch": b, "head": h, "query_pos": nq, "key_pos": nk, "topk": 5, "pool_q": -(-nq // f),
             "pool_k": -(-nk // f)}
    for name, t in r.stats.items():
        want = [sizes[a] for a in STATS[name].axes.split()]
        if name == "pattern":  # the chosen heads and query rows
            want = [b, 2, 3, nk]
        assert list(t.shape) == want, name
        assert t.dtype == STATS[name].dtype, name
