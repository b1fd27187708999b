"""Devices and dtypes by name: what ``load_model(device=..., dtype=...)`` and every CLI ``--device`` /
``--dtype`` accept.

* devices: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (the first CUDA GPU when there is one,
  else the CPU). Asking for a GPU that is not there is a one-line :class:`DeviceUnavailableError`, never a
  silent fallback to the CPU.
* dtypes: ``float32`` (``fp32``), ``bfloat16`` (``bf16``) and ``float16`` (``fp16``), or a ``torch.dtype``.
  Weights and activations take the model's dtype; tracing and editing are exact only in float32 (the README's
  exactness checks are float32), and half precision is for models that would not fit otherwise.
"""

from __future__ import annotations

import torch

from .errors import DeviceUnavailableError

__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]

#: dtype names accepted everywhere (CLI and Python), with their short aliases
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                                  "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``dtype`` as a floating ``torch.dtype`` (a name from :data:`DTYPES`, or a floating torch dtype)."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise DeviceUnavailableError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.strip().lower().removeprefix("torch.")]
    raise DeviceUnavailableError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPES))}")


def resolve_device(device: str | torch.device) -> str:
    """``device`` as a concrete torch device string; ``"auto"`` picks ``cuda:0`` when CUDA is available."""
    name = str(device).strip().lower()
    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceUnavailableError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {device!r} asked for, but CUDA is not available on this machine "
                                         f"(torch {torch.__version__}); use --device cpu or auto")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {device!r} asked for, but this machine has "
                                         f"{torch.cuda.device_count()} CUDA device(s)")
        return f"cuda:{index}"
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailableError(f"device {device!r} asked for, but MPS is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceUnavailableError(f"unsupported device {device!r}; use cpu, cuda, cuda:N, mps or auto")
    return str(dev)
