"""The chunked backend against the eager reference (fp32, atol 1e-5) and float64.

Random inputs with GQA, odd lengths, a KV-cache offset, padding, sliding windows, a
per-head mask with an empty row, edits, and several block sizes: fixed sizes that cut
pooling groups and causal diagonals in odd places, and the default budget-sized blocks.
The two-stage top-k (long rows) is forced on short rows by lowering its threshold.
"""

from __future__ import annotations

import math

import pytest
import torch
from _kernel_checks import assert_float64, assert_matches

from lens.kernels import STAT_NAMES, HeadEdits, StatOptions, _chunked, _eager
from lens.kernels._api import _validate

ALL = tuple(STAT_NAMES)
ATOL = 1e-5


def qkv(b, h, kv, nq, nk, d, seed):
    g = torch.Generator().manual_seed(seed)
    q = 1.5 * torch.randn(b, h, nq, d, generator=g)  # sharper rows than N(0, 1): top-k is not flat
    return q, torch.randn(b, kv, nk, d, generator=g), torch.randn(b, kv, nk, d, generator=g)


def tokens(b, nk, vocab=5, seed=1):
    return torch.randint(0, vocab, (b, nk), generator=torch.Generator().manual_seed(seed))


def check(q, k, v, *, block_size=None, stats=ALL, **kw):
    """chunked == eager on everything, and == float64 on the main statistics."""
    call = _validate(q, k, v, causal=kw.pop("causal", True), scale=None, mask=kw.pop("mask", None),
                     query_mask=kw.pop("query_mask", None), sliding_window=kw.pop("sliding_window", None),
                     token_ids=kw.pop("token_ids", tokens(q.shape[0], k.shape[2])), stats=stats,
                     options=kw.pop("options", StatOptions()), edits=kw.pop("edits", None), block_size=block_size,
                     softcap=kw.pop("softcap", None), sinks=kw.pop("sinks", None))
    assert not kw, kw
    got, want = _chunked.run(call), _eager.run(call)
    assert got.meta["pool_factor"] == want.meta["pool_factor"]
    assert_matches(got, want, call, atol=ATOL)
    assert_float64(got, call, atol=ATOL)
    return got


# batch, heads, kv heads, query_pos, key_pos, head size, StatOptions
SHAPES = [
    pytest.param(1, 4, 2, 1, 9, 16, StatOptions(), id="decode-row"),
    pytest.param(1, 6, 2, 17, 17, 8, StatOptions(pool_max=5, sink_k=3), id="gqa3-n17-pool4"),
    pytest.param(1, 4, 4, 23, 36, 64, StatOptions(pool_max=5, window=4), id="mha-n23-offset13-pool8"),
    pytest.param(2, 4, 1, 61, 61, 16, StatOptions(pool_max=7, topk=5), id="mqa-b2-n61-pool9"),
]


@pytest.mark.parametrize("block_size", [None, 1, 5, 16, 1000])
@pytest.mark.parametrize("b,h,kv,nq,nk,d,options", SHAPES)
def test_every_statistic_matches_eager(b, h, kv, nq, nk, d, options, block_size):
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=nq + nk + d)
    check(q, k, v, options=options, block_size=block_size)


@pytest.mark.parametrize("block_size", [None, 3, 8])
def test_padding_sliding_window_and_per_head_mask(block_size):
    b, h, kv, n, d = 2, 4, 2, 29, 16
    q, k, v = qkv(b, h, kv, n, n, d, seed=11)
    qmask = torch.ones(b, n, dtype=torch.bool)
    qmask[1, 20:] = False  # right padding in the second row
    mask = qmask[:, None, None, :].expand(b, h, n, n).clone()
    mask[0, 3, 10, :] = False  # an empty row on one head
    got = check(q, k, v, query_mask=qmask, mask=mask, sliding_window=7,
                options=StatOptions(pool_max=6, window=5), block_size=block_size)
    assert got.lse[0, 3, 10] == -math.inf and (got.output[0, 3, 10] == 0).all()
    assert (got.stats["entropy"][1, :, 20:] == 0).all() and (got.stats["topk_idx"][1, :, 20:] == -1).all()


def test_not_causal_with_sliding_window_only():
    q, k, v = qkv(1, 3, 1, 19, 19, 8, seed=4)
    check(q, k, v, causal=False, block_size=4, options=StatOptions(pool_max=4))
    check(q, k, v, causal=True, sliding_window=5, block_size=6)


@pytest.mark.parametrize("block_size", [None, 7])
def test_edits(block_size):
    b, h, kv, nq, nk, d = 1, 4, 2, 33, 40, 16
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=5)
    bias = torch.randn(1, h, nk, generator=torch.Generator().manual_seed(6))
    bias[0, 0, 3] = -math.inf  # one key removed
    bias[0, 1, 1:] = -math.inf  # move-to-BOS: only key 0 left on head 1
    bias[0, 2, 0] = math.log(0.25)  # ZeroTuning-style scaling of the sink
    edits = HeadEdits(key_bias=bias, head_gate=torch.tensor([1.0, 0.0, 0.5, 2.0]),
                      head_add=torch.randn(h, d, generator=torch.Generator().manual_seed(7)))
    got = check(q, k, v, edits=edits, block_size=block_size, options=StatOptions(pool_max=9))
    assert torch.allclose(got.stats["sink_mass"][0, 1], torch.ones(nq))  # head 1 parked on BOS


