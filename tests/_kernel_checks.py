"""Checks shared by the kernel tests: one backend's result against another's and against float64.

Tolerances: the caller's atol on output, lse and every statistic; the position-weighted
sums ``distance``/``waad`` (values up to ~n) also get rtol 1e-5. ``topk_idx`` must be equal.
"""

from __future__ import annotations

import math

import torch

from lens.kernels._types import Call

WIDE = {"distance", "waad"}  # values up to ~n: compared with a relative term too


def assert_matches(got, want, call: Call, *, atol=1e-4, out_atol=None, out_rtol=0.0) -> dict[str, float]:
    """Output, lse and every statistic equal; returns the max abs difference per name.

    The Triton result holds exactly the statistics asked for, in that order (eager may add
    entropy_norm beside entropy), and matches eager on each of them."""
    errs = {}
    out_atol = atol if out_atol is None else out_atol
    torch.testing.assert_close(got.output.float(), want.output.float(), atol=out_atol, rtol=out_rtol)
    errs["output"] = (got.output.float() - want.output.float()).abs().max().item()
    finite = torch.isfinite(want.lse)
    assert torch.equal(finite, torch.isfinite(got.lse)), "rows with no key differ"
    torch.testing.assert_close(got.lse[finite], want.lse[finite], atol=atol, rtol=0)
    errs["lse"] = (got.lse[finite] - want.lse[finite]).abs().max().item() if finite.any() else 0.0
    assert list(got.stats) == list(call.stats), "statistics missing or out of order"
    for name in call.stats:
        a, b = got.stats[name], want.stats[name]
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        if name == "topk_idx":
            assert torch.equal(a, b), f"topk_idx differs at {(a != b).nonzero()[:5].tolist()}"
            errs[name] = 0.0
            continue
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5 if name in WIDE else 0, msg=lambda m: f"{name}: {m}")
        errs[name] = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    return errs


def reference64(call: Call) -> dict[str, torch.Tensor]:
    """Output, lse and the main statistics straight from the definitions, in float64."""
    geo = call.geo
    b, h, nq, nk, g = geo.batch, geo.heads, geo.query_pos, geo.key_pos, geo.group
    q = call.q.double() * call.scale
    k = call.k.double().repeat_interleave(g, 1)
    v = call.v.double().repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2)
    if call.softcap is not None:
        s = call.softcap * torch.tanh(s / call.softcap)
    qpos = torch.arange(geo.offset, nk, device=q.device)[:, None]
    kpos = torch.arange(nk, device=q.device)[None, :]
    allowed = torch.ones(b, h, nq, nk, dtype=torch.bool, device=q.device)
    if geo.causal:
        allowed &= kpos <= qpos
    if geo.window is not None:
        allowed &= qpos - kpos < geo.window
    if geo.mask is not None:
        allowed &= geo.mask
    if call.key_bias is not None:
        bias = call.key_bias.double()[:, :, None, :]
        allowed &= bias > -1e30
        s = s + bias.clamp_min(-1e30)
    s = s.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(s, -1)
    if call.sinks is not None:  # one more logit in the denominator, no value
        lse = torch.logaddexp(lse, call.sinks.double()[None, :, None].expand_as(lse))
        lse = lse.masked_fill(~allowed.any(-1), -math.inf)
    p = torch.where(allowed, torch.exp(s - lse[..., None]), 0.0)
    out = p @ v
    if call.head_gate is not None:
        out = out * call.head_gate.double()[None, :, None, None]
    if call.head_add is not None:
        out = out + call.head_add.double()[None, :, None, :]
    ok = allowed.any(-1)
    if call.query_mask is not None:
        ok &= call.query_mask[:, None, :]
    p = p * ok[..., None]
    ent = -torch.where(p > 0, p * torch.log(p), 0.0).sum(-1)
    learned = (torch.where(ok, torch.exp(call.sinks.double()[None, :, None] - lse), 0.0) if call.sinks is not None
               else torch.zeros_like(lse))
    return {"output": out, "lse": lse, "entropy": ent, "learned_sink_mass": learned, "received": p.sum(-2), "sink_mass": p[..., 0],
            "distance": (p * (qpos - kpos)).sum(-1)}


def assert_float64(got, call: Call, atol=1e-4) -> None:
    ref = reference64(call)
    torch.testing.assert_close(got.output.double(), ref["output"], atol=atol, rtol=0)
    fin = torch.isfinite(ref["lse"])
    torch.testing.assert_close(got.lse.double()[fin], ref["lse"][fin], atol=atol, rtol=0)
    for name in ("entropy", "received", "sink_mass", "distance", "learned_sink_mass"):
        if name in got.stats:
            torch.testing.assert_close(got.stats[name].double(), ref[name], atol=atol,
                                       rtol=1e-5 if name in WIDE else 0, msg=lambda m: f"{name}: {m}")
