"""The bad-input catalogue (README "Bad inputs"): each row an input and the exact error it gets.

Every message names what was given, the limit, and what to do; each case asserts its
message. Tiny random models only (``tiny_llama``: 3 layers x 6 heads, vocabulary 0..96,
n_ctx 256), so the whole file runs in seconds. A second table checks that every
function taking a path takes a ``pathlib.Path``.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

import lens
import lens.circuits
from lens.record._data import SIDECAR, TENSORS, CaptureFileError
from lens.experiments._model_checks import losses
from lens.edits import AblateHead, ScaleAttention

TEXTS = ["w5 w6 w7 w8 w5 w6", "w9 w10 w11"]
OOV = r"is outside tiny-llama's vocabulary: valid ids are 0\.\.96; encode text with this model's tokenizer"


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory) -> Path:
    """One small Capture saved once; cases that damage it work on a copy."""
    cap = lens.capture(tiny_llama, TEXTS, patterns=[(1, 2)], resid_layers=[0])
    return cap.save(tmp_path_factory.mktemp("bad_inputs") / "cap")


def _copy(saved: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(saved, tmp / "cap"))


def _truncate(saved, tmp, *, keep_checksums=True):
    d = _copy(saved, tmp)
    data = (d / TENSORS).read_bytes()
    (d / TENSORS).write_bytes(data[: len(data) // 2])
    if not keep_checksums:  # a save from before checksums were recorded
        side = json.loads((d / SIDECAR).read_text())
        side.pop("checksums")
        (d / SIDECAR).write_text(json.dumps(side))
    return lens.Capture.load(d)


def _flip_byte(saved, tmp):
    d = _copy(saved, tmp)
    data = bytearray((d / TENSORS).read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's data: same size, different bytes
    (d / TENSORS).write_bytes(bytes(data))
    return lens.Capture.load(d)


def _edit_json(saved, tmp, change):
    d = _copy(saved, tmp)
    side = json.loads((d / SIDECAR).read_text())
    change(side)
    (d / SIDECAR).write_text(json.dumps(side))
    return lens.Capture.load(d)


def _poisoned(s, value: float) -> lens.Subject:
    """A copy of ``s`` whose layer-1 query projection for head 3 holds ``value`` (NaN or inf)."""
    bad = lens.Subject(copy.deepcopy(s.model), s.tokenizer, name="tiny-llama")
    with torch.no_grad():
        bad.attn_module(1).q_proj.weight[3 * s.d_head: 4 * s.d_head] = value
    return bad


def _huge_patterns(s, monkeypatch):
    """patterns='all' on 250 tokens with 1 MB 'available': refused before any forward pass."""
    import lens.record._capture as cap_mod

    monkeypatch.setattr(cap_mod, "available_bytes", lambda device: 1_000_000)
    handle = s.model.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(AssertionError("model ran")))
    try:
        return lens.capture(s, [list(range(5, 95)) * 2 + list(range(5, 75))], patterns="all")
    finally:
        handle.remove()


def _cli_analyze(saved, tmp):
    from typer.testing import CliRunner

    from lens.cli import app

    d = _copy(saved, tmp)
    (d / TENSORS).write_bytes((d / TENSORS).read_bytes()[:100])
    res = CliRunner().invoke(app, ["analyze", str(d)], env={"COLUMNS": "1000"})
    assert res.exit_code == 2
    raise ValueError(" ".join(res.output.replace("│", " ").split()))  # rich's box and wrapping removed


# (id, what it runs, error type, message pattern). The README table lists the same rows.
CASES = [
    # --- token ids --------------------------------------------------------------------------------
    ("oov-id-capture", lambda s, t, m, d: lens.capture(s, torch.tensor([[1, 5, 97]])), ValueError,
     r"token id 97 \(input 0, position 2\) " + OOV),
    ("negative-id-capture", lambda s, t, m, d: lens.capture(s, [[1, 5], [1, -1, 7]]), ValueError,
     r"token id -1 \(input 1, position 1\) " + OOV + r".*not with -1"),
    ("oov-id-losses", lambda s, t, m, d: losses(s, [[1, 5, 6, 1000]]), ValueError,
     r"token id 1000 \(input 0, position 3\) " + OOV),
    ("negative-id-losses", lambda s, t, m, d: losses(s, torch.tensor([-5, 6])), ValueError,
     r"token id -5 \(input 0, position 0\) " + OOV),
    ("oov-id-to_str_tokens", lambda s, t, m, d: s.to_str_tokens([1, 200]), ValueError,
     r"token id 200 \(input 0, position 1\) " + OOV),
    ("oov-id-head_outputs", lambda s, t, m, d: lens.edits.head_outputs(s, [[1, 97]]), ValueError,
     r"token id 97 \(input 0, position 1\) " + OOV),
    ("float-ids-tensor", lambda s, t, m, d: lens.capture(s, torch.tensor([[1.0, 5.0]])), ValueError,
     r"token ids must be integers; the tensor holds torch\.float32: cast with \.long\(\)"),
    ("float-ids-list", lambda s, t, m, d: losses(s, [[1, 5.5, 6]]), ValueError,
     r"token ids must be integers; input 0 holds torch\.float32: cast with \.long\(\)"),
    ("3d-ids-tensor", lambda s, t, m, d: lens.capture(s, torch.ones(2, 1, 4, dtype=torch.long)), ValueError,
     r"token ids are \[batch, pos\] or \[pos\]; got a 3-D tensor of shape \(2, 1, 4\): pass one batch of rows "
     r"\(for \[batch, 1, pos\] use ids\.squeeze\(1\)\)"),
    ("3d-ids-list", lambda s, t, m, d: lens.capture(s, [[[1, 5], [1, 6]]]), ValueError,
     r"input 0 is 2-D \(shape \(2, 2\)\): token ids are \[batch, pos\] or \[pos\]; pass a list of rows of ints"),
    ("2-rows-to_str_tokens", lambda s, t, m, d: s.to_str_tokens(torch.ones(2, 3, dtype=torch.long)), ValueError,
     r"to_str_tokens takes one text or one row of ids; got 2 rows: call it once per row"),
    ("empty-batch-tensor", lambda s, t, m, d: lens.capture(s, torch.zeros(0, 5, dtype=torch.long)), ValueError,
     r"no inputs: the token-id tensor \(0, 5\) has an empty batch; pass at least one row"),
    ("empty-list", lambda s, t, m, d: lens.capture(s, []), ValueError,
     r"nothing to capture: inputs is empty; pass a text, a list of texts, or token ids"),
    ("empty-row", lambda s, t, m, d: losses(s, [[1, 5], []]), ValueError,
     r"input 1 has no tokens: every row needs at least one id \(drop the empty row\)"),
    ("empty-rows-tensor", lambda s, t, m, d: lens.capture(s, torch.zeros(2, 0, dtype=torch.long)), ValueError,
     r"input 0 has no tokens: every row needs at least one id"),
    ("empty-text", lambda s, t, m, d: lens.capture(s, ["w5 w6", "   "]), ValueError,
     r"empty text \(input 1\): nothing to capture; drop it or give some text"),
    ("mixed-texts-and-ids", lambda s, t, m, d: lens.capture(s, ["w5 w6", [1, 5]]), ValueError,
     r"inputs mix texts and token ids; pass a list of strings or a list of id rows, not both"),
    ("beyond-n_ctx", lambda s, t, m, d: lens.capture(s, [[1] + [5] * 299]), ValueError,
     r"input 0 has 300 tokens; tiny-llama handles at most 256 \(shorten or split the input; lens\.capture takes "
     r"allow_beyond_context=True to try anyway\)"),
    # --- statistics, layers, heads, edits ------------------------------------------------------------
    ("unknown-stat", lambda s, t, m, d: lens.capture(s, "w5 w6", stats=["entropy", "entrophy"]), ValueError,
     r"unknown statistic\(s\) \['entrophy'\]; valid: \[.*'entropy'.*\] \(stats='default' asks for all of them"),
    ("pattern-head-missing", lambda s, t, m, d: lens.capture(s, "w5 w6", patterns=[(1, 6)]), ValueError,
     r"head \(1, 6\) does not exist in tiny-llama: layers 0\.\.2, heads 0\.\.5; pick \(layer, head\) in those "
     r"ranges"),
    ("pattern-not-a-pair", lambda s, t, m, d: lens.capture(s, "w5 w6", patterns=[3]), ValueError,
     r"patterns: 3 is not a \(layer, head\) pair; pass patterns=\[\(layer, head\), \.\.\.\] or patterns='all'"),
    ("resid-layer-missing", lambda s, t, m, d: lens.capture(s, "w5 w6", resid_layers=[3]), ValueError,
     r"resid_layers: layer 3 does not exist in tiny-llama: layers are 0\.\.2; pass indices in that range"),
    ("edit-head-missing-capture", lambda s, t, m, d: lens.capture(s, "w5 w6", edits=[AblateHead(layer=0, head=6)]),
     ValueError, r"tiny-llama \(3 layers x 6 heads\): AblateHead\(layer=0, head=6\): head 6 does not exist: "
     r"valid heads are "
     r"0\.\.5; give indices in that range, or None for every head"),
    ("edit-layer-missing-edited", lambda s, t, m, d: s.edited(ScaleAttention(layer=5, factor=2.0)).__enter__(),
     ValueError, r"ScaleAttention\(layer=5, head=None\): layer 5 does not exist: valid layers are 0\.\.2; give "
     r"indices in that range"),
    ("not-an-edit", lambda s, t, m, d: lens.capture(s, "w5 w6", edits=[(0, 1)]), TypeError,
     r"not an edit: \(0, 1\); pass lens\.edits objects"),
    # --- what the model computes, and what fits ---------------------------------------------------
    ("nan-in-attention", lambda s, t, m, d: lens.capture(_poisoned(s, float("nan")), TEXTS), ValueError,
     r"tiny-llama: layer 1, head 3 produced NaN/inf attention \(input 0, query position 0; bad heads in this "
     r"layer: \[3\]\): no statistics were recorded.*load the model in float32 or bfloat16"),
    ("inf-in-attention", lambda s, t, m, d: lens.capture(_poisoned(s, float("inf")), TEXTS), ValueError,
     r"tiny-llama: layer 1, head 3 produced NaN/inf attention"),
    ("patterns-all-too-big", lambda s, t, m, d: _huge_patterns(s, m), MemoryError,
     r"this capture would keep about \d+\.\d MB \(statistics \d+\.\d MB, patterns 4\.5 MB; 1 input\(s\) of up to 250 "
     r"tokens, 18 full pattern\(s\)\), but 1\.0 MB is available on cpu: nothing was run\. Ask for the block-pooled "
     r"map with stats=\['pooled'\]"),
    # --- saved captures ---------------------------------------------------------------------------
    ("capture-dir-missing", lambda s, t, m, d: lens.Capture.load(t / "nothing"), FileNotFoundError,
     rf"nothing is not a saved Capture \(needs {TENSORS} and {SIDECAR}; missing {TENSORS}, {SIDECAR}\): pass a "
     r"directory written by Capture\.save"),
    ("capture-tensors-missing", lambda s, t, m, d: (_copy(d, t) / TENSORS).unlink() or lens.Capture.load(t / "cap"),
     FileNotFoundError, rf"cap is not a saved Capture .*missing {TENSORS}\)"),
    ("capture-truncated", lambda s, t, m, d: _truncate(d, t), CaptureFileError,
     rf"{TENSORS} was truncated after it was saved: \d+ bytes, \d+ at save \(recorded in {SIDECAR}\); re-capture"),
    ("capture-truncated-no-checksum", lambda s, t, m, d: _truncate(d, t, keep_checksums=False), CaptureFileError,
     rf"{TENSORS} cannot be read \(.*\): the file is truncated or damaged; re-capture"),
    ("capture-bytes-changed", lambda s, t, m, d: _flip_byte(d, t), CaptureFileError,
     rf"{TENSORS} was changed after it was saved: its content hash \(xxh3-128\) differs from the one recorded in "
     rf"{SIDECAR}; re-capture"),
    ("capture-json-not-json", lambda s, t, m, d: (_copy(d, t) / SIDECAR).write_text('{"str') and lens.Capture.load(
        t / "cap"), CaptureFileError, rf"{SIDECAR} is not valid JSON .*re-capture"),
    ("capture-json-inputs-differ", lambda s, t, m, d: _edit_json(d, t, lambda j: j["str_tokens"].pop()),
     CaptureFileError, rf"{SIDECAR} has str_tokens for 1 input\(s\), the tensors hold 2: {SIDECAR} and {TENSORS} "
     r"come from different captures or were edited; re-capture"),
    ("capture-json-layers-differ", lambda s, t, m, d: _edit_json(d, t, lambda j: j["meta"].update(n_layers=4)),
     CaptureFileError, r"stats\.\w+ has 3 layers, meta says n_layers = 4: .*come from different captures"),
    ("capture-json-lengths-differ", lambda s, t, m, d: _edit_json(d, t, lambda j: j["str_tokens"][1].append("x")),
     CaptureFileError, r"input 1: capture\.json has 7 str_tokens, lengths says 6"),
    ("cli-analyze-truncated", lambda s, t, m, d: _cli_analyze(d, t), ValueError,
     rf"Invalid value for CAPTURE_DIR: .*{TENSORS} was truncated after it was saved.*re-capture"),
    # --- saved circuits ---------------------------------------------------------------------------
    ("circuit-missing", lambda s, t, m, d: lens.circuits.Circuit.load(t / "c.json"), FileNotFoundError,
     r"c\.json: no saved circuit there; pass a file written by Circuit\.save"),
    ("circuit-not-a-circuit",
     lambda s, t, m, d: (t / "c.json").write_text('{"edges": []}') and lens.circuits.Circuit.load(t / "c.json"),
     ValueError,
     r"c\.json is not a saved circuit \(format None, expected 'lens-circuit/1'\); pass a file written by "
     r"Circuit\.save"),
]


@pytest.mark.parametrize("run,error,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_its_error(tiny_llama, saved, tmp_path, monkeypatch, run, error, match):
    with pytest.raises(error, match=match):
        run(tiny_llama, tmp_path, monkeypatch, saved)


def test_catalogue_is_in_the_readme():
    """Every case id appears in the README's "Bad inputs" table, and the table has no stale rows."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Bad inputs", 1)[1].split("\n## ", 1)[0]
    ids = {c[0] for c in CASES} | {p[0] for p in PATHS}
    listed = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert ids == listed, (sorted(ids - listed), sorted(listed - ids))