def test_two_stage_topk_on_long_rows(monkeypatch):
    """Rows at or above TOPK_MIN_KEYS take the strided-chunk top-k; lower the threshold so
    that short test rows take it too (with a tail that does not fill a chunk)."""
    monkeypatch.setattr(_chunked, "TOPK_MIN_KEYS", 16)
    q, k, v = qkv(1, 3, 1, 53, 53, 8, seed=9)
    for kk in (1, 3, 8):
        check(q, k, v, options=StatOptions(topk=kk, pool_max=10), stats=("topk_idx", "topk_val", "entropy"))
    check(q, k, v, block_size=9)


def test_uniform_rows_closed_forms():
    """q = 0: row i is uniform over its i + 1 keys, so entropy = ln(i + 1), sink mass 1 / (i + 1),
    distance i / 2; the top-k lists the lowest keys (torch.topk keeps the first of equal values)."""
    n = 21
    q, k, v = qkv(1, 2, 1, n, n, 8, seed=3)
    s = check(q * 0, k, v, block_size=4, stats=("entropy", "sink_mass", "distance", "received")).stats
    i = torch.arange(n, dtype=torch.float32)
    torch.testing.assert_close(s["entropy"][0, 0], torch.log(i + 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(s["sink_mass"][0, 1], 1 / (i + 1), atol=1e-7, rtol=0)
    torch.testing.assert_close(s["distance"][0, 0], i / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(s["received"].sum(-1), torch.full((1, 2), float(n)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("stats", [("dup_token",), ("induction",)])
def test_one_token_statistic_alone(stats, causal):
    """Each token mass asked for on its own (the weight then holds a single slot)."""
    q, k, v = qkv(1, 4, 2, 37, 37, 8, seed=21)
    check(q, k, v, stats=stats, causal=causal, block_size=5)


# --- attention features of newer architectures: soft-capping (Gemma-2), learned sinks (gpt-oss) ---
FEATURES = [
    pytest.param(dict(softcap=5.0), id="softcap"),
    pytest.param(dict(sinks=torch.tensor([-2.0, 0.5, 3.0, 8.0, 1.0, -30.0])), id="sinks"),
    pytest.param(dict(softcap=4.0, sinks=torch.tensor([3.0, -1.0, 0.0, 2.0, 5.0, 1.0])), id="softcap+sinks"),
]


@pytest.mark.parametrize("block_size", [None, 4, 7])
@pytest.mark.parametrize("feature", FEATURES)
def test_softcap_and_sinks_match_eager_and_float64(feature, block_size):
    """Large logits (q scaled up) so that capping changes the pattern; large sinks take most of a row."""
    q, k, v = qkv(2, 6, 2, 19, 23, 16, seed=5)
    qm = torch.ones(2, 19, dtype=torch.bool)
    qm[1, 15:] = False
    edits = HeadEdits(key_bias=torch.zeros(6, 23).index_fill_(1, torch.tensor([0]), math.log(0.3)))
    got = check(3 * q, k, v, block_size=block_size, query_mask=qm, sliding_window=6, edits=edits,
                options=StatOptions(pool_max=6, topk=3), **feature)
    if "sinks" in feature:
        learned = got.stats["learned_sink_mass"]
        assert learned.max() > 0.9 and learned.min() >= 0  # some rows are mostly sink
        row_mass = got.stats["received"].sum(-1) + learned.sum(-1)  # real keys + sink = valid rows
        assert torch.allclose(row_mass, qm.sum(-1, keepdim=True).float().expand(2, 6), atol=1e-4)


def test_softcap_changes_the_pattern():
    """The test above would pass vacuously if the logits never reached the cap."""
    q, k, v = qkv(1, 4, 2, 9, 9, 16, seed=2)
    plain = _eager.run(_validate(4 * q, k, v, causal=True, scale=None, mask=None, query_mask=None,
                                 sliding_window=None, token_ids=None, stats=("entropy",), options=StatOptions(),
                                 edits=None, block_size=None))
    capped = _eager.run(_validate(4 * q, k, v, causal=True, scale=None, mask=None, query_mask=None,
                                  sliding_window=None, token_ids=None, stats=("entropy",), options=StatOptions(),
                                  edits=None, block_size=None, softcap=2.0))
    assert (plain.stats["entropy"] - capped.stats["entropy"]).abs().max() > 0.3


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("causal,nq", [(True, 23), (True, 9), (False, 23)])
def test_fast_path_honours_softcap_and_sinks(feature, causal, nq):
    """No statistics: the sdpa fast path (sinks folded in after the fact) or chunked (softcap)."""
    from lens.kernels import attention

    q, k, v = qkv(2, 6, 2, nq, 23, 16, seed=9)
    fast = attention(4 * q, k, v, causal=causal, backend="auto", **feature)
    ref = attention(4 * q, k, v, causal=causal, backend="eager", stats=("sink_mass",), **feature)
    torch.testing.assert_close(fast.output, ref.output, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.lse, ref.lse, atol=1e-5, rtol=0)
    if "softcap" not in feature:
        assert fast.meta.get("fast_path"), "sinks alone should keep the fused fast path"


def test_bad_softcap_and_sinks_are_refused():
    from lens.kernels import attention

    q, k, v = qkv(1, 4, 2, 5, 5, 8, seed=0)
    for bad in (0.0, -1.0, float("inf"), True, "50"):
        with pytest.raises(ValueError, match="softcap"):
            attention(q, k, v, softcap=bad)
    with pytest.raises(ValueError, match=r"sinks must be a float tensor \[head\] = \[4\]"):
        attention(q, k, v, sinks=torch.zeros(2))
