"""LoRA factor pairs and the factored Gram of their products (uws_core.linalg.lora_model_basis)."""

import numpy as np
import pytest
import torch

from uws_core.linalg.lora_model_basis import (LoraChunkLayout, check_lora_pairs, concat_chunks, lora_gram_block,
                                              lora_scaling_vector)
from uws_core.linalg.spectral import ShapeMismatchError


def pairs(n=5, d_out=7, r=3, d_in=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_out, r, generator=g, dtype=torch.float64),
            torch.randn(n, r, d_in, generator=g, dtype=torch.float64))


def test_gram_block_is_the_frobenius_gram_of_the_scaled_products():
    b, a = pairs()
    s = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5], dtype=torch.float64)
    layout = LoraChunkLayout()
    lo, hi = layout((b[:2], a[:2], s[:2]), "cpu", slot=0), layout((b[2:], a[2:], s[2:]), "cpu", slot=1)
    stored = concat_chunks([(b[:2], a[:2], s[:2]), (b[2:], a[2:], s[2:])])   # chunks joined on the adapter axis
    assert all(torch.equal(x, y) for x, y in zip(stored, (b, a, s)))
    whole = layout(stored, "cpu")
    p = (s[:, None, None] * b @ a).reshape(5, -1)    # (N, d_out*d_in) dense products
    dense = (p @ p.T).numpy()
    np.testing.assert_allclose(lora_gram_block(lo, hi).numpy(), dense[:2, 2:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lora_gram_block(whole, whole).numpy(), dense, rtol=1e-12, atol=1e-12)


def test_check_lora_pairs_accepts_one_pair_and_names_bad_shapes():
    b, a = pairs(n=1)
    b1, a1 = check_lora_pairs(b[0], a[0])
    assert b1.shape == (1, 7, 3) and a1.shape == (1, 3, 6)
    with pytest.raises(ShapeMismatchError, match=r"\(2, 7, 3\) and \(2, 4, 6\)"):
        check_lora_pairs(torch.zeros(2, 7, 3), torch.zeros(2, 4, 6))


def test_scaling_vector_from_none_scalar_and_sequence():
    assert lora_scaling_vector(None, 3).tolist() == [1.0, 1.0, 1.0]
    assert lora_scaling_vector(2.0, 2).tolist() == [2.0, 2.0]
    assert lora_scaling_vector([1.0, 0.5], 2).dtype == torch.float64
