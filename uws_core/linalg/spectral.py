"""Spectra of one weight key across N models: unfoldings, centring, in-memory and streaming decompositions.

A weight stack for one key is ``(N, d_out, d_in)``. Every function names its unfolding explicitly:

* ``"rows"``  -- every row of every matrix is a sample: ``(N*d_out, d_in)``; basis in R^{d_in} (row space).
  It is the transpose of tensorly's mode-2 unfolding.
* ``"cols"``  -- every column is a sample: ``(N*d_in, d_out)``; basis in R^{d_out} (column space); the
  transpose of tensorly's mode-1 unfolding.
* ``"model"`` -- every flattened matrix is a sample: ``(N, d_out*d_in)``; basis in R^{d_out*d_in}.

and its centring: ``"none"``; ``"models"`` (subtract the cross-model mean matrix before unfolding, the authors'
recipe for full models); ``"samples"`` (subtract the mean sample of the unfolded matrix, i.e. ordinary PCA of
the unfolding, the authors' recipe for LoRA factors). For ``"model"`` the two coincide.

The decomposition is always a plain truncated SVD of one (centred) unfolding -- not HOSVD over several modes
and not HOOI. :func:`stack_spectrum` computes it by a dense float64 SVD; :class:`StreamingSpectrum` by a
float64 Gram matrix accumulated one model at a time (feature-space ``d x d`` Gram for rows/cols, ``N x N``
Gram for the model axis), so both give the same numbers up to round-off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from uws_core.linalg.conventions import CENTERS, UNFOLDINGS  # noqa: F401 (re-exported)
from uws_core.linalg.device import ACCUM_DTYPE, as_tensor, pick_device
from uws_core.linalg.scatter import RowScatter
from uws_core.linalg.subspace import (ChunkedGram, eigh_descending, explained_variance_ratio, fix_signs,
                               k_for_threshold, model_axis_eigen, project, reconstruct, resolve_k)

__all__ = ["Spectrum", "unfold", "center_stack", "stack_spectrum", "StreamingSpectrum", "UNFOLDINGS", "CENTERS",
           "NonFiniteWeightError", "ShapeMismatchError"]

log = logging.getLogger(__name__)


class NonFiniteWeightError(ValueError):
    """A model's weight (or LoRA factor) holds NaN or Inf."""


class ShapeMismatchError(ValueError):
    """A model's weight does not have the shape of the others for this key."""


def check_unfolding(unfolding: str) -> str:
    if unfolding not in UNFOLDINGS:
        raise ValueError(f"unfolding must be one of {UNFOLDINGS}, got {unfolding!r}")
    return unfolding


def check_center(center: str) -> str:
    if center not in CENTERS:
        raise ValueError(f"center must be one of {CENTERS}, got {center!r}")
    return center


def _where(name, index, key) -> str:
    who = f"model {name!r}" if name is not None else f"model #{index}"
    return who + (f", key {key!r}" if key is not None else "")


def check_finite(x: torch.Tensor, name=None, index=None, key=None) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteWeightError(f"non-finite values in {_where(name, index, key)}")


