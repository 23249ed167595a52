"""One dtype and size policy for every weight loader, checked from safetensors headers before any allocation.

* Only floating tensors are analysed (safetensors codes ``F64 F32 F16 BF16 F8_E4M3 F8_E5M2``): an int8 / uint8
  / bool / int64 LoRA factor or weight (quantised or index tensors) is refused by :func:`check_weight`, naming
  the file, the model and the key, never read as numbers.
* A tensor with a zero dimension is refused (its spectrum would be all zeros, or a division by zero).
* A LoRA of rank 0 and a non-finite ``lora_alpha`` / ``alpha`` are refused (the loaders call
  :func:`check_rank` and :func:`check_alpha`).
* A memory guard: :func:`default_memory_limit_bytes` is a fraction (:data:`MEMORY_FRACTION`) of the memory
  available now (``MemAvailable`` of ``/proc/meminfo``, else ``os.sysconf``); ``uws spectrum`` and ``uws spectra``
  compare each key's memory bound (``uws_core.weights.memory_bounds.memory_bound_bytes``, from the header's
  shapes alone) against it before allocating, and the user may raise or lower it (``--max-key-gib``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["FLOAT_CODES", "MEMORY_FRACTION", "check_weight", "check_rank", "check_alpha", "available_memory_bytes",
           "default_memory_limit_bytes", "format_gib"]

FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
MEMORY_FRACTION = 0.8  # of the memory available when the command starts


def _where(owner: str, path, key: str) -> str:
    return f"{owner + ': ' if owner else ''}key {key!r} in {path}"


def check_weight(path: Path | str, key: str, shape, dtype: str, owner: str, error: type[Exception]) -> None:
    """Refuse (``error``) a tensor that is not floating or has a zero dimension; the message names the model
    (``owner``), the file and the key."""
    if dtype not in FLOAT_CODES:
        raise error(f"{_where(owner, path, key)} has dtype {dtype}; only floating tensors "
                    f"({', '.join(sorted(FLOAT_CODES))}) are analysed (integer or bool tensors are quantised or index "
                    "data, not weights)")
    if any(int(s) == 0 for s in shape):
        raise error(f"{_where(owner, path, key)} has zero size (shape {tuple(int(s) for s in shape)}); refused")


def check_rank(path: Path | str, key: str, rank: int, owner: str, error: type[Exception]) -> None:
    """Refuse a LoRA factor of rank 0 (an empty update), naming model, file and key."""
    if int(rank) <= 0:
        raise error(f"{_where(owner, path, key)} has rank {rank}; a LoRA of rank 0 holds no update")


def check_alpha(path: Path | str, key: str, alpha: float, owner: str, error: type[Exception]) -> float:
    """``alpha`` if finite, else ``error`` naming model, file and key (NaN / Inf scale every update)."""
    if not math.isfinite(float(alpha)):
        raise error(f"{_where(owner, path, key)} is {alpha!r}; lora_alpha / alpha must be a finite number")
    return float(alpha)


def available_memory_bytes() -> int:
    """Memory available now: ``MemAvailable`` of ``/proc/meminfo``, else free pages times the page size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_memory_limit_bytes() -> float:
    """The default per-key memory guard: :data:`MEMORY_FRACTION` of the memory available now."""
    return MEMORY_FRACTION * available_memory_bytes()


def format_gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"
