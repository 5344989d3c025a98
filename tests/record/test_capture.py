"""Capture: the model's attention routed through kernels.attention, statistics per head."""

from __future__ import annotations

import math

import pytest
import torch

import lens
from lens.model import _routing
from lens.edits import AblateHead, MoveToBOS, ScaleAttention

TEXTS = ["w5 w6 w7 w8 w9 w5 w6 w7 w8", "w11 w12 w13 w11", "w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30 w31 w32"]


def _stock_logits(subject, ids, mask=None):
    with torch.no_grad():
        return subject.model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_routed_model_logits_equal_stock(fixture, request):
    s = request.getfixturevalue(fixture)
    ids = s.to_tokens(TEXTS)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(s.to_tokens(t)[0]) for t in TEXTS])[:, None]).long()
    ref = _stock_logits(s, ids, mask)
    with _routing.routed(s.model):
        got = _stock_logits(s, ids, mask)
    valid = mask.bool()
    assert (got - ref)[valid].abs().max().item() < 1e-4
    assert s.model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_capture_logits_equal_stock_and_batch_equals_singles(fixture, request):
    s = request.getfixturevalue(fixture)
    cap = lens.capture(s, TEXTS, backend="chunked")
    for b, text in enumerate(TEXTS):
        ids = s.to_tokens(text)
        assert (cap.logits[b] - _stock_logits(s, ids)[0, -1]).abs().max().item() < 1e-4
        single = lens.capture(s, text, backend="eager")
        n = ids.shape[1]
        assert cap.lengths[b].item() == n
        for name in ("sink_mass", "entropy", "entropy_norm", "distance", "waad", "prev_token", "induction"):
            assert torch.allclose(cap.stats[name][b, ..., :n], single.stats[name][0, ..., :n], atol=1e-5), name
            assert cap.stats[name][b, ..., n:].abs().max().item() == 0 if n < cap.tokens.shape[1] else True
        assert torch.allclose(cap.stats["received"][b, ..., :n], single.stats["received"][0], atol=1e-5)
        # Padded queries never enter column sums: every head's column sums add to n.
        assert torch.allclose(cap.stats["received"][b].sum(-1), torch.full((s.n_layers, s.n_heads), float(n)), atol=1e-4)


def test_capture_chunked_equals_eager(tiny_llama):
    a = lens.capture(tiny_llama, TEXTS, backend="eager")
    b = lens.capture(tiny_llama, TEXTS, backend="chunked")
    for name in a.stats:
        x, y = a.stats[name], b.stats[name]
        if name in ("topk_idx", "massive_pos", "massive_dim"):
            continue  # near-ties may order differently; the values (topk_w, massive_val) are compared
        assert torch.allclose(x.float(), y.float(), atol=1e-5), name


