"""Scripted experiments: specs, tasks, scoring, calibration (ZeroTuning, ACT), runs and their database.

Fast tests need no model; organism tests use the induction organism (ground truth: a
layer-1 induction head); the ``smollm2`` tier runs the CI-sized SmolLM2 spec.
"""

from __future__ import annotations

import json
import math
import random
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from lens.experiments import (
    TASKS,
    SpecError,
    TaskFileError,
    act_search,
    compare_runs,
    last_logits,
    list_runs,
    load_run,
    load_spec,
    make_task,
    parse_spec,
    read_jsonl,
    run_spec,
    score,
    zerotuning,
)
from lens.experiments._sentiment_data import NEGATIVE, POSITIVE

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "docs" / "experiments"

GOOD = """\
model = "induction"
seed = 3

[task]
name = "induction"
calibration = 8
test = 16

[calibration]
method = "zerotuning"
gammas = [0.5, 2.0]
"""


# --- specs: errors name the field and the line, before any model loads ------------------------
BAD_SPECS = [
    # (spec text, expected key path in the message, expected line)
    ('model = "induction"\n[task\nname = "induction"\n', "not valid TOML", 2),
    ('model = "induction"\nseed = 0\n[task]\nname = "induction"\ntest = 4\ncolour = "red"\n', "task.colour", 6),
    ('model = "induction"\nseed = "zero"\n[task]\nname = "induction"\ntest = 4\n', "seed", 2),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4.5\n', "task.test", 4),
    ('model = "induction"\n[task]\nname = "sentimental"\ntest = 4\n', "task.name", 3),
    ('model = "no such model"\n[task]\nname = "induction"\ntest = 4\n', "model", 1),
    ('[model]\nname = "induction"\ndtype = "int4"\n[task]\nname = "induction"\ntest = 4\n', "model.dtype", 3),
    ('[model]\nname = "induction"\ndevice = "cpu"\ndevice_map = "auto"\n[task]\nname = "induction"\n',
     "model.device_map", 4),
    ('[model]\nname = "induction"\ncolour = "red"\n[task]\nname = "induction"\ntest = 4\n', "model.colour", 3),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\n\n[[edits]]\ntype = "ablate"\nlayer = 1\n\n'
     '[[edits]]\ntype = "teleport"\nlayer = 0\n', "edits[1].type", 11),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\n\n[[edits]]\ntype = "scale_attention"\n'
     'layer = "one"\nfactor = 2.0\n', "edits[0].layer", 8),
    ('model = "induction"\n[task]\nname = "induction"\ncalibration = 4\ntest = 4\n[calibration]\n'
     'method = "zerotuning"\ngammas = [0.5, -2.0]\n', "calibration.gammas[1]", 8),
    ('model = "induction"\nmetrics = ["accuracy", "f1"]\n[task]\nname = "induction"\ntest = 4\n', "metrics[1]", 2),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\n[eval]\nbatch_size = 0\n', "eval.batch_size", 6),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\nperiod = 1001\n', "task.period", 5),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\n[[edits]]\nlayer = 1\n', "edits[0].type", 5),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\n[[edits]]\ntype = "gate"\nfactor = nan\n',
     "edits[0].factor", 7),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\n[[edits]]\ntype = "ablate"\nmode = "mean"\n',
     "edits[0].mode", 7),
    ('model = "induction"\n[task]\nname = "induction"\ntest = 4\n[calibration]\nmethod = "act"\n',
     "task.calibration", 2),
]


@pytest.mark.parametrize("text,keypath,line", BAD_SPECS)
def test_bad_spec_names_field_and_line(text, keypath, line):
    with pytest.raises(SpecError) as err:
        parse_spec(text, source="bad.toml")
    msg = str(err.value)
    assert msg.startswith("bad.toml: ") and keypath in msg
    assert re.search(rf"\bline {line}\b", msg), msg


