"""viz builders on hand-made Findings and Captures: the figures carry exactly the numbers given.

Checks read ``fig.data`` (z grids, coordinates, customdata, titles), not just that a
figure exists; one PNG goes through kaleido and the system chromium.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skips import needs

import lens
from lens import viz
from lens.analyzers import Findings, dormant_inputs, entropy

# --- hand-made captures ----------------------------------------------------------------------


def _capture(stats: dict, n_layers: int, n_heads: int, tokens: list[str], patterns=None, pattern_window=None):
    n = len(tokens)
    return lens.Capture(tokens=torch.arange(n)[None], lengths=torch.tensor([n]), str_tokens=[tokens], stats=stats,
                        patterns=patterns or {}, meta={"n_layers": n_layers, "n_heads": n_heads, "model": "hand",
                                                       "pattern_window": pattern_window, "options": {"window": 10}})


def _causal(n: int, seed: int) -> torch.Tensor:
    """A random causal attention pattern [n, n] whose rows sum to 1."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, n, generator=g)
    scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), -math.inf)
    return scores.softmax(-1)


TOKENS = ["<s>", "The", " cat", " sat", " on", " the", " mat"]


def test_head_grid_places_every_head_and_hover_columns():
    frame = pd.DataFrame({"layer": [0, 0, 0, 1, 1], "head": [0, 1, 2, 0, 2], "score": [0.1, 0.2, 0.3, 0.4, 0.6],
                          "state": ["a", "b", "c", "d", "e"]})
    fig = viz.head_grid(Findings("hand", frame, {}), "score")
    z = fig.data[0].z
    assert [list(r) for r in z] == [[0.1, 0.2, 0.3], [0.4, None, 0.6]]  # head (1, 1) is missing: a gap
    assert fig.data[0].customdata[1][2] == ["e"]  # the other column travels in the hover
    assert "state" in fig.data[0].hovertemplate
    t = viz.head_grid(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), "x")
    assert [list(r) for r in t.data[0].z] == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="nope"):
        viz.head_grid(frame, "nope")


def test_attention_pattern_exact_rows_and_window():
    p = torch.stack([_causal(7, s) for s in range(6)]).reshape(2, 3, 7, 7)  # [layer, head, q, k]
    cap = _capture({"pooled": p[None], "pool_factor": torch.ones(1, 2, dtype=torch.long)}, 2, 3, TOKENS)
    fig = viz.attention_pattern(cap, 1, 2)
    assert np.allclose(np.array(fig.data[0].z), p[1, 2].numpy())
    assert "L1 H2" in fig.layout.title.text and "exact" in fig.layout.title.text
    win = viz.attention_pattern(cap, 1, 2, window=(3, 5))
    assert np.allclose(np.array(win.data[0].z), p[1, 2, 3:5, :5].numpy())  # causal: keys cut at the window's end
    assert list(win.data[0].y) == ["3 \u00b7sat", "4 \u00b7on"]
    assert win.data[0].x[2] == "2 \u00b7cat"  # the hover of query 4, key 2 reads "q 4 on -> k 2 cat"
    assert win.data[0].hovertemplate.startswith("q %{y} \u2192 k %{x}") and win.data[0].text is None
    # the capture's kept rows (pattern_window 2..6) win over the pooled map when they cover the window
    kept = {(0, 1): p[0, 1, 2:6][None] * 0 + 0.5}
    cap2 = _capture({"pooled": p[None]}, 2, 3, TOKENS, patterns=kept, pattern_window=[2, 6])
    assert np.allclose(np.array(viz.attention_pattern(cap2, 0, 1, window=(3, 5)).data[0].z), 0.5)
    assert np.allclose(np.array(viz.attention_pattern(cap2, 0, 1).data[0].z), p[0, 1].numpy())  # not covered
    with pytest.raises(ValueError, match="does not exist"):
        viz.attention_pattern(cap, 2, 0)
    with pytest.raises(ValueError, match="window"):
        viz.attention_pattern(cap, 0, 0, window=(5, 3))


