"""Analyzers on real models and organisms: the must-show figures of issue 5 (METHODS sec 1, 2, 10).

The pure analyzers are held to hand-computed values in ``tests/analyzers/test_analyzers.py``; here
they meet models whose answer is known: a randomly initialised SmolLM2 (no sinks), the
pretrained SmolLM2 (many), the Bigram-Backcopy organism (an active-dormant sink head with
a drained value) and the induction organism (a layer-0 previous-token head feeding a
layer-1 induction head). The model-side checks (``confirm_dormant``, ``retrieval_scores``)
and the ``lens analyze`` command are tested here too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import lens
from lens import Capture
from lens.experiments._model_checks import confirm_dormant, losses, needle_samples, retrieval_scores
from lens.model._organisms_data import BOS_ID, N_TOKENS, bigram_backcopy_data, trigger_mask
from lens.analyzers import (
    Atlas,
    analyze,
    dormant_heads,
    dormant_inputs,
    dormant_tokens,
    head_types,
    induction_test,
    sink_rate,
    value_drains,
)
from lens.data import prompts

T = 64  # METHODS sec 1: prompts cut to exactly 64 tokens
N_PROMPTS = 64
DOC = Path(__file__).resolve().parents[2] / "docs" / "readme" / "analyzers.md"
LIGHT = dict(value_norm=False, resid_norm=False, massive=False, progress=False)


def harmonic(n: int) -> float:
    return sum(1 / k for k in range(1, n + 1))


# --- attention sinks: random init vs pretrained (METHODS sec 1) ----------------------------------
@pytest.fixture(scope="module")
def smollm2_sinks(smollm2):
    ids = prompts(N_PROMPTS, tokens=T, tokenizer=smollm2.tokenizer)
    return lens.capture(smollm2, ids, stats=["received", "visible"], batch_size=16, **LIGHT)


@pytest.mark.smollm2
def test_shipped_prompts_are_enough_for_the_metric(smollm2):
    """At least 64 texts, each long enough to be cut to exactly T = 64 SmolLM2 tokens."""
    texts = prompts()
    assert len(texts) >= N_PROMPTS
    ids = prompts(tokens=T, tokenizer=smollm2.tokenizer)
    assert len(ids) == len(texts) and {len(r) for r in ids} == {T}
    assert len(set(map(tuple, ids))) == len(ids)  # no duplicates inflating the count


@pytest.mark.smollm2
def test_smollm2_sink_rate_is_high(smollm2_sinks):
    cap = smollm2_sinks
    f = sink_rate(cap)
    assert f.params["T"] == T and f.params["n_inputs"] == N_PROMPTS and f.params["eps"] == 0.3
    # brute force from the raw statistics: 1[alpha_0 > 0.3] per (input, layer, head)
    alpha0 = cap.stats["received"][..., 0].double() / cap.stats["visible"][:, :, None, 0].double()
    brute = 100 * float((alpha0 > 0.3).double().mean())
    assert f.summary["sink_rate"] == pytest.approx(brute, abs=1e-9)
    rate = f.summary["sink_rate"]
    # measured 72.4% (doc); a pretrained LM scores far above uniform attention's 0
    assert 60 < rate < 90, rate
    # the figure written into the README section is this one
    doc = re.search(r"SmolLM2-135M-Instruct, Sink_1\^0\.3 = ([0-9.]+)%", DOC.read_text())
    assert doc is not None, f"{DOC} does not state the SmolLM2 figure"
    assert float(doc.group(1)) == pytest.approx(rate, abs=0.15)
    # the sink sits on the first token in the middle and late layers, not in layers 0-1
    per_layer = f.summary["per_layer_rate"]
    assert per_layer[0] == 0.0 and max(per_layer) == 100.0


@pytest.mark.smollm2
def test_random_init_with_smollm2_config_scores_zero(smollm2):
    """All 30 layers, random weights (HF init, std 0.02): near-uniform attention, no sink.

    16 of the 64 prompts keep the run short; each (input, layer, head) is one indicator, so
    that is still 4320 of them.
    """
    from transformers import AutoModelForCausalLM

    cfg = smollm2.model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).eval()
    random_lm = lens.Subject(model, smollm2.tokenizer, name="smollm2-random-init")
    assert (random_lm.n_layers, random_lm.n_heads, random_lm.n_kv_heads) == (30, 9, 3)
    ids = prompts(16, tokens=T, tokenizer=smollm2.tokenizer)
    cap = lens.capture(random_lm, ids, stats=["received", "visible"], batch_size=16, **LIGHT)
    f = sink_rate(cap)
    assert f.summary["sink_rate"] == 0.0
    # uniform causal attention gives alpha_0 = H_T / T = 0.0742 at T = 64: random init is close to it
    assert f.summary["mean_alpha"] == pytest.approx(harmonic(T) / T, abs=0.005)
    assert float(f.frame["sink_alpha"].max()) < 0.15


# --- Bigram-Backcopy: an active-dormant sink head (METHODS sec 2) --------------------------------
def trigger_free(chain, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """Sequences from the organism's bigram chain with every trigger's probability set to 0.

    BOS, then non-trigger tokens only: the back-copy rule never fires, so the sink head has
    nothing to do anywhere.
    """
    trans = chain.transition.clone()
    trans[:, list(chain.triggers)] = 0
    trans = trans / trans.sum(1, keepdim=True)
    first = chain.stationary.clone()
    first[list(chain.triggers)] = 0
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, seq_len, dtype=torch.long)
    out[:, 0] = BOS_ID
    out[:, 1] = torch.multinomial(first.expand(n, -1), 1, generator=gen).squeeze(1)
    for t in range(2, seq_len):
        out[:, t] = torch.multinomial(trans[out[:, t - 1]], 1, generator=gen).squeeze(1)
    return out


@pytest.fixture(scope="module")
def bb_inputs(bigram_backcopy):
    """(trigger-free inputs, the organism's own held-out inputs with triggers)."""
    from lens.model._organisms_data import HELD_OUT_SEED

    info = bigram_backcopy.info
    plain = trigger_free(info["chain"], 16, 64, seed=7)
    held_out, _ = bigram_backcopy_data(256, 64, seed=HELD_OUT_SEED + info["seed"], chain=info["chain"])
    assert not bool(trigger_mask(plain, info["triggers"]).any())
    assert bool(trigger_mask(held_out, info["triggers"]).any(1).all())
    return plain, held_out


@pytest.fixture(scope="module")
def bb_captures(bigram_backcopy, bb_inputs):
    plain, held_out = bb_inputs
    kw = dict(stats=["sink_mass", "prev_token"], resid_norm=False, massive=False, batch_size=64, progress=False)
    return lens.capture(bigram_backcopy, plain, **kw), lens.capture(bigram_backcopy, held_out, **kw)


def test_bb_analyzers_match_the_organisms_ground_truth(bigram_backcopy, bb_inputs, bb_captures):
    """Parity: the analyzers on a capture = the organism's plain-torch measurement on the same data."""
    info = bigram_backcopy.info
    m = info["metrics"]
    layer, head = info["sink_head"]
    cap = bb_captures[1]
    tokens = dormant_tokens(cap, heads=[(layer, head)]).frame
    trig = trigger_mask(bb_inputs[1], info["triggers"])
    at_trigger = trig[torch.tensor(tokens["input"].values), torch.tensor(tokens["pos"].values)].numpy()
    assert tokens.loc[~at_trigger, "sink_mass"].mean() == pytest.approx(m["bos_attention_non_trigger"], abs=1e-4)
    assert tokens.loc[at_trigger, "sink_mass"].mean() == pytest.approx(m["bos_attention_trigger"], abs=1e-4)
    assert tokens.loc[at_trigger, "prev_token"].mean() == pytest.approx(m["prev_attention_trigger"], abs=1e-4)
    drain = value_drains(cap).frame.set_index(["layer", "head"]).loc[(layer, head), "value_drain"]
    assert drain == pytest.approx(m["value_drain_ratio"], abs=1e-4)


def test_bb_sink_head_active_at_trigger_positions(bigram_backcopy, bb_inputs, bb_captures):
    info = bigram_backcopy.info
    layer, head = info["sink_head"]
    cap = bb_captures[1]
    tokens = dormant_tokens(cap, heads=[(layer, head)]).frame
    trig = trigger_mask(bb_inputs[1], info["triggers"])
    at_trigger = trig[torch.tensor(tokens["input"].values), torch.tensor(tokens["pos"].values)].numpy()
    assert set(tokens.loc[at_trigger, "token"]) == {f"t{t:02d}" for t in info["triggers"]}
    assert (tokens.loc[at_trigger, "state"] == "active").mean() > 0.95
    assert tokens.loc[at_trigger, "prev_token"].mean() > 0.7  # it attends the token to copy
    # s(x) restricted to trigger queries: active on every input
    per_input = dormant_inputs(cap, queries=trig).frame
    assert (per_input.loc[per_input["head"] == head, "state"] == "active").all()
    with pytest.raises(ValueError, match="no head"):
        dormant_tokens(cap, heads=[(1, 0)])  # the organism has one layer


def test_bb_sink_head_dormant_without_triggers(bigram_backcopy, bb_inputs, bb_captures):
    info = bigram_backcopy.info
    layer, head = info["sink_head"]
    cap_plain, cap_trig = bb_captures
    per_input = dormant_inputs(cap_plain).frame
    rows = per_input[(per_input["layer"] == layer) & (per_input["head"] == head)]
    assert len(rows) == 16
    assert rows["dormant"].all(), rows["sink_score"].describe()
    trig = trigger_mask(bb_inputs[1], info["triggers"])
    both = dormant_heads(cap_plain, cap_trig, queries=[None, trig])
    row = both.frame[(both.frame["layer"] == layer) & (both.frame["head"] == head)].iloc[0]
    assert row["state"] == "active-dormant" and [layer, head] in both.summary["active_dormant_heads"]


def test_bb_value_drain(bigram_backcopy, bb_captures):
    layer, head = bigram_backcopy.info["sink_head"]
    ratios = [float(value_drains(c).frame.set_index(["layer", "head"]).loc[(layer, head), "value_drain"])
              for c in bb_captures]
    assert max(ratios) < 0.3, ratios


def test_bb_move_to_bos_barely_matters_without_triggers(bigram_backcopy, bb_inputs):
    layer, head = bigram_backcopy.info["sink_head"]
    plain, held_out = bb_inputs
    quiet = confirm_dormant(bigram_backcopy, plain[:8], heads=[(layer, head)])
    busy = confirm_dormant(bigram_backcopy, held_out[:8], heads=[(layer, head)])
    # the loss half of the test: on trigger-free inputs parking the head on BOS costs < 1% ...
    assert float(quiet.frame["rel_change"].abs().max()) < 0.01, quiet.frame[["sink_score", "rel_change"]]
    # ... while back-copy needs the head: on inputs with triggers it costs a lot of loss
    assert float(busy.frame["rel_change"].min()) > 0.05 and not busy.frame["dormant"].any()
    assert busy.summary["dormant_share"] == 0.0
    # losses() agrees with a plain forward pass with no edit
    with torch.no_grad():
        logits = bigram_backcopy.model(input_ids=plain[:2]).logits
    direct = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), plain[:2, 1:], reduction="none").mean(1)
    assert torch.allclose(losses(bigram_backcopy, plain[:2]), direct, atol=1e-5)
    assert quiet.frame["dormant"].all() and quiet.summary["dormant_share"] == 1.0


