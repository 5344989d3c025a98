"""Model organisms: the trained behaviour on held-out data, determinism, cache, and every path.

The thresholds are the issue's (METHODS sec 2 and 11): Bigram-Backcopy copies at trigger
positions (>= 0.95) and its sink head parks non-trigger queries on BOS (>= 0.5); the
induction organism grows a layer-0 previous-token head and a layer-1 induction head
(scores >= 0.5). ``organisms.evaluate`` recomputes them on data from a held-out seed, so a
stale or wrong cache entry cannot pass by reading back what training wrote.
"""

from __future__ import annotations

import pytest
import torch

import lens
from lens import organisms

pytestmark = pytest.mark.organism


def test_bigram_backcopy_learns_the_task_and_its_head_is_active_at_triggers(bigram_backcopy):
    info = organisms.evaluate(bigram_backcopy)
    m = info["metrics"]
    assert m["copy_accuracy"] >= 0.95
    # Active at triggers: the head looks at the previous token (the one it copies), not BOS.
    assert m["prev_attention_trigger"] > 0.5 > m["bos_attention_trigger"]
    # Without a trigger it has nothing to do: BOS gets far more than at triggers.
    assert m["bos_attention_non_trigger"] > 10 * m["bos_attention_trigger"]
    assert info["triggers"] == list(bigram_backcopy.info["triggers"]) and len(info["triggers"]) == 3


def test_bigram_backcopy_sink_head_parks_on_bos(bigram_backcopy):
    m = organisms.evaluate(bigram_backcopy)["metrics"]
    assert m["bos_attention_non_trigger"] >= 0.5
    assert m["value_drain_ratio"] < 0.3  # measured 0.995 and 0.204 (METHODS sec 2: 0.97-1.00, ~0.19)


def test_induction_organism_grows_previous_token_and_induction_heads(induction_organism):
    info = organisms.evaluate(induction_organism)
    m = info["metrics"]
    layer, prev_head = info["prev_token_head"]
    assert layer == 0 and m["prev_token_scores"][prev_head] >= 0.5
    layer, ind_head = info["induction_head"]
    assert layer == 1 and m["induction_scores"][ind_head] >= 0.5
    # The circuit is known: no layer-1 head does the previous-token job instead.
    assert max(m["prev_token_scores_layer1"]) < m["prev_token_scores"][prev_head]
    assert m["repeat_accuracy"] > 0.9
    assert (info["prev_token_head"], info["induction_head"]) == (
        induction_organism.info["prev_token_head"], induction_organism.info["induction_head"])


def test_training_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_CACHE", str(tmp_path))
    a = organisms.train("induction", seed=3, steps=5, progress=False)
    assert organisms.last_train["how"] == "trained"
    b = organisms.train("induction", seed=3, steps=5, progress=False, force=True)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    c = organisms.train("induction", seed=3, steps=5, progress=False)
    assert organisms.last_train["how"] == "cache"
    assert all(torch.equal(pa, pc) for pa, pc in zip(a.model.state_dict().values(), c.model.state_dict().values()))
    assert c.info["induction_head"] == a.info["induction_head"]
    # Another seed gives other weights.
    d = organisms.train("induction", seed=4, steps=5, progress=False)
    assert not torch.equal(a.model.transformer.wte.weight, d.model.transformer.wte.weight)


def test_corrupt_organism_entry_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_CACHE", str(tmp_path))
    organisms.train("bigram_backcopy", seed=0, steps=3, progress=False)
    entry = organisms._cache.entry_path(organisms.CACHE_KIND, f"bigram_backcopy-seed0-{organisms.VERSION}-steps3")
    weights = next(entry.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])
    organisms.train("bigram_backcopy", seed=0, steps=3, progress=False)
    assert organisms.last_train["how"] == "trained"


def test_unknown_kind_and_bad_steps_fail_clearly():
    with pytest.raises(ValueError, match="bigram_backcopy, induction"):
        organisms.train("grokking")
    with pytest.raises(ValueError, match="steps"):
        organisms.train("induction", steps=0)


def test_every_path_runs_on_an_organism(induction_organism):
    """Capture, the TransformerLens bridge and nnsight all see the same model."""
    s = induction_organism
    text = " ".join(f"t{i:02d}" for i in (5, 9, 2, 7, 5, 9, 2))
    ids = s.to_tokens(text)
    assert ids[0, 0].item() == organisms.BOS_ID and s.prepends_bos
    with torch.no_grad():
        ref = s.model(input_ids=ids).logits
        bridge = s.bridge(ids)
    torch.testing.assert_close(bridge, ref, atol=1e-4, rtol=0)
    with torch.no_grad(), s.nnsight.trace(ids):
        nn_logits = s.nnsight.output.logits.save()
    torch.testing.assert_close(nn_logits, ref, atol=1e-4, rtol=0)
    cap = lens.capture(s, text)
    torch.testing.assert_close(cap.logits[0], ref[0, -1], atol=1e-4, rtol=0)
    # The induction head finds the earlier copy: the query at the second "t02" (position 7)
    # attends most to the token after the first "t02" (position 4).
    layer, head = s.info["induction_head"]
    cap = lens.capture(s, text, patterns=[(layer, head)])
    assert cap.patterns[(layer, head)][0, 7].argmax().item() == 4