def test_pooled_pattern_is_the_block_mean_of_the_real_one(tiny_gpt2):
    """On a real capture with pool_max=4: 11 tokens pool by f=3, each cell the mean of its block's cells."""
    from lens.kernels import StatOptions

    ids = [[1, 5, 9, 14, 22, 7, 31, 40, 2, 11, 60]]  # 11 tokens
    cap = lens.capture(tiny_gpt2, ids, patterns=[(1, 3)], options=StatOptions(pool_max=4), backend="eager")
    full = cap.patterns[(1, 3)][0].double()  # [11, 11]
    cap.patterns.clear()  # force the pooled path
    fig = viz.attention_pattern(cap, 1, 3)
    f = 3
    assert "pooled 3x3" in fig.layout.title.text
    assert list(fig.data[0].x) == ["0-2", "3-5", "6-8", "9-10"] and list(fig.data[0].y) == list(fig.data[0].x)
    z = np.array(fig.data[0].z)
    for bi in range(4):
        for bj in range(4):
            block = full[bi * f:(bi + 1) * f, bj * f:(bj + 1) * f]
            assert z[bi, bj] == pytest.approx(float(block.sum() / block.numel()), abs=1e-6)
    assert "block mean, 3x3" in fig.data[0].hovertemplate


def test_token_strip_wraps_and_marks():
    vals = [0.5, float("nan"), 2.0, 3.0, 4.0]
    fig = viz.token_strip(["a", "b", "c", "d", "e"], vals, name="FAI", per_row=2, marks={"anchor": [2, 4]})
    assert [list(r) for r in fig.data[0].z] == [[0.5, None], [2.0, 3.0], [4.0, None]]
    assert [list(r) for r in fig.data[0].customdata] == [[0, 1], [2, 3], [4, None]]
    assert list(fig.data[1].x) == [0, 0] and [round(y) for y in fig.data[1].y] == [1, 2]
    assert fig.data[1].name == "anchor"
    with pytest.raises(ValueError, match="5 tokens but 4 values"):
        viz.token_strip(list("abcde"), [1, 2, 3, 4])


def test_token_labels_mark_whitespace_and_hover_the_whole_token():
    fig = viz.token_strip([" and", "\nsupercalifragilistic", "x"], [0.1, 0.2, 0.3])
    assert list(fig.data[0].text[0]) == ["\u00b7and", "\u21b5supercalif\u2026", "x"]  # cells: marked, cut to 12
    assert list(fig.data[0].hovertext[0]) == ["\u00b7and", "\u21b5supercalifragilistic", "x"]  # hover: all of it
    assert "%{hovertext}" in fig.data[0].hovertemplate


def test_decimate_keeps_every_extreme_in_order():
    rng = np.random.default_rng(0)
    y = rng.random(100_003)
    y[[7, 50_001, 99_999]] = [-5.0, 9.0, 7.5]  # spikes one position wide
    y[123] = np.nan
    x, v = viz.decimate(y, buckets=500)
    assert len(x) <= 1_000 and np.all(np.diff(x) > 0)
    assert v.max() == 9.0 and x[v.argmax()] == 50_001 and v.min() == -5.0 and x[v.argmin()] == 7
    assert 99_999 in x and np.allclose(v, y[x])  # every point drawn is a real (position, value)
    kept = set(x.tolist())
    for b in range(0, 100_003, 201):  # each slice of ceil(n / buckets) = 201 positions keeps its min and max
        sl = y[b:b + 201]
        assert b + int(np.nanargmax(sl)) in kept and b + int(np.nanargmin(sl)) in kept
    x2, v2 = viz.decimate(y, buckets=500, start=1_000, stop=1_600)  # a small range: exact
    assert list(x2) == list(range(1_000, 1_600)) and np.allclose(v2, y[1_000:1_600])


