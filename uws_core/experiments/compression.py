"""Memory accounting of "one shared basis + per-model coefficients" against N models stored in full.

Counts are numbers of stored scalars (multiply by 4 for float32 bytes); every formula is per weight key and
summed over keys. What is counted, for N models and a basis of k directions per key:

full weights, matrix ``(d_out, d_in)`` per model:
  - ``rows``  (the authors' unfolding: basis in R^{d_in}):  ``d_in k  +  N d_out k``
  - ``cols``  (basis in R^{d_out}):                          ``d_out k  +  N d_in k``
  - ``model`` (each matrix one vector: basis in R^{d_out d_in}): ``d_out d_in k  +  N k``
  plus the mean matrix ``d_out d_in`` when ``with_mean`` (needed to reconstruct centred fits); full storage
  is ``N d_out d_in``.

LoRA adapters, ``B (d_out, r)`` and ``A (r, d_in)`` per adapter:
  - ``factors`` (the authors': A and B each projected on its own basis, k_A = k_B = k):
    ``d_in k + d_out k  +  N r (k + k)``, plus the two mean vectors ``d_in + d_out`` when ``with_mean``;
  - ``product`` (the replication's B@A model axis, basis stored densely): ``d_out d_in k + N k`` plus
    ``d_out d_in`` for the mean;
  full storage is ``N r (d_out + d_in)``.

Everything a model keeps outside the analysed matrices (embeddings, heads, norms, biases) is passed as
``kept`` (numbers per model) and counted in full on both sides when given.
The shapes of the paper's models are here too (:data:`PAPER_SHAPES`), so the same formulas give the ratio
at the paper's scale.
"""

from __future__ import annotations

from typing import Callable, Mapping

from uws_core.linalg.spectral import UNFOLDINGS

__all__ = ["stored_numbers", "full_numbers", "lora_stored_numbers", "lora_full_numbers", "ratio", "savings",
           "PAPER_SHAPES", "PAPER_LORA_SHAPES", "UNFOLDINGS", "LORA_RECIPES"]

LORA_RECIPES = ("factors", "product")


def _k(k_of, key) -> int:
    if callable(k_of):
        return int(k_of(key))
    if isinstance(k_of, Mapping):
        if key not in k_of:
            raise KeyError(f"no k for weight key {key!r}")
        return int(k_of[key])
    return int(k_of)


def _check_shape(key, shape, n_dims):
    if len(shape) != n_dims or any(int(s) < 1 for s in shape):
        raise ValueError(f"weight key {key!r}: shape {tuple(shape)} is not {n_dims} positive sizes")


def stored_numbers(shapes: Mapping[str, tuple[int, int]], k_of, n: int, unfolding: str = "rows",
                   with_mean: bool = True) -> int:
    """Numbers stored for N full-weight models as basis (+ mean) + coefficients; see the module docstring.

    ``k_of`` is an int, a dict key -> k or a function of the key. k is capped at the dimension of the basis
    space (d_in, d_out, or N for the model axis, where at most N - 1 centred directions exist).
    """
    if unfolding not in UNFOLDINGS:
        raise ValueError(f"unfolding must be one of {UNFOLDINGS}, got {unfolding!r}")
    total = 0
    for key, shape in shapes.items():
        _check_shape(key, shape, 2)
        d_out, d_in = map(int, shape)
        k = _k(k_of, key)
        if unfolding == "rows":
            k = min(k, d_in)
            total += d_in * k + n * d_out * k
        elif unfolding == "cols":
            k = min(k, d_out)
            total += d_out * k + n * d_in * k
        else:
            k = min(k, n)
            total += d_out * d_in * k + n * k
        total += d_out * d_in if with_mean else 0
    return total


def full_numbers(shapes: Mapping[str, tuple[int, int]], n: int) -> int:
    """``N d_out d_in`` summed over keys."""
    return n * sum(int(a) * int(b) for a, b in shapes.values())


def lora_stored_numbers(shapes: Mapping[str, tuple[int, int, int]], k_of, n: int, recipe: str = "factors",
                        with_mean: bool = True) -> int:
    """Numbers stored for N LoRA adapters (shapes key -> (d_out, r, d_in)) as bases + coefficients."""
    if recipe not in LORA_RECIPES:
        raise ValueError(f"recipe must be one of {LORA_RECIPES}, got {recipe!r}")
    total = 0
    for key, shape in shapes.items():
        _check_shape(key, shape, 3)
        d_out, r, d_in = map(int, shape)
        k = _k(k_of, key)
        if recipe == "factors":
            ka, kb = min(k, d_in), min(k, d_out)
            total += d_in * ka + d_out * kb + n * r * (ka + kb) + ((d_in + d_out) if with_mean else 0)
        else:
            k = min(k, n)
            total += d_out * d_in * k + n * k + (d_out * d_in if with_mean else 0)
    return total


def lora_full_numbers(shapes: Mapping[str, tuple[int, int, int]], n: int) -> int:
    """``N r (d_out + d_in)`` summed over keys."""
    return n * sum(int(r) * (int(d_out) + int(d_in)) for d_out, r, d_in in shapes.values())


def ratio(full: float, stored: float, kept: float = 0.0) -> float:
    """``(full + kept) / (stored + kept)``: how many times smaller the compressed population is."""
    if stored + kept <= 0:
        raise ValueError("stored size must be positive")
    return (full + kept) / (stored + kept)


def savings(full: float, stored: float, kept: float = 0.0) -> float:
    """``1 - (stored + kept) / (full + kept)``, the authors' "family savings" (negative: compression costs)."""
    return 1.0 - (stored + kept) / (full + kept)


def _vit_b() -> dict[str, tuple[int, int]]:
    out = {}
    for layer in range(12):
        p = f"vit.encoder.layer.{layer}."
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                     "attention.output.dense"):
            out[p + name + ".weight"] = (768, 768)
        out[p + "intermediate.dense.weight"] = (3072, 768)
        out[p + "output.dense.weight"] = (768, 3072)
    return out


def _llama3_8b() -> dict[str, tuple[int, int]]:
    out = {}
    for layer in range(32):
        p = f"model.layers.{layer}."
        out.update({p + "self_attn.q_proj.weight": (4096, 4096), p + "self_attn.k_proj.weight": (1024, 4096),
                    p + "self_attn.v_proj.weight": (1024, 4096), p + "self_attn.o_proj.weight": (4096, 4096),
                    p + "mlp.gate_proj.weight": (14336, 4096), p + "mlp.up_proj.weight": (14336, 4096),
                    p + "mlp.down_proj.weight": (4096, 14336)})
    return out


def _mistral_lora() -> dict[str, tuple[int, int, int]]:
    out = {}
    for layer in range(32):
        p = f"base_model.model.model.layers.{layer}.self_attn."
        out.update({p + "q_proj": (4096, 16, 4096), p + "k_proj": (1024, 16, 4096), p + "v_proj": (1024, 16, 4096)})
    return out


# The analysed matrices of the paper's models (public configs: google/vit-base-patch16-224,
# meta-llama/Meta-Llama-3-8B; Lots-of-LoRAs Mistral-7B adapters: r = 16 on q/k/v of 32 layers).
PAPER_SHAPES = {"vit_b16": _vit_b(), "llama3_8b": _llama3_8b()}
PAPER_LORA_SHAPES = {"mistral7b_r16_qkv": _mistral_lora()}