def test_every_error_in_a_spec_is_named_on_its_own_line():
    text = ('model = "induction"\nseed = -1\n[task]\nname = "induction"\ntest = 4\n'
            '[eval]\nbatch_size = 0\nconfidence = 2.0\n')
    with pytest.raises(SpecError) as err:
        parse_spec(text, source="bad.toml")
    assert str(err.value).splitlines() == ["bad.toml: seed: must be >= 0, got -1 (line 2)",
                                           "bad.toml: eval.batch_size: must be >= 1, got 0 (line 7)",
                                           "bad.toml: eval.confidence: must be < 1.0, got 2.0 (line 8)"]


def test_no_spec_key_is_named_like_a_union_tag():
    """Error key paths drop pydantic's union tags (``edits[0].gate.factor`` -> ``edits[0].factor``), so no
    key of any spec table may share a tag's name."""
    from lens.experiments import _spec_tables as t

    tables = [t.SpecTable, t.ModelTable, t.Eval, t.Output, *t.TASK_TABLES.values(), *t.EDIT_TABLES,
              *t.CALIBRATION_TABLES]
    assert not {key for table in tables for key in table.model_fields} & t.UNION_TAGS


def test_good_spec_parses_with_defaults():
    spec = parse_spec(GOOD)
    assert (spec.model, spec.seed, spec.task, spec.n_calibration, spec.n_test) == ("induction", 3, "induction", 8, 16)
    assert spec.metrics == ("accuracy",)
    assert spec.calibration["gammas"] == [0.5, 2.0] and spec.calibration["scopes"] == ["layer", "head_index", "all"]
    assert spec.task_options["vocab"] == "organism"  # inferred from the organism model
    assert spec.eval["bootstrap"] == 2000 and spec.edits == ()


def test_key_bias_accepts_negative_bias():
    spec = parse_spec('model = "induction"\n[task]\nname = "induction"\ntest = 4\n'
                      '[[edits]]\ntype = "key_bias"\nbias = -1.5\n')
    assert spec.edits[0]["bias"] == -1.5