def test_value_norms_and_residual_norms_match_direct_computation(tiny_llama):
    s = tiny_llama
    text = TEXTS[0]
    cap = lens.capture(s, text, resid_layers=[1])
    ids = s.to_tokens(text)
    with torch.no_grad():
        out = s.model(input_ids=ids, output_hidden_states=True)
    # hidden_states[l + 1] is the residual stream after block l (the last one after the final norm).
    for layer in range(s.n_layers - 1):
        assert torch.allclose(cap.stats["resid_norm"][0, layer], out.hidden_states[layer + 1][0].norm(dim=-1), atol=1e-4)
    assert torch.allclose(cap.resid[1][0], out.hidden_states[2][0], atol=1e-5)
    # Value drains: ||W_O^h v_j|| computed explicitly from v_proj and o_proj for layer 0.
    attn = s.attn_module(0)
    h0 = s.model.model.layers[0].input_layernorm(s.model.model.embed_tokens(ids))
    v = attn.v_proj(h0).view(1, -1, s.n_kv_heads, s.d_head)  # [b, n, kv, d]
    group = s.n_heads // s.n_kv_heads
    for h in range(s.n_heads):
        w_h = attn.o_proj.weight[:, h * s.d_head:(h + 1) * s.d_head]
        direct = (v[0, :, h // group] @ w_h.T).norm(dim=-1)
        assert torch.allclose(cap.stats["value_norm"][0, 0, h], direct, atol=1e-5)
    # Massive activations: the largest |x| of each layer's output is where the capture says it is.
    for layer in range(s.n_layers - 1):
        hs = out.hidden_states[layer + 1][0]
        p, d = cap.stats["massive_pos"][0, layer, 0].item(), cap.stats["massive_dim"][0, layer, 0].item()
        assert math.isclose(hs.abs().max().item(), hs[p, d].abs().item(), rel_tol=1e-6)
        top3 = hs.abs().flatten().topk(3)
        torch.testing.assert_close(cap.stats["massive_val"][0, layer], top3.values, atol=1e-6, rtol=1e-6)
        assert cap.stats["massive_pos"][0, layer].tolist() == (top3.indices // hs.shape[-1]).tolist()
        assert cap.stats["massive_dim"][0, layer].tolist() == (top3.indices % hs.shape[-1]).tolist()
        assert math.isclose(cap.stats["massive_median"][0, layer].item(), hs.abs().median().item(), rel_tol=1e-6)
    # Ragged batch: the median is over the real positions of each input only.
    ragged = lens.capture(s, TEXTS, massive=True)
    short = s.to_tokens(TEXTS[1])
    with torch.no_grad():
        hs_short = s.model(input_ids=short, output_hidden_states=True).hidden_states
    for layer in range(s.n_layers - 1):
        want = hs_short[layer + 1][0].abs().median().item()
        assert math.isclose(ragged.stats["massive_median"][1, layer].item(), want, rel_tol=1e-5)


def test_scale_attention_edit_in_capture_matches_the_renormalisation_formula(tiny_llama):
    s = tiny_llama
    base = lens.capture(s, TEXTS[0])
    c = 3.0
    edited = lens.capture(s, TEXTS[0], edits=[ScaleAttention(layer=1, head=4, keys=0, factor=c)])
    a0 = base.stats["sink_mass"][0, 1, 4]
    expected = c * a0 / (1 + (c - 1) * a0)
    assert torch.allclose(edited.stats["sink_mass"][0, 1, 4], expected, atol=1e-5)
    # Other heads of that layer are untouched; the edit is gone afterwards.
    assert torch.allclose(edited.stats["sink_mass"][0, 1, :4], base.stats["sink_mass"][0, 1, :4], atol=1e-6)
    assert not torch.allclose(edited.logits, base.logits)
    again = lens.capture(s, TEXTS[0])
    assert torch.equal(again.logits, base.logits)


def test_move_to_bos_and_ablation_edits(tiny_llama):
    s = tiny_llama
    cap = lens.capture(s, TEXTS[0], edits=[MoveToBOS(layer=0, head=[1, 2]), AblateHead(layer=2, head=0)])
    n = cap.lengths[0].item()
    assert torch.allclose(cap.stats["sink_mass"][0, 0, 1:3, :n], torch.ones(2, n))
    with pytest.raises(ValueError, match="head 9"):
        lens.capture(s, TEXTS[0], edits=[AblateHead(layer=0, head=9)])
    with pytest.raises(ValueError, match="layer 5"):
        lens.capture(s, TEXTS[0], edits=[MoveToBOS(layer=5)])


def test_save_and_load_roundtrip(tiny_llama, tmp_path):
    cap = lens.capture(tiny_llama, TEXTS, patterns=[(0, 1), (2, 5)], resid_layers=[0])
    cap.save(tmp_path / "cap")
    back = lens.Capture.load(tmp_path / "cap")
    assert back.str_tokens == cap.str_tokens and back.meta == cap.meta
    assert torch.equal(back.tokens, cap.tokens) and torch.equal(back.logits, cap.logits)
    assert set(back.stats) == set(cap.stats)
    for k in cap.stats:
        assert torch.equal(back.stats[k], cap.stats[k])
    assert set(back.patterns) == {(0, 1), (2, 5)}
    assert torch.equal(back.patterns[(2, 5)], cap.patterns[(2, 5)])
    assert torch.equal(back.resid[0], cap.resid[0])
    with pytest.raises(FileNotFoundError):
        lens.Capture.load(tmp_path / "nothing")


def test_bad_inputs_fail_clearly(tiny_llama):
    s = tiny_llama
    with pytest.raises(ValueError, match="empty"):
        lens.capture(s, "   ")
    with pytest.raises(ValueError, match="empty"):
        lens.capture(s, [])
    with pytest.raises(ValueError, match="at most 256"):
        lens.capture(s, " ".join(["w7"] * 300))
    with pytest.raises(ValueError, match="unknown statistic"):
        lens.capture(s, TEXTS[0], stats=["sink_mass", "vibes"])
    with pytest.raises(ValueError, match=r"head \(0, 6\) does not exist"):
        lens.capture(s, TEXTS[0], patterns=[(0, 6)])
    with pytest.raises(ValueError, match=r"resid_layers: layer 7 does not exist"):
        lens.capture(s, TEXTS[0], resid_layers=[7])


def test_cli_capture_prints_a_summary_and_saves(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from lens.cli import app

    model_dir = tmp_path / "m"
    tiny_llama.model.save_pretrained(model_dir)
    tiny_llama.tokenizer.save_pretrained(model_dir)
    runner = CliRunner()
    res = runner.invoke(app, ["capture", "--model", str(model_dir), "--text", TEXTS[0], "--out", str(tmp_path / "cap")])
    assert res.exit_code == 0, res.output
    assert "saved to" in res.output
    saved = lens.Capture.load(tmp_path / "cap")
    direct = lens.capture(tiny_llama, TEXTS[0])
    assert torch.equal(saved.tokens, direct.tokens)
    torch.testing.assert_close(saved.stats["sink_mass"], direct.stats["sink_mass"], atol=1e-6, rtol=0)
    (tmp_path / "t.txt").write_text(TEXTS[1])
    from_file = runner.invoke(app, ["capture", "--model", str(model_dir), "--file", str(tmp_path / "t.txt")])
    assert from_file.exit_code == 0 and "saved to" not in from_file.output
    both = runner.invoke(app, ["capture", "--model", str(model_dir), "--text", "w5", "--file", str(tmp_path / "t.txt")])
    assert both.exit_code == 2 and "exactly one of --text or --file" in both.output
    empty = runner.invoke(app, ["capture", "--model", str(model_dir), "--text", "   "])
    assert empty.exit_code == 2 and "empty" in empty.output


@pytest.mark.smollm2
def test_smollm2_patterns_equal_transformerlens_hook_pattern(smollm2):
    s = smollm2
    prompt = "The capital of France is Paris. The capital of Germany is"
    heads = [(0, 0), (5, 3), (17, 8), (29, 4)]
    cap = lens.capture(s, prompt, patterns=heads, backend="chunked")
    ids = s.to_tokens(prompt)
    with torch.no_grad():
        _, cache = s.bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    worst = 0.0
    for l, h in heads:
        ref = cache[f"blocks.{l}.attn.hook_pattern"][0, h]
        worst = max(worst, (cap.patterns[(l, h)][0] - ref).abs().max().item())
    assert worst < 1e-5, worst
    assert (cap.logits[0] - s.logits(ids)[0, -1]).abs().max().item() < 1e-4
    # SmolLM2 is a sink model: most attention from later queries goes to position 0 (METHODS sec. 1: ~0.64).
    later = cap.stats["sink_mass"][0, :, :, 4:].mean().item()
    assert later > 0.4


def test_nonfinite_attention_is_located_exactly():
    """The deferred NaN/inf check (read once after the pass, not once a layer) names the first
    bad (input, head, position) in that order and every bad head; padded rows never count.
    Hand-made layer output: [b 2, h 4, q 5], NaN at (1, 2, 3) and inf lse at (1, 3, 0);
    a NaN on input 0's padded position 4 is masked out."""
    from types import SimpleNamespace

    from lens.record._capture import NonFiniteAttention, _nonfinite_summary, _raise_nonfinite

    out = torch.zeros(2, 4, 5, 3)
    lse = torch.zeros(2, 4, 5)
    out[1, 2, 3, 1] = float("nan")
    lse[1, 3, 0] = float("inf")
    out[0, 0, 4, 0] = float("nan")  # a padded row of input 0
    lse[0, 1, 2] = float("-inf")  # a row that sees no key: the kernels' business, not an error
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 4] = False
    heads, first, shape = _nonfinite_summary(SimpleNamespace(output=out, lse=lse), mask)
    assert heads.tolist() == [False, False, True, True] and shape == (2, 4, 5)
    assert int(first) == 1 * 20 + 2 * 5 + 3
    subject = SimpleNamespace(name="toy")
    with pytest.raises(NonFiniteAttention, match=r"toy: layer 7, head 2 produced NaN/inf attention \(input 1, "
                       r"query position 3; bad heads in this layer: \[2, 3\]\)"):
        _raise_nonfinite(subject, 7, int(first), shape, heads)
    clean, _, _ = _nonfinite_summary(SimpleNamespace(output=out.nan_to_num(), lse=lse.clamp_max(0)), mask)
    assert not clean.any()
