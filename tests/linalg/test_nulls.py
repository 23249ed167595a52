import numpy as np
import pytest
import torch
from scipy.integrate import quad

from uws_core.linalg.nulls import (gaussian_like, gaussian_lora_like, marchenko_pastur_pdf, marchenko_pastur_spectrum,
                            marchenko_pastur_support)


def test_gaussian_like_matches_shape_and_per_model_variance():
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((3, 60, 50)) * np.array([0.1, 1.0, 5.0])[:, None, None] + 2.0
    null = gaussian_like(stack, seed=1)
    assert null.shape == stack.shape and null.dtype == torch.float64
    np.testing.assert_allclose(null.std(dim=(1, 2)).numpy(), stack.std(axis=(1, 2)), rtol=0.05)
    assert abs(float(null.mean())) < 0.05  # zero mean: no shared mean direction in the null
    assert torch.equal(null, gaussian_like(stack, seed=1))
    assert not torch.equal(null, gaussian_like(stack, seed=2))


def test_gaussian_lora_like_matches_factor_variances():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(4, 64, 8, generator=g) * torch.tensor([0.01, 0.1, 1.0, 2.0]).view(4, 1, 1)
    a = torch.randn(4, 8, 48, generator=g) * 0.3
    bn, an = gaussian_lora_like(b, a, seed=3)
    assert bn.shape == b.shape and an.shape == a.shape
    np.testing.assert_allclose(bn.std(dim=(1, 2)).numpy(), b.double().std(dim=(1, 2)).numpy(), rtol=0.1)
    np.testing.assert_allclose(an.std(dim=(1, 2)).numpy(), a.double().std(dim=(1, 2)).numpy(), rtol=0.1)
    assert torch.linalg.matrix_rank(bn[0] @ an[0]) == 8
    with pytest.raises(ValueError):
        gaussian_lora_like(b, a.transpose(1, 2))


@pytest.mark.parametrize("n,p", [(400, 100), (100, 400), (200, 200)])
def test_mp_pdf_integrates_to_continuous_mass(n, p):
    lo, hi = marchenko_pastur_support(n, p, sigma2=2.0)
    mass = quad(lambda x: marchenko_pastur_pdf(x, n, p, 2.0), lo, hi, limit=200)[0]
    assert mass == pytest.approx(min(1.0, n / p), abs=1e-6)
    mean = quad(lambda x: x * marchenko_pastur_pdf(x, n, p, 2.0), lo, hi, limit=200)[0]
    assert mean == pytest.approx(2.0, rel=1e-6)  # E[lambda] = sigma2 (the atom at 0 adds nothing)


@pytest.mark.parametrize("n,p", [(2000, 500), (500, 1500), (1000, 1000)])
def test_mp_spectrum_matches_large_gaussian(n, p):
    """Tolerance: the largest deviation is < 3% of the top eigenvalue (edge fluctuations ~ n^{-2/3}) and the
    mean absolute deviation is < 1% of the mean eigenvalue."""
    rng = np.random.default_rng(n + p)
    x = rng.standard_normal((n, p)) * np.sqrt(0.5)
    ev = np.linalg.svd(x, compute_uv=False) ** 2 / n  # nonzero eigenvalues of X^T X / n, descending
    mp = marchenko_pastur_spectrum(n, p, sigma2=0.5)
    assert mp.shape == (min(n, p),) and np.all(np.diff(mp) <= 0)
    assert np.abs(ev - mp).max() < 0.03 * mp[0]
    assert np.abs(ev - mp).mean() < 0.01 * mp.mean()
    assert mp.sum() == pytest.approx(0.5 * p, rel=1e-3)  # trace(X^T X / n) = p sigma2


def test_mp_rejects_bad_sizes():
    with pytest.raises(ValueError):
        marchenko_pastur_spectrum(0, 10)
    with pytest.raises(ValueError):
        marchenko_pastur_pdf([1.0], 10, 10, sigma2=-1)


def test_pooled_match_gives_every_model_the_rms_std():
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64).view(3, 1, 1)
    stack = torch.randn(3, 40, 50, generator=g, dtype=torch.float64) * scales
    own = stack.reshape(3, -1).std(dim=1, unbiased=False)
    pooled = own.pow(2).mean().sqrt()
    null = gaussian_like(stack, seed=1, match="pooled")
    np.testing.assert_allclose(null.reshape(3, -1).std(dim=1).numpy(), pooled.item(), rtol=0.05)
    per_model = gaussian_like(stack, seed=1)
    np.testing.assert_allclose(per_model.reshape(3, -1).std(dim=1).numpy(), own.numpy(), rtol=0.05)
    B, A = torch.randn(3, 20, 4, generator=g) * scales, torch.randn(3, 4, 30, generator=g)
    Bn, An = gaussian_lora_like(B, A, seed=2, match="pooled")
    assert Bn.reshape(3, -1).std(dim=1).max() / Bn.reshape(3, -1).std(dim=1).min() < 1.3
    with pytest.raises(ValueError, match="match must be one of"):
        gaussian_like(stack, match="global")
