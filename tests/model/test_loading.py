"""Loading the way transformers users load: placement, hub ids offline, GGUF files cached by content.

The placement table runs without a GPU: ``resolve_placement`` takes the list of accelerators
as an argument, so each row says what a CUDA or MPS machine would get. Hub ids are tried
offline in a fresh interpreter (``huggingface_hub`` reads ``HF_HUB_OFFLINE`` when imported)
against a temporary hub cache holding a tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lens
from lens.model import ModelRef, resolve_placement

CPU, CUDA, BOTH, MPS = (), ("cuda",), ("cuda", "mps"), ("mps",)
SHARDED = {"model.layers.0": 0, "lm_head": "cpu"}

PLACEMENTS = [
    # device, dtype, device_map, accelerators present -> device, dtype, device_map
    (None, "auto", None, CPU, ("cpu", torch.float32, None)),          # "auto" on a CPU-only machine: fp32
    (None, "auto", None, BOTH, ("cuda", "auto", None)),               # CUDA first, the checkpoint's own dtype
    (None, "auto", None, MPS, ("mps", "auto", None)),
    ("cpu", "auto", None, CUDA, ("cpu", torch.float32, None)),        # asked for the CPU: fp32 there
    ("cuda:1", "bfloat16", None, CUDA, ("cuda:1", torch.bfloat16, None)),
    (torch.device("cuda"), "float16", None, CUDA, ("cuda", torch.float16, None)),
    (None, "bf16", None, CPU, ("cpu", torch.bfloat16, None)),
    (None, "FP32", None, CUDA, ("cuda", torch.float32, None)),
    (None, torch.float16, None, CPU, ("cpu", torch.float16, None)),
    (None, "torch.bfloat16", None, CPU, ("cpu", torch.bfloat16, None)),
    (None, "auto", "auto", CUDA, (None, "auto", "auto")),             # a device map places the modules
    (None, "auto", "auto", CPU, (None, torch.float32, "auto")),       # ... all on the CPU here
    (None, "auto", "cpu", CUDA, (None, torch.float32, "cpu")),
    (None, "auto", SHARDED, CUDA, (None, "auto", SHARDED)),
]


@pytest.mark.parametrize(("device", "dtype", "device_map", "present", "expected"), PLACEMENTS)
def test_placement_table(device, dtype, device_map, present, expected):
    p = resolve_placement(device, dtype, device_map, available=lambda: present)
    assert (None if p.device is None else str(p.device), p.dtype, p.device_map) == expected


@pytest.mark.parametrize(("kwargs", "present", "message"), [
    ({"device": "cuda"}, CPU, r"device 'cuda' was asked for, but this machine's torch .* sees no CUDA device"),
    ({"device": "mps"}, CUDA, "sees no MPS device"),
    ({"device": "gpu"}, CUDA, r"unknown device 'gpu': give 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    ({"dtype": "int8"}, CPU, r"unknown dtype 'int8': give 'auto'"),
    ({"dtype": torch.int8}, CPU, "floating torch.dtype"),
    ({"device": "cpu", "device_map": "auto"}, CPU, "not both"),
])
def test_placement_errors_name_the_input(kwargs, present, message):
    with pytest.raises(ValueError, match=message):
        resolve_placement(**kwargs, available=lambda: present)


def test_model_ref_for_ray_actors():
    ref = ModelRef("smollm2")
    on_gpu = ref.for_ray_actor(["3"])  # Ray set CUDA_VISIBLE_DEVICES=3: it is cuda:0 inside the actor
    assert (on_gpu.device, on_gpu.dtype) == ("cuda:0", "bfloat16")
    assert ref.for_ray_actor([]).device == "cpu"
    assert ModelRef("smollm2", dtype="float16").for_ray_actor([0]).dtype == "float16"
    assert ModelRef("smollm2", device_map="auto").for_ray_actor([0]) == ModelRef("smollm2", device_map="auto")
    with pytest.raises(ValueError, match="unknown dtype"):
        ModelRef("smollm2", dtype="int4")


def test_organism_loads_in_the_dtype_asked_for(induction_organism):
    s = lens.load("induction", dtype="bfloat16")
    assert s.model.dtype == torch.bfloat16 and s.device == torch.device("cpu")
    assert lens.load("induction").model.dtype == torch.float32  # "auto" on the CPU
    with pytest.raises(ValueError, match="built in .* revision"):
        lens.load("induction", revision="main")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        lens.load("induction", device="cuda")


# --- hub ids, offline ------------------------------------------------------------------------------
def _hub_cache_with(tiny_llama, root: Path, repo: str) -> Path:
    """Lay ``tiny_llama`` out as the hub cache would hold ``repo`` at revision main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    tiny_llama.model.save_pretrained(snapshot)
    tiny_llama.tokenizer.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir(parents=True)
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    return root


OFFLINE_PROBE = """
import json, sys, lens
from lens.model import OfflineModelError
s = lens.load(sys.argv[1])
print(json.dumps({"n_layers": s.n_layers, "n_heads": s.n_heads, "name": s.name}))
try:
    lens.load("nobody-here/no-such-model")
except OfflineModelError as err:
    print(json.dumps({"error": str(err)}))
"""


