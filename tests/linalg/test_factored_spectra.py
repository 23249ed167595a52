"""factored_spectra: (N r) x (N r) Gram spectra equal the dense float64 SVD of the same unfolding.

Tiny seeded factors (N r < d so the small-Gram route is taken, and N r >= d for the other branch), every
view, every centring, per-adapter alphas. Tolerance: EVR within 1e-10 absolute, total variance within 1e-10
relative (float64 round-off of a few thousand flops per entry is ~1e-13).
"""

import numpy as np
import pytest
import torch

from uws_core.linalg import factored_spectra
from uws_core.linalg.factored_spectra import (centered_sample_gram, factored_lora_spectra, factored_product_spectrum,
                                              gram_rows, product_feature_spectrum, stacked_rows_spectrum,
                                              uses_small_gram)
from uws_core.linalg.lora import lora_products
from uws_core.linalg.spectral import stack_spectrum

EVR_TOL = 1e-10
TOTAL_RTOL = 1e-10


def _factors(n=5, d_out=40, r=3, d_in=56, seed=0, planted=True):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, d_out, r, generator=g, dtype=torch.float64)
    a = torch.randn(n, r, d_in, generator=g, dtype=torch.float64)
    if planted:  # a shared subspace plus noise, so the spectrum is not flat
        a = a * 0.3 + torch.randn(1, r, d_in, generator=g, dtype=torch.float64)
    s = torch.linspace(0.5, 2.0, n, dtype=torch.float64)  # per-adapter alpha / r
    return b.float(), a.float(), s  # float32 storage, as in the PEFT files


def _assert_same(fast, dense):
    assert fast.n_components == dense.n_components
    np.testing.assert_allclose(fast.total_variance, dense.total_variance, rtol=TOTAL_RTOL)
    np.testing.assert_allclose(fast.evr(), dense.evr(), rtol=0, atol=EVR_TOL)