@dataclass
class Spectrum:
    """Spectrum of one centred unfolding of one weight key across ``n_models`` models.

    Attributes
    ----------
    variances : np.ndarray, float64 (n_comp,)
        Squared singular values of the centred unfolding, descending (not divided by the sample count).
    total_variance : float
        Squared Frobenius norm of the centred unfolding (= ``variances.sum()`` up to round-off).
    basis : torch.Tensor float64 (d_feature, k) or None
        Leading right singular vectors of the unfolding (orthonormal columns); ``d_feature`` is d_in for
        "rows", d_out for "cols", d_out*d_in for "model". None when not requested, or when the model-axis
        basis is kept in factored form (see ``factored``).
    mean : torch.Tensor float64 or None
        The subtracted mean in the matrix frame, broadcastable to (d_out, d_in): (d_out, d_in) for "models"
        and the model axis, (1, d_in) for rows/"samples", (d_out, 1) for cols/"samples"; None for "none".
    factored : object or None
        :class:`uws_core.linalg.lora_model_basis.FactoredModelBasis` for the LoRA model axis (basis as loadings over
        models).
    """

    variances: np.ndarray
    total_variance: float
    basis: torch.Tensor | None
    mean: torch.Tensor | None
    unfolding: str
    center: str
    n_models: int
    matrix_shape: tuple[int, int]
    factored: Any = field(default=None, repr=False)

    @property
    def n_components(self) -> int:
        return int(self.variances.shape[0])

    def evr(self) -> np.ndarray:
        """Explained-variance ratio per component, ``variances / total_variance``."""
        return explained_variance_ratio(self.variances, self.total_variance)

    def cumulative_evr(self) -> np.ndarray:
        return np.cumsum(self.evr())

    def k_at(self, threshold: float) -> int:
        """Smallest k whose cumulative EVR reaches ``threshold``."""
        return k_for_threshold(self.evr(), threshold)

    def top_evr(self, k: int) -> float:
        """Cumulative EVR of the first ``k`` components."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return float(self.evr()[:k].sum())

    def project(self, weights, k: int | None = None) -> torch.Tensor:
        """Coefficients of ``weights`` ((d_out, d_in) or (M, d_out, d_in)) on the first k basis vectors,
        after subtracting ``mean`` (see :func:`uws_core.linalg.subspace.project`)."""
        if self.basis is None:
            raise ValueError("this Spectrum holds no dense basis (computed with k=0, or factored model axis)")
        basis = self.basis if k is None else self.basis[:, :k]
        return project(weights, basis, mean=self.mean, unfolding=self.unfolding)

    def reconstruct(self, coefficients: torch.Tensor, add_mean: bool = True) -> torch.Tensor:
        """Weights from coefficients; the mean is added back only when ``add_mean``."""
        if self.basis is None:
            raise ValueError("this Spectrum holds no dense basis (computed with k=0, or factored model axis)")
        k = coefficients.shape[-1] if self.unfolding != "cols" else coefficients.shape[-2]
        return reconstruct(coefficients, self.basis[:, :k], mean=self.mean if add_mean else None,
                           unfolding=self.unfolding, shape=self.matrix_shape)

    def to_dict(self, ks=(1, 4, 16, 32, 64), thresholds=(0.5, 0.8, 0.9, 0.95, 0.99)) -> dict:
        """JSON-able summary (no basis, no mean)."""
        evr = self.evr()
        return {
            "unfolding": self.unfolding, "center": self.center, "n_models": int(self.n_models),
            "matrix_shape": [int(s) for s in self.matrix_shape], "n_components": self.n_components,
            "total_variance": float(self.total_variance),
            "evr_head": [float(v) for v in evr[:64]],
            "top_evr": {str(k): self.top_evr(k) for k in ks},
            "k_at": {str(t): self.k_at(t) for t in thresholds},
            "basis_k": None if self.basis is None else int(self.basis.shape[1]),
        }


def _check_stack(stack) -> torch.Tensor:
    x = as_tensor(stack, dtype=None)
    if x.ndim != 3:
        raise ShapeMismatchError(f"a weight stack must be (N, d_out, d_in), got shape {tuple(x.shape)}")
    return x


def unfold(stack, unfolding: str) -> torch.Tensor:
    """Unfold a stack ``(N, d_out, d_in)`` into a 2-D sample x feature matrix.

    ``"rows"`` -> (N*d_out, d_in); ``"cols"`` -> (N*d_in, d_out); ``"model"`` -> (N, d_out*d_in).
    """
    x = _check_stack(stack)
    n, d_out, d_in = x.shape
    check_unfolding(unfolding)
    if unfolding == "rows":
        return x.reshape(n * d_out, d_in)
    if unfolding == "cols":
        return x.transpose(1, 2).reshape(n * d_in, d_out)
    return x.reshape(n, d_out * d_in)


def center_stack(stack: torch.Tensor, unfolding: str, center: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Subtract the mean named by ``center``; return ``(centred stack, mean in the matrix frame or None)``."""
    check_unfolding(unfolding)
    check_center(center)
    if center == "none":
        return stack, None
    if center == "models" or unfolding == "model":
        mean = stack.mean(dim=0)  # (d_out, d_in)
    elif unfolding == "rows":
        mean = stack.mean(dim=(0, 1)).unsqueeze(0)  # (1, d_in): mean row
    else:
        mean = stack.mean(dim=(0, 2)).unsqueeze(1)  # (d_out, 1): mean column
    return stack - mean, mean