def test_memory_estimate_smollm2_patterns_all_at_8k():
    """SmolLM2 (30 layers x 9 heads), patterns='all' at 8192 tokens: 30 * 9 * 8192^2 * 4 bytes = 72.5 GB."""
    from types import SimpleNamespace

    from lens.record import CaptureSpec, estimate_bytes

    smol = SimpleNamespace(n_layers=30, attn_layers=tuple(range(30)), n_heads=9, d_model=576)
    heads = [(l, h) for l in range(30) for h in range(9)]
    spec = CaptureSpec(stats=["pooled"], patterns=heads, value_norm=False, resid_norm=False)
    parts = estimate_bytes(smol, [[0] * 8192], spec)
    assert parts["patterns"] == 30 * 9 * 8192 ** 2 * 4 == 72_477_573_120
    assert parts["statistics"] == 30 * 9 * 512 * 512 * 4  # the pooled map instead: 283 MB


# --- pathlib.Path works wherever a path is taken ---------------------------------------------------
def _capture_roundtrip(s, t, d):
    back = lens.Capture.load(Path(d))
    assert back.n_inputs == 2 and (1, 2) in back.patterns and 0 in back.resid
    out = lens.Capture.load(back.save(t / "again"))  # save to a Path, load from the Path it returns
    assert torch.equal(out.tokens, back.tokens)


