"""Analyzers on hand-built Captures: exact, hand-computed values (no model, fast).

``capture_from_patterns`` builds a Capture from full attention patterns by the
definitions in ``lens.record._data`` / ``lens.kernels._stats``, written out plainly with
loops; ``test_pattern_helper_matches_kernel`` holds it to the real capture path.
Sizes are distinct and odd where possible so that transposed axes cannot hide.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from lens import Capture
from lens.analyzers import (
    Atlas,
    Findings,
    analyze,
    anchor_coupling,
    dormant_heads,
    dormant_inputs,
    dormant_tokens,
    entropy,
    entropy_series,
    head_distance,
    head_types,
    hidden_sinks,
    induction_test,
    massive_activations,
    preplan_anchor,
    residual_peaks,
    sink_rate,
    value_drains,
)

WINDOW = 10


def capture_from_patterns(patterns: torch.Tensor, tokens: torch.Tensor | None = None,
                          lengths: list[int] | None = None, window: int = WINDOW, keep_patterns: bool = False,
                          extra: dict | None = None) -> Capture:
    """A Capture whose statistics are computed from full patterns ``[batch, layer, head, T, T]``.

    Rows at or past an input's length are padding and enter nothing (their statistics are 0).
    """
    b_n, n_layers, n_heads, n, _ = patterns.shape
    lengths = lengths or [n] * b_n
    tokens = tokens if tokens is not None else torch.arange(n).repeat(b_n, 1) + 100
    z = lambda: torch.zeros(b_n, n_layers, n_heads, n)  # noqa: E731
    st = {k: z() for k in ("sink_mass", "entropy", "entropy_norm", "received", "distance", "waad", "prev_token",
                          "diag_mass", "dup_token", "induction")}
    visible = torch.zeros(b_n, n_layers, n)
    for b in range(b_n):
        t_len = lengths[b]
        for j in range(t_len):
            visible[b, :, j] = t_len - j
        for layer in range(n_layers):
            for head in range(n_heads):
                a = patterns[b, layer, head]
                for i in range(t_len):
                    row = a[i, : i + 1]
                    assert abs(float(row.sum()) - 1) < 1e-5 and float(a[i, i + 1:].abs().sum()) == 0
                    p = row[row > 0]
                    ent = float(-(p * p.log()).sum())
                    st["sink_mass"][b, layer, head, i] = a[i, 0]
                    st["entropy"][b, layer, head, i] = ent
                    st["entropy_norm"][b, layer, head, i] = ent / math.log(i + 1) if i >= 1 else 0.0
                    st["distance"][b, layer, head, i] = sum(float(a[i, j]) * (i - j) for j in range(i + 1))
                    st["waad"][b, layer, head, i] = sum(float(a[i, j]) * min(i - j, window) for j in range(i + 1))
                    st["prev_token"][b, layer, head, i] = a[i, i - 1] if i >= 1 else 0.0
                    st["diag_mass"][b, layer, head, i] = a[i, i]
                    st["dup_token"][b, layer, head, i] = sum(
                        float(a[i, j]) for j in range(i) if tokens[b, j] == tokens[b, i])
                    st["induction"][b, layer, head, i] = sum(
                        float(a[i, j]) for j in range(1, i + 1) if tokens[b, j - 1] == tokens[b, i])
                    for j in range(i + 1):
                        st["received"][b, layer, head, j] += a[i, j]
    st["visible"] = visible
    st.update(extra or {})
    pats = {}
    if keep_patterns:
        pats = {(l, h): patterns[:, l, h].clone() for l in range(n_layers) for h in range(n_heads)}
    return Capture(tokens=tokens.clone(), lengths=torch.tensor(lengths), str_tokens=[
        [f"t{int(x)}" for x in tokens[b, : lengths[b]]] for b in range(b_n)], stats=st, patterns=pats,
        meta={"n_layers": n_layers, "n_heads": n_heads, "model": "hand-built", "options": {"window": window}})


def uniform(n: int) -> torch.Tensor:
    """Uniform causal attention: row i spreads 1/(i+1) over keys 0..i."""
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]


def one_hot_rows(n: int, targets: list[int]) -> torch.Tensor:
    """Row i puts all its attention on key targets[i] (<= i)."""
    a = torch.zeros(n, n)
    for i, j in enumerate(targets):
        assert 0 <= j <= i
        a[i, j] = 1.0
    return a


def stack(*heads: torch.Tensor, layers: int = 1) -> torch.Tensor:
    """[1, layers, heads, T, T] from per-head patterns, repeated over layers."""
    return torch.stack(heads)[None, None].repeat(1, layers, 1, 1, 1)


# --- Findings and Atlas --------------------------------------------------------------------
def test_findings_carry_params_in_frame_attrs():
    cap = capture_from_patterns(stack(uniform(5), layers=2))
    f = sink_rate(cap, eps=0.25)
    assert isinstance(f, Findings) and f.level == "head"
    assert f.params["eps"] == 0.25 and f.frame.attrs["params"]["eps"] == 0.25
    assert f.frame.attrs["analyzer"] == "sinks"
    assert list(f.frame[["layer", "head"]].itertuples(index=False, name=None)) == [(0, 0), (1, 0)]
    d = f.to_dict()
    assert d["params"]["T"] == 5 and len(d["rows"]) == 2


# --- sinks (METHODS sec 1) -----------------------------------------------------------------
def test_uniform_attention_scores_zero_at_T64():
    n = 64
    cap = capture_from_patterns(stack(uniform(n), uniform(n), uniform(n), layers=2))
    f = sink_rate(cap, k=1, eps=0.3)
    harmonic = sum(1 / k for k in range(1, n + 1))
    assert f.summary["sink_rate"] == 0.0
    assert f.frame["sink_alpha"].tolist() == pytest.approx([harmonic / n] * 6, abs=1e-6)  # H_64 / 64 = 0.0744
    assert f.params["T"] == 64 and f.params["eps"] == 0.3 and f.params["k"] == 1


def test_sink_rate_counts_inputs_layers_heads():
    n = 7
    bos = one_hot_rows(n, [0] * n)
    # input 0: head 0 all-to-BOS (alpha_0 = 1), head 1 uniform (alpha_0 = H_7/7 = 0.37); input 1: both uniform
    pats = torch.stack([stack(bos, uniform(n))[0], stack(uniform(n), uniform(n))[0]])
    cap = capture_from_patterns(pats)
    f = sink_rate(cap, eps=0.3)
    assert f.summary["sink_rate"] == pytest.approx(100.0)  # H_7/7 = 0.370 > 0.3 too: T matters
    f = sink_rate(cap, eps=0.5)
    assert f.summary["sink_rate"] == pytest.approx(25.0)  # 1 of 4 (input, head)
    assert f.frame["sink_rate"].tolist() == pytest.approx([50.0, 0.0])
    # Sink_2: alpha_1 = mean_{i>=1} A[i,1]; for all-to-BOS it is 0
    assert sink_rate(cap, k=2, eps=0.01).frame["sink_rate"].tolist() == pytest.approx([50.0, 100.0])


def test_hidden_sinks_first_and_hidden():
    n = 11
    # every query >= 3 splits 0.6 BOS / 0.4 key 3; queries 0..2 attend BOS
    a = torch.zeros(n, n)
    a[:3, 0] = 1
    a[3:, 0], a[3:, 3] = 0.6, 0.4
    cap = capture_from_patterns(stack(a, uniform(n)))
    f = hidden_sinks(cap, theta=0.1, min_queries=1)
    rows = f.frame[f.frame["head"] == 0]
    assert rows[["pos", "kind"]].values.tolist() == [[0, "first"], [3, "hidden"]]
    # c_3 = (8 x 0.4) / (11 - 3) = 0.4
    assert float(rows[rows["pos"] == 3]["score"].iloc[0]) == pytest.approx(0.4)
    assert rows["token"].tolist() == ["t100", "t103"]
    # uniform head: c_j = (H_11 - H_j) / (11 - j) > 0.1 for every j at T = 11: j = 0 first, all others "hidden"
    u = f.frame[f.frame["head"] == 1]
    harmonic = [sum(1 / k for k in range(1, m + 1)) for m in range(n + 1)]
    expect = [j for j in range(n) if (harmonic[n] - harmonic[j]) / (n - j) > 0.1]
    assert u["pos"].tolist() == expect
    # theta = scale / T: scale 5 -> 0.4545: only BOS of head 0 (c_0 = (3 + 8 x 0.6)/11 = 0.709);
    # the uniform head's c_0 = H_11 / 11 = 0.275 is below it
    g = hidden_sinks(cap, scale=5.0)
    assert g.frame[["head", "pos", "kind"]].values.tolist() == [[0, 0, "first"]]
    assert g.params["scale"] == 5.0


# --- extreme tokens (METHODS sec 2, 10) --------------------------------------------------------
def _stat_capture(n_inputs=2, n_layers=3, n_heads=5, n=7, stats=None, lengths=None):
    return Capture(tokens=torch.arange(n).repeat(n_inputs, 1), lengths=torch.tensor(lengths or [n] * n_inputs),
                   str_tokens=[[f"t{j}" for j in range(n)] for _ in range(n_inputs)], stats=stats or {},
                   meta={"n_layers": n_layers, "n_heads": n_heads})


def test_value_drain_ratio_hand_values():
    vn = torch.ones(2, 3, 5, 7)
    vn[:, 1, 2, 0] = 0.1  # layer 1 head 2: v_0 is 10x smaller than the rest
    vn[0, 2, 4, 1:] = 2.0  # input 0, layer 2 head 4: rest doubled -> ratio 0.5; input 1 -> 1.0
    vn[1, 0, 0, 5:] = 0.0  # padding of input 1 (length 5) must not count
    vn[1, 0, 0, 1:5] = 4.0
    cap = _stat_capture(stats={"value_norm": vn}, lengths=[7, 5])
    f = value_drains(cap)
    get = lambda l, h: float(f.frame.query(f"layer == {l} and head == {h}")["value_drain"].iloc[0])  # noqa: E731
    assert get(1, 2) == pytest.approx(0.1)
    assert get(2, 4) == pytest.approx(0.75)
    assert get(0, 0) == pytest.approx((1 + 0.25) / 2)
    assert f.frame["drain"].sum() == 1 and f.summary["n_drain_heads"] == 1


def test_residual_peak_ratio_hand_values():
    rn = torch.ones(2, 3, 7)
    rn[:, 2, 0] = 30.0
    rn[0, 2, 3] = 3.0  # max over j >= 1 is 3 for input 0 -> 10; input 1 -> 30
    rn[:, 1, 0] = 0.5
    f = residual_peaks(_stat_capture(stats={"resid_norm": rn}))
    assert f.frame["peak_ratio"].tolist() == pytest.approx([1.0, 0.5, 20.0])
    assert f.frame["peak"].tolist() == [False, False, True] and f.summary["peak_layers"] == [2]


def test_massive_activations_thresholds():
    val = torch.tensor([[[2000.0, 5.0, 4.0], [150.0, 3.0, 2.0]], [[1800.0, 900.0, 4.0], [50.0, 3.0, 2.0]]])  # [b, L, 3]
    pos = torch.tensor([[[0, 3, 1], [2, 1, 1]], [[0, 4, 1], [2, 1, 1]]])
    dim = torch.tensor([[[77, 5, 6], [9, 9, 9]], [[77, 12, 6], [9, 9, 9]]])
    med = torch.tensor([[1.0, 1.0], [0.5, 0.01]])
    cap = _stat_capture(n_layers=2, stats={"massive_val": val, "massive_pos": pos, "massive_dim": dim,
                                           "massive_median": med})
    f = massive_activations(cap)
    row0, row1 = f.frame.iloc[0], f.frame.iloc[1]
    # layer 0: 2000 (ratio 2000) and 1800 (ratio 3600) are massive; 900 at ratio 1800 too
    assert row0["dims"] == (12, 77) and row0["positions"] == (0, 4) and row0["share"] == 1.0
    assert row0["top_abs"] == 2000.0 and row0["top_dim"] == 77 and row0["top_pos"] == 0
    # layer 1: 150 at ratio 150 (not 1000x), 50 is below 100 even at ratio 5000
    assert row1["dims"] == () and row1["share"] == 0.0
    assert f.summary["layers"] == [0] and f.summary["dims"][0] == 77
    per = massive_activations(cap, per_input=True)
    assert per.frame["massive"].sum() == 3 and len(per.frame) == 12


# --- active / dormant (METHODS sec 2) ---------------------------------------------------------
def test_dormant_per_input_and_active_dormant_heads():
    n = 6
    bos = one_hot_rows(n, [0] * n)
    prev = one_hot_rows(n, [0] + list(range(n - 1)))
    # head 0: BOS on input 0, previous token on input 1 (switches); head 1: always BOS; head 2: always prev
    pats = torch.stack([stack(bos, bos, prev)[0], stack(prev, bos, prev)[0]])
    cap = capture_from_patterns(pats)
    per_input = dormant_inputs(cap, tau=0.5)
    s = per_input.frame.set_index(["input", "layer", "head"])["sink_score"]
    assert s[(0, 0, 0)] == 1.0 and s[(1, 0, 0)] == pytest.approx(1 / 5)  # only query 1's previous token is BOS
    heads = dormant_heads(cap, tau=0.5)
    assert heads.frame["state"].tolist() == ["active-dormant", "dormant", "active"]
    assert heads.summary["active_dormant_heads"] == [[0, 0]]
    # the same from two Captures, one input each
    one = capture_from_patterns(pats[:1])
    two = capture_from_patterns(pats[1:])
    assert dormant_heads(one, two).frame["state"].tolist() == ["active-dormant", "dormant", "active"]
    # restricted to some queries: head 1 on queries {3, 4} only
    q = torch.zeros(2, n, dtype=torch.bool)
    q[:, 3:5] = True
    sel = dormant_inputs(cap, queries=q).frame
    assert sel["sink_score"].tolist()[:3] == [1.0, 1.0, 0.0]
    tok = dormant_tokens(cap, heads=[(0, 0)]).frame
    assert len(tok) == 2 * (n - 1) and tok[tok["input"] == 1]["state"].tolist() == ["dormant"] + ["active"] * 4


# --- entropy (METHODS sec 3) -----------------------------------------------------------------
def test_entropy_hand_values():
    n = 5
    half = torch.zeros(n, n)  # row i >= 1: 0.5 on BOS, 0.5 on itself -> ln 2
    half[0, 0] = 1
    for i in range(1, n):
        half[i, 0] = half[i, i] = 0.5
    cap = capture_from_patterns(stack(uniform(n), one_hot_rows(n, [0] * n), half))
    f = entropy(cap)
    ln = math.log
    # uniform: mean of ln 2, ln 3, ln 4, ln 5 over queries 1..4; normalised exactly 1
    assert f.frame["entropy"].tolist() == pytest.approx(
        [(ln(2) + ln(3) + ln(4) + ln(5)) / 4, 0.0, ln(2)], abs=1e-6)
    assert f.frame["entropy_norm"].tolist() == pytest.approx(
        [1.0, 0.0, (1 + ln(2) / ln(3) + ln(2) / ln(4) + ln(2) / ln(5)) / 4], abs=1e-6)
    assert f.frame["collapsed"].tolist() == [False, True, False]
    assert f.summary["n_collapsed"] == 1 and f.params["collapse_below"] == 0.05


def test_entropy_series_flags_drop():
    n = 5
    caps = [capture_from_patterns(stack(uniform(n), uniform(n))),
            capture_from_patterns(stack(uniform(n), one_hot_rows(n, [0] * n)))]
    f = entropy_series(caps, labels=[0, 1000])
    last = f.frame[f.frame["checkpoint"] == 1000]
    assert last["collapsed"].tolist() == [False, True] and last["ratio"].tolist() == pytest.approx([1.0, 0.0])
    assert f.summary["n_collapsed_last"] == 1 and f.params["labels"] == ["0", "1000"]


# --- preplan / anchor (METHODS sec 4) ---------------------------------------------------------
def _reasoning_capture() -> Capture:
    n = 6
    # local head: previous token, except row 3 (all on key 0: distance 3) and row 5 (0.5 on key 4, 0.5 on key 1)
    local = one_hot_rows(n, [0, 0, 1, 0, 3, 4])
    local[5] = 0
    local[5, 4] = local[5, 1] = 0.5
    glob = torch.tensor([
        [1.0, 0, 0, 0, 0, 0],
        [0.5, 0.5, 0, 0, 0, 0],
        [0.2, 0.6, 0.2, 0, 0, 0],
        [0.1, 0.2, 0.1, 0.6, 0, 0],
        [0.1, 0.1, 0.1, 0.6, 0.1, 0],
        [0.1, 0.1, 0.1, 0.5, 0.1, 0.1],
    ])
    return capture_from_patterns(stack(local, glob))


def test_waad_fai_preplan_anchor_hand_values():
    cap = _reasoning_capture()
    f = preplan_anchor(cap, local_heads=[(0, 0)], global_heads=[(0, 1)])
    fr = f.frame
    # WAAD_t = sum_s A[t,s] min(t-s, 10) on the local head
    assert fr["waad"].tolist() == pytest.approx([0, 1, 1, 3, 1, 2.5])
    # FAI_s = mean_{t>s} A[t,s] on the global head, by hand from the rows above
    assert fr["fai"].tolist()[:5] == pytest.approx([1.0 / 5, 1.0 / 4, 0.3 / 3, 1.1 / 2, 0.1 / 1])
    assert math.isnan(fr["fai"].iloc[5])
    # candidates 1..5: mean 1.7, std 0.872 -> threshold 2.57; t = 3 is the only peak above it
    assert fr.index[fr["preplan"]].tolist() == [3]
    # top 10% of the 4 FAI candidates (1..4) -> ceil(0.4) = 1 anchor: position 3 (0.55)
    assert fr.index[fr["anchor"]].tolist() == [3]
    assert f.summary["coupling"] == 1.0 and f.summary["chance"] == pytest.approx(2 / 4)
    g = preplan_anchor(cap, local_heads=[(0, 0)], global_heads=[(0, 1)], anchor_frac=0.5)
    assert g.frame.index[g.frame["anchor"]].tolist() == [1, 3] and g.summary["coupling"] == 0.5
    per = anchor_coupling(g).frame
    assert per[["n_preplan", "n_anchor", "n_coupled"]].values.tolist() == [[1, 2, 1]]
    # with skip_first=False position 0 is a candidate too: 5 candidates -> 2 anchors, FAI_0 = 0.2 ranks third
    h = preplan_anchor(cap, local_heads=[(0, 0)], global_heads=[(0, 1)], anchor_frac=0.4, skip_first=False)
    assert h.frame.index[h.frame["anchor"]].tolist() == [1, 3]


def test_fai_equals_full_pattern_formula_on_random_patterns():
    gen = torch.Generator().manual_seed(3)
    n, n_layers, n_heads = 13, 3, 5
    scores = torch.randn(2, n_layers, n_heads, n, n, generator=gen) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    pats = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    lengths = [13, 9]  # input 1 is right-padded: rows and keys from 9 on are padding
    pats[1] = 0
    pats[1, :, :, :9, :9] = scores[1, :, :, :9, :9].masked_fill(~causal[:9, :9], float("-inf")).softmax(-1)
    cap = capture_from_patterns(pats, lengths=lengths)
    local, glob = [(0, 1), (2, 4)], [(1, 0), (2, 2), (0, 3)]
    f = preplan_anchor(cap, local_heads=local, global_heads=glob)
    for b, t_len in enumerate(lengths):
        a_glob = torch.stack([pats[b, l, h] for l, h in glob]).mean(0)
        a_loc = torch.stack([pats[b, l, h] for l, h in local]).mean(0)
        fr = f.frame[f.frame["input"] == b]
        for s in range(t_len - 1):
            assert fr["fai"].iloc[s] == pytest.approx(float(a_glob[s + 1:t_len, s].mean()), abs=1e-6)
        for t in range(t_len):
            waad = sum(float(a_loc[t, s]) * min(t - s, WINDOW) for s in range(t + 1))
            assert fr["waad"].iloc[t] == pytest.approx(waad, abs=1e-6)


def test_head_distance_sets():
    cap = _reasoning_capture()
    f = head_distance(cap, local_frac=0.5, global_frac=0.5)
    # D = mean over t >= 1 of sum_s A[t,s](t-s): local head (1+1+3+1+2.5)/5, global head (0.5+1+0.8+1.5+2.3)/5
    assert f.frame["distance"].tolist() == pytest.approx([1.7, 1.22])
    assert f.frame["role"].tolist() == ["global", "local"]
    auto = preplan_anchor(cap, local_frac=0.5, global_frac=0.5)
    assert auto.summary["local_heads"] == [[0, 1]] and auto.summary["global_heads"] == [[0, 0]]


# --- head types (METHODS sec 10) ----------------------------------------------------------------
def test_head_type_scores_with_exclusions():
    toks = torch.tensor([[0, 5, 6, 7, 5, 6, 7]])  # BOS a b c a b c
    n = 7
    prev = one_hot_rows(n, [0, 0, 1, 2, 3, 4, 5])
    ind = one_hot_rows(n, [0, 0, 0, 0, 2, 3, 4])  # query a(4) -> b(2), b(5) -> c(3), c(6) -> a(4)
    dup = one_hot_rows(n, [0, 0, 0, 0, 1, 2, 3])
    cap = capture_from_patterns(stack(prev, ind, dup), tokens=toks)
    f = head_types(cap).frame
    assert f["prev_token"].tolist() == pytest.approx([6 / 7, 1 / 7, 1 / 7])  # A[1, 0] is previous-token too
    assert f["induction"].tolist() == pytest.approx([0, 3 / 7, 0])
    assert f["dup_token"].tolist() == pytest.approx([0, 0, 3 / 7])
    g = head_types(cap, exclude_bos=True).frame
    # prev head: rows 0 and 1 are all on key 0 -> removed; 5 of the 5 remaining units are previous-token
    assert g["prev_token"].tolist() == pytest.approx([1.0, 0, 0])
    assert g["induction"].tolist() == pytest.approx([0, 1.0, 0])
    assert g["dup_token"].tolist() == pytest.approx([0, 0, 1.0])
    s = head_types(cap).summary
    assert s["top_prev_token"] == [0, 0] and s["top_induction"] == [0, 1] and s["top_dup_token"] == [0, 2]


def test_head_type_diagonal_exclusion():
    toks = torch.tensor([[0, 5, 5, 6, 5]])  # query 2 (a, after a) has key 2 itself in its induction pattern
    diag = torch.eye(5)
    cap = capture_from_patterns(stack(diag), tokens=toks)
    f = head_types(cap).frame
    assert f["induction"].tolist() == pytest.approx([1 / 5])  # A[2,2] counts: tok_1 = tok_2
    assert head_types(cap, exclude_diag=True).frame["induction"].isna().all()  # nothing left
    both = 0.5 * torch.eye(5) + 0.5 * one_hot_rows(5, [0, 0, 0, 0, 0])
    both[0, 0] = 1
    cap = capture_from_patterns(stack(both), tokens=toks)
    # key 0 and the diagonal removed: rows keep nothing -> undefined; with only BOS removed row 2 keeps 0.5 on itself
    g = head_types(cap, exclude_bos=True).frame
    assert g["induction"].tolist() == pytest.approx([0.5 / (4 * 0.5)])


def test_induction_test_from_stat_and_pattern():
    p = 5
    r = [11, 12, 13, 14, 15]
    toks = torch.tensor([[0] + r + r])
    n = 2 * p + 1
    targets = list(range(n))
    for i in range(p + 1, n):
        targets[i] = i - p + 1
    perfect = one_hot_rows(n, targets)
    half = 0.5 * perfect + 0.5 * one_hot_rows(n, [0] * n)
    cap = capture_from_patterns(stack(perfect, half, uniform(n)), tokens=toks)
    f = induction_test(cap)
    expect_uniform = sum(1 / (i + 1) for i in range(p + 1, n)) / p
    assert f.frame["induction_test"].tolist() == pytest.approx([1.0, 0.5, expect_uniform])
    assert f.params["periods"] == [p] and f.params["exact"] and f.summary["top_head"] == [0, 0]
    with_pat = induction_test(capture_from_patterns(stack(perfect, half, uniform(n)), tokens=toks, keep_patterns=True))
    assert with_pat.frame["from_pattern"].all()
    assert with_pat.frame["induction_test"].tolist() == pytest.approx(f.frame["induction_test"].tolist())
    with pytest.raises(ValueError, match="not BOS"):
        induction_test(capture_from_patterns(stack(uniform(4)), tokens=torch.tensor([[0, 1, 2, 3]])))


# --- analyze, atlas, persistence ------------------------------------------------------------
def _full_hand_capture() -> Capture:
    cap = _reasoning_capture()
    b, n_layers, n_heads, n = cap.stats["sink_mass"].shape
    cap.stats["value_norm"] = torch.ones(b, n_layers, n_heads, n)
    cap.stats["value_norm"][..., 0] = 0.2
    cap.stats["resid_norm"] = torch.ones(b, n_layers, n)
    return cap


def test_analyze_runs_what_it_can_and_says_what_it_skipped():
    atlas = analyze(_full_hand_capture())
    assert isinstance(atlas, Atlas)
    assert "massive_activations" in atlas.skipped and "massive_activations" not in atlas
    assert {"sinks", "hidden_sinks", "dormant_heads", "value_drains", "residual_peaks", "entropy", "head_types",
            "head_distance", "preplan_anchor"} <= set(atlas.findings)
    text = str(atlas)
    assert "Sink_1^0.3" in text and "skipped" in text and len(text.splitlines()) < 30
    frame = atlas.to_frame()
    assert len(frame) == 2 and {"sink_rate", "value_drain", "entropy_norm", "state", "prev_token", "distance",
                                "role"} <= set(frame.columns)
    assert frame["value_drain"].tolist() == pytest.approx([0.2, 0.2])
    parsed = pd.read_json(__import__("io").StringIO(atlas.to_json()), typ="series")
    assert set(parsed["findings"]) == set(atlas.findings)
    custom = analyze(_full_hand_capture(), only=["sinks"], sinks={"eps": 0.9})
    assert list(custom.findings) == ["sinks"] and custom["sinks"].params["eps"] == 0.9
    with pytest.raises(KeyError, match="skipped"):
        atlas["massive_activations"]
    with pytest.raises(ValueError, match="no analyzer"):
        analyze(_full_hand_capture(), only=["nope"])


def test_missing_statistic_fails_clearly():
    cap = capture_from_patterns(stack(uniform(3)))
    with pytest.raises(KeyError, match="value_norm"):
        value_drains(cap)


def _assert_same_atlas(a: Atlas, b: Atlas) -> None:
    assert list(a.findings) == list(b.findings) and a.skipped == b.skipped
    for name in a.findings:
        pd.testing.assert_frame_equal(a[name].frame, b[name].frame, check_exact=True)
        assert a[name].params == b[name].params and a[name].to_dict()["summary"] == b[name].to_dict()["summary"]
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)
    assert str(a) == str(b)


def test_identical_after_save_and_load_hand_built(tmp_path):
    cap = _full_hand_capture()
    loaded = Capture.load(cap.save(tmp_path / "cap"))
    _assert_same_atlas(analyze(cap), analyze(loaded))


def test_identical_after_save_and_load_real_capture(tiny_llama, tmp_path):
    import lens

    texts = ["w5 w6 w7 w8 w9 w5 w6 w7 w8", "w11 w12 w13 w11", "w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30"]
    cap = lens.capture(tiny_llama, texts)
    loaded = Capture.load(cap.save(tmp_path / "cap"))
    a, b = analyze(cap), analyze(loaded)
    assert not a.skipped
    _assert_same_atlas(a, b)
    _assert_same_atlas(analyze(cap, hidden_sinks={"min_queries": 3}), analyze(loaded, hidden_sinks={"min_queries": 3}))
    for fn in (lambda c: dormant_tokens(c, heads=[(1, 2)]), lambda c: massive_activations(c, per_input=True),
               lambda c: anchor_coupling(preplan_anchor(c))):
        pd.testing.assert_frame_equal(fn(cap).frame, fn(loaded).frame, check_exact=True)


def test_pattern_helper_matches_kernel(tiny_llama):
    """The hand-built captures above follow the same definitions as the real capture path."""
    import lens

    texts = ["w5 w6 w7 w8 w9 w5 w6 w7 w8 w5", "w11 w12 w11 w12 w13"]
    cap = lens.capture(tiny_llama, texts, patterns="all", backend="eager")
    n = cap.tokens.shape[1]
    pats = torch.stack([torch.stack([cap.patterns[(l, h)] for h in range(cap.n_heads)], 1)
                        for l in range(cap.n_layers)], 1)  # [b, L, H, q, k]
    ref = capture_from_patterns(pats, tokens=cap.tokens, lengths=cap.lengths.tolist(), window=cap.meta["options"]["window"])
    for name, mine in ref.stats.items():
        theirs = cap.stats[name]
        assert theirs.shape[-1] == n
        assert torch.allclose(mine, theirs.float(), atol=2e-5), name