def test_bad_spec_fails_in_cli_before_model_loads(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import lens
    from lens.cli import app

    def no_load(*a, **k):
        raise AssertionError("the model was loaded for a malformed spec")

    monkeypatch.setattr(lens, "load", no_load)
    for n, (text, keypath, line) in enumerate(BAD_SPECS):
        path = tmp_path / f"bad{n}.toml"
        path.write_text(text)
        res = CliRunner().invoke(app, ["run", str(path), "--db", str(tmp_path / "r.duckdb"), "--quiet"])
        assert res.exit_code == 2, res.output
        assert keypath in res.output and f"line {line}" in res.output
    assert not (tmp_path / "r.duckdb").exists()


def test_every_example_spec_parses():
    specs = sorted(EXPERIMENTS.glob("*.toml"))
    assert len(specs) >= 5
    for path in specs:
        spec = load_spec(path)
        assert spec.n_test >= 1, path


# --- JSONL task files -----------------------------------------------------------------------
def _jsonl(tmp_path, lines) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD_LINE = '{"prompt": "2 + 2 =", "choices": [" 4", " 5"], "answer": " 4"}'


@pytest.mark.parametrize("bad,field", [
    ('{"prompt": "x", "choices": [" a", " b"], "answer": " c"}', "field 'answer'"),
    ('{"prompt": "x", "choices": [" a"], "answer": 0}', "field 'choices'"),
    ('{"prompt": "", "choices": [" a", " b"], "answer": 0}', "field 'prompt'"),
    ('{"prompt": "x", "choices": [" a", " b"], "answer": 2}', "field 'answer'"),
    ('{"prompt": "x", "choices": [" a", " b"], "answer": 0, "label": 1}', "unknown field"),
    ('{"prompt": "x", "choices": [" a", " b"], "answer": 0', "not valid JSON"),
])
def test_jsonl_bad_line_names_line_and_field(tmp_path, bad, field):
    path = _jsonl(tmp_path, [GOOD_LINE, "", GOOD_LINE.replace("2 + 2", "3 + 1"), bad])
    with pytest.raises(TaskFileError) as err:
        read_jsonl(path)
    assert f"{path}:4:" in str(err.value) and field in str(err.value)
    # the same error stops a spec that names the file, before any model loads
    spec = tmp_path / "spec.toml"
    spec.write_text('model = "induction"\n[task]\npath = "task.jsonl"\ntest = 1\n')
    with pytest.raises(SpecError, match=r"task\.path: .*task\.jsonl:4"):
        load_spec(spec)


def test_jsonl_task_splits(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "choices": [" a", " b"], "answer": i % 2}) for i in range(10)]
    task = make_task(str(_jsonl(tmp_path, lines)), 4, 5, seed=1)
    assert len(task.calibration) == 4 and len(task.test) == 5
    assert not {e.prompt for e in task.calibration} & {e.prompt for e in task.test}
    assert task.test[0].answer == int(task.test[0].prompt[1:]) % 2  # answer index read from the file
    assert make_task(str(tmp_path / "task.jsonl"), 4, 5, seed=1) == task
    with pytest.raises(ValueError, match="10 distinct examples, 11 asked for"):
        make_task(str(tmp_path / "task.jsonl"), 6, 5, seed=1)
    # explicit split fields are honoured
    capitals = make_task(str(EXPERIMENTS / "tasks" / "capitals.jsonl"), 4, 6, seed=0)
    assert {e.meta["split"] for e in capitals.calibration} == {"calibration"}
    assert {e.meta["split"] for e in capitals.test} == {"test"}
    spain = [e for e in capitals.calibration if e.prompt == "The capital of Spain is"]
    assert len(spain) == 1 and spain[0].choices[spain[0].answer] == " Madrid"  # "answer": 0 is an index


# --- built-in tasks ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_builtin_task_splits_disjoint_and_deterministic(name):
    a = make_task(name, 20, 40, seed=0)
    assert len(a.calibration) == 20 and len(a.test) == 40
    cal, test = {e.prompt for e in a.calibration}, {e.prompt for e in a.test}
    assert len(cal) == 20 and len(test) == 40 and not cal & test
    for e in a.calibration + a.test:
        assert 0 <= e.answer < len(e.choices) and len(set(e.choices)) == len(e.choices) >= 2
    assert make_task(name, 20, 40, seed=0) == a  # same seed, same examples in the same order
    b = make_task(name, 20, 40, seed=1)
    assert [e.prompt for e in b.test] != [e.prompt for e in a.test]


def test_sentiment_sentences():
    assert len(POSITIVE) + len(NEGATIVE) >= 200
    assert len(set(POSITIVE) | set(NEGATIVE)) == len(POSITIVE) + len(NEGATIVE)  # distinct, no sentence in both
    assert min(len(POSITIVE), len(NEGATIVE)) >= 100
    task = make_task("sentiment", 40, 150, seed=0, shots=4)
    demos = task.info["demonstrations"]
    assert len(demos) == 4
    for e in task.calibration + task.test:
        sentence = e.meta["sentence"]
        assert sentence not in demos and e.prompt.endswith(f"Review: {sentence}\nSentiment:")
        assert e.choices == (" positive", " negative")
        assert e.answer == (0 if sentence in POSITIVE else 1)
        assert all(f"Review: {d}\n" in e.prompt for d in demos)  # the same demonstrations in every prompt
    labels = [e.answer for e in task.test]
    assert 0.3 < np.mean(labels) < 0.7


