"""Edits: plain data, applied in a scope, removed afterwards; semantics checked against the eager pattern."""

from __future__ import annotations

import math

import pytest
import torch

import lens
from lens.model import _routing
from lens.edits._rows import act_rows, act_sinks, var_rows
from lens.edits import (
    AblateHead,
    CalibrateSinks,
    GateHead,
    KeyBias,
    MoveToBOS,
    PatchResidual,
    RedistributeAttention,
    ScaleAttention,
    SteerResidual,
    act_from_capture,
    head_outputs,
    mean_ablation,
    nnsight_logits,
)

TEXT = "w5 w6 w7 w8 w9 w5 w6 w7 w8 w40 w41"
TEXTS = [TEXT, "w11 w12 w13 w11 w60", "w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30 w31 w32"]


def _logits(subject, text):
    with torch.no_grad():
        return subject.model(input_ids=subject.to_tokens(text)).logits[0, -1]


def _hook_ids(subject) -> set[tuple[int, int]]:
    """(module id, hook id) of every forward (pre-)hook on the model, its blocks and attention modules.

    transformers 5 installs its own persistent hooks the first time ``output_hidden_states``
    is asked for; what must hold is that an edit block leaves the set as it found it.
    """
    mods = [subject.model, *subject.blocks, *(subject.attn_module(l) for l in range(subject.n_layers))]
    return {(id(m), k) for m in mods for k in (*m._forward_hooks, *m._forward_pre_hooks)}


def _values(subject, text, layer):
    """v_proj output of ``layer`` as [kv_head, pos, d_head] (Llama layout), from a stock forward."""
    store = {}
    attn = subject.attn_module(layer)
    handle = attn.v_proj.register_forward_hook(lambda m, a, out: store.setdefault("v", out.detach()))
    try:
        _logits(subject, text)
    finally:
        handle.remove()
    v = store["v"][0]
    return v.view(v.shape[0], subject.n_kv_heads, subject.d_head).transpose(0, 1)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_edits_are_removed_even_when_the_body_raises(fixture, request):
    s = request.getfixturevalue(fixture)
    before = _logits(s, TEXT)
    impl, hooks = s.model.config._attn_implementation, _hook_ids(s)
    edits = [ScaleAttention(layer=0, keys=0, factor=4.0), AblateHead(layer=1, head=2),
             CalibrateSinks(layer=1, head=0, theta=0.15), SteerResidual(layer=0, vector=torch.ones(s.d_model))]
    with pytest.raises(RuntimeError, match="boom"):
        with s.edited(*edits):
            inside = _logits(s, TEXT)
            assert (inside - before).abs().max() > 1e-3  # the edits did act
            raise RuntimeError("boom")
    assert torch.equal(_logits(s, TEXT), before)
    assert s.model.config._attn_implementation == impl
    assert _routing._active.get() is None
    assert _hook_ids(s) == hooks


def test_key_bias_route_equals_post_softmax_scaling_and_renormalisation(tiny_llama):
    s, layer, head = tiny_llama, 1, 4
    keys, c = [0, 3], 3.5
    base = lens.capture(s, TEXT, patterns=[(layer, head)], backend="eager").patterns[(layer, head)][0]
    for edit in (ScaleAttention(layer=layer, head=head, keys=keys, factor=c),
                 KeyBias(layer=layer, head=head, keys=keys, bias=math.log(c))):
        got = lens.capture(s, TEXT, patterns=[(layer, head)], edits=[edit], backend="eager").patterns[(layer, head)][0]
        by_hand = base.clone()
        by_hand[:, keys] *= c
        by_hand = by_hand / by_hand.sum(-1, keepdim=True)
        assert (got - by_hand).abs().max().item() < 1e-6
    # ZeroTuning's closed form (METHODS sec 5) on key 0 alone.
    got = lens.capture(s, TEXT, patterns=[(layer, head)], edits=[ScaleAttention(layer=layer, head=head, factor=c)],
                       backend="eager").patterns[(layer, head)][0]
    d = (c - 1) * base[:, 0] + 1
    assert torch.allclose(got[:, 0], c * base[:, 0] / d, atol=1e-6)
    assert torch.allclose(got[:, 1:], base[:, 1:] / d[:, None], atol=1e-6)


