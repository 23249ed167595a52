"""Null models for spectra: i.i.d. Gaussian stacks, Gaussian rank-r LoRA products, and the
Marchenko-Pastur law, so that every spectrum can be drawn next to what structureless weights would give.

* :func:`gaussian_like` -- same shape as a weight stack, each model's entries i.i.d. N(0, var(W_i)).
* :func:`gaussian_lora_like` -- Gaussian factors B', A' of the same shapes with each factor's per-model
  variance, so ``B'_i A'_i`` is a random rank-r matrix of matched scale (the replication's null).
* :func:`marchenko_pastur_pdf`, :func:`marchenko_pastur_spectrum` -- the limiting eigenvalue law of the
  sample covariance ``X^T X / n`` of an (n_samples, n_features) matrix with i.i.d. entries of variance
  sigma2, and its quantiles as an expected spectrum.
"""

from __future__ import annotations

import numpy as np
import torch

from uws_core.linalg.device import as_tensor

__all__ = ["gaussian_like", "gaussian_lora_like", "marchenko_pastur_pdf", "marchenko_pastur_spectrum",
           "marchenko_pastur_support"]


MATCHES = ("per_model", "pooled")


def _per_model_std(x: torch.Tensor, match: str = "per_model") -> torch.Tensor:
    """Standard deviation to give each model's null entries, shape (N, 1, 1), float64.

    ``match="per_model"``: each model's own entry std (about its own mean), so models with larger
    weights keep their larger share of the variance. ``match="pooled"``: one std for all models, the
    root mean square over models of those stds (the replication's "matched entry variance"); the
    null then has no heterogeneity of scale across models.
    """
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    flat = x.to(torch.float64).reshape(x.shape[0], -1)
    std = flat.std(dim=1, unbiased=False)
    if match == "pooled":
        std = std.pow(2).mean().sqrt().expand_as(std)
    return std.reshape(-1, *([1] * (x.ndim - 1)))


def gaussian_like(stack, seed: int = 0, match: str = "per_model") -> torch.Tensor:
    """i.i.d. zero-mean Gaussian stack with the shape of ``stack`` (N, ...) and each model's variance.

    Parameters
    ----------
    stack : (N, d_out, d_in) array or tensor
    seed : int
    match : {"per_model", "pooled"}
        Each model's own variance, or one pooled variance for all (see ``_per_model_std``).

    Returns
    -------
    torch.Tensor float64, same shape; model i has entries N(0, var(stack[i])) (or the pooled variance).
    """
    x = as_tensor(stack, dtype=None)
    if x.ndim < 2:
        raise ValueError(f"gaussian_like needs a stack (N, ...), got shape {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(x.shape, generator=gen, dtype=torch.float64) * _per_model_std(x, match).cpu()


def gaussian_lora_like(B, A, seed: int = 0, match: str = "per_model") -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian LoRA factors with the shapes of ``B (N, d_out, r)``, ``A (N, r, d_in)`` and each factor's
    per-model variance (zero mean); their products are random rank-r matrices of matched scale.
    ``match="pooled"`` gives every adapter the pooled variance of each factor instead.

    Returns
    -------
    (B', A') float64 tensors.
    """
    b, a = as_tensor(B, dtype=None), as_tensor(A, dtype=None)
    if b.ndim != 3 or a.ndim != 3 or b.shape[0] != a.shape[0] or b.shape[2] != a.shape[1]:
        raise ValueError(f"LoRA factors must be B (N, d_out, r) and A (N, r, d_in); got {tuple(b.shape)} "
                         f"and {tuple(a.shape)}")
    gen = torch.Generator().manual_seed(int(seed))
    b_null = torch.randn(b.shape, generator=gen, dtype=torch.float64) * _per_model_std(b, match).cpu()
    a_null = torch.randn(a.shape, generator=gen, dtype=torch.float64) * _per_model_std(a, match).cpu()
    return b_null, a_null


def marchenko_pastur_support(n_samples: int, n_features: int, sigma2: float = 1.0) -> tuple[float, float]:
    """Edges ``sigma2 (1 -+ sqrt(y))^2`` of the continuous part, ``y = n_features / n_samples``."""
    y = n_features / n_samples
    return sigma2 * (1 - np.sqrt(y)) ** 2, sigma2 * (1 + np.sqrt(y)) ** 2


def marchenko_pastur_pdf(x, n_samples: int, n_features: int, sigma2: float = 1.0) -> np.ndarray:
    """Density of the Marchenko-Pastur law for the eigenvalues of ``X^T X / n_samples``.

    ``X`` is (n_samples, n_features) with i.i.d. entries of variance ``sigma2``; ``y = n_features/n_samples``.
    Returns the continuous part ``sqrt((b - x)(x - a)) / (2 pi sigma2 y x)`` on [a, b], 0 elsewhere; when
    y > 1 the law also has an atom of mass ``1 - 1/y`` at 0, which is not included.
    """
    if n_samples <= 0 or n_features <= 0 or sigma2 <= 0:
        raise ValueError("n_samples, n_features and sigma2 must be positive")
    x = np.asarray(x, dtype=np.float64)
    y = n_features / n_samples
    lo, hi = marchenko_pastur_support(n_samples, n_features, sigma2)
    inside = (x > lo) & (x < hi) & (x > 0)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2 * np.pi * sigma2 * y * xi)
    return out


def _mp_quantiles(y: float, probs: np.ndarray, sigma2: float, n_grid: int = 20001) -> np.ndarray:
    """Quantiles of MP(y <= 1, sigma2) by integrating the density on a cosine grid (no endpoint singularity)."""
    lo, hi = sigma2 * (1 - np.sqrt(y)) ** 2, sigma2 * (1 + np.sqrt(y)) ** 2
    theta = np.linspace(0.0, np.pi, n_grid)
    x = lo + (hi - lo) * (1 - np.cos(theta)) / 2  # dx/dtheta = (hi - lo) sin(theta) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * np.pi * sigma2 * y * x)
    integrand = dens * (hi - lo) * np.sin(theta) / 2
    if lo == 0.0:  # y = 1: density ~ x^{-1/2}; the integrand tends to a finite limit at theta = 0
        integrand[0] = integrand[1]
    integrand = np.nan_to_num(integrand)
    cdf = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(theta))])
    cdf /= cdf[-1]  # the continuous part has mass 1 for y <= 1
    return np.interp(probs, cdf, x)


def marchenko_pastur_spectrum(n_samples: int, n_features: int, sigma2: float = 1.0) -> np.ndarray:
    """Expected descending nonzero eigenvalues of the sample covariance ``X^T X / n_samples`` of i.i.d. data.

    ``X`` is (n_samples, n_features) with entries of variance ``sigma2``. Returns ``min(n_samples,
    n_features)`` values: the mid-point quantiles ``(j - 1/2) / m`` of the Marchenko-Pastur law (for
    ``n_features > n_samples`` the nonzero eigenvalues are those of ``X X^T / n_samples``, i.e. MP with
    ratio ``n_samples / n_features`` scaled by ``n_features / n_samples``). Multiply by ``n_samples`` to
    compare with ``Spectrum.variances`` (squared singular values), or compare EVRs directly.
    """
    if n_samples <= 0 or n_features <= 0 or sigma2 <= 0:
        raise ValueError("n_samples, n_features and sigma2 must be positive")
    m, big = min(n_samples, n_features), max(n_samples, n_features)
    probs = (np.arange(m) + 0.5) / m
    q = _mp_quantiles(m / big, probs, sigma2) * (big / n_samples)
    return q[::-1].copy()
