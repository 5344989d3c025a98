"""The Triton backend against the eager reference and a float64 reference, on irregular sizes.

On a machine without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1,
set below before anything imports triton): every program runs on numpy, one after
another, so the shapes are tiny and the tiles 16 or 32 wide (several tiles per row, so
the running-max rescaling and the causal tile skipping are exercised). With CUDA the same
tests run the compiled kernels. The module is skipped, with the reason, only when triton
cannot be imported.

Tolerances: fp32 inputs atol 1e-4 against both references (rtol 1e-5 for the position-
weighted sums ``distance``/``waad``, which reach ~100). fp16/bf16 inputs: the kernel
accumulates in fp32 from the exact 16-bit products like the eager reference does, so the
statistics keep atol 1e-4 in the interpreter and the 16-bit outputs may differ by one ulp
(rtol = eps of the type); on a GPU the output additionally passes p through the 16-bit type
for the tensor-core ``p @ v`` (output atol 2e-2 bf16 / 4e-3 fp16, statistics atol 1e-3).
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must precede the first import of triton's jit machinery (lens.kernels._triton imports it).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from skips import require  # noqa: E402

triton = require("triton")

import triton.language as tl  # noqa: E402

from lens.kernels import STAT_NAMES, HeadEdits, StatOptions, attention  # noqa: E402
from lens.kernels import _eager, _finish, _triton, _triton_common  # noqa: E402
from lens.kernels._api import Call, _validate  # noqa: E402
from _kernel_checks import assert_float64, assert_matches, reference64  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: Every statistic (``learned_sink_mass`` is 0 without sinks).
ALL = tuple(STAT_NAMES)


def blocks(width: int) -> tuple[_triton.Blocks, _triton.Blocks]:
    warps = 4 if DEVICE == "cuda" else 1
    b = _triton.Blocks(width, width, warps, 1)
    return b, b


def make_call(q, k, v, *, causal=True, mask=None, query_mask=None, sliding_window=None, token_ids=None,
              stats=ALL, options=StatOptions(), edits=None, softcap=None, sinks=None) -> Call:
    return _validate(q, k, v, causal=causal, scale=None, mask=mask, query_mask=query_mask,
                     sliding_window=sliding_window, token_ids=token_ids, stats=stats, options=options,
                     edits=edits, block_size=None, softcap=softcap, sinks=sinks)


def qkv(b, h, kv, nq, nk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g)
    k = torch.randn(b, kv, nk, d, generator=g)
    v = torch.randn(b, kv, nk, d, generator=g)
    # Bigger scores than N(0,1) queries give: sharper rows, so top-k and sinks are not flat.
    return (1.5 * q).to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def tokens(b, nk, vocab=5, seed=1):
    return torch.randint(0, vocab, (b, nk), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


# batch, heads, kv heads, query_pos, key_pos, head size, tile, StatOptions
PARITY = [
    pytest.param(1, 4, 2, 1, 9, 16, 16, StatOptions(), id="decode-row"),
    pytest.param(1, 4, 2, 17, 17, 16, 16, StatOptions(pool_max=5, sink_k=3), id="n17-pool4"),
    pytest.param(1, 4, 2, 17, 30, 64, 16, StatOptions(pool_max=5, window=4), id="n17-offset13-d64-pool6"),
    pytest.param(1, 2, 1, 64, 64, 16, 16, StatOptions(pool_max=3, topk=5), id="n64-pool22"),
    pytest.param(1, 4, 2, 64, 77, 64, 16, StatOptions(pool_max=32), id="n64-offset13-d64-pool3"),
    pytest.param(2, 4, 2, 100, 100, 16, 32, StatOptions(pool_max=8, sink_k=6), id="b2-n100-pool13"),
]


@pytest.mark.parametrize("b,h,kv,nq,nk,d,tile,options", PARITY)
def test_every_statistic_matches_eager_and_float64(b, h, kv, nq, nk, d, tile, options):
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=nq + nk)
    call = make_call(q, k, v, token_ids=tokens(b, nk), options=options)
    got = _triton.run(call, blocks=blocks(tile))
    want = _eager.run(call)
    assert got.meta["pool_factor"] == want.meta["pool_factor"]
    assert_matches(got, want, call)
    assert_float64(got, call)


def test_uniform_rows_give_closed_forms():
    """q = 0: row i is uniform over its pos_i + 1 keys (METHODS sec.1-4), across three tiles;
    every score ties, and the top-k lists the lowest keys first."""
    nq, nk, kk = 37, 41, 5
    q, k, v = qkv(1, 2, 1, nq, nk, 16, seed=17)
    call = make_call(q * 0, k, v, stats=("entropy", "sink_mass", "received", "distance", "topk_idx", "topk_val"),
                     options=StatOptions(topk=kk))
    s = _triton.run(call, blocks=blocks(16)).stats
    pos = torch.arange(nk - nq, nk, device=DEVICE, dtype=torch.float64)
    close = lambda a, b: torch.testing.assert_close(a.double(), b.expand_as(a), atol=1e-5, rtol=0)  # noqa: E731
    close(s["entropy"], torch.log(pos + 1))
    close(s["sink_mass"], 1 / (pos + 1))
    close(s["distance"], pos / 2)
    close(s["topk_val"], (1 / (pos + 1))[:, None].expand(nq, kk))
    assert (s["topk_idx"] == torch.arange(kk, device=DEVICE)).all()
    j = torch.arange(nk, device=DEVICE, dtype=torch.float64)
    close(s["received"], ((pos[None, :] >= j[:, None]) / (pos + 1)[None, :]).sum(-1))


@pytest.mark.parametrize("tile", [16, 32])
def test_topk_from_span_maxima_keeps_the_tie_order(tile):
    """Pass 1 keeps each row's k key spans (16 keys) with the largest maxima; a second kernel
    rescans them. One query row, scores set by hand (s_j = val_j / 4, exact in fp32) over 96
    keys; tile 16 holds one span, tile 32 two."""
    nk, d = 96, 16
    q = torch.eye(d)[0].reshape(1, 1, 1, d).to(DEVICE)
    v = torch.randn(1, 1, nk, d, generator=torch.Generator().manual_seed(3)).to(DEVICE)

    def top(val: dict[int, float], kk: int) -> list[int]:
        row = torch.zeros(nk)
        for j, x in val.items():
            row[j] = x
        k = (row[:, None] * torch.eye(d)[0])[None, None].to(DEVICE)
        call = make_call(q, k, v, stats=("topk_idx", "topk_val"), options=StatOptions(topk=kk))
        got = _triton.run(call, blocks=blocks(tile))
        # torch.topk (eager) may order tied keys either way: the values must agree, the
        # kernels' lower-key-first order is checked against the lists below.
        torch.testing.assert_close(got.stats["topk_val"], _eager.run(call).stats["topk_val"], atol=1e-6, rtol=0)
        return got.stats["topk_idx"][0, 0, 0].tolist()

    # Spans 0 and 1 tie at their maxima (keys 3 and 20) and fill k = 2; key 40 then beats
    # both: the later span must leave, so the tie goes to key 3.
    assert top({3: 5.0, 20: 5.0, 40: 7.0}, 2) == [40, 3]
    # Span 3 holds three of the top keys; the ties at 5 fill the last slots lower key first.
    many = {3: 5.0, 20: 5.0, 40: 7.0, 50: 9.0, 51: 8.5, 60: 8.0}
    assert top(many, 4) == [50, 51, 60, 40]
    assert top(many, 6) == [50, 51, 60, 40, 3, 20]
    assert top(many, 8) == [50, 51, 60, 40, 3, 20, 0, 1]  # then the zeros, lowest keys first


def test_token_rows_built_once_a_tensor_and_rebuilt_when_it_changes():
    """dup_token / induction read the ids as padded int32 rows that _token_rows keeps per ids
    tensor (a capture passes one tensor to every layer). Reused: same answer as eager;
    changed in place: rebuilt, and the new ids counted, not the stale copy."""
    stats = ("dup_token", "induction")
    q, k, v = qkv(1, 2, 1, 40, 40, 16, seed=3)
    ids = tokens(1, 40, vocab=3)
    first = make_call(q, k, v, token_ids=ids, stats=stats)
    got1 = _triton.run(first, blocks=blocks(16))
    padded = _triton._TOKEN_ROWS[id(first.token_ids)][3]
    assert padded.shape == (1, 2, 48) and padded[0, 1, 0] == -1 and (padded[0, :, 40:] == -1).all()
    got2 = _triton.run(make_call(q * 0.5, k, v, token_ids=ids, stats=stats), blocks=blocks(16))
    assert _triton._TOKEN_ROWS[id(first.token_ids)][3] is padded  # built once
    assert_matches(got1, _eager.run(first), first)
    assert not torch.equal(got1.stats["dup_token"], got2.stats["dup_token"])  # different q: different sums
    first.token_ids[0, ::2] = 7  # in place: every other key now matches no query token of the old ids
    again = make_call(q, k, v, token_ids=first.token_ids, stats=stats)
    got3 = _triton.run(again, blocks=blocks(16))
    assert _triton._TOKEN_ROWS[id(first.token_ids)][3] is not padded
    assert_matches(got3, _eager.run(again), again)
    assert not torch.allclose(got3.stats["dup_token"], got1.stats["dup_token"])
    key = id(first.token_ids)
    del first, again, ids
    assert key not in _triton._TOKEN_ROWS  # the padded copy goes with its ids tensor


def test_head_sizes_128_and_odd():
    for d in (128, 14):
        q, k, v = qkv(1, 2, 1, 20, 23, d, seed=d)
        call = make_call(q, k, v, token_ids=tokens(1, 23), stats=("entropy", "received", "topk_idx", "topk_val"))
        assert_matches(_triton.run(call, blocks=blocks(16)), _eager.run(call), call)


def test_edits_key_bias_move_to_bos_gate_and_add():
    b, h, kv, nq, nk, d = 1, 4, 2, 33, 40, 16
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=5)
    g = torch.Generator().manual_seed(6)
    bias = torch.randn(1, h, nk, generator=g)
    bias[0, 0, 3] = -math.inf  # one key removed
    bias[0, 1, 1:] = -math.inf  # move-to-BOS: only key 0 left on head 1
    bias[0, 2, 0] = math.log(0.25)  # ZeroTuning-style scaling of the sink
    edits = HeadEdits(key_bias=bias.to(DEVICE), head_gate=torch.tensor([1.0, 0.0, 0.5, 2.0]).to(DEVICE),
                      head_add=torch.randn(h, d, generator=g).to(DEVICE))
    call = make_call(q, k, v, token_ids=tokens(b, nk), edits=edits, options=StatOptions(pool_max=10))
    got = _triton.run(call, blocks=blocks(16))
    assert_matches(got, _eager.run(call), call)
    assert_float64(got, call)
    assert torch.allclose(got.stats["sink_mass"][0, 1], torch.ones(nq, device=DEVICE))
    assert (got.stats["topk_idx"][0, 1, :, 1:] == -1).all()


def test_edits_without_statistics():
    q, k, v = qkv(2, 4, 2, 21, 21, 16, seed=7)
    bias = torch.zeros(2, 1, 21)
    bias[1, 0, 5:9] = -1e30  # "at or below -1e30 counts as -inf"
    edits = HeadEdits(key_bias=bias.to(DEVICE), head_gate=torch.tensor([0.0, 1.0, 1.0, 3.0]).to(DEVICE))
    call = make_call(q, k, v, stats=(), edits=edits)
    got = _triton.run(call, blocks=blocks(16))
    assert got.stats == {}
    assert_matches(got, _eager.run(call), call)


def test_padding_rows_enter_no_statistic():
    b, h, kv, nq, nk, d = 2, 4, 2, 30, 30, 16
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=8)
    query_mask = torch.ones(b, nq, dtype=torch.bool)
    query_mask[1, 19:] = False  # right padding, as lens.capture pads
    query_mask[0, 4] = False
    call = make_call(q, k, v, token_ids=tokens(b, nk), query_mask=query_mask.to(DEVICE),
                     options=StatOptions(pool_max=7))
    got = _triton.run(call, blocks=blocks(16))
    assert_matches(got, _eager.run(call), call)
    assert_float64(got, call)
    assert (got.stats["entropy"][1, :, 19:] == 0).all() and (got.stats["topk_idx"][1, :, 19:] == -1).all()


def test_sliding_window_and_per_head_mask_with_empty_row():
    b, h, kv, nq, nk, d = 1, 4, 2, 40, 45, 16
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=9)
    g = torch.Generator().manual_seed(10)
    mask = torch.rand(1, h, nq, nk, generator=g) > 0.3
    mask[0, 2, 7] = False  # a row that sees no key: output 0, lse -inf, no statistic
    call = make_call(q, k, v, mask=mask.to(DEVICE), sliding_window=9, token_ids=tokens(b, nk),
                     options=StatOptions(pool_max=12))
    got = _triton.run(call, blocks=blocks(16))
    assert_matches(got, _eager.run(call), call)
    assert_float64(got, call)
    assert got.lse[0, 2, 7] == -math.inf and (got.output[0, 2, 7] == 0).all()
    assert got.stats["visible"].shape == (b, h, nk)


def test_sliding_window_without_mask():
    q, k, v = qkv(1, 2, 1, 50, 50, 16, seed=11)
    call = make_call(q, k, v, sliding_window=12, token_ids=tokens(1, 50), options=StatOptions(pool_max=16))
    assert_matches(_triton.run(call, blocks=blocks(16)), _eager.run(call), call)


def test_not_causal_with_query_offset():
    q, k, v = qkv(1, 2, 2, 19, 35, 16, seed=12)
    call = make_call(q, k, v, causal=False, token_ids=tokens(1, 35), options=StatOptions(pool_max=9))
    assert_matches(_triton.run(call, blocks=blocks(16)), _eager.run(call), call)


def test_pattern_of_chosen_heads_and_rows():
    q, k, v = qkv(1, 4, 2, 30, 36, 16, seed=13)
    opts = StatOptions(pattern_heads=(3, 1), pattern_window=(5, 22))
    call = make_call(q, k, v, stats=("pattern", "entropy"), options=opts, query_mask=torch.rand(1, 30).to(DEVICE) > 0.2)
    assert_matches(_triton.run(call, blocks=blocks(16)), _eager.run(call), call)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_inputs(dtype):
    b, h, kv, nq, nk, d = 1, 4, 2, 24, 29, 16
    q, k, v = qkv(b, h, kv, nq, nk, d, dtype=dtype, seed=14)
    call = make_call(q, k, v, token_ids=tokens(b, nk), options=StatOptions(pool_max=10))
    got = _triton.run(call, blocks=blocks(16))
    assert got.output.dtype == dtype
    on_gpu = DEVICE == "cuda"
    # Both round an fp32 output to the 16-bit type: one ulp apart where the fp32 values straddle a rounding edge.
    out_atol = (2e-2 if dtype == torch.bfloat16 else 4e-3) if on_gpu else 1e-4
    assert_matches(got, _eager.run(call), call, atol=1e-3 if on_gpu else 1e-4, out_atol=out_atol,
                   out_rtol=torch.finfo(dtype).eps)


def test_invariants():
    b, h, kv, nq, nk, d = 2, 2, 1, 70, 70, 16
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=15)
    query_mask = torch.ones(b, nq, dtype=torch.bool)
    query_mask[1, 50:] = False
    call = make_call(q, k, v, query_mask=query_mask.to(DEVICE), token_ids=tokens(b, nk),
                     stats=("received", "entropy", "sink_mass", "sink_mass_k", "topk_val", "pooled", "visible"),
                     options=StatOptions(pool_max=16))
    r = _triton.run(call, blocks=blocks(32))
    n_valid = query_mask.sum(1).to(DEVICE).float()
    torch.testing.assert_close(r.stats["received"].sum(-1), n_valid[:, None].expand(b, h), atol=1e-4, rtol=0)
    ent = r.stats["entropy"]
    assert (ent >= -1e-5).all() and (ent <= torch.log(torch.arange(1, nq + 1, device=DEVICE).float()) + 1e-5).all()
    for name in ("sink_mass", "sink_mass_k"):
        assert ((r.stats[name] >= 0) & (r.stats[name] <= 1 + 1e-6)).all()
    assert (r.stats["sink_mass"] <= r.stats["sink_mass_k"] + 1e-6).all()
    assert (r.stats["topk_val"].sum(-1) <= 1 + 1e-5).all()
    assert (r.stats["received"] <= r.stats["visible"][:, None] + 1e-5).all()
    f = r.meta["pool_factor"]
    cells = _finish.cell_counts(nq, nk, f, r.stats["pooled"].shape[-2:], DEVICE)
    torch.testing.assert_close((r.stats["pooled"] * cells).sum((-1, -2)), n_valid[:, None].expand(b, h),
                               atol=1e-4, rtol=0)


def test_public_entry_point():
    q, k, v = qkv(1, 2, 1, 18, 18, 16, seed=16)
    got = attention(q, k, v, stats=("entropy", "received"), backend="triton")
    assert got.meta["backend"] == "triton"
    want = attention(q, k, v, stats=("entropy", "received"), backend="eager")
    torch.testing.assert_close(got.output, want.output, atol=1e-4, rtol=0)
    for name in ("entropy", "received"):
        torch.testing.assert_close(got.stats[name], want.stats[name], atol=1e-4, rtol=0)


# ---- Gemma-2 soft-capping and gpt-oss learned sinks

#: Query scale that makes raw scores reach ~90, so that softcap=50 changes them a lot.
LOUD = 16.0
#: Sink logits per head (natural units): one that takes most of the early rows' mass, one
#: that takes little, one in between, and -inf (the same as no sink on that head).
SINKS = (3.0, -2.0, 0.5, -math.inf)
#: The same roles on LOUD, capped scores (|s| < 50): the sinks are not capped, so 35 > what
#: any capped key reaches on many rows.
LOUD_SINKS = (35.0, -2.0, 20.0, -math.inf)


def _sink_case(name: str) -> Call:
    """One soft-cap / sink scenario (16-wide tiles: two per axis); every statistic is asked for."""
    b, h, kv, nq, nk, d = 1, 4, 2, 20, 27, 16
    kw: dict = dict(options=StatOptions(pool_max=10, sink_k=3, window=5))
    if name == "softcap-gqa":
        kw.update(softcap=50.0)
    elif name == "sinks-gqa":
        kw.update(sinks=SINKS)
    elif name == "both-decode-row":
        nq, nk = 1, 37
        kw.update(softcap=50.0, sinks=(45.0,) + LOUD_SINKS[1:])  # one row: a sink near the cap, to matter
    elif name == "both-padding-edits":
        b = 2
        query_mask = torch.ones(b, nq, dtype=torch.bool)
        query_mask[1, 14:] = False
        query_mask[0, 6] = False
        g = torch.Generator().manual_seed(21)
        bias = torch.randn(1, h, nk, generator=g)
        bias[0, 0, 2] = -math.inf  # one key removed
        bias[0, 1, 1:] = -math.inf  # move-to-BOS
        bias[0, 2] = -200.0  # every key visible but drowned by the sink: l underflows, the row still counts
        edits = HeadEdits(key_bias=bias.to(DEVICE), head_gate=torch.tensor([1.0, 0.5, 2.0, 1.0]).to(DEVICE),
                          head_add=torch.randn(h, d, generator=g).to(DEVICE))
        kw.update(softcap=50.0, sinks=LOUD_SINKS, query_mask=query_mask.to(DEVICE), edits=edits)
    elif name == "both-window-mask-empty-row":
        mask = torch.rand(1, h, nq, nk, generator=torch.Generator().manual_seed(22)) > 0.3
        mask[0, 0, 5] = False  # a row with no key on the head with the biggest sink: lse -inf, output 0
        kw.update(softcap=50.0, sinks=LOUD_SINKS, sliding_window=9, mask=mask.to(DEVICE))
    else:
        raise ValueError(name)
    q, k, v = qkv(b, h, kv, nq, nk, d, seed=nq + nk + len(name))
    if "softcap" in kw:
        q = q * LOUD
    if "sinks" in kw:
        kw["sinks"] = torch.tensor(kw["sinks"], device=DEVICE)
    stats = ALL
    return make_call(q, k, v, token_ids=tokens(b, nk), stats=stats, **kw)


SINK_CASES = ["softcap-gqa", "sinks-gqa", "both-decode-row", "both-padding-edits", "both-window-mask-empty-row"]


@pytest.mark.parametrize("name", SINK_CASES)
def test_softcap_and_sinks_match_eager_and_float64(name):
    """Every statistic (learned_sink_mass included) against eager; output, lse, entropy,
    received, sink_mass, distance and learned_sink_mass against float64; and the sink's
    share of each row: received sums to sum over valid rows of 1 - learned_sink_mass."""
    call = _sink_case(name)
    got = _triton.run(call, blocks=blocks(16))
    errs = assert_matches(got, _eager.run(call), call)
    assert_float64(got, call)
    valid = torch.isfinite(got.lse)
    if call.query_mask is not None:
        valid &= call.query_mask[:, None, :]
    if call.softcap is not None:  # the cap really bites on these inputs
        uncapped = _eager.run(dataclasses.replace(call, softcap=None, stats=()))
        assert (uncapped.lse - got.lse)[torch.isfinite(got.lse)].abs().max() > 5
    if call.sinks is not None:
        learned = got.stats["learned_sink_mass"]
        ref = reference64(call)["learned_sink_mass"]
        torch.testing.assert_close(learned.double(), ref, atol=1e-5, rtol=0)
        errs["learned_sink_mass_f64"] = (learned.double() - ref).abs().max().item()
        assert learned.max() > 0.5 and (learned[:, 3] == 0).all()  # a big share somewhere; none at -inf
        torch.testing.assert_close(got.stats["received"].sum(-1), valid.sum(-1) - learned.sum(-1), atol=1e-4, rtol=0)
    print(name, {n: f"{e:.1e}" for n, e in errs.items()})
    if name == "both-padding-edits":  # head 2: every key drowned, the sink takes everything
        torch.testing.assert_close(learned[:, 2], valid[:, 2].float(), atol=0, rtol=0)
        torch.testing.assert_close(got.lse[:, 2], torch.full_like(got.lse[:, 2], LOUD_SINKS[2]), atol=1e-5, rtol=0)
        assert (got.stats["entropy"][:, 2] == 0).all()
        assert (got.output[:, 2] == call.head_add[2]).all()  # gate * 0 + add
    if name == "both-window-mask-empty-row":
        assert got.lse[0, 0, 5] == -math.inf and (got.output[0, 0, 5] == 0).all()
        assert got.stats["learned_sink_mass"][0, 0, 5] == 0


def test_uniform_rows_with_sinks_give_closed_forms():
    """q = 0 (softcap on: tanh(0) = 0): row i spreads 1 - m over its n = pos_i + 1 keys, where
    the sink logit sigma takes m = e^sigma / (n + e^sigma); entropy and waad must use that
    real-key mass, not 1."""
    nq, nk, w = 20, 23, 5
    q, k, v = qkv(1, 2, 1, nq, nk, 16, seed=18)
    sigma = torch.tensor([3.0, -2.0], dtype=torch.float64)
    call = make_call(q * 0, k, v, stats=("entropy", "sink_mass", "distance", "waad", "learned_sink_mass"),
                     options=StatOptions(window=w), softcap=50.0, sinks=sigma.float().to(DEVICE))
    r = _triton.run(call, blocks=blocks(16))
    pos = torch.arange(nk - nq, nk, dtype=torch.float64)[None, :]
    n = pos + 1
    z = n + sigma.exp()[:, None]  # [head, q]
    p = 1 / z
    d = torch.arange(nk, dtype=torch.float64)  # distances 0..pos
    waad = torch.stack([d[: int(c)].clamp_max(w).sum() for c in n[0]])[None, :] * p
    close = lambda a, b: torch.testing.assert_close(a[0].double().cpu(), b, atol=1e-5, rtol=1e-6)  # noqa: E731
    close(r.lse, torch.log(z))
    close(r.stats["learned_sink_mass"], sigma.exp()[:, None] / z)
    close(r.stats["sink_mass"], p)
    close(r.stats["entropy"], n * p * torch.log(z))
    close(r.stats["distance"], pos / 2 * n * p)
    close(r.stats["waad"], waad)


def test_public_entry_point_with_softcap_and_sinks():
    q, k, v = qkv(1, 2, 1, 18, 18, 16, seed=19)
    kw = dict(stats=("entropy", "learned_sink_mass", "received"), softcap=20.0,
              sinks=torch.tensor([1.0, -1.0], device=DEVICE))
    got = attention(q * LOUD, k, v, backend="triton", **kw)
    want = attention(q * LOUD, k, v, backend="eager", **kw)
    assert got.meta["backend"] == "triton"
    torch.testing.assert_close(got.output, want.output, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.lse, want.lse, atol=1e-4, rtol=0)
    for name in kw["stats"]:
        torch.testing.assert_close(got.stats[name], want.stats[name], atol=1e-4, rtol=0)


@triton.jit
def _tanh_probe(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, _triton_common._tanh(tl.load(X + offs)))


def test_kernel_tanh_is_accurate():
    """The soft-cap's exp2-built tanh, against float64, to < 1e-6 relative: across zero (where
    1 - 2 / (e^2x + 1) alone would cancel), the branch point and saturation."""
    n = 4096
    tiny = torch.logspace(-8, 1, n // 4, dtype=torch.float64)
    x = torch.cat([torch.linspace(-12, 12, n // 2, dtype=torch.float64), tiny, -tiny]).float()
    y = torch.empty_like(x)
    x, y = x.to(DEVICE), y.to(DEVICE)
    _tanh_probe[(1,)](x, y, N=n)
    want = torch.tanh(x.double())
    rel = ((y.double() - want).abs() / want.abs().clamp_min(1e-30)).max().item()
    assert rel < 1e-6, rel