def _act_by_hand(a: torch.Tensor, theta: float, beta: float) -> tuple[torch.Tensor, list[int]]:
    """METHODS sec 6 written out loop by loop on one head's T x T pattern."""
    t = a.shape[0]
    c = [a[:, j].sum().item() / (t - j) for j in range(t)]
    sinks = [j for j in range(t) if c[j] > theta][1:]
    out = a.clone()
    for i in range(t):
        m = sum(a[i, j].item() for j in sinks)
        rest = sum(a[i, j].item() for j in range(t) if j not in sinks)
        if rest <= 0:
            continue
        for j in range(t):
            out[i, j] = beta * a[i, j] if j in sinks else a[i, j] + (1 - beta) * m * a[i, j] / rest
    return out, sinks


@pytest.mark.parametrize("online", [True, False])
def test_act_equals_the_section_6_procedure_on_the_eager_pattern(tiny_llama, online):
    s, layer, head, theta, beta = tiny_llama, 1, 3, 0.15, 0.4
    cap = lens.capture(s, TEXT, patterns=[(layer, head)], backend="eager")
    a = cap.patterns[(layer, head)][0]
    expected_p, sinks = _act_by_hand(a, theta, beta)
    assert 0 < len(sinks) < a.shape[0] - 1  # a non-trivial sink set
    assert torch.allclose(expected_p.sum(-1), torch.ones(a.shape[0]), atol=1e-5)
    edit = (CalibrateSinks(layer=layer, head=head, theta=theta, beta=beta) if online
            else act_from_capture(cap, [(layer, head)], theta=theta, beta=beta)[0])
    if not online:
        assert edit.sinks == (tuple(sinks),)
    v = _values(s, TEXT, layer)[head // (s.n_heads // s.n_kv_heads)]
    with s.edited(edit):
        outs, _ = head_outputs(s, TEXT, [layer])
    assert (outs[layer][0, :, head] - expected_p @ v).abs().max().item() < 1e-5
    # Other heads of the layer are untouched.
    plain, _ = head_outputs(s, TEXT, [layer])
    others = [h for h in range(s.n_heads) if h != head]
    assert torch.allclose(outs[layer][0, :, others], plain[layer][0, :, others], atol=1e-6)


def test_act_is_not_a_key_bias_but_its_renormalised_variant_is(tiny_llama):
    s, layer, head, beta = tiny_llama, 1, 3, 0.4
    cap = lens.capture(s, TEXT, backend="eager")
    exact, = act_from_capture(cap, [(layer, head)], theta=0.15, beta=beta)
    renorm, = act_from_capture(cap, [(layer, head)], theta=0.15, beta=beta, renormalise=True)
    bias = KeyBias(layer=layer, head=head, keys=exact.sinks[0], bias=math.log(beta))
    out = {}
    for name, e in (("exact", exact), ("renorm", renorm), ("bias", bias)):
        with s.edited(e):
            out[name] = _logits(s, TEXT)
    assert (out["renorm"] - out["bias"]).abs().max().item() < 1e-5
    assert (out["exact"] - out["bias"]).abs().max().item() > 1e-4


def test_act_rows_keep_row_sums_and_guard_rows_without_other_mass():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.0, 1.0, 0.0]])[None, None]
    valid = torch.ones(1, 3, dtype=torch.bool)
    sinks = torch.tensor([[[False, True, False]]])
    out = act_rows(p, valid, sinks, beta=0.5)[0, 0]
    assert torch.allclose(out[1], torch.tensor([0.6, 0.4, 0.0]))  # 0.8 -> 0.4, freed 0.4 to key 0
    assert torch.equal(out[2], p[0, 0, 2])  # all mass on the sink: left alone
    assert torch.allclose(out.sum(-1), torch.ones(3))
    # Detection drops the first sink: key 0 (score 1.2/3) and key 1 (1.8/2) both pass 0.1.
    assert act_sinks(p, valid, theta=0.1)[0, 0].tolist() == [False, True, False]


