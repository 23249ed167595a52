import pytest
import torch

from uws_core.experiments.compression import (PAPER_LORA_SHAPES, PAPER_SHAPES, full_numbers, lora_full_numbers,
                                  lora_stored_numbers, ratio, savings, stored_numbers)

SHAPES = {"a.weight": (3, 5), "b.weight": (4, 2)}


def test_full_weight_formulas_by_hand():
    # rows: a: 5*2 + 10*3*2 = 70 (+15 mean); b: k capped at d_in = 2: 2*2 + 10*4*2 = 84 (+8)
    assert stored_numbers(SHAPES, 2, n=10, unfolding="rows", with_mean=False) == 70 + 84
    assert stored_numbers(SHAPES, 2, n=10, unfolding="rows") == 70 + 84 + 15 + 8
    # cols: a: 3*2 + 10*5*2 = 106; b: 4*2 + 10*2*2 = 48
    assert stored_numbers(SHAPES, 2, n=10, unfolding="cols", with_mean=False) == 106 + 48
    # model: a: 15*2 + 10*2 = 50; b: 8*2 + 20 = 36
    assert stored_numbers(SHAPES, 2, n=10, unfolding="model", with_mean=False) == 50 + 36
    assert full_numbers(SHAPES, 10) == 10 * (15 + 8)


def test_k_per_key_and_errors():
    assert stored_numbers(SHAPES, {"a.weight": 1, "b.weight": 2}, n=1, with_mean=False) == (5 + 3) + (2 * 2 + 4 * 2)
    assert stored_numbers(SHAPES, lambda key: 1, n=1, with_mean=False) == (5 + 3) + (2 + 4)
    with pytest.raises(KeyError, match="b.weight"):
        stored_numbers(SHAPES, {"a.weight": 1}, n=1)
    with pytest.raises(ValueError, match="unfolding"):
        stored_numbers(SHAPES, 1, n=1, unfolding="tucker")
    with pytest.raises(ValueError, match="'bad'"):
        stored_numbers({"bad": (3,)}, 1, n=1)


def test_rows_count_equals_the_bytes_of_real_tensors():
    """Store 6 models of one key as basis + mean + coefficients and count the tensors' elements."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, 7, generator=g, dtype=torch.float64)
    k = 3
    mean = W.mean(0)
    U = torch.linalg.svd((W - mean).reshape(-1, 7), full_matrices=False).Vh[:k].T   # (d_in, k)
    coef = (W - mean) @ U                                                           # (N, d_out, k)
    assert U.numel() + mean.numel() + coef.numel() == stored_numbers({"w": (4, 7)}, k, n=6)


def test_lora_formulas_by_hand():
    shapes = {"q": (6, 2, 5)}
    # factors: A basis 5*3 + B basis 6*3 + N r (3 + 3) = 15 + 18 + 4*2*6 = 81, means 5 + 6
    assert lora_stored_numbers(shapes, 3, n=4, recipe="factors", with_mean=False) == 81
    assert lora_stored_numbers(shapes, 3, n=4, recipe="factors") == 81 + 11
    # product: 30*3 + 4*3 = 102, mean 30
    assert lora_stored_numbers(shapes, 3, n=4, recipe="product") == 102 + 30
    assert lora_full_numbers(shapes, 4) == 4 * 2 * 11
    with pytest.raises(ValueError, match="recipe"):
        lora_stored_numbers(shapes, 3, n=4, recipe="svd")


def test_ratio_savings_and_paper_shapes():
    assert ratio(100, 10) == 10 and ratio(100, 10, kept=10) == 110 / 20
    assert savings(100, 25) == 0.75 and savings(100, 200) == -1.0
    vit = PAPER_SHAPES["vit_b16"]
    assert len(vit) == 72 and full_numbers(vit, 1) == 12 * (4 * 768 * 768 + 2 * 3072 * 768)   # 85 M encoder weights
    llama = PAPER_SHAPES["llama3_8b"]
    assert len(llama) == 224 and abs(full_numbers(llama, 1) / 1e9 - 6.98) < 0.01              # 7.0 B of 8.0 B
    lora = PAPER_LORA_SHAPES["mistral7b_r16_qkv"]
    assert len(lora) == 96 and lora_full_numbers(lora, 1) == 32 * 16 * (8192 + 5120 + 5120)
