"""probes/: linear probes with control tasks, per-layer curves, attentive probe.

Oracles: synthetic data with a known linear rule; the Bigram-Backcopy organism, whose single
head is active (attends the previous token) only on trigger queries and dormant (parks on
BOS) elsewhere; a context-dependent SmolLM2 label (inside a quotation) that token identity
cannot give.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lens import probes
def test_probe_on_a_known_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 7))
    y = (x[:, 2] - 0.5 * x[:, 5] > 0).astype(int)
    types = rng.integers(0, 300, size=600)  # labels unrelated to type: the control cannot learn them
    res = probes.fit_probe(x, y, seq=np.arange(600) // 6, types=types)
    # 100 sequences in 5 folds of 20: 120 held-out rows and 480 training rows per fold
    assert res.folds == 5 and res.n_test == 120 and res.n_train == 480
    assert res.accuracy > 0.95 and res.accuracy == pytest.approx(np.mean(res.fold_accuracy))
    assert res.accuracy_std == pytest.approx(np.std(res.fold_accuracy)) and res.accuracy_std < 0.03
    assert res.control_accuracy < 0.7 and res.selectivity == pytest.approx(res.accuracy - res.control_accuracy)
    per_fold = np.subtract(res.fold_accuracy, res.fold_control_accuracy)
    assert res.selectivity == pytest.approx(per_fold.mean()) and res.selectivity_std == pytest.approx(per_fold.std())
    assert set(res.fold_c) <= set(probes.CS) and 0.4 < res.majority < 0.6
    ridge = probes.fit_probe(x, x[:, 2] * 3 + 1, kind="ridge", control=False)
    assert ridge.accuracy > 0.99 and ridge.control_accuracy is None and ridge.selectivity_std is None  # R^2
    assert -0.1 < ridge.majority <= 0  # predicting the training mean: R^2 about 0 held out


def test_folds_keep_each_sequence_on_one_side():
    """Each sequence has its own label and its own random offset vector, shared by all its rows.
    A probe that saw other rows of the same sequence in training would read the label off the
    offset (per-row split: ~1.0); grouped by sequence it has nothing to go on (chance, 0.5)."""
    rng = np.random.default_rng(1)
    n_seq, per = 60, 8
    seq = np.repeat(np.arange(n_seq), per)
    label = rng.integers(0, 2, n_seq)
    x = rng.normal(size=(n_seq, 40))[seq] + 0.05 * rng.normal(size=(n_seq * per, 40))
    grouped = probes.fit_probe(x, label[seq], seq=seq, control=False)
    per_row = probes.fit_probe(x, label[seq], control=False)  # default: each row its own group
    assert per_row.accuracy > 0.95
    assert grouped.accuracy < 0.7 and grouped.accuracy <= grouped.majority + 0.1


def test_majority_baseline_is_the_training_folds_most_frequent_class():
    y = np.array([0] * 7 + [1] * 3 + [0] * 7 + [1] * 3)
    seq = np.repeat(np.arange(4), 5)  # sequences: 00000 00111 00000 00111
    res = probes.fit_probe(np.zeros((20, 2)), y, seq=seq, folds=4, control=False)
    # each fold trains on three sequences (class 0 in the majority) and tests on one
    assert sorted(res.fold_majority) == pytest.approx([0.4, 0.4, 1.0, 1.0])
    assert res.majority == pytest.approx(0.7) and res.n_test == 5 and res.n_train == 15


def test_control_labels_and_split_by_hand():
    types = np.array([5, 7, 5, 9, 7, 5])
    y = np.array([0, 1, 1, 0, 0, 1])
    c = probes.control_labels(types, y, seed=3)
    assert c[0] == c[2] == c[5] and c[1] == c[4] and set(c) <= {0, 1}  # one label per type
    seq = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    tr, te = probes.split_by_sequence(seq, 0.5, seed=0)
    assert set(seq[tr]).isdisjoint(seq[te]) and te.sum() == 4
    with pytest.raises(ValueError, match="types="):
        probes.fit_probe(np.zeros((8, 2)), np.array([0, 1] * 4), seq=seq)
    with pytest.raises(ValueError, match="x must be"):
        probes.fit_probe(np.zeros((8, 2)), np.zeros(7), control=False)
    with pytest.raises(ValueError, match="three sequences"):
        probes.fit_probe(np.zeros((4, 2)), np.array([0, 1] * 2), seq=np.array([0, 0, 1, 1]), control=False)


@pytest.fixture(scope="module")
def bb_data(bigram_backcopy):
    from lens import organisms

    tokens, info = organisms.bigram_backcopy_data(40, 64, seed=5, chain=bigram_backcopy.info["chain"])
    return tokens, info


def test_bigram_backcopy_previous_token_probes(bigram_backcopy, bb_data):
    """The organism's single head is active (attends the previous token) on trigger queries and
    dormant (parks on BOS) elsewhere. So after layer 0 the residual at a trigger query knows the
    previous token, the embeddings do not, and at the other positions "the previous token is a
    trigger" is not there to decode: the head was parked on BOS, whose value is drained, so it
    moved nothing about the previous token (accuracy = majority rate). METHODS' one-layer model
    cannot carry that label to those positions; we test the label it can carry instead."""
    tokens, info = bb_data
    trig = info["is_trigger"].clone()
    trig[:, 0] = False
    prev = torch.zeros_like(tokens)
    prev[:, 1:] = tokens[:, :-1]
    prev_is_trigger = torch.full_like(tokens, -1)
    prev_is_trigger[:, 2:] = info["follows_trigger"][:, 2:].long()
    curve = probes.probe_layers(bigram_backcopy, tokens.tolist(), prev_is_trigger, layers=[-1, 0])
    for _, row in curve.iterrows():
        assert row.majority > 0.6 and row.accuracy <= row.majority + 0.03
    # The identity of the previous token (64-way), at trigger queries.
    ident = torch.full_like(tokens, -1)
    ident[trig] = prev[trig]
    df = probes.probe_layers(bigram_backcopy, tokens.tolist(), ident, layers=[-1, 0]).set_index("layer")
    # measured over 5 folds grouped by sequence: 0.980 +- 0.018 (one 75/25 split gave 0.975)
    assert df.loc[0, "accuracy"] >= 0.95 and df.loc[0, "accuracy_std"] < 0.05 and df.loc[0, "majority"] < 0.1
    assert df.loc[-1, "accuracy"] <= 0.1  # the embeddings know only the current token (a trigger)
    # The control (a random label per current token) is easy here: trigger queries hold only 3
    # token types, so it reaches 0.75 and bounds the selectivity. Measured 0.980 - 0.751 = 0.229 +- 0.042.
    assert df.loc[0, "selectivity"] >= 0.1


def test_attentive_probe_finds_the_informative_position():
    gen = torch.Generator().manual_seed(0)
    n, t, d = 240, 12, 6
    x = torch.randn(n, t, d, generator=gen)
    where = torch.randint(0, t - 3, (n,), generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    x[torch.arange(n), where, 0] = 4.0  # a marker on dimension 0 says where the label is
    x[torch.arange(n), where, 1] = torch.where(y == 1, 3.0, -3.0)
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[:5, -3:] = False
    res = probes.fit_attentive_probe(x, mask, y.numpy(), epochs=150, seed=0)
    assert res.accuracy >= 0.9 and res.majority < 0.65
    test_idx = torch.as_tensor(probes.split_by_sequence(np.arange(n), 0.25, 0)[1]).nonzero().flatten()
    on_marker = res.test_weights[torch.arange(len(test_idx)), where[test_idx]]
    assert float(on_marker.mean()) > 0.5
    with pytest.raises(ValueError, match="x must be"):
        probes.fit_attentive_probe(x[0], mask[0], y.numpy())


@pytest.mark.smollm2
def test_smollm2_quotation_probe_curve(smollm2):
    tokens, lengths, labels, _ = probes.quotation_dataset(smollm2, 40, seed=0)
    df = probes.probe_layers(smollm2, tokens.tolist(), labels, layers=[-1, 3, 15])
    assert list(df.columns) == list(probes.COLUMNS) and list(df["layer"]) == [-1, 3, 15]
    emb, l3, l15 = (df.iloc[i] for i in range(3))
    assert emb.accuracy <= emb.majority + 0.05  # the token alone does not say whether it is quoted
    assert l3.accuracy >= 0.9 and l15.accuracy >= 0.9
    assert l3.selectivity >= 0.1 and l15.selectivity >= 0.1