def test_ioi_template():
    task = make_task("ioi", 30, 60, seed=0)
    assert task.metrics == ("accuracy", "logit_diff")
    orders = set()
    for e in task.calibration + task.test:
        io, s = e.meta["io"], e.meta["s"]
        assert io != s and e.choices == (f" {io}", f" {s}") and e.answer == 0
        pair = f"{io} and {s}" if e.meta["order"] == "ABBA" else f"{s} and {io}"
        assert pair in e.prompt and e.prompt.endswith(" to")
        assert e.prompt.count(s) == 2 and e.prompt.count(io) == 1  # S is repeated, the IO is not
        orders.add(e.meta["order"])
    assert orders == {"ABBA", "BABA"}
    from lens.experiments._tasks import _ioi_prompt

    assert _ioi_prompt("When {A} and {B} went to the {place}, {B} gave a {object} to", "Mary", "John", True,
                       random.Random(0)).startswith("When Mary and John went to the ")


def test_colored_objects_template():
    """METHODS sec 9: "Q: On the table, I see an orange textbook, a red puzzle, and a purple cup.
    What color is the textbook?\nA: Orange", one solved demonstration, then the question."""
    task = make_task("colored_objects", 20, 40, seed=0, shots=1)
    form = re.compile(r"Q: On the table, I see an? (\w+) ([\w ]+), an? (\w+) ([\w ]+), and an? (\w+) ([\w ]+)\. "
                      r"What color is the ([\w ]+)\?")

    def parse(question):
        m = form.fullmatch(question)
        assert m is not None, question
        colors, things = m.group(1, 3, 5), m.group(2, 4, 6)
        return colors, things.index(m.group(7))

    for e in task.calibration + task.test:
        demo_q, demo_a, q, a = e.prompt.split("\n")
        colors, asked = parse(demo_q)
        assert demo_a == f"A: {colors[asked].capitalize()}"
        colors, asked = parse(q)
        assert a == "A:" and q != demo_q
        assert e.choices == tuple(f" {c.capitalize()}" for c in colors) and e.answer == asked
        assert len(set(colors)) == 3 and all(f"{'an' if c[0] in 'aeiou' else 'a'} {c} " in q for c in colors)


def test_unknown_task_and_options_fail_clearly():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope", 1, 1)
    with pytest.raises(ValueError, match="has no option"):
        make_task("ioi", 1, 1, shots=2)
    with pytest.raises(ValueError, match="distinct examples"):
        make_task("sentiment", 100, 200)


# --- scoring ------------------------------------------------------------------------------------
def test_last_logits_prefix_cache_and_batching_are_exact(tiny_llama):
    """Batched, right-padded, prefix-cached logits equal one plain forward per prompt, also edited."""
    from lens.edits import ScaleAttention

    # (the toy tokenizer knows w0..w9 as whole words)
    prefix = "w5 w9 w4 w7 w6 w4"
    prompts = [f"{prefix} w{4 + i % 6}" + " w8" * (i % 3) for i in range(7)]
    edits = [ScaleAttention(layer=1, head=(0, 4), keys=0, factor=3.0)]
    for ed in ([], edits):
        with torch.no_grad(), tiny_llama.edited(*ed):
            ref = torch.stack([tiny_llama.model(tiny_llama.to_tokens(p)).logits[0, -1] for p in prompts])
        for cache in (True, False):
            got = last_logits(tiny_llama, prompts, edits=ed, batch_size=3, prefix_cache=cache)
            assert torch.allclose(got, ref, atol=1e-5), (len(ed), cache, (got - ref).abs().max())
    plain = last_logits(tiny_llama, prompts)
    assert (plain - last_logits(tiny_llama, prompts, edits=edits)).abs().max() > 1e-3  # the edit did something


