"""The eager (reference) backend against numbers computed by hand, torch sdpa and float64.

Hand cases use q = 0, which makes every row uniform over the keys it may see, so
each statistic has a closed form (docs/METHODS.md sec.1-4, 10); sizes are odd and
distinct so that transposed axes cannot pass by accident.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from beartype import beartype
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from lens import kernels
from lens.kernels import STAT_NAMES, AttentionResult, StatOptions, attention

ALL = tuple(STAT_NAMES)


def close(actual: Tensor, expected, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected.expand_as(actual), atol=atol, rtol=rtol)


def uniform(b: int, h: int, kv: int, nq: int, nk: int, d: int = 5, seed: int = 0):
    """q = 0 (uniform rows) and random k, v with distinct odd sizes."""
    g = torch.Generator().manual_seed(seed)
    return (torch.zeros(b, h, nq, d), torch.randn(b, kv, nk, d, generator=g),
            torch.randn(b, kv, nk, d, generator=g))


def test_uniform_causal_3x3_by_hand():
    q, k, v = uniform(1, 1, 1, 3, 3)
    opt = StatOptions(sink_k=2, window=1, topk=2, pool_max=2)
    res = attention(q, k, v, stats=ALL, token_ids=torch.tensor([[5, 5, 7]]), options=opt, backend="eager")
    s = res.stats
    close(s["entropy"], [[[0.0, math.log(2), math.log(3)]]])
    close(s["entropy_norm"], [[[0.0, 1.0, 1.0]]])
    close(s["sink_mass"], [[[1.0, 1 / 2, 1 / 3]]])
    close(s["sink_mass_k"], [[[1.0, 1.0, 2 / 3]]])
    close(s["received"], [[[1 + 1 / 2 + 1 / 3, 1 / 2 + 1 / 3, 1 / 3]]])  # H_3, ...
    close(s["visible"], [[3.0, 2.0, 1.0]])
    close(s["received"] / s["visible"][:, None], [[[(1 + 1 / 2 + 1 / 3) / 3, 5 / 12, 1 / 3]]])  # alpha_j
    close(s["distance"], [[[0.0, 0.5, 1.0]]])  # mean of i - j over j <= i
    close(s["waad"], [[[0.0, 0.5, 2 / 3]]])  # min(i - j, 1)
    close(s["prev_token"], [[[0.0, 1 / 2, 1 / 3]]])
    close(s["diag_mass"], [[[1.0, 1 / 2, 1 / 3]]])
    close(s["dup_token"], [[[0.0, 1 / 2, 0.0]]])  # row 1 (tok 5) sees the earlier 5
    close(s["induction"], [[[0.0, 1 / 2, 0.0]]])  # row 1: key 1 follows a 5
    close(s["topk_val"], [[[[1.0, 0.0], [1 / 2, 1 / 2], [1 / 3, 1 / 3]]]])
    assert s["topk_idx"][0, 0, 0].tolist() == [0, -1]
    assert sorted(s["topk_idx"][0, 0, 1].tolist()) == [0, 1]
    # pool factor ceil(3 / 2) = 2: [[(1 + 0 + 1/2 + 1/2) / 4, 0 / 2], [(1/3 + 1/3) / 2, 1/3 / 1]]
    assert res.meta["pool_factor"] == 2
    close(s["pooled"], [[[[0.5, 0.0], [1 / 3, 1 / 3]]]])
    close(s["pattern"], [[[[1.0, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3]]]])
    close(res.lse, [[[0.0, math.log(2), math.log(3)]]])
    close(res.output[0, 0], torch.cumsum(v[0, 0], 0) / torch.arange(1, 4)[:, None], atol=1e-6)


def test_token_patterns_by_hand():
    q, k, v = uniform(1, 1, 1, 5, 5)
    tok = torch.tensor([[1, 2, 1, 2, 1]])
    s = attention(q, k, v, stats=("dup_token", "induction"), token_ids=tok, backend="eager").stats
    # dup: row 2 (tok 1) -> key 0; row 3 (tok 2) -> key 1; row 4 (tok 1) -> keys 0, 2
    close(s["dup_token"], [[[0.0, 0.0, 1 / 3, 1 / 4, 2 / 5]]])
    # induction: key j counts when tok[j-1] == tok[i]; row 2: j=1; row 3: j=2; row 4: j=1, 3
    close(s["induction"], [[[0.0, 0.0, 1 / 3, 1 / 4, 2 / 5]]])


def test_sliding_window_by_hand():
    q, k, v = uniform(1, 1, 1, 5, 5)
    s = attention(q, k, v, sliding_window=2, stats=ALL, token_ids=torch.zeros(1, 5, dtype=torch.long),
                  backend="eager").stats
    close(s["entropy"], [[[0.0] + [math.log(2)] * 4]])
    close(s["entropy_norm"], [[[0.0, 1.0, 1.0, 1.0, 1.0]]])
    close(s["sink_mass"], [[[1.0, 0.5, 0.0, 0.0, 0.0]]])
    close(s["visible"], [[2.0, 2.0, 2.0, 2.0, 1.0]])
    close(s["received"], [[[1.5, 1.0, 1.0, 1.0, 0.5]]])


def test_kv_cache_offset_by_hand():
    """3 queries at the end of 7 keys sit at positions 4, 5, 6."""
    q, k, v = uniform(1, 1, 1, 3, 7)
    res = attention(q, k, v, stats=("entropy", "sink_mass", "distance", "visible", "diag_mass"), backend="eager")
    s = res.stats
    close(s["entropy"], [[[math.log(5), math.log(6), math.log(7)]]])
    close(s["sink_mass"], [[[1 / 5, 1 / 6, 1 / 7]]])
    close(s["distance"], [[[2.0, 2.5, 3.0]]])
    close(s["diag_mass"], [[[1 / 5, 1 / 6, 1 / 7]]])
    close(s["visible"], [[3.0, 3.0, 3.0, 3.0, 3.0, 2.0, 1.0]])
    close(res.output[0, 0, 0], v[0, 0, :5].mean(0))


def test_padding_rows_enter_no_statistic():
    q, k, v = uniform(2, 3, 1, 5, 5)
    qmask = torch.tensor([[True] * 5, [True, True, True, False, False]])  # right padding
    res = attention(q, k, v, query_mask=qmask, mask=qmask[:, None, None, :], stats=ALL,
                    token_ids=torch.zeros(2, 5, dtype=torch.long), backend="eager")
    s = res.stats
    for name in ("entropy", "sink_mass", "distance", "waad", "diag_mass"):
        assert (s[name][1, :, 3:] == 0).all(), name
    assert (s["topk_idx"][1, :, 3:] == -1).all()
    close(s["received"][1], torch.tensor([1 + 1 / 2 + 1 / 3, 1 / 2 + 1 / 3, 1 / 3, 0, 0]).expand(3, 5))
    close(s["visible"][1], [3.0, 2.0, 1.0, 0.0, 0.0])
    assert torch.isfinite(res.output).all()  # padded rows still get an output


def test_output_matches_torch_sdpa():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 13, 11, generator=g) * 2
    k, v = torch.randn(2, 2, 13, 11, generator=g), torch.randn(2, 2, 13, 11, generator=g)
    res = attention(q, k, v, stats=("entropy",), backend="eager")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(res.output, ref, atol=1e-5, rtol=1e-5)
    fast = attention(q, k, v, backend="eager")  # no statistics: the fused fast path
    assert fast.meta.get("fast_path")
    torch.testing.assert_close(fast.output, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.lse, res.lse, atol=1e-5, rtol=1e-5)


def test_against_float64_definitions():
    """Output, lse and the main statistics against a float64 computation from the definitions."""
    g = torch.Generator().manual_seed(7)
    b, h, kv, nq, nk, d = 2, 6, 3, 11, 19, 7
    q = torch.randn(b, h, nq, d, generator=g) * 3
    k, v = torch.randn(b, kv, nk, d, generator=g), torch.randn(b, kv, nk, d, generator=g)
    res = attention(q, k, v, stats=("entropy", "received", "distance", "sink_mass", "waad"), backend="eager")

    qd, kd, vd = q.double(), k.double().repeat_interleave(h // kv, 1), v.double().repeat_interleave(h // kv, 1)
    qpos = torch.arange(nk - nq, nk)[:, None]
    kpos = torch.arange(nk)[None, :]
    scores = (qd @ kd.transpose(-1, -2) / math.sqrt(d)).masked_fill(kpos > qpos, float("-inf"))
    logp = scores.log_softmax(-1)
    p = logp.exp()
    torch.testing.assert_close(res.output.double(), p @ vd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.lse.double(), scores.logsumexp(-1), atol=1e-5, rtol=1e-5)
    expected = {
        "entropy": -(p * logp.nan_to_num(neginf=0.0)).sum(-1),
        "received": p.sum(-2),
        "distance": (p * (qpos - kpos)).sum(-1),
        "sink_mass": p[..., 0],
        "waad": (p * (qpos - kpos).clamp_max(10)).sum(-1),
    }
    for name, ref in expected.items():
        torch.testing.assert_close(res.stats[name].double(), ref, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_fp32(dtype):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 3, 7, 9, generator=g).to(dtype) for _ in range(3))
    res = attention(q, k, v, stats=("entropy",), backend="eager")
    ref = attention(q.float(), k.float(), v.float(), stats=("entropy",), backend="eager")
    assert res.output.dtype == dtype and res.lse.dtype == torch.float32
    assert res.stats["entropy"].dtype == torch.float32
    torch.testing.assert_close(res.stats["entropy"], ref.stats["entropy"])
    torch.testing.assert_close(res.output, ref.output.to(dtype))


@jaxtyped(typechecker=beartype)
def _check_shapes(
    q: Float[Tensor, "batch head query_pos d_head"],
    k: Float[Tensor, "batch kv_head key_pos d_head"],
    output: Float[Tensor, "batch head query_pos d_head"],
    lse: Float[Tensor, "batch head query_pos"],
    entropy: Float[Tensor, "batch head query_pos"],
    received: Float[Tensor, "batch head key_pos"],
    visible: Float[Tensor, "batch key_pos"],
    topk_idx: Int[Tensor, "batch head query_pos topk"],
    topk_val: Float[Tensor, "batch head query_pos topk"],
    pooled: Float[Tensor, "batch head pq pk"],
    pattern: Float[Tensor, "batch pattern_heads window key_pos"],
) -> None:
    pass


@pytest.mark.parametrize("backend", ["eager", "chunked"])
def test_shapes_follow_the_annotations(backend):
    b, h, kv, nq, nk, d = 3, 6, 2, 5, 13, 7
    checked = jaxtyped(typechecker=beartype)(attention)
    opt = StatOptions(topk=4, pool_max=4, pattern_heads=(1, 4), pattern_window=(1, 4))
    res = checked(torch.randn(b, h, nq, d), torch.randn(b, kv, nk, d), torch.randn(b, kv, nk, d),
                  stats=ALL, token_ids=torch.zeros(b, nk, dtype=torch.long), options=opt, backend=backend)
    assert isinstance(res, AttentionResult)
    s = res.stats
    _check_shapes(torch.randn(b, h, nq, d), torch.randn(b, kv, nk, d), res.output, res.lse, s["entropy"],
                  s["received"], s["visible"], s["topk_idx"], s["topk_val"], s["pooled"], s["pattern"])
    assert s["pattern"].shape == (b, 2, 3, nk)
    assert s["pooled"].shape == (b, h, 2, 4) and res.meta["pool_factor"] == 4
    assert all(t.dtype == torch.float32 for n, t in s.items() if n != "topk_idx")


def test_mask_with_head_dim_gives_per_head_visible():
    q, k, v = uniform(1, 2, 1, 3, 3)
    mask = torch.ones(1, 2, 3, 3, dtype=torch.bool)
    mask[0, 1, :, 0] = False  # head 1 may not see key 0 (row 0 then sees nothing)
    res = attention(q, k, v, mask=mask, stats=("visible", "received", "sink_mass"), backend="eager")
    close(res.stats["visible"], [[[3.0, 2.0, 1.0], [0.0, 2.0, 1.0]]])
    close(res.stats["received"][0, 1], [0.0, 1.5, 0.5])
    assert res.lse[0, 1, 0] == float("-inf") and (res.output[0, 1, 0] == 0).all()


def test_no_version_attribute():
    """transformers probes an unrelated PyPI package also called ``kernels``."""
    assert not hasattr(kernels, "__version__")