def stack_spectrum(stack, unfolding: str = "rows", center: str = "models", k: int | None = None,
                   device=None) -> Spectrum:
    """Spectrum of one centred unfolding of an in-memory stack, by a dense float64 SVD.

    Parameters
    ----------
    stack : array or tensor (N, d_out, d_in)
        One weight key across N models (any float dtype; upcast to float64).
    unfolding : {"rows", "cols", "model"}
    center : {"none", "models", "samples"}
    k : int, optional
        Number of basis vectors to keep: None keeps all ``n_comp = min(n_samples, d_feature)``, 0 none.
    device : optional
        Where to compute (default :func:`uws_core.linalg.device.pick_device`); results come back on CPU.

    Returns
    -------
    Spectrum
        Squared singular values of the centred unfolding and its top-k right singular vectors.
    """
    x = _check_stack(stack)
    n, d_out, d_in = x.shape
    for i in range(n):
        check_finite(x[i], index=i)
    dev = pick_device(device)
    x = x.to(device=dev, dtype=ACCUM_DTYPE)
    xc, mean = center_stack(x, unfolding, center)
    mat = unfold(xc, unfolding)  # (n_samples, d_feature)
    n_comp = min(mat.shape)
    kk = resolve_k(k, n_comp)
    total = float((mat * mat).sum())
    if kk == 0:
        sv = torch.linalg.svdvals(mat)
        basis = None
    else:
        _, sv, vh = torch.linalg.svd(mat, full_matrices=False)
        basis = fix_signs(vh[:kk].T.contiguous()).cpu()  # (d_feature, k)
    return Spectrum(variances=(sv * sv).cpu().numpy(), total_variance=total, basis=basis,
                    mean=None if mean is None else mean.cpu(), unfolding=unfolding, center=center,
                    n_models=n, matrix_shape=(d_out, d_in))


