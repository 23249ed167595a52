"""Upper bounds of the memory one weight key needs, from its shapes alone (bytes), stated in every key's result
and checked against the free memory before a key starts (``uws spectra --max-key-bytes``, ``uws spectrum``).

One bound per path: the streamed checkpoint and LoRA spectra of :mod:`uws_core.weights.population_spectra`
(:func:`memory_bound_bytes`), its small-Gram LoRA path (:func:`factored_memory_bound_bytes`) and the varying-rank
kohya LoRAs of :mod:`uws_core.weights.kohya` (:func:`kohya_memory_bound_bytes`). Measured peaks beside them:
``benchmarks/streaming_results.md``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STORED_BYTES", "GRAM_CHUNK_BYTES", "memory_bound_bytes", "model_axis_chunk", "factored_memory_bound_bytes",
           "kohya_memory_bound_bytes", "in_memory_key_bound_bytes"]

STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}  # safetensors dtype -> bytes
GRAM_CHUNK_BYTES = 1 << 30  # model axis: float64 bytes of one prepared Gram chunk (two are live at once)


def memory_bound_bytes(shape, n: int, unfolding: str, center: str, stored_bytes: int = 2,
                       lora_rank: int | None = None, chunk: int = 1) -> dict:
    """Upper bound of the memory one key needs (bytes), from the shapes alone.

    With ``D = d_out*d_in``, ``d_f`` the feature dimension of the unfolding (d_in for rows, d_out for
    cols), float64 accumulation (8 bytes) and ``s`` stored bytes per element:

    * rows / cols: Gram ``8 d_f^2``, eigensolver workspace ``16 d_f^2``, running mean ``8 D`` ("models")
      and per model ``(2 s + 32) D``: the stored tensor and its file pages, and up to four float64
      matrices (the upcast copy, its deviation from the mean, and the next model's, with slack);
    * model axis: the N stored matrices ``N D s``, the Gram ``8 N^2``, two prepared chunks ``16 c D``;
    * LoRA (rank r): A ``24 d_in^2`` and B ``24 d_out^2`` (Gram + workspace), and the product: rows/cols as
      above without per-model dense copies (``8 d_f^2 + 16 d_f^2 + 8 D`` with "models"), model axis the
      factors ``8 N r (d_out + d_in)``, the Gram ``8 N^2`` and two prepared chunks.
    """
    d_out, d_in = shape
    big_d = d_out * d_in
    d_f = d_in if unfolding == "rows" else d_out
    if lora_rank is None:
        if unfolding == "model":
            parts = {"stored_models": n * big_d * stored_bytes, "gram": 8 * n * n, "chunks": 16 * chunk * big_d}
        else:
            parts = {"gram": 8 * d_f ** 2, "eigensolver": 16 * d_f ** 2,
                     "mean": 8 * big_d if center == "models" else 8 * d_f, "per_model": (2 * stored_bytes + 32) * big_d}
        return {**parts, "total": sum(parts.values())}
    r = lora_rank
    parts = {"lora_A": 24 * d_in ** 2, "lora_B": 24 * d_out ** 2}
    if unfolding == "model":
        parts.update(factors=8 * n * r * (d_out + d_in), gram=8 * n * n, chunks=16 * chunk * r * (d_out + d_in))
    else:
        parts.update(product_gram=24 * d_f ** 2, product_mean=8 * big_d if center == "models" else 8 * d_f)
    return {**parts, "total": sum(parts.values())}


def model_axis_chunk(big_d: int) -> int:
    """Models per Gram chunk so that one float64 chunk stays under GRAM_CHUNK_BYTES (1 to 64)."""
    return int(max(1, min(64, GRAM_CHUNK_BYTES // (8 * big_d))))


def factored_memory_bound_bytes(shape, n: int, r: int) -> dict:
    """Memory bound (bytes) of an adapter key on the factored path of :mod:`uws_core.weights.population_spectra`
    (:func:`uws_core.linalg.factored_spectra.factored_lora_spectra`): the float64 factor stacks and their
    centred copies ``16 N r (d_out + d_in)``; per view a Gram of side ``m = min(N r, max(d_out, d_in))`` and its
    eigensolver workspace, ``32 m^2`` (four at once at most: ``64 m^2``); when N r >= d_in the product's
    ``W (N r, d_in)`` and mean ``(d_out, d_in)``, ``8 (N r + d_out) d_in``."""
    d_out, d_in = shape
    m = min(n * r, max(d_out, d_in))
    parts = {"factors": 16 * n * r * (d_out + d_in), "grams": 64 * m ** 2,
             "product_factors": 8 * (n * r + d_out) * d_in if n * r >= d_in else 0}
    return {**parts, "total": sum(parts.values())}


def kohya_memory_bound_bytes(shape, ranks) -> dict:
    """Upper bound of the memory of one key (bytes), float64: A ``24 d_in^2`` and B ``24 d_out^2`` (Gram and
    eigensolver workspace), the held factors of the product ``8 R (d_out + d_in)``, its workspace
    ``16 R r_max`` and Gram ``8 N^2``; R = sum of the ranks, plus one adapter's factors. E.g. for N = 267 and
    r = 32 (R = 8544): an SDXL attention projection (1280, 1280) 0.26 GB; ``ff.net.0.proj`` (10240, 1280)
    3.3 GB, dominated by B's Gram and the held factors; a 3x3 conv (1280, 11520) 4.1 GB."""
    d_out, d_in = shape
    ranks = np.asarray(ranks, dtype=np.int64)
    big_r, n = int(ranks.sum()), len(ranks)
    parts = {"lora_A": 24 * d_in ** 2, "lora_B": 24 * d_out ** 2, "factors": 8 * big_r * (d_out + d_in),
             "workspace": 16 * big_r * int(ranks.max()), "gram": 8 * n * n}
    return {**parts, "total": sum(parts.values())}


def in_memory_key_bound_bytes(pop, kind: str, key: str, unfolding: str, center: str) -> tuple[tuple[int, int], int]:
    """``((d_out, d_in), bound)`` of one key of the in-memory ``uws spectrum`` path: :func:`memory_bound_bytes`
    from the headers' shapes (and stored dtype), plus the stacked float64 factors ``8 N r (d_out + d_in)`` for
    ``kind == "adapters"`` (``pop.shape(key)`` is then ``(d_out, r, d_in)``)."""
    if kind == "adapters":
        d_out, r, d_in = pop.shape(key)
        bound = memory_bound_bytes((d_out, d_in), len(pop), unfolding, center, lora_rank=r)["total"]
        return (d_out, d_in), bound + 8 * len(pop) * r * (d_out + d_in)
    shape = tuple(pop.shape(key))
    return shape, memory_bound_bytes(shape, len(pop), unfolding, center, STORED_BYTES.get(pop.dtype(key), 8))["total"]
