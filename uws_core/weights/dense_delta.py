"""Dense-delta variants: a weight update of high rank stored as the update itself instead of as a LoRA pair.

A variant built from other adapters' products (the mean of the others, the product recipe with the mean, basis only)
has per-module rank up to ``min(d_out, d_in)``; as one PEFT adapter (one r for every module) its exact pair padded
to the largest rank is ``r (d_out + d_in)`` numbers per module, more than the ``d_out d_in`` of the update itself
once ``r >= d_out d_in / (d_out + d_in)`` (2048 for a 4096 x 4096 key). :func:`pair_is_larger` applies that rule to a
whole variant at the rank it would be written at: dense when ``sum_m r (d_out + d_in) >= sum_m d_out d_in``.

A dense-delta directory holds

* ``dense_delta.safetensors``: ``W_delta`` (d_out, d_in) per base weight key (the base model's parameter name, e.g.
  ``model.layers.0.self_attn.q_proj.weight``), the LoRA scaling already applied, in ``dtype`` (default bfloat16:
  the dtype the evaluator's GPU base runs in, where ``W + delta`` is rounded to bfloat16 anyway; storing ``delta``
  in bfloat16 first adds at most 2^-8 |delta| per element (bfloat16's unit roundoff), no more than that sum's own
  rounding bound 2^-8 |W + delta| wherever |delta| <= |W + delta|; it halves the disk against float32);
* ``dense_delta.json``: ``{"format": "uws-dense-delta", "version": 1, "weights_file", "keys", "dtype",
  "scaling_applied", "source", "pair_rank"}``.

:func:`add_dense_delta` adds the deltas to a model's weights in place (``W + delta`` in float32, rounded once to the
weight's dtype) and returns exact copies of the touched weights; :func:`restore_weights` copies them back, so the
base is bitwise the base again. Every refusal (:class:`DenseDeltaError`) names the file and the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from uws_core.weights import safe_paths
from uws_core.weights.safetensors_header import WeightFormatError, read_safetensors_header

__all__ = ["DELTA_FILE", "DELTA_META", "DenseDeltaError", "pair_is_larger", "write_dense_delta", "is_dense_delta",
           "read_dense_delta", "add_dense_delta", "restore_weights"]

DELTA_FILE, DELTA_META = "dense_delta.safetensors", "dense_delta.json"
_FORMAT, _VERSION = "uws-dense-delta", 1
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class DenseDeltaError(WeightFormatError):
    """A dense-delta variant that cannot be written or applied (the message names the file and the key)."""


def pair_is_larger(shapes: Mapping[str, tuple[int, int]], rank: int) -> bool:
    """True when LoRA pairs of one ``rank`` for every module (d_out, d_in) hold at least as many numbers as the
    dense updates: ``sum rank (d_out + d_in) >= sum d_out d_in`` (then a pair saves nothing)."""
    return sum(rank * (o + i) for o, i in shapes.values()) >= sum(o * i for o, i in shapes.values())


def write_dense_delta(deltas: Mapping[str, torch.Tensor], directory: Path | str, scaling: float, source: str,
                      dtype: torch.dtype = torch.bfloat16, pair_rank: int | None = None) -> Path:
    """Write ``{base weight key: delta (d_out, d_in)}`` (scaling already applied) as a dense-delta directory."""
    from safetensors.torch import save

    name = {v: k for k, v in _DTYPES.items()}.get(dtype)
    if name is None:
        raise DenseDeltaError(f"dense delta {directory}: dtype {dtype} is not one of {sorted(_DTYPES)}")
    for key, t in deltas.items():
        if not key.endswith(".weight") or t.ndim != 2:
            raise DenseDeltaError(f"dense delta {directory}: key {key!r} needs a '<module>.weight' name and a 2-D "
                                  f"update, got shape {tuple(t.shape)}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # atomic writes (safe_paths), the JSON last: a directory is a dense delta only once both files are whole
    safe_paths.write_bytes_atomic(d / DELTA_FILE, save({k: t.detach().to("cpu", dtype).contiguous()
                                                        for k, t in deltas.items()}))
    meta = {"format": _FORMAT, "version": _VERSION, "weights_file": DELTA_FILE, "keys": sorted(deltas), "dtype": name,
            "scaling_applied": float(scaling), "source": source, "pair_rank": pair_rank}
    safe_paths.write_text_atomic(d / DELTA_META, json.dumps(meta, indent=1))
    return d


def is_dense_delta(directory: Path | str) -> bool:
    return (Path(directory) / DELTA_META).is_file()


def _check_against_model(path: Path, header: dict, params: Mapping[str, torch.nn.Parameter], base: str) -> None:
    for key, (shape, _) in header.items():
        p = params.get(key)
        if p is None:
            raise DenseDeltaError(f"dense delta {path}: key {key!r} is not a weight of base model {base}")
        if tuple(shape) != tuple(p.shape):
            raise DenseDeltaError(f"dense delta {path}: key {key!r} has shape {tuple(shape)}, but that weight of base "
                                  f"model {base} is {tuple(p.shape)}")


def read_dense_delta(directory: Path | str, model: torch.nn.Module | None = None, base: str = "the base"
                     ) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, {key: delta})`` of a dense-delta directory. The JSON must name this format and exactly the file's keys;
    with ``model`` every key must be one of its parameters, of the same shape (checked from the header, before any
    data is read)."""
    from safetensors.torch import load_file

    d = Path(directory)
    try:
        meta = json.loads((d / DELTA_META).read_text())
    except (OSError, ValueError) as exc:
        raise DenseDeltaError(f"dense delta {d / DELTA_META}: cannot read ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise DenseDeltaError(f"dense delta {d / DELTA_META}: not format {_FORMAT!r} version {_VERSION}")
    path = d / DELTA_FILE
    header = read_safetensors_header(path, DenseDeltaError, "dense delta")
    if sorted(header) != meta.get("keys"):
        extra = sorted(set(header) ^ set(meta.get("keys") or []))
        raise DenseDeltaError(f"dense delta {path}: its keys differ from {DELTA_META}'s list (key {extra[0]!r})")
    if model is not None:
        _check_against_model(path, header, dict(model.named_parameters()), base)
    return meta, load_file(str(path))


@torch.no_grad()
def add_dense_delta(model: torch.nn.Module, deltas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``W <- round(W + delta)`` (sum in float32, one rounding to W's dtype) for every key, in place; returns the
    exact original weights (CPU copies) for :func:`restore_weights`. Keys and shapes must have been checked
    (:func:`read_dense_delta` with the model)."""
    originals = {}
    for key, delta in deltas.items():
        w = model.get_parameter(key)
        originals[key] = w.detach().to("cpu", copy=True)
        w.copy_((w.float() + delta.to(w.device, torch.float32)).to(w.dtype))
    return originals


@torch.no_grad()
def restore_weights(model: torch.nn.Module, originals: Mapping[str, torch.Tensor]) -> None:
    """Copy the saved original weights back (bitwise: same dtype, no arithmetic)."""
    for key, w0 in originals.items():
        model.get_parameter(key).copy_(w0)