class StreamingSpectrum:
    """Spectrum of one unfolding accumulated one model at a time (float64 Gram).

    Parameters
    ----------
    unfolding : {"rows", "cols", "model"}
    center : {"none", "models", "samples"}
    shape : (d_out, d_in)
        The matrix shape every model must have.
    device : optional
        Accumulation device (default :func:`uws_core.linalg.device.pick_device`).
    key : str, optional
        The weight key, named in validation errors.

    Notes
    -----
    Memory does not grow with N for rows/cols: a d x d Gram (d = d_in for rows, d_out for cols) plus the
    running mean matrix for "models". The model axis keeps an N x N Gram and the inputs in their own dtype
    (needed to form the basis); ``finalize`` returns the same numbers as :func:`stack_spectrum`.
    """

    def __init__(self, unfolding: str = "rows", center: str = "models", shape=None, device=None, key=None,
                 chunk: int = 64):
        self.unfolding, self.center = check_unfolding(unfolding), check_center(center)
        if shape is None or len(shape) != 2:
            raise ValueError(f"shape must be (d_out, d_in), got {shape!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.device, self.key, self.n = pick_device(device), key, 0
        d_out, d_in = self.shape
        if unfolding == "rows":
            self._scatter = RowScatter(d_out, d_in, center, self.device)
        elif unfolding == "cols":
            self._scatter = RowScatter(d_in, d_out, center, self.device)
        else:
            self._gram = ChunkedGram(_dense_prepare, _dense_inner, chunk=chunk, device=self.device)
            self._sum = torch.zeros(d_out * d_in, dtype=ACCUM_DTYPE, device=self.device)

    def add(self, weight, name=None) -> None:
        """Add one model's matrix ``(d_out, d_in)`` (any float dtype)."""
        w = as_tensor(weight, dtype=None)
        if tuple(w.shape) != self.shape:
            raise ShapeMismatchError(f"{_where(name, self.n, self.key)} has shape {tuple(w.shape)}, "
                                     f"expected {self.shape}")
        check_finite(w, name, self.n, self.key)
        if self.unfolding == "model":
            flat = w.reshape(1, -1)  # stored in its own dtype
            self._gram.add(flat)
            self._sum.add_(flat[0].to(self.device, ACCUM_DTYPE))
        else:
            w64 = w.to(self.device, ACCUM_DTYPE)
            self._scatter.add(w64 if self.unfolding == "rows" else w64.T)
        self.n += 1

    def finalize(self, k: int | None = None) -> Spectrum:
        """Eigen-decompose the accumulated Gram; ``k`` as in :func:`stack_spectrum`."""
        if self.n == 0:
            raise ValueError(f"no models were added (key {self.key!r})")
        d_out, d_in = self.shape
        if self.unfolding == "model":
            gram, chunks = self._gram.finalize()
            mean = (self._sum / self.n).reshape(d_out, d_in).cpu() if self.center != "none" else None
            vals, coef = model_axis_eigen(gram, self.center, k, d_out * d_in)
            basis = None
            if coef is not None:
                basis = torch.zeros(d_out * d_in, coef.shape[1], dtype=ACCUM_DTYPE, device=self.device)
                i0 = 0
                for ch in chunks:  # basis_j = sum_i coef_ij x_i, one stored chunk at a time
                    c = ch.to(self.device, ACCUM_DTYPE)
                    basis.addmm_(c.T, coef[i0:i0 + c.shape[0]].to(self.device))
                    i0 += c.shape[0]
                basis = fix_signs(basis).cpu()
            total = float(torch.trace(gram)) - (float(gram.sum()) / self.n if self.center != "none" else 0.0)
            return Spectrum(variances=vals, total_variance=total, basis=basis, mean=mean,
                            unfolding="model", center=self.center, n_models=self.n, matrix_shape=self.shape)
        sc = self._scatter
        d_rows, d_feat = (d_out, d_in) if self.unfolding == "rows" else (d_in, d_out)
        n_comp = min(self.n * d_rows, d_feat)
        gram = sc.full_gram()  # (d_feat, d_feat)
        total = float(torch.trace(gram))
        vals, vecs = eigh_descending(gram, resolve_k(k, n_comp))
        mean = None
        if self.center == "models":
            mean = sc.mean if self.unfolding == "rows" else sc.mean.T
        elif self.center == "samples":
            mean = sc.mean.unsqueeze(0) if self.unfolding == "rows" else sc.mean.unsqueeze(1)
        return Spectrum(variances=vals[:n_comp], total_variance=total,
                        basis=None if vecs is None else vecs.cpu(), mean=None if mean is None else mean.cpu(),
                        unfolding=self.unfolding, center=self.center, n_models=self.n, matrix_shape=self.shape)




def _dense_prepare(chunk: torch.Tensor, device, slot=None) -> torch.Tensor:
    return chunk.to(device, ACCUM_DTYPE)  # (n_chunk, D) float64


def _dense_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gram block between two chunks of flattened models, (n_a, D) x (n_b, D) -> (n_a, n_b)."""
    return a @ b.T