@pytest.mark.parametrize("center", ["none", "samples", "models"])
@pytest.mark.parametrize("n,r,d", [(4, 3, 50), (20, 4, 30)])  # N m < d (small Gram) and N m >= d (d x d)
def test_stacked_rows_equals_dense(center, n, r, d):
    x = torch.randn(n, r, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = stacked_rows_spectrum(x, center, device="cpu")
    dense = stack_spectrum(x, "rows", center, k=0, device="cpu")
    assert uses_small_gram(n * r, d) == (n * r < d)
    _assert_same(fast, dense)


@pytest.mark.parametrize("unfolding", ["rows", "cols", "model"])
@pytest.mark.parametrize("center", ["none", "samples", "models"])
def test_product_equals_dense_product_stack(unfolding, center):
    b, a, s = _factors()
    fast = factored_product_spectrum(b, a, unfolding, center, scaling=s, device="cpu")
    dense = stack_spectrum(lora_products(b, a, scaling=s), unfolding, center, k=0, device="cpu")
    _assert_same(fast, dense)
    assert fast.evr()[:3].sum() > 0.2  # not a degenerate spectrum


def test_product_rank_deficient_factors_use_the_eigh_square_root():
    b, a, s = _factors(n=4)
    a[1] = a[0]  # two adapters share A: Acat Acat^T is singular, Cholesky fails
    fast = factored_product_spectrum(b, a, "rows", "models", scaling=s, device="cpu")
    dense = stack_spectrum(lora_products(b, a, scaling=s), "rows", "models", k=0, device="cpu")
    _assert_same(fast, dense)


@pytest.mark.parametrize("unfolding,center", [("rows", "models"), ("cols", "samples"), ("model", "models"),
                                              ("rows", "none")])
@pytest.mark.parametrize("n", [5, 30])  # N r = 15 < d and 90 >= d_out = 40 / d_in = 56 (fallback routes)
def test_three_views_equal_dense(unfolding, center, n):
    b, a, s = _factors(n=n)
    views = factored_lora_spectra(b, a, unfolding, center, scaling=s, device="cpu")
    _assert_same(views["lora_A"], stack_spectrum(a, "rows", "samples", k=0, device="cpu"))
    _assert_same(views["lora_B"], stack_spectrum(b, "cols", "samples", k=0, device="cpu"))
    _assert_same(views["product"], stack_spectrum(lora_products(b, a, scaling=s), unfolding, center, k=0,
                                                  device="cpu"))
    assert views["lora_B"].unfolding == "cols" and views["lora_B"].matrix_shape == (40, 3)


def test_authors_recipe_mean_matrix_centred_A():
    _, a, _ = _factors(n=6)
    fast = stacked_rows_spectrum(a, "models", device="cpu")  # A rows minus the mean A across models
    ref = np.linalg.svd((a.double() - a.double().mean(0)).reshape(-1, a.shape[2]).numpy(), compute_uv=False) ** 2
    np.testing.assert_allclose(fast.variances[:len(ref)], ref, rtol=1e-10, atol=1e-10 * ref[0])


def test_non_finite_factor_is_refused():
    b, a, s = _factors()
    a[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        factored_lora_spectra(b, a, scaling=s, device="cpu")


@pytest.fixture(params=[True, False], ids=["lapack", "torch"])
def kernels(request, monkeypatch):
    """Both code paths on CPU: numpy/scipy (the CPU default) and torch (what CUDA runs)."""
    monkeypatch.setattr(factored_spectra, "USE_LAPACK_ON_CPU", request.param)
    return request.param


@pytest.mark.parametrize("center", ["samples", "models"])
def test_both_kernels_equal_dense(kernels, center):
    b, a, s = _factors(n=6)
    views = factored_lora_spectra(b, a, "rows", center, scaling=s, device="cpu")
    _assert_same(views["product"], stack_spectrum(lora_products(b, a, scaling=s), "rows", center, k=0,
                                                  device="cpu"))
    _assert_same(views["lora_A"], stack_spectrum(a, "rows", "samples", k=0, device="cpu"))
    a[1] = a[0]  # singular Acat Acat^T: the eigh square-root fallback of both kernels
    fast = factored_product_spectrum(b, a, "rows", center, scaling=s, device="cpu")
    _assert_same(fast, stack_spectrum(lora_products(b, a, scaling=s), "rows", center, k=0, device="cpu"))


@pytest.mark.parametrize("center", ["samples", "models"])
def test_gram_centring_falls_back_to_centring_the_data_when_the_mean_dominates(center):
    g = torch.Generator().manual_seed(3)
    mean_shape = (1, 1, 30) if center == "samples" else (1, 2, 30)  # what the centring removes
    x = 1e-4 * torch.randn(4, 2, 30, generator=g, dtype=torch.float64) + torch.randn(*mean_shape, generator=g,
                                                                                      dtype=torch.float64)
    gram = gram_rows(x.reshape(8, 30))
    xc = factored_spectra.center_rows(x, center).reshape(8, 30)
    ref = (xc @ xc.T).numpy()  # entries ~1e-8; C G C would carry ~1e-15 absolute error (1e-7 relative)
    got = centered_sample_gram(x, center, gram)  # mean energy ~1e8 x the variance: the data are centred
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=0)
    small = stacked_rows_spectrum(x, center, device="cpu", gram=gram)
    _assert_same(small, stack_spectrum(x, "rows", center, k=0, device="cpu"))


@pytest.mark.parametrize("unfolding", ["rows", "cols"])
@pytest.mark.parametrize("center", ["none", "samples", "models"])
def test_product_feature_gram_equals_dense(kernels, unfolding, center):
    """N r = 90 >= d: the d x d Gram W^T W - (mean part) built from the factors, both kernels."""
    b, a, s = _factors(n=30)
    fast = product_feature_spectrum(b, a, unfolding, center, scaling=s, device="cpu")
    dense = stack_spectrum(lora_products(b, a, scaling=s), unfolding, center, k=0, device="cpu")
    _assert_same(fast, dense)
    b[3] = b[2]  # equal B blocks: B_i^T B_i square roots stay exact (eigh, not Cholesky)
    b[:, :, 0] = 0.0  # rank-deficient B_i^T B_i
    fast = product_feature_spectrum(b, a, unfolding, center, scaling=s, device="cpu")
    _assert_same(fast, stack_spectrum(lora_products(b, a, scaling=s), unfolding, center, k=0, device="cpu"))


def test_product_feature_gram_refuses_a_dominant_mean():
    """Equal scalings and a mean matrix 1e4 x the spread: W^T W - N Pbar^T Pbar would cancel; None, and factored_lora_spectra then
    takes the streaming route (still equal to the dense SVD)."""
    b, a, _ = _factors(n=30)
    b = b.double() * 1e-4 + torch.randn(1, 40, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = a.double() * 1e-4 + torch.randn(1, 3, 56, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert product_feature_spectrum(b, a, "rows", "models", device="cpu") is None
    views = factored_lora_spectra(b, a, "rows", "models", device="cpu")
    dense = stack_spectrum(lora_products(b, a), "rows", "models", k=0, device="cpu")
    np.testing.assert_allclose(views["product"].evr(), dense.evr(), rtol=0, atol=1e-8)
