"""Hybrid models (attention in some blocks only) end to end: capture, the saved file, the atlas, the dashboard.

The tiny Jamba of ``_tiny_archs`` has four blocks, attention in blocks 1 and 3 and Mamba
mixers in 0 and 2. Its statistics against the model's own eager attention are checked in
``test_architectures.py`` with every other architecture; here, that every place a layer is
named uses the block number (never a renumbered attention index) and that a block without
attention is refused by name.
"""

from __future__ import annotations

import pytest
import torch
from _tiny_archs import build
from test_architectures import tokenizer

import lens
from lens.analyzers._dormant import sink_scores
from lens.edits import AblateHead, ScaleAttention

TEXTS = ["t05 t12 t33 t47 t08 t21 t05 t12 t33 t47 t08", "t03 t17 t42 t03 t17"]


@pytest.fixture(scope="module")
def jamba():
    return lens.Subject(build("jamba"), tokenizer(), name="tiny-jamba")


@pytest.fixture(scope="module")
def cap(jamba):
    return lens.capture(jamba, TEXTS, patterns=[(3, 1)])


def test_subject_knows_which_blocks_have_attention(jamba):
    assert (jamba.n_layers, jamba.attn_layers, jamba.arch.hybrid) == (4, (1, 3), True)
    assert "attention in 2 of 4 blocks" in jamba.arch.features()
    with pytest.raises(ValueError, match=r"block 0 of tiny-jamba has no attention \(it is a JambaMambaDecoderLayer\); "
                                         r"the blocks with attention are \[1, 3\]"):
        jamba.check_heads([(0, 0)])
    with pytest.raises(ValueError, match="block 2 of tiny-jamba has no attention"):
        jamba.attn_module(2)


def test_capture_keeps_block_numbers_through_save_and_load(cap, tmp_path):
    assert cap.blocks == (1, 3) and (cap.n_layers, cap.n_blocks) == (2, 4)
    assert cap.stats["sink_mass"].shape[1] == 2  # attention statistics: the attention blocks
    assert cap.stats["resid_norm"].shape[1] == 4  # residual statistics: every block
    back = lens.Capture.load(cap.save(tmp_path / "cap"))
    assert back.blocks == (1, 3) and back.n_blocks == 4 and set(back.patterns) == {(3, 1)}
    assert back.meta["blocks"] == [1, 3]  # in the JSON sidecar
    for name, t in cap.stats.items():
        assert torch.equal(back.stats[name], t), name
    assert back.layer_index(3) == 1
    with pytest.raises(ValueError, match=r"block 2 has no attention in this capture .* \[1, 3\]"):
        back.layer_index(2)


def test_atlas_names_the_real_blocks(cap):
    atlas = lens.analyze(cap)
    heads = atlas.to_frame().reset_index()
    assert sorted(heads["layer"].unique()) == [1, 3]
    assert "4 layers (attention in blocks [1, 3])" in str(atlas)
    dormant = atlas["dormant_heads"].frame.set_index(["layer", "head"])["sink_score"]
    scores = sink_scores(cap).double().mean(0)  # [attention layer, head]
    for h in range(cap.n_heads):  # block 3 is the second entry of the layer axis
        assert dormant[(3, h)] == pytest.approx(float(scores[1, h]), abs=1e-9)
        assert dormant[(1, h)] == pytest.approx(float(scores[0, h]), abs=1e-9)
    assert list(atlas["residual_peaks"].frame["layer"]) == [0, 1, 2, 3]  # per block
    assert set(atlas["hidden_sinks"].frame["layer"]) <= {1, 3}
    # the strongest heads are named by block: L1H.. or L3H.., never L0H.. of a renumbered axis
    assert "L0H" not in atlas["sinks"].text and "L2H" not in atlas["sinks"].text


def test_edits_address_blocks_and_refuse_one_without_attention(jamba, cap):
    with pytest.raises(ValueError, match="layer 0 does not exist or has no attention: valid layers are the blocks "
                                         r"with attention, \[1, 3\]"):
        lens.capture(jamba, TEXTS[0], edits=[AblateHead(layer=0, head=0)])
    scaled = lens.capture(jamba, TEXTS[0], edits=[ScaleAttention(layer=3, head=2, keys=0, factor=0.25)])
    plain = lens.capture(jamba, TEXTS[0])
    m0 = plain.stats["sink_mass"][0, :, 2, 1:]
    m1 = scaled.stats["sink_mass"][0, :, 2, 1:]
    assert torch.equal(m1[0], m0[0])  # block 1 untouched
    # block 3: p0' = c p0 / (1 + (c - 1) p0) with c = 0.25
    torch.testing.assert_close(m1[1], 0.25 * m0[1] / (1 - 0.75 * m0[1]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"edge patching .* only blocks \[1, 3\] of 4"):
        from lens.circuits._runs import norm_names

        norm_names(jamba)


def test_dashboard_names_the_real_blocks(jamba):
    from lens import dashboard
    from lens.dashboard._work import analyze_text
    from lens.dashboard.pages import attention, overview

    app = dashboard.create_app(jamba)
    ctx = app._lens_context
    analysis = analyze_text(jamba, TEXTS[0])
    cards = str(overview.stat_cards(ctx, analysis))
    assert "4 (attention in blocks 1, 3) x 4" in cards
    assert "4 (attention in blocks 1, 3) layers" in str(overview.summary(ctx, analysis))
    pickers = str(attention.layout(ctx))
    assert "'label': 'L1'" in pickers and "'label': 'L3'" in pickers and "'label': 'L0'" not in pickers
    series = attention.position_series(analysis, 3, 1, ["sink_mass"])
    n = int(analysis.capture.lengths[0])  # BOS and the 11 words
    assert torch.equal(torch.as_tensor(series["sink_mass"]), analysis.capture.stats["sink_mass"][0, 1, 1, :n])
    with pytest.raises(ValueError, match="block 0 has no attention"):
        attention.position_series(analysis, 0, 1, ["sink_mass"])