# --- induction organism: previous-token head -> induction head (METHODS sec 10, 11) --------------
def repeated_random(n: int, seed: int) -> list[list[int]]:
    """[BOS] + r + r with r uniform over the 64 tokens, period 8..20 (as in training, cut to <= 41)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(8, 21, (1,), generator=gen))
        r = torch.randint(0, N_TOKENS, (p,), generator=gen).tolist()
        out.append([BOS_ID] + r + r)
    return out


def test_induction_organism_head_types(induction_organism):
    info = induction_organism.info
    cap = lens.capture(induction_organism, repeated_random(24, seed=3), progress=False)
    f = head_types(cap)
    assert f.summary["top_prev_token"][0] == 0 and tuple(f.summary["top_prev_token"]) == tuple(info["prev_token_head"])
    assert f.summary["top_induction"][0] == 1 and tuple(f.summary["top_induction"]) == tuple(info["induction_head"])
    table = f.frame.set_index(["layer", "head"])
    assert table.loc[tuple(info["prev_token_head"]), "prev_token"] > 0.5
    # the induction test (A[i, i - p + 1] over the second copy) agrees: the best head is in layer 1
    test = induction_test(cap)
    assert tuple(test.summary["top_head"]) == tuple(info["induction_head"])
    assert test.summary["top_score"] > 0.5 and test.summary["per_layer_max"][0] < 0.2


# --- retrieval heads by generation (METHODS sec 10) -----------------------------------------------
def greedy(subject, ids: list[list[int]], n_new: int) -> torch.Tensor:
    """``n_new`` greedy tokens per prompt from HF ``generate`` (KV cache): an independent decoding path."""
    out = subject.model.generate(torch.tensor(ids), max_new_tokens=n_new, do_sample=False,
                                 attention_mask=torch.ones(len(ids), len(ids[0]), dtype=torch.long),
                                 pad_token_id=subject.pad_token_id)
    return out[:, len(ids[0]):]


def test_retrieval_scores_find_the_induction_head(induction_organism):
    """Needle in a haystack on the induction organism: the copying head is its induction head.

    Brute force for every head's score: the argmax key of each generating query read from
    full eager patterns, scored by the METHODS sec 10 rule in a plain loop.
    """
    kw = dict(n_samples=12, haystack_len=24, needle_len=8, cue_len=2, seed=1)
    f = retrieval_scores(induction_organism, **kw)
    info = induction_organism.info
    table = f.frame.set_index(["layer", "head"])["retrieval_score"]
    assert f.summary["recall"] > 0.8  # the organism copies the needle
    # Any of its induction heads (layer 1, induction score >= 0.5: there are several, near-equal).
    ind = {(1, h) for h, sc in enumerate(info["metrics"]["induction_scores"]) if sc >= 0.5}
    assert tuple(int(x) for x in table.idxmax()) in ind and table.max() > 0.5
    assert f.summary["n_retrieval_heads"] == int((table > 0.1).sum()) >= 1
    ids, spans = needle_samples(induction_organism, **kw)
    n_new = kw["needle_len"] - kw["cue_len"]
    out = greedy(induction_organism, ids, n_new)
    direct = [float((out[b] == torch.tensor(ids[b][s:e])).double().mean()) for b, (s, e) in enumerate(spans)]
    assert f.summary["token_recall"] == pytest.approx(direct)
    full = torch.cat([torch.tensor(ids), out], 1)[:, :-1]
    cap = lens.capture(induction_organism, full, stats=["sink_mass"], patterns="all", backend="eager", **LIGHT)
    p0 = len(ids[0]) - 1
    brute = torch.zeros(2, 4, dtype=torch.double)
    for (layer, head), pat in cap.patterns.items():
        for b, (s, e) in enumerate(spans):
            for k in range(n_new):
                key = int(pat[b, p0 + k].argmax())
                if s <= key < e and int(full[b, key]) == int(out[b, k]):
                    brute[layer, head] += 1 / (e - s) / len(ids)
    assert torch.allclose(torch.tensor(table.values).reshape(2, 4), brute, atol=1e-9)


@pytest.mark.smollm2
def test_retrieval_scores_on_smollm2(smollm2):
    kw = dict(n_samples=4, haystack_len=20, needle_len=6, cue_len=2, seed=0)
    f = retrieval_scores(smollm2, **kw)
    scores = torch.tensor(f.frame["retrieval_score"].values)
    assert len(f.frame) == 30 * 9 and bool(((scores >= 0) & (scores <= 1)).all())
    # each sample adds k / 4 for k hits out of 4 steps: every mean over 4 samples is a multiple of 1/16
    assert torch.allclose(scores * 16, (scores * 16).round(), atol=1e-9)
    assert (f.frame["retrieval"] == (f.frame["retrieval_score"] > 0.1)).all()
    assert f.summary["n_retrieval_heads"] == int(f.frame["retrieval"].sum())
    # recall against a direct check: HF generate (with its KV cache) from the same prompts
    ids, spans = needle_samples(smollm2, **kw)
    out = greedy(smollm2, ids, kw["needle_len"] - kw["cue_len"])
    direct = [float((out[b] == torch.tensor(ids[b][s:e])).double().mean()) for b, (s, e) in enumerate(spans)]
    assert f.summary["token_recall"] == pytest.approx(direct)
    assert f.summary["recall"] == pytest.approx(sum(r >= 0.5 for r in direct) / len(direct))
    # a head scores only at steps where the generated token is a needle token (the one it looks
    # at), so no head scores more than the share of generated tokens taken from the needle
    from_needle = [sum(int(t) in ids[b][s:e] for t in out[b]) / (e - s) for b, (s, e) in enumerate(spans)]
    assert float(scores.max()) <= sum(from_needle) / len(from_needle) + 1e-9


# --- save / load and the command line ------------------------------------------------------------
def assert_same_atlas(a: Atlas, b: Atlas) -> None:
    assert list(a.findings) == list(b.findings) and a.skipped == b.skipped
    for name in a.findings:
        pd.testing.assert_frame_equal(a[name].frame, b[name].frame, check_exact=True)
        assert a[name].params == b[name].params and a[name].to_dict()["summary"] == b[name].to_dict()["summary"]
    assert str(a) == str(b) and a.to_json() == b.to_json()


@pytest.fixture(scope="module")
def smollm2_saved(smollm2, tmp_path_factory):
    """A default-statistics SmolLM2 capture of two ragged prompts, and where it was saved."""
    texts = prompts(2)
    ids = [smollm2.tokenizer(t)["input_ids"][:n] for t, n in zip(texts, (40, 27))]
    cap = lens.capture(smollm2, ids, progress=False)
    return cap, cap.save(tmp_path_factory.mktemp("smollm2") / "cap")


@pytest.mark.smollm2
def test_smollm2_analyzers_identical_after_save_and_load(smollm2_saved):
    cap, path = smollm2_saved
    loaded = Capture.load(path)
    a, b = analyze(cap), analyze(loaded)
    assert not a.skipped and len(a.findings) == 10
    assert_same_atlas(a, b)
    assert a.meta["T"] == [27, 40] and a["sinks"].params["n_inputs"] == 2


@pytest.mark.smollm2
def test_cli_analyze_text_and_json(smollm2_saved):
    from typer.testing import CliRunner

    from lens.cli import app

    cap, path = smollm2_saved
    expected = analyze(cap)
    runner = CliRunner()
    text = runner.invoke(app, ["analyze", str(path)])
    assert text.exit_code == 0, text.output
    assert text.output.strip() == str(expected)
    res = runner.invoke(app, ["analyze", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    sinks = data["findings"]["sinks"]
    assert sinks["summary"]["sink_rate"] == pytest.approx(expected["sinks"].summary["sink_rate"], abs=1e-12)
    assert sinks["params"]["eps"] == 0.3 and data["meta"]["n_layers"] == 30
    assert len(data["heads"]) == 30 * 9


def plain(output: str) -> str:
    """CLI output with rich's box characters and line wrapping removed."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", output).split())


def test_cli_analyze_clear_errors(tmp_path):
    from typer.testing import CliRunner

    from lens.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["analyze", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in plain(missing.output)
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["analyze", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "is not a saved Capture" in plain(empty.output)
    assert not isinstance(empty.exception, FileNotFoundError)


def test_losses_ragged_batch_equals_one_by_one(tiny_llama):
    """Padding never leaks into ``losses``: a ragged batch gives each input's own loss, edited or not."""
    from lens.edits import MoveToBOS

    texts = ["w5 w6 w7 w8 w9 w5 w6 w7 w8", "w11 w12 w13", "w20 w21 w22 w23 w24 w25"]
    for edits in ((), (MoveToBOS(layer=1, head=4),)):
        together = losses(tiny_llama, texts, edits)
        alone = torch.cat([losses(tiny_llama, [t], edits) for t in texts])
        assert torch.allclose(together, alone, atol=1e-5), edits
    assert not torch.allclose(losses(tiny_llama, texts), losses(tiny_llama, texts, [MoveToBOS(layer=1, head=4)]))
    ids = tiny_llama.to_tokens(texts[1])
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=ids).logits
    direct = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert float(losses(tiny_llama, [texts[1]])[0]) == pytest.approx(float(direct), abs=1e-5)
