"""Where a model runs and in which dtype: ``device``, ``dtype`` and ``device_map`` resolved once.

The defaults follow transformers 5: ``dtype="auto"`` is the checkpoint's own dtype. On the
CPU it is fp32 instead (bf16 and fp16 matmuls are slow there and lose the statistics'
last digits for nothing). ``device=None`` is the best accelerator present: CUDA, then
Apple's MPS, then the CPU. Every entry point (``lens.load``, the CLI, experiment specs,
the dashboard, Ray actors) goes through ``resolve_placement``, so they agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["DTYPES", "Placement", "best_device", "parse_dtype", "ray_actor_device", "resolve_placement"]

#: The dtype names accepted wherever a dtype is given as text (CLI, specs, ``lens.load``).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


@dataclass(frozen=True)
class Placement:
    """A resolved placement.

    device: where the whole model goes (None when ``device_map`` places its modules);
    dtype: a floating ``torch.dtype``, or ``"auto"``: the checkpoint's own (on an accelerator);
    device_map: passed to ``from_pretrained`` as given (needs ``accelerate``).
    """

    device: torch.device | None
    dtype: torch.dtype | str
    device_map: str | dict | None = None

    @property
    def accelerated(self) -> bool:
        if self.device is not None:
            return self.device.type != "cpu"
        return _map_uses_accelerator(self.device_map)


def _accelerators() -> tuple[str, ...]:
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return tuple(found)


def best_device(available: Callable[[], tuple[str, ...]] = _accelerators) -> torch.device:
    """CUDA if present, else MPS, else the CPU."""
    found = available()
    for kind in ("cuda", "mps"):
        if kind in found:
            return torch.device(kind)
    return torch.device("cpu")


def parse_dtype(dtype) -> torch.dtype | str:
    """A floating ``torch.dtype``, a name from ``DTYPES``, or ``"auto"``; anything else raises, naming the choices."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype such as torch.float32 or torch.bfloat16, "
                             f"got {dtype}")
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name == "auto":
            return "auto"
        if name in DTYPES:
            return DTYPES[name]
    raise ValueError(f"unknown dtype {dtype!r}: give 'auto' (the checkpoint's own; fp32 on the CPU), "
                     f"one of {', '.join(DTYPES)}, or a floating torch.dtype")


def _map_uses_accelerator(device_map, available: Callable[[], tuple[str, ...]] = _accelerators) -> bool:
    if device_map is None:
        return False
    if isinstance(device_map, dict):
        return any(str(v) not in ("cpu", "disk") for v in device_map.values())
    if str(device_map) in ("cpu", "disk"):
        return False
    if str(device_map) in ("auto", "balanced", "balanced_low_0", "sequential"):
        return bool(available())
    return True  # "cuda:1" and the like


def resolve_placement(device=None, dtype="auto", device_map=None, *,
                      available: Callable[[], tuple[str, ...]] = _accelerators) -> Placement:
    """Resolve what the user gave into a ``Placement`` (``available`` lists the accelerators; tests pass their own).

    device: None (the best available), "cpu", "cuda", "cuda:1", "mps", or a ``torch.device``.
    dtype: "auto" (the checkpoint's own on an accelerator, fp32 on the CPU), a name such as
    "bfloat16", or a ``torch.dtype``. device_map: as ``from_pretrained`` takes it; not with device.
    """
    if device is not None and device_map is not None:
        raise ValueError(f"give device={device!r} or device_map={device_map!r}, not both: a device map places "
                         "every module itself")
    dtype = parse_dtype(dtype)
    if device_map is not None:
        accelerated = _map_uses_accelerator(device_map, available)
        return Placement(None, dtype if accelerated or dtype != "auto" else torch.float32, device_map)
    if device is None:
        resolved = best_device(available)
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"unknown device {device!r}: give 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
        if resolved.type != "cpu" and resolved.type not in available():
            raise ValueError(f"device {str(resolved)!r} was asked for, but this machine's torch "
                             f"({torch.__version__}) sees no {resolved.type.upper()} device"
                             f"{' (a CPU-only build of torch?)' if resolved.type == 'cuda' else ''}")
    if dtype == "auto" and resolved.type == "cpu":
        dtype = torch.float32
    return Placement(resolved, dtype)


def ray_actor_device(gpu_ids) -> torch.device | None:
    """The device a Ray actor should load on, from ``ray.get_gpu_ids()``: None (the CPU) without GPUs.

    Ray gives an actor its GPUs by setting ``CUDA_VISIBLE_DEVICES`` to them, so inside the
    actor its first GPU is ``cuda:0`` whatever its id on the node.
    """
    return torch.device("cuda:0") if list(gpu_ids) else None