def test_hub_ids_offline_bare_id_loads_from_cache_and_missing_one_says_both(tiny_llama, tmp_path):
    cache = _hub_cache_with(tiny_llama, tmp_path / "hub", "tinyllama")  # a bare id, like "gpt2"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_CACHE=str(cache), TRANSFORMERS_OFFLINE="1")  # transformers' own switch counts too
    done = subprocess.run([sys.executable, "-c", OFFLINE_PROBE, "tinyllama"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded, refused = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert loaded == {"n_layers": 3, "n_heads": 6, "name": "tinyllama"}
    assert "'nobody-here/no-such-model' is not in the local Hugging Face cache" in refused["error"]
    assert str(cache) in refused["error"] and "the hub is offline" in refused["error"]


def test_from_pretrained_keywords_reach_transformers(tiny_llama, tmp_path):
    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    s = lens.load(tmp_path / "m", attn_implementation="eager", dtype="float16")
    assert s.model.config._attn_implementation == "eager" and s.model.dtype == torch.float16
    with pytest.raises(TypeError, match="no_such_keyword"):  # transformers' own error, as it is
        lens.load(tmp_path / "m", no_such_keyword=1)


# --- GGUF files: the conversion cache is keyed by content ---------------------------------------
def _flip_nibbles(path: Path) -> None:
    """Change 4-bit weights of one Q4_1 block of ``blk.0.attn_q.weight``: same size, other weights."""
    from gguf import GGUFReader

    (tensor,) = [t for t in GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight"]
    with open(path, "r+b") as f:
        f.seek(int(tensor.data_offset) + 4)  # a Q4_1 block: fp16 scale, fp16 min, then 16 bytes of nibbles
        block = bytearray(f.read(16))
        f.seek(int(tensor.data_offset) + 4)
        f.write(bytes(b ^ 0x5A for b in block))


@pytest.mark.smollm2
def test_gguf_cache_never_serves_another_files_weights(smollm2, tmp_path):
    from lens.model._load import _smollm2_gguf

    original = _smollm2_gguf()
    a, b = tmp_path / "a" / original.name, tmp_path / "b" / original.name
    for p in (a, b):
        p.parent.mkdir()
        shutil.copyfile(original, p)
    _flip_nibbles(b)
    assert (a.name, a.stat().st_size) == (b.name, b.stat().st_size)  # what the old cache key was made of
    sa, sb = lens.load(a), lens.load(b)
    assert sa.info["cache"] != sb.info["cache"]
    qa, qb = sa.model.model.layers[0].self_attn.q_proj.weight, sb.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(qa, qb) and torch.equal(qa, smollm2.model.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(sa.model.model.layers[1].self_attn.q_proj.weight,
                       sb.model.model.layers[1].self_attn.q_proj.weight)  # only the changed block differs


# --- every entry point ---------------------------------------------------------------------------
@pytest.mark.smollm2
def test_cli_capture_in_bfloat16_equals_the_api(tmp_path):
    from typer.testing import CliRunner

    from lens.cli import app

    text = "The capital of France is Paris."
    res = CliRunner().invoke(app, ["capture", "--model", "smollm2", "--dtype", "bfloat16", "--text", text,
                                   "--out", str(tmp_path / "cap")])
    assert res.exit_code == 0, res.output
    assert "backend=auto -> eager, cpu, bfloat16" in next(l for l in res.output.splitlines() if "Capture(" in l)
    saved = lens.Capture.load(tmp_path / "cap")
    direct = lens.capture(lens.load("smollm2", dtype="bfloat16"), text)
    assert saved.meta["dtype"] == direct.meta["dtype"] == "bfloat16"
    for name in ("sink_mass", "entropy", "received"):
        torch.testing.assert_close(saved.stats[name], direct.stats[name], atol=0, rtol=0)
    bad = CliRunner().invoke(app, ["capture", "--model", "smollm2", "--dtype", "int4", "--text", text])
    assert bad.exit_code == 2 and "unknown dtype 'int4'" in bad.output


def test_spec_model_table_loads_with_its_dtype(induction_organism, monkeypatch):
    from lens.experiments import parse_spec, run_spec

    spec = parse_spec('[model]\nname = "induction"\ndtype = "bfloat16"\n\n[task]\nname = "induction"\n'
                      'calibration = 0\ntest = 8\n\n[[edits]]\ntype = "ablate"\nlayer = 1\nhead = 0\n')
    assert spec.model_ref == ModelRef("induction", dtype="bfloat16")
    assert spec.config()["placement"] == {"dtype": "bfloat16"}
    loaded = []
    real_load = ModelRef.load
    monkeypatch.setattr(ModelRef, "load", lambda self: loaded.append(real_load(self)) or loaded[-1])
    result = run_spec(spec, db=False, progress=False, echo=None)
    assert [s.model.dtype for s in loaded] == [torch.bfloat16]
    assert 0.0 <= result.value("accuracy", "baseline") <= 1.0
