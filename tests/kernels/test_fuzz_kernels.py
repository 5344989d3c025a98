"""Fuzzing the attention function: every backend equals ``backend="eager"`` on random inputs.

Hypothesis draws the geometry (batch 1-2, kv heads 1-3, GQA group 1-3, query_pos <= key_pos
<= 40, head sizes 4-16, a KV-cache offset when query_pos < key_pos) and the features that
change the pattern: causal or not, sliding windows, bool masks (per key, per head with
fully masked rows), padding by ``query_mask``, soft-capping, learned sinks, ``HeadEdits``
(key_bias with removed keys, head_gate, head_add), ``StatOptions`` and the chunked block
size. The tensors come from ``torch.randn`` under a drawn seed, so scores are distinct and
``topk_idx`` is compared exactly; where a tie still occurs (soft-capping saturates tanh to
the same value) the indices may differ only between keys of equal probability.

Checked: "chunked" with every statistic in ``STAT_NAMES``, the no-statistics fast path
(``backend="auto"``, ``stats=()``) and, marked ``triton`` and with a tenth of the examples,
the Triton kernels (under TRITON_INTERPRET=1 without CUDA) against eager on output, lse
(where finite) and every statistic, atol 1e-4. Example counts follow the hypothesis profile
in conftest.py ("ci" by default, "deep" with --hypothesis-profile=deep).
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from skips import needs, require

if not torch.cuda.is_available():
    # Must precede the first import of triton's jit machinery (lens.kernels._triton imports it).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from _kernel_checks import assert_matches  # noqa: E402
require("hypothesis")  # noqa
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lens.kernels import STAT_NAMES, HeadEdits, StatOptions, attention  # noqa: E402
from lens.kernels._api import _validate  # noqa: E402

ALL = tuple(STAT_NAMES)
ATOL = 1e-4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: The Triton interpreter runs every program on numpy: a tenth of the profile's examples.
TRITON_EXAMPLES = max(2, settings.default.max_examples // 10)


@st.composite
def cases(draw, max_keys: int = 40) -> dict:
    """Keyword arguments of one ``attention`` call (tensors on the CPU, built from a drawn seed)."""
    b, kvh, group = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = kvh * group
    nk = draw(st.integers(1, max_keys))
    nq = draw(st.integers(1, nk))
    d, dv = draw(st.integers(4, 16)), draw(st.integers(4, 16))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))
    sharp = draw(st.sampled_from([1.0, 1.5, 4.0]))  # 4.0: large logits, so soft-capping bites
    kw: dict = dict(q=sharp * torch.randn(b, h, nq, d, generator=gen), k=torch.randn(b, kvh, nk, d, generator=gen),
                    v=torch.randn(b, kvh, nk, dv, generator=gen), causal=draw(st.booleans()))
    kw["token_ids"] = torch.randint(0, draw(st.integers(1, 6)), (b, nk), generator=gen)
    kw["sliding_window"] = draw(st.none() | st.integers(1, nk + 2))

    mask_kind = draw(st.sampled_from(["none", "keys", "per_head", "empty_rows"]))
    if mask_kind == "keys":  # [batch, 1, 1, key_pos], e.g. left padding of the keys
        kw["mask"] = torch.rand(b, 1, 1, nk, generator=gen) < 0.8
    elif mask_kind == "per_head":  # a head dimension: ``visible`` becomes [b, h, k]
        kw["mask"] = torch.rand(b, h, nq, nk, generator=gen) < draw(st.sampled_from([0.3, 0.7, 0.95]))
    elif mask_kind == "empty_rows":  # some rows see no key at all: output 0, lse -inf
        mask = torch.ones(b, h, nq, nk, dtype=torch.bool)
        mask[torch.rand(b, h, nq, generator=gen) < 0.3] = False
        kw["mask"] = mask
    if draw(st.booleans()):
        qm = torch.rand(b, nq, generator=gen) < 0.7
        qm[:, 0] = True
        kw["query_mask"] = qm

    kw["softcap"] = draw(st.none() | st.sampled_from([1.0, 2.5, 10.0]))
    if draw(st.booleans()):
        kw["sinks"] = 3 * torch.randn(h, generator=gen)

    key_bias = head_gate = head_add = None
    if draw(st.booleans()):
        shape = draw(st.sampled_from([(nk,), (h, nk), (b, h, nk), (b, 1, nk)]))
        key_bias = torch.randn(*shape, generator=gen)
        key_bias[torch.rand(*shape, generator=gen) < 0.2] = -math.inf  # removed keys
    if draw(st.booleans()):
        head_gate = torch.rand(h, generator=gen) * 2
        head_gate[0] = 0.0  # zero ablation of one head
    if draw(st.booleans()):
        head_add = torch.randn(h, dv, generator=gen)
    if key_bias is not None or head_gate is not None or head_add is not None:
        kw["edits"] = HeadEdits(key_bias=key_bias, head_gate=head_gate, head_add=head_add)

    pattern_heads = draw(st.none() | st.lists(st.integers(0, h - 1), min_size=1, max_size=h, unique=True))
    start = draw(st.integers(0, nq))
    pattern_window = draw(st.none() | st.just((start, start + draw(st.integers(1, nq + 1)))))
    kw["options"] = StatOptions(sink_k=draw(st.integers(1, 5)), window=draw(st.integers(1, 12)),
                                topk=draw(st.integers(1, 10)), pool_max=draw(st.integers(1, 12)),
                                pattern_heads=pattern_heads, pattern_window=pattern_window)
    kw["block_size"] = draw(st.none() | st.integers(1, nq + 3))
    return kw


def run(kw: dict, **over):
    """``attention`` on ``kw`` with ``over`` replacing entries; tensors moved to ``DEVICE``."""
    args = {**kw, **over}
    if DEVICE != "cpu":
        args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        if args.get("edits") is not None:
            e = args["edits"]
            args["edits"] = HeadEdits(*(None if t is None else t.to(DEVICE) for t in (e.key_bias, e.head_gate,
                                                                                        e.head_add)))
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return attention(q, k, v, **args)


def the_call(kw: dict, stats):
    """The validated ``Call`` (what assert_matches compares against)."""
    args = {k: v for k, v in kw.items() if k not in ("q", "k", "v")}
    args.setdefault("scale", None)
    for name in ("mask", "query_mask", "sliding_window", "edits", "block_size", "softcap", "sinks"):
        args.setdefault(name, None)
    return _validate(kw["q"], kw["k"], kw["v"], **{**args, "stats": stats})


def assert_equal_to_eager(got, want, kw: dict) -> None:
    """assert_matches on everything; ``topk_idx`` may differ only where the probabilities tie."""
    call = the_call(kw, ALL)
    rest = tuple(s for s in ALL if s != "topk_idx")
    drop = lambda r: dataclasses.replace(r, stats={n: t for n, t in r.stats.items() if n != "topk_idx"})  # noqa: E731
    assert_matches(drop(got), drop(want), dataclasses.replace(call, stats=rest), atol=ATOL)
    a, b = got.stats["topk_idx"].cpu(), want.stats["topk_idx"].cpu()
    assert a.shape == b.shape and a.dtype == b.dtype == torch.int64
    if torch.equal(a, b):
        return
    # Ties: the full eager pattern (every head, every row) must give the same probability at both indices.
    assert torch.equal(a < 0, b < 0), "a different number of visible keys in the top-k"
    p = run(kw, backend="eager", stats=("pattern",), options=dataclasses.replace(
        kw["options"], pattern_heads=None, pattern_window=None)).stats["pattern"].cpu()
    ok = b >= 0
    pa, pb = p.gather(-1, a.clamp_min(0)), p.gather(-1, b.clamp_min(0))
    torch.testing.assert_close(pa[ok], pb[ok], atol=ATOL, rtol=0, msg=lambda m: f"topk_idx beyond a tie: {m}")


SETTINGS = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(**SETTINGS)
@given(kw=cases())
def test_chunked_equals_eager(kw):
    decade = 10 * (kw["k"].shape[2] // 10)
    event(f"key_pos {decade}-{decade + 9}")  # the sizes drawn: pytest --hypothesis-show-statistics
    want = run(kw, backend="eager", stats=ALL)
    got = run(kw, backend="chunked", stats=ALL)
    assert got.meta["pool_factor"] == want.meta["pool_factor"]
    assert_equal_to_eager(got, want, kw)


@settings(**SETTINGS)
@given(kw=cases())
def test_fast_path_equals_eager(kw):
    """No statistics: the fused fast path (sdpa) or, where it cannot serve the call, eager/chunked."""
    want = run(kw, backend="eager", stats=ALL)
    for backend in ("auto", "chunked"):
        got = run(kw, backend=backend, stats=())
        assert got.stats == {}
        assert_matches(got, want, the_call(kw, ()), atol=ATOL)


@pytest.mark.triton
@needs("triton")
@settings(max_examples=TRITON_EXAMPLES, **SETTINGS)
@given(kw=cases(max_keys=24))
def test_triton_equals_eager(kw):
    kw = {**kw, "block_size": None}  # the chunked query block; Triton sizes its own tiles
    want = run(kw, backend="eager", stats=ALL)
    got = run(kw, backend="triton", stats=ALL)
    assert_equal_to_eager(got, want, kw)


def test_fast_path_with_value_heads_of_another_size():
    """Found by test_fast_path_equals_eager: d_v != d_head made the CPU flash kernel raise
    ("Q/K/V should have the same head size"); such calls now take the chunked backend."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, 5, 8, generator=g), torch.randn(1, 2, 7, 8, generator=g), torch.randn(1, 2, 7, 5,
                                                                                                       generator=g)
    fast, ref = attention(q, k, v, backend="auto"), attention(q, k, v, backend="eager", stats=("entropy",))
    torch.testing.assert_close(fast.output, ref.output, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.lse, ref.lse, atol=1e-5, rtol=0)
