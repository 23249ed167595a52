"""Memory bounds of one key from its shapes (uws_core.weights.memory_bounds)."""

import pytest

from uws_core.weights.memory_bounds import (GRAM_CHUNK_BYTES, factored_memory_bound_bytes, in_memory_key_bound_bytes,
                                            kohya_memory_bound_bytes, memory_bound_bytes, model_axis_chunk)


def test_memory_bound_of_paper_shapes():
    """The per-key bounds quoted in docs/paper_scale.md: Llama-3-8B down_proj (4096, 14336) bf16, N = 50."""
    rows = memory_bound_bytes((4096, 14336), 50, "rows", "models", stored_bytes=2)
    assert rows["gram"] == 8 * 14336 ** 2 and rows["total"] / 2 ** 30 == pytest.approx(7.0, abs=0.01)
    model = memory_bound_bytes((4096, 14336), 50, "model", "models", stored_bytes=2, chunk=2)
    assert model["stored_models"] == 50 * 4096 * 14336 * 2 and model["total"] < 80 * 2 ** 30
    lora = memory_bound_bytes((1024, 4096), 500, "model", "models", lora_rank=16, chunk=64)
    assert lora["factors"] == 8 * 500 * 16 * (1024 + 4096) and lora["total"] < 2 ** 30


def test_model_axis_chunk_keeps_one_chunk_under_the_limit():
    assert model_axis_chunk(4096 * 14336) == 2 and 2 * 8 * 4096 * 14336 <= GRAM_CHUNK_BYTES
    assert model_axis_chunk(10) == 64 and model_axis_chunk(GRAM_CHUNK_BYTES) == 1


def test_factored_and_kohya_bounds_add_their_parts():
    f = factored_memory_bound_bytes((64, 48), 10, 4)  # N r = 40 < d_in: no product factors
    assert f == {"factors": 16 * 10 * 4 * 112, "grams": 64 * 40 ** 2, "product_factors": 0,
                 "total": 16 * 10 * 4 * 112 + 64 * 40 ** 2}
    g = factored_memory_bound_bytes((64, 32), 10, 4)  # N r = 40 >= d_in = 32: the product's W and mean too
    assert g["product_factors"] == 8 * (40 + 64) * 32 and g["grams"] == 64 * 40 ** 2
    k = kohya_memory_bound_bytes((1280, 1280), [32] * 267)
    assert k["factors"] == 8 * 8544 * 2560 and k["total"] / 1e9 == pytest.approx(0.26, abs=0.01)  # the docstring's SDXL example


class _Pop:
    """Two models whose keys have the given shapes and stored dtype (what AdapterSet / CheckpointSet report)."""

    def __init__(self, shape, dtype="BF16"):
        self._shape, self._dtype = shape, dtype

    def __len__(self):
        return 2

    def shape(self, key):
        return self._shape

    def dtype(self, key):
        return self._dtype


def test_in_memory_key_bound_adds_the_stacked_factors_of_adapters():
    shape, bound = in_memory_key_bound_bytes(_Pop((32, 4, 16)), "adapters", "q", "rows", "models")
    assert shape == (32, 16)
    assert bound == memory_bound_bytes((32, 16), 2, "rows", "models", lora_rank=4)["total"] + 8 * 2 * 4 * 48
    shape, bound = in_memory_key_bound_bytes(_Pop([32, 16], "F32"), "checkpoints", "w", "rows", "models")
    assert shape == (32, 16) and bound == memory_bound_bytes((32, 16), 2, "rows", "models", 4)["total"]