def _circuit_roundtrip(s, t, d):
    from lens import circuits
    c = circuits.Circuit([("input", "a0.h1"), ("a0.h1", "logits")], {("input", "a0.h1"): 1.0}, task="t")
    assert circuits.Circuit.load(c.save(t / "sub" / "c.json")).edges == c.edges


def _spec(s, t, d):
    from lens.experiments import load_spec

    (t / "tasks").mkdir()
    (t / "tasks" / "toy.jsonl").write_text(
        "\n".join(json.dumps({"prompt": f"w{i}", "choices": [" w5", " w6"], "answer": i % 2}) for i in range(6)))
    (t / "s.toml").write_text('model = "induction"\n[task]\npath = "tasks/toy.jsonl"\ncalibration = 2\ntest = 4\n')
    spec = load_spec(t / "s.toml")
    assert spec.path == str(t / "s.toml") and len(spec.build_task().test) == 4


def _cli_analyze_ok(s, t, d):
    from typer.testing import CliRunner

    from lens.cli import app

    res = CliRunner().invoke(app, ["analyze", str(d), "--json"])
    assert res.exit_code == 0, res.output


def _load_model_dir(s, t, d):
    s.model.save_pretrained(t / "m")
    s.tokenizer.save_pretrained(t / "m")
    assert lens.load(t / "m").n_layers == s.n_layers


PATHS = [
    ("path-capture-save-load", _capture_roundtrip),
    ("path-circuit-save-load", _circuit_roundtrip),
    ("path-experiment-spec", _spec),
    ("path-cli-analyze", _cli_analyze_ok),
    ("path-lens-load", _load_model_dir),
]


@pytest.mark.parametrize("check", [p[1] for p in PATHS], ids=[p[0] for p in PATHS])
def test_paths_are_taken_as_pathlib_paths(tiny_llama, saved, tmp_path, check):
    check(tiny_llama, tmp_path, saved)