def test_var_rows_by_hand():
    p = torch.tensor([[0.5, 0.1, 0.3, 0.1], [0.9, 0.05, 0.05, 0.0]])[None, None]  # two query rows, 4 keys
    p = torch.cat([torch.zeros(1, 1, 2, 4), p], dim=2)  # rows 2 and 3 of a 4-token prefill
    valid = torch.ones(1, 4, dtype=torch.bool)
    sinks = torch.tensor([[True, False, False, False]])
    target = torch.tensor([[False, True, True, False]])
    out = var_rows(p, valid, sinks, target, keep=0.6, min_target=0.2, max_sink_share=0.5)[0, 0]
    # Row 2: target mass 0.4 >= 0.2, no sink inside the span; 0.2 freed, split 1:3 over keys 1, 2.
    assert torch.allclose(out[2], torch.tensor([0.3, 0.15, 0.45, 0.1]))
    assert torch.equal(out[3], p[0, 0, 3])  # target mass 0.1 < 0.2: not selected
    assert torch.allclose(out[2:].sum(-1), torch.ones(2))


def test_var_edit_recomputes_the_head_output(tiny_llama):
    s, layer, head = tiny_llama, 2, 1
    a = lens.capture(s, TEXT, patterns=[(layer, head)], backend="eager").patterns[(layer, head)][0]
    edit = RedistributeAttention(layer=layer, head=head, sinks=(0,), target=(3, 7), min_target=0.0)
    n = a.shape[0]
    target = torch.zeros(1, n, dtype=torch.bool)
    target[0, 3:7] = True
    sinks = torch.zeros(1, n, dtype=torch.bool)
    sinks[0, 0] = True
    expected = var_rows(a[None, None], torch.ones(1, n, dtype=torch.bool), sinks, target, min_target=0.0)[0, 0]
    assert (expected - a).abs().max() > 1e-3
    v = _values(s, TEXT, layer)[head // (s.n_heads // s.n_kv_heads)]
    with s.edited(edit):
        outs, _ = head_outputs(s, TEXT, [layer])
    assert (outs[layer][0, :, head] - expected @ v).abs().max().item() < 1e-5


def test_row_edits_respect_padding_in_a_batch(tiny_llama):
    s = tiny_llama
    edit = CalibrateSinks(layer=1, head=[0, 5], theta=0.15)
    with s.edited(edit):
        cap_single = [_logits(s, t) for t in TEXTS]
        ids = s.to_tokens(TEXTS)
        lengths = torch.tensor([len(s.to_tokens(t)[0]) for t in TEXTS])
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        with torch.no_grad():
            batched = s.model(input_ids=ids, attention_mask=mask).logits
    for b, n in enumerate(lengths.tolist()):
        assert (batched[b, n - 1] - cap_single[b]).abs().max().item() < 1e-4


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_zero_and_mean_ablation_set_the_head_output(fixture, request):
    s = request.getfixturevalue(fixture)
    layer, head = 1, 2
    with s.edited(AblateHead(layer=layer, head=head)):
        outs, mask = head_outputs(s, TEXTS, [layer])
    o = outs[layer]
    assert o[:, :, head][mask].abs().max().item() == 0.0
    assert o[:, :, head + 1][mask].abs().max().item() > 0
    edit, = mean_ablation(s, [(layer, head)], TEXTS)
    plain, _ = head_outputs(s, TEXTS, [layer])
    mean = plain[layer][:, :, head][mask].mean(0)
    assert torch.allclose(torch.tensor(edit.mean), mean, atol=1e-6)
    with s.edited(edit):
        outs, _ = head_outputs(s, TEXTS, [layer])
    assert torch.allclose(outs[layer][:, :, head][mask], mean.expand(int(mask.sum()), -1), atol=1e-6)


def test_edits_on_heads_that_do_not_exist_fail_before_the_model_runs(tiny_llama):
    s = tiny_llama
    hooks = _hook_ids(s)
    for bad, match in ((AblateHead(layer=0, head=6), "head 6 does not exist"),
                       (ScaleAttention(layer=3, factor=2.0), "layer 3 does not exist"),
                       (CalibrateSinks(layer=0, head=[1, 17]), "head 17 does not exist"),
                       (SteerResidual(layer=9, vector=torch.ones(s.d_model)), "layer 9 does not exist"),
                       (AblateHead(layer=0, head=1, mean=(0.0,) * 5), "d_v=14")):
        with pytest.raises(ValueError, match=match):
            with s.edited(bad):
                pytest.fail("the block must not run")
    with pytest.raises(TypeError, match="not an edit"):
        with s.edited("ablate everything"):
            pass
    with pytest.raises(ValueError, match="factor must be >= 0"):
        ScaleAttention(factor=-1.0)
    assert _hook_ids(s) == hooks


def test_capture_refuses_hook_edits_clearly(tiny_llama):
    with pytest.raises(ValueError, match="subject.edited"):
        lens.capture(tiny_llama, TEXT, edits=[CalibrateSinks(layer=0, head=0)])


def test_edited_blocks_nest_and_edits_compose(tiny_llama):
    s = tiny_llama
    a, b = ScaleAttention(layer=0, head=1, factor=3.0), GateHead(layer=2, head=0, factor=0.5)
    with s.edited(a, b):
        both = _logits(s, TEXT)
    with s.edited(a):
        with s.edited(b):
            nested = _logits(s, TEXT)
        only_a = _logits(s, TEXT)
    assert torch.allclose(nested, both, atol=1e-6)
    assert (only_a - both).abs().max() > 1e-4
    # Gates multiply and additions compose: two half-gates equal one quarter gate.
    with s.edited(GateHead(layer=2, head=0, factor=0.5), GateHead(layer=2, head=0, factor=0.5)):
        twice = _logits(s, TEXT)
    with s.edited(GateHead(layer=2, head=0, factor=0.25)):
        quarter = _logits(s, TEXT)
    assert torch.allclose(twice, quarter, atol=1e-6)


def test_move_to_bos_inside_edited_matches_capture(tiny_llama):
    s = tiny_llama
    cap = lens.capture(s, TEXT, edits=[MoveToBOS(layer=1, head=[0, 3])])
    with s.edited(MoveToBOS(layer=1, head=[0, 3])):
        got = _logits(s, TEXT)
    assert torch.allclose(cap.logits.reshape(-1), got, atol=1e-5)


def test_residual_steering_hooks_equal_the_nnsight_route(tiny_llama):
    s = tiny_llama
    vec = torch.linspace(-1, 1, s.d_model)
    steer = SteerResidual(layer=1, vector=vec, positions=[2, 5], scale=3.0)
    with s.edited(steer):
        hooked = _logits(s, TEXT)
    via_nnsight = nnsight_logits(s, TEXT, [steer])
    assert (hooked - via_nnsight).abs().max().item() < 1e-5
    assert (hooked - _logits(s, TEXT)).abs().max().item() > 1e-3


def test_patching_the_whole_last_residual_from_another_prompt_gives_its_logits(tiny_llama):
    s = tiny_llama
    clean, corrupt = "w5 w6 w7 w8 w9", "w50 w51 w52 w53 w54"
    patch = PatchResidual.from_prompt(s, clean, layer=s.n_layers - 1)
    with s.edited(patch):
        patched = _logits(s, corrupt)
    assert (patched - _logits(s, clean)).abs().max().item() < 1e-5
    assert (nnsight_logits(s, corrupt, [patch]) - patched).abs().max().item() < 1e-5
    # One position only: the residual at the last position of layer 0 from the clean run.
    one = PatchResidual.from_prompt(s, clean, layer=0, positions=[-1])
    assert one.positions == (5,) and one.values.shape == (1, s.d_model)
    with s.edited(one):
        partial = _logits(s, corrupt)
    assert (partial - _logits(s, corrupt)).abs().max() > 1e-4


def test_edits_are_frozen_plain_data():
    e = ScaleAttention(layer=[0, 1], head=None, keys=[0], factor=2.0)
    assert e.layer == (0, 1) and e.keys == (0,)
    assert e == ScaleAttention(layer=(0, 1), keys=(0,), factor=2.0)
    assert hash(e) == hash(ScaleAttention(layer=(0, 1), keys=(0,), factor=2.0))
    with pytest.raises(Exception):
        e.factor = 3.0  # frozen
    act = CalibrateSinks(layer=0, head=1, sinks=[[1, 2], [3]])
    assert act.sinks == ((1, 2), (3,))