def test_score_columns_by_hand(tiny_llama):
    from lens.experiments import Example

    ex = [Example("w5 w6 w7", (" w4", " w8", " w9"), 1), Example("w5 w6 w9", (" w9", " w4"), 0)]
    df = score(tiny_llama, ex)
    logits = last_logits(tiny_llama, [e.prompt for e in ex])
    z = logits[0, [4, 8, 9]].double()
    assert df.loc[0, "pred"] == int(z.argmax()) and df.loc[0, "correct"] == (int(z.argmax()) == 1)
    assert math.isclose(df.loc[0, "margin"], float(z[1] - max(z[0], z[2])), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(df.loc[0, "logit_diff"], float(z[1] - (z[0] + z[2]) / 2), rel_tol=1e-9, abs_tol=1e-9)
    p = torch.softmax(z, 0)
    assert math.isclose(df.loc[0, "logprob_answer"], float(p[1].log()), rel_tol=1e-9)
    assert math.isclose(df.loc[0, "entropy"], float(-(p * p.log()).sum()), rel_tol=1e-9)
    assert df.loc[1, "answer"] == 0 and len(df.loc[1, "choice_logits"]) == 2


# --- calibration on the induction organism ------------------------------------------------------
@pytest.fixture(scope="module")
def induction_task():
    return make_task("induction", 16, 32, seed=0, vocab="organism", period=10, n_choices=4)


@pytest.mark.organism
def test_organism_solves_induction_task(induction_organism, induction_task):
    from lens.edits import AblateHead

    base = score(induction_organism, induction_task.calibration)
    assert base["correct"].mean() >= 0.8  # the organism copies by induction (chance: 0.25)
    ablated = score(induction_organism, induction_task.calibration, edits=[AblateHead(layer=1, head=None)])
    assert ablated["correct"].mean() < base["correct"].mean() - 0.3  # without layer 1 it cannot


@pytest.mark.organism
def test_zerotuning_finds_the_gamma_that_undoes_a_known_damage(induction_organism, induction_task):
    """Scale first-token attention by 1e4 in every head (damage: every head parks on BOS), then
    search: gamma = 1e-4 cancels it exactly (key biases add: ln 1e4 + ln 1e-4 = 0), so it must
    win, with the undamaged model's accuracy."""
    from lens.edits import ScaleAttention

    cal = list(induction_task.calibration)
    clean = score(induction_organism, cal)
    with induction_organism.edited(ScaleAttention(layer=None, head=None, keys=0, factor=1e4)):
        damaged = score(induction_organism, cal)
        assert damaged["correct"].mean() < clean["correct"].mean()
        result = zerotuning(induction_organism, cal, scopes=["all"], gammas=[0.01, 1e-4, 100.0, 1e4], progress=False)
    assert result.chosen["gamma"] == pytest.approx(1e-4) and result.chosen["scope"] == "all"
    assert result.chosen["calibration_accuracy"] == clean["correct"].mean()
    assert result.chosen["baseline_accuracy"] == damaged["correct"].mean()
    row = result.trials.set_index("label").loc["all:*:x0.0001"]
    assert row["logprob_answer"] == pytest.approx(clean["logprob_answer"].mean(), abs=1e-5)
    assert len(result.edits) == 1 and result.edits[0].factor == pytest.approx(1e-4)


@pytest.mark.organism
def test_zerotuning_grid_covers_three_scopes_and_entropy_reads_no_labels(induction_organism, induction_task):
    from dataclasses import replace

    s = induction_organism
    cal = list(induction_task.calibration)[:8]
    res = zerotuning(s, cal, gammas=[0.5, 2.0], objective="entropy", progress=False)
    t = res.trials
    assert len(t) == 1 + 2 * (s.n_layers + s.n_heads + 1)
    assert t["scope"].value_counts().to_dict() == {"layer": 2 * s.n_layers, "head_index": 2 * s.n_heads, "all": 2,
                                                   "none": 1}
    best = t.loc[t["objective"].idxmax()]
    assert res.chosen["label"] == best["label"] and best["objective"] == pytest.approx(-best["entropy"])
    # unsupervised: the same choice and the same objective values when every label is changed
    relabelled = [replace(e, answer=(e.answer + 1) % len(e.choices)) for e in cal]
    res2 = zerotuning(s, relabelled, gammas=[0.5, 2.0], objective="entropy", progress=False)
    assert res2.chosen["label"] == res.chosen["label"]
    assert np.allclose(res2.trials["objective"], t["objective"])


@pytest.mark.organism
def test_act_search_keeps_exactly_the_heads_that_help(induction_organism, induction_task):
    s = induction_organism
    cal = list(induction_task.calibration)
    res = act_search(s, cal, objective="accuracy", progress=False)
    t = res.trials
    search = t[t["phase"] == "search"]
    assert len(search) == s.n_layers * s.n_heads
    base = t[t["phase"] == "baseline"]["accuracy"].iloc[0]
    helped = sorted((int(r.layer), int(r.head)) for r in search.itertuples() if r.objective > base)
    assert [tuple(k) for k in res.chosen["kept_heads"]] == helped
    assert search["kept"].tolist() == [(int(r.layer), int(r.head)) in helped for r in search.itertuples()]
    assert sorted((e.layer, h) for e in res.edits for h in e.head) == helped
    with pytest.raises(ValueError, match="does not exist"):
        act_search(s, cal, heads=[(5, 0)], progress=False)


# --- runs: held-out evaluation, database, CLI, reproducibility -----------------------------------
@pytest.mark.organism
def test_calibration_never_sees_the_test_split(induction_organism, monkeypatch):
    import lens.experiments._calibrate as cal_mod
    import lens.experiments._runner as run_mod

    seen = {"calibration": [], "test": []}
    real = cal_mod.score

    def spy(which):
        def f(subject, examples, **kw):
            seen[which].extend(e.prompt for e in examples)
            return real(subject, examples, **kw)
        return f

    monkeypatch.setattr(cal_mod, "score", spy("calibration"))
    monkeypatch.setattr(run_mod, "score", spy("test"))
    spec = parse_spec(GOOD)
    task = spec.build_task()
    run_spec(spec, subject=induction_organism, db=False, progress=False, echo=None)
    assert set(seen["calibration"]) == {e.prompt for e in task.calibration}
    assert set(seen["test"]) == {e.prompt for e in task.test}
    assert not set(seen["calibration"]) & set(seen["test"])


@pytest.mark.organism
def test_layer_that_does_not_exist_fails_before_scoring(induction_organism):
    spec = parse_spec('model = "induction"\n[task]\nname = "induction"\ntest = 4\n\n'
                      '[[edits]]\ntype = "ablate"\nlayer = [1, 7]\n')
    with pytest.raises(SpecError, match=r"edits\[0\]\.layer\[1\]: layer 7 does not exist .*\(line 8\)"):
        run_spec(spec, subject=induction_organism, db=False, progress=False, echo=None)


@pytest.mark.organism
def test_lens_run_and_runs_end_to_end(induction_organism, tmp_path):
    """`lens run` on an example spec into a fresh DuckDB, `lens runs` lists and compares it, and a
    second run of the same spec reproduces every number."""
    from typer.testing import CliRunner

    from lens.cli import app

    db = tmp_path / "runs.duckdb"
    spec = EXPERIMENTS / "induction_organism_zerotuning.toml"
    runner = CliRunner()
    ids = []
    for _ in range(2):
        res = runner.invoke(app, ["run", str(spec), "--db", str(db), "--quiet"])
        assert res.exit_code == 0, res.output
        m = re.search(r"^run (\S+): zerotuning-induction-organism", res.output, re.M)
        assert m and "accuracy" in res.output and "edited - baseline" in res.output
        ids.append(m.group(1))
    listing = runner.invoke(app, ["runs", "--db", str(db)])
    assert listing.exit_code == 0 and all(i in listing.output for i in ids)
    cmp = runner.invoke(app, ["runs", "--db", str(db), "--compare", ids[0], "--compare", ids[1], "--metric", "all"])
    assert cmp.exit_code == 0 and ids[0] in cmp.output and "logit_diff" in cmp.output

    a, b = load_run(db, ids[0]), load_run(db, ids[1])
    cols = ["condition", "metric", "value", "ci_low", "ci_high", "n"]
    assert a["summary"][cols].sort_values(cols[:2]).values.tolist() == \
        b["summary"][cols].sort_values(cols[:2]).values.tolist()
    ex_cols = ["condition", "idx", "prompt", "pred", "correct", "margin", "choice_logits"]
    assert a["examples"][ex_cols].values.tolist() == b["examples"][ex_cols].values.tolist()
    assert a["run"]["calibration"] == b["run"]["calibration"]

    run = a["run"]
    assert run["config"]["task"] == "induction" and run["config"]["calibration"]["gammas"] == [0.5, 2.0]
    assert run["spec_toml"] == spec.read_text()
    assert run["versions"]["torch"] == metadata.version("torch")
    assert run["versions"]["transformers"] and run["versions"]["model"] == "induction"
    assert re.fullmatch(r"[0-9a-f]{40}", run["git_commit"])
    ex = a["examples"]
    assert len(ex) == 2 * 48 and set(ex["condition"]) == {"baseline", "edited"} and set(ex["split"]) == {"test"}
    test_prompts = {e.prompt for e in load_spec(spec).build_task().test}
    assert set(ex["prompt"]) == test_prompts
    summ = a["summary"].set_index(["condition", "metric"])
    for cond in ("baseline", "edited"):
        acc = ex[ex["condition"] == cond]["correct"].mean()
        assert summ.loc[(cond, "accuracy"), "value"] == pytest.approx(acc)
    delta = summ.loc[("delta", "accuracy")]
    assert delta["value"] == pytest.approx(summ.loc[("edited", "accuracy"), "value"]
                                           - summ.loc[("baseline", "accuracy"), "value"])
    assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]
    assert len(a["trials"]) == 1 + 2 * (2 + induction_organism.n_heads + 1)
    listed = list_runs(db)
    assert set(listed["run_id"]) == set(ids)
    assert compare_runs(db, ids).shape[1] == 2