def test_active_dormant_matrix_holds_sink_scores():
    # sink_mass [batch=2, layer=1, head=2, pos=4]; s(x) = mean over queries 1..3
    sm = torch.tensor([[[[1.0, 0.9, 0.8, 0.7], [1.0, 0.1, 0.2, 0.3]]],
                       [[[1.0, 0.2, 0.2, 0.2], [1.0, 0.6, 0.6, 0.9]]]])
    cap = lens.Capture(tokens=torch.zeros(2, 4, dtype=torch.long), lengths=torch.tensor([4, 4]),
                       str_tokens=[["a"] * 4] * 2, stats={"sink_mass": sm}, meta={"n_layers": 1, "n_heads": 2})
    fig = viz.active_dormant_matrix(dormant_inputs(cap, tau=0.5))
    z = np.array(fig.data[0].z, dtype=float)
    assert np.allclose(z, [[0.8, 0.2], [0.2, 0.7]])  # rows L0H0, L0H1; columns inputs 0, 1
    assert list(fig.data[0].y) == ["L0H0", "L0H1"]
    assert fig.data[0].customdata[0][0] == "dormant" and fig.data[0].customdata[1][0] == "active"
    assert "0.5" in fig.layout.title.text


def test_entropy_by_layer_means():
    ent = torch.tensor([[0.2, 0.4], [1.0, 3.0]])  # [layer, head] mean entropy_norm, constant over queries
    stats = {"entropy": ent[None, :, :, None].expand(1, 2, 2, 5).clone(),
             "entropy_norm": ent[None, :, :, None].expand(1, 2, 2, 5).clone()}
    cap = _capture(stats, 2, 2, TOKENS[:5])
    fig = viz.entropy_by_layer(entropy(cap))
    assert list(fig.data[1].x) == [0, 1] and np.allclose(fig.data[1].y, [0.3, 2.0])
    assert np.allclose(sorted(fig.data[0].y), [0.2, 0.4, 1.0, 3.0])


def test_massive_profile_bars():
    frame = pd.DataFrame({"layer": [0, 1, 2], "top_abs": [5.0, 900.0, 700.0], "top_dim": [3, 77, 77],
                          "top_pos": [1, 0, 0], "median": [0.5, 0.4, 0.5], "ratio": [10.0, 2250.0, 1400.0],
                          "share": [0.0, 1.0, 1.0]})
    fig = viz.massive_profile(Findings("massive_activations", frame, {"min_abs": 100.0, "min_ratio": 1000.0},
                                       level="layer"))
    assert list(fig.data[0].y) == [5.0, 900.0, 700.0] and list(fig.data[1].y) == [0.5, 0.4, 0.5]
    assert list(fig.data[0].marker.color) == ["steelblue", "firebrick", "firebrick"]
    assert [list(c) for c in fig.data[0].customdata][1] == [77, 0, 2250.0]
    assert fig.layout.yaxis.type == "log"


def test_next_token_comparison_probabilities_and_kl():
    before = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    after = torch.tensor([0.0, 1.0, 3.0, -1.0, -3.0])
    labels = ["a", "b", "c", "d", "e"]
    fig = viz.next_token_comparison(before, after, labels, k=2)
    p, q = before.softmax(0).double(), after.softmax(0).double()
    ids = list(fig.data[0].customdata)
    assert ids == [0, 1, 2]  # union of both top-2, ordered by p before
    assert np.allclose(fig.data[0].y, p[ids].numpy()) and np.allclose(fig.data[1].y, q[ids].numpy())
    kl = float((p * (p / q).log()).sum())
    assert f"{kl:.4f}" in fig.layout.title.text
    assert "'a' \u2192 'c'" in fig.layout.title.text
    shift = viz.distribution_shift(p.numpy(), q.numpy())
    assert shift["tv"] == pytest.approx(float((p - q).abs().sum() / 2)) and shift["top1_changed"]
    with pytest.raises(ValueError, match="vocabularies"):
        viz.next_token_comparison(before, after[:3])