@pytest.mark.organism
def test_example_ablation_spec_drops_accuracy(induction_organism, tmp_path):
    res = run_spec(EXPERIMENTS / "induction_organism_ablation.toml", subject=induction_organism,
                   db=tmp_path / "r.duckdb", progress=False, echo=None)
    assert res.value("accuracy", "baseline") >= 0.8
    assert res.value("accuracy", "edited") < 0.6
    delta = res.summary.set_index(["condition", "metric"]).loc[("delta", "accuracy")]
    assert delta["ci_high"] < 0  # the whole interval is below zero
    assert load_run(tmp_path / "r.duckdb", res.run_id)["run"]["method"] == "edits"


@pytest.mark.organism
def test_example_act_spec_runs(induction_organism, tmp_path):
    res = run_spec(EXPERIMENTS / "induction_organism_act.toml", subject=induction_organism, db=False,
                   progress=False, echo=None)
    assert res.calibration.method == "act" and len(res.calibration.trials) >= 1 + induction_organism.n_layers
    assert set(res.summary["condition"]) >= {"baseline"}


@pytest.mark.smollm2
def test_smollm2_example_spec(smollm2, tmp_path):
    spec = load_spec(EXPERIMENTS / "smollm2_sentiment_small.toml")
    res = run_spec(spec, subject=smollm2, db=tmp_path / "r.duckdb", progress=False, echo=None)
    assert res.calibration.method == "zerotuning" and len(res.calibration.trials) == 3
    assert res.value("accuracy", "baseline") >= 0.6  # 2-shot sentiment is easy for the instruct model
    stored = load_run(tmp_path / "r.duckdb", res.run_id)
    assert len(stored["examples"]) == (2 if res.edits else 1) * spec.n_test
    assert stored["run"]["versions"]["model"] == "smollm2"