def test_pattern_comparison_difference():
    a, b = _causal(6, 1), _causal(6, 2)
    def mk(m):
        return viz.PatternView(m.numpy(), list(range(6)), list(range(6)), 1, "pooled", TOKENS[:6], 2, 1, 6)

    fig = viz.pattern_comparison(mk(a), mk(b))
    assert len(fig.data) == 3
    assert np.allclose(fig.data[2].z, (b - a).numpy())
    assert f"{float((b - a).abs().max()):.3f}" in fig.layout.title.text
    with pytest.raises(ValueError, match="same text"):
        viz.pattern_comparison(mk(a), viz.PatternView(b[:3].numpy(), [0, 1, 2], list(range(6)), 1, "pooled",
                                                      TOKENS, 2, 1, 6))


def test_circuit_graph_layers_and_edges():
    edges = pd.DataFrame({"source": ["embed", "L0H1", "L0H1", "MLP1"], "target": ["L0H1", "L1H2", "MLP1", "logits"],
                          "weight": [0.5, 1.0, -0.2, 0.05]})
    fig = viz.circuit_graph(edges, min_abs=0.1)
    edge_traces = fig.data[:-1]
    assert len(edge_traces) == 3  # the 0.05 edge is dropped
    assert [list(t.customdata[0]) for t in edge_traces][1] == ["L0H1", "L1H2", 1.0]
    nodes = fig.data[-1]
    x = dict(zip(nodes.text, nodes.x))
    assert x["embed"] == -1 and x["L0H1"] == 0 and x["L1H2"] == 1 and x["MLP1"] == 1.5
    assert edge_traces[2].line.color == "royalblue"  # negative weight
    assert viz.node_layer("a3.5") == 3 and viz.node_layer("logits", 30) == 30


def test_probe_curves_control_and_selectivity():
    res = pd.DataFrame({"layer": [0, 1, 2, 0, 1, 2], "accuracy": [0.5, 0.8, 0.9, 0.6, 0.6, 0.7],
                        "control": [0.5, 0.55, 0.5, 0.5, 0.5, 0.5], "target": ["pos"] * 3 + ["neg"] * 3})
    fig = viz.probe_curves(res, group="target")
    assert [t.name for t in fig.data] == ["pos", "pos (control)", "neg", "neg (control)"]
    assert np.allclose(fig.data[0].y, [0.5, 0.8, 0.9]) and np.allclose(fig.data[1].y, [0.5, 0.55, 0.5])
    assert np.allclose(fig.data[0].customdata, [0.0, 0.25, 0.4])


def test_reasoning_profile_marks_preplan_and_anchor():
    frame = pd.DataFrame({"input": 0, "pos": range(5), "token": list("abcde"), "waad": [0, 1, 3, 1, 0.5],
                          "fai": [0.3, 0.2, 0.1, 0.4, float("nan")], "preplan": [False, False, True, False, False],
                          "anchor": [False, False, False, True, False]})
    f = Findings("preplan_anchor", frame, {}, level="token", summary={"coupling": 1.0, "chance": 0.25})
    fig = viz.reasoning_profile(f)
    assert list(fig.data[1].x) == [2] and list(fig.data[1].y) == [3]
    assert list(fig.data[3].x) == [3] and fig.data[2].y[4] is None
    assert "100% of anchors" in fig.layout.title.text and "chance 25%" in fig.layout.title.text


@needs("chromium")  # static export renders through it
def test_export_png_offline(tmp_path: Path):
    fig = viz.head_grid(torch.tensor([[0.1, 0.9], [0.5, 0.2]]), "x")
    out = viz.export(fig, tmp_path / "grid.png", width=400, height=300)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == (400, 300)
    with pytest.raises(ValueError, match="cannot export"):
        viz.export(fig, tmp_path / "grid.bmp")
