"""Subspaces: explained variance, projection / reconstruction, principal angles, random bases, and the
eigen-solvers that turn Gram matrices into orthonormal bases (shared by :mod:`uws_core.linalg.spectral` and
:mod:`uws_core.linalg.lora`).

Bases are torch float64 ``(d, k)`` with orthonormal columns. Projections name the unfolding the basis belongs
to: a "rows" basis lives in R^{d_in} and acts on every row of a weight ``(d_out, d_in)``; a "cols" basis lives
in R^{d_out} and acts on every column; a "model" basis lives in R^{d_out*d_in} and acts on the flattened
matrix.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import torch

from uws_core.linalg.device import ACCUM_DTYPE, as_tensor, pick_device
from uws_core.linalg.eigvals import TWO_STAGE_MIN_N, symmetric_eigvals

__all__ = ["explained_variance_ratio", "k_for_threshold", "project", "reconstruct", "principal_angles",
           "random_orthonormal_basis", "orthonormalize", "eigh_descending", "model_axis_eigen", "ChunkedGram", "gram_top_evr"]

log = logging.getLogger(__name__)


def explained_variance_ratio(variances, total_variance: float | None = None) -> np.ndarray:
    """``variances / total_variance`` as float64 (total defaults to ``variances.sum()``)."""
    v = np.asarray(variances, dtype=np.float64)
    total = float(v.sum()) if total_variance is None else float(total_variance)
    if total <= 0:
        return np.zeros_like(v)
    return v / total


def k_for_threshold(evr, threshold: float) -> int:
    """Smallest k such that the cumulative explained-variance ratio ``evr[:k].sum() >= threshold``.

    ``evr`` is a descending EVR vector (e.g. ``Spectrum.evr()``). Returns ``len(evr)`` when the threshold
    is never reached (round-off can leave the total a hair below 1).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    cum = np.cumsum(np.asarray(evr, dtype=np.float64))
    if threshold == 0.0:
        return 0
    hit = np.nonzero(cum >= threshold * (1 - 1e-12))[0]
    return int(hit[0]) + 1 if hit.size else int(cum.size)


def _check_unfolding(unfolding: str) -> None:
    if unfolding not in ("rows", "cols", "model"):
        raise ValueError(f"unfolding must be 'rows', 'cols' or 'model', got {unfolding!r}")


def project(weights, basis: torch.Tensor, mean=None, unfolding: str = "rows") -> torch.Tensor:
    """Coefficients of weights on an orthonormal basis, after subtracting ``mean`` (if given).

    Parameters
    ----------
    weights : (d_out, d_in) or (M, d_out, d_in)
    basis : (d, k) float64, orthonormal columns; d = d_in ("rows"), d_out ("cols"), d_out*d_in ("model")
    mean : broadcastable to (d_out, d_in), optional (``Spectrum.mean``)
    unfolding : {"rows", "cols", "model"}

    Returns
    -------
    torch.Tensor float64: "rows" (..., d_out, k) = (W - mean) U; "cols" (..., k, d_in) = U^T (W - mean);
    "model" (..., k) = vec(W - mean) U.
    """
    _check_unfolding(unfolding)
    u = as_tensor(basis)
    w = as_tensor(weights, device=u.device)
    if mean is not None:
        w = w - as_tensor(mean, device=u.device)
    if unfolding == "rows":
        return w @ u
    if unfolding == "cols":
        return u.T @ w
    return w.reshape(*w.shape[:-2], -1) @ u


def reconstruct(coefficients, basis: torch.Tensor, mean=None, unfolding: str = "rows",
                shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of :func:`project`: weights from coefficients, adding ``mean`` back only when it is given.

    "rows": C U^T; "cols": U C; "model": (C U^T) reshaped to ``shape`` = (d_out, d_in) (required).
    The authors' LoRA reconstruction ``A_hat = (U U^T A^T)^T`` is ``reconstruct(project(A, U), U)``
    (rows unfolding, no mean).
    """
    _check_unfolding(unfolding)
    u = as_tensor(basis)
    c = as_tensor(coefficients, device=u.device)
    if unfolding == "rows":
        w = c @ u.T
    elif unfolding == "cols":
        w = u @ c
    else:
        if shape is None:
            raise ValueError("reconstruct(..., unfolding='model') needs shape=(d_out, d_in)")
        w = (c @ u.T).reshape(*c.shape[:-1], *shape)
    if mean is not None:
        w = w + as_tensor(mean, device=u.device)
    return w


def orthonormalize(basis) -> torch.Tensor:
    """Orthonormal basis (float64) of the column span of ``basis`` (reduced QR)."""
    q, _ = torch.linalg.qr(as_tensor(basis))
    return q


def principal_angles(u, v, orthonormal: bool = False) -> np.ndarray:
    """Principal angles (radians, ascending) between span(u) and span(v), u: (d, k1), v: (d, k2).

    Cosines come from the singular values of ``U^T V`` and sines from those of ``V - U (U^T V)`` (for the
    smaller subspace); angles below pi/4 use the sine (accurate to ~1e-15 rad for nearly equal subspaces,
    where arccos of a cosine near 1 loses half the digits), larger ones the cosine (Knyazev & Argentati,
    SIAM J. Sci. Comput. 23 (2002)). ``min(k1, k2)`` angles are returned.
    """
    a, b = as_tensor(u), as_tensor(v)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"principal_angles needs (d, k1) and (d, k2), got {tuple(a.shape)} and {tuple(b.shape)}")
    b = b.to(a.device)
    if not orthonormal:
        a, b = orthonormalize(a), orthonormalize(b)
    if a.shape[1] < b.shape[1]:
        a, b = b, a  # a spans the larger subspace; angles are measured for b
    if b.shape[1] == 0:
        return np.zeros(0)
    m = a.T @ b  # (k1, k2)
    cos = torch.linalg.svdvals(m).clamp(max=1.0).flip(0)  # ascending cosines -> descending angles
    sin = torch.linalg.svdvals(b - a @ m).clamp(max=1.0).flip(0)  # ascending sines -> ascending angles
    ang_cos = torch.arccos(cos).flip(0).cpu().numpy()  # ascending angles
    ang_sin = torch.arcsin(sin).cpu().numpy()
    return np.where(ang_sin < np.pi / 4, ang_sin, ang_cos)


def random_orthonormal_basis(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """Haar-random orthonormal basis ``(d, k)`` float64 (QR of a seeded Gaussian, signs fixed by diag(R))."""
    if not 0 <= k <= d:
        raise ValueError(f"need 0 <= k <= d, got d={d}, k={k}")
    gen = torch.Generator().manual_seed(int(seed))
    g = torch.randn(d, k, generator=gen, dtype=ACCUM_DTYPE)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(k, dtype=ACCUM_DTYPE))


# ---------------------------------------------------------------- bases from Gram matrices (internal API)

def resolve_k(k: int | None, n_comp: int) -> int:
    """None -> all ``n_comp`` components, 0 -> no basis, otherwise ``min(k, n_comp)``."""
    if k is None:
        return n_comp
    if k < 0:
        raise ValueError(f"k must be None or >= 0, got {k}")
    return min(int(k), n_comp)


def fix_signs(basis: torch.Tensor) -> torch.Tensor:
    """Deterministic signs: the largest-magnitude entry of each column is positive."""
    if basis.numel() == 0:
        return basis
    idx = basis.abs().argmax(dim=0)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1], device=basis.device)])
    signs[signs == 0] = 1
    return basis * signs


def _top_eigvecs_by_iteration(gram: torch.Tensor, vals: np.ndarray, k: int, tol: float = 1e-12,
                              max_iter: int = 40) -> torch.Tensor | None:
    """Top-k eigenvectors of a symmetric PSD matrix by block subspace iteration with Rayleigh-Ritz.

    Block size 2k + 8 (the error of vector j shrinks like (lambda_{2k+9} / lambda_j)^iter). Accepted only
    when every Ritz value matches the known eigenvalue ``vals[j]`` and every residual
    ``||G u - theta u||`` is below ``tol * lambda_1``; otherwise None (the caller falls back to LAPACK).
    """
    n = gram.shape[0]
    p = min(n, 2 * k + 8)
    gen = torch.Generator(device=gram.device).manual_seed(0)
    q = torch.linalg.qr(torch.randn(n, p, generator=gen, dtype=gram.dtype, device=gram.device))[0]
    scale = max(float(vals[0]), np.finfo(np.float64).tiny)
    target = torch.as_tensor(vals[:k].copy(), dtype=gram.dtype, device=gram.device)
    for _ in range(max_iter):
        z = gram @ q  # (n, p), one GEMM per iteration
        theta, v = torch.linalg.eigh(q.T @ z)  # Rayleigh-Ritz on span(q), ascending
        theta, v = theta.flip(0)[:k], v.flip(1)[:, :k]
        u = q @ v
        resid = torch.linalg.vector_norm(z @ v - u * theta, dim=0)
        if float(resid.max()) <= tol * scale and float((theta - target).abs().max()) <= 1e3 * tol * scale:
            return u
        q = torch.linalg.qr(z)[0]
    return None


def _eigvals_descending(gram: torch.Tensor) -> np.ndarray:
    """All eigenvalues of a symmetric matrix, descending: two-stage LAPACK on CPU float64 from d = TWO_STAGE_MIN_N
    (:mod:`uws_core.linalg.eigvals`), else ``torch.linalg.eigvalsh``. At d = 4096 on the 2-core machine: 4.17 s
    against torch's (MKL, unpinned) 4.15 s at one thread, 2.67 s against 3.01 s at two
    (benchmarks/eigensolvers_results_*.md); under the laptop pin MKL's
    ran 2.8x slower (docs/paper_scale.md, section 2b)."""
    if gram.device.type == "cpu" and gram.dtype == torch.float64 and gram.shape[0] >= TWO_STAGE_MIN_N:
        return symmetric_eigvals(gram.numpy())[::-1].copy()
    return torch.linalg.eigvalsh(gram).flip(0).cpu().numpy()


def eigh_descending(gram: torch.Tensor, k: int, overwrite: bool = False) -> tuple[np.ndarray, torch.Tensor | None]:
    """All eigenvalues (descending, clipped at 0) and the top-``k`` eigenvectors of a symmetric PSD matrix.

    On CPU with k small against d the values come from ``eigvalsh``, and the vectors from block subspace
    iteration (a few GEMMs when the top k are separated from the rest), falling back to LAPACK ``syevr``
    restricted to the top k (in place in ``gram`` when ``overwrite``, which then destroys it). This costs
    about a third of a full ``eigh`` at d = 4096 and needs one d x d copy at most. Otherwise a full ``eigh``.
    """
    n = gram.shape[0]
    if k == 0:
        return np.clip(_eigvals_descending(gram), 0.0, None), None
    if gram.device.type == "cpu" and n > 512 and k <= n // 8:
        vals = _eigvals_descending(gram)
        vecs = _top_eigvecs_by_iteration(gram, vals, k)
        if vecs is None:
            log.info("subspace iteration did not converge for k=%d of d=%d; using LAPACK syevr", k, n)
            # the transpose of a C-ordered symmetric matrix is the same matrix in Fortran order: no copy
            arr = gram.numpy().T if (overwrite and gram.is_contiguous()) else gram.numpy()
            _, vecs = scipy.linalg.eigh(arr, lower=True, subset_by_index=[n - k, n - 1], driver="evr",
                                        overwrite_a=overwrite, check_finite=False)
            vecs = torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1]))
    else:
        vals_t, vecs_t = torch.linalg.eigh(gram)
        vals = vals_t.flip(0).cpu().numpy()
        vecs = vecs_t.flip(1)[:, :k]
    return np.clip(vals, 0.0, None), fix_signs(vecs)


def model_axis_eigen(gram: torch.Tensor, center: str, k: int | None, d_feature: int):
    """Eigen-decomposition of the model-axis Gram ``K_ij = <W_i, W_j>_F`` (N x N, float64).

    Centring ("models"/"samples") uses ``H K H`` with ``H = I - 11^T/N``. Returns the descending variances
    (``min(N, d_feature)`` of them) and loadings ``coef`` (N, k) such that ``basis_j = sum_i coef_ij W_i``
    is orthonormal in R^{d_out*d_in} (coef columns sum to zero when centred, so the mean drops out).
    Components with (numerically) zero variance get no basis vector.
    """
    n = gram.shape[0]
    g = gram.to(ACCUM_DTYPE)
    if center != "none":
        h = torch.eye(n, dtype=g.dtype, device=g.device) - 1.0 / n
        g = h @ g @ h
    vals_t, vecs_t = torch.linalg.eigh(0.5 * (g + g.T))
    vals_t, vecs_t = vals_t.flip(0), vecs_t.flip(1)
    n_comp = min(n, d_feature)
    vals = np.clip(vals_t.cpu().numpy(), 0.0, None)[:n_comp]
    kk = resolve_k(k, n_comp)
    if kk == 0:
        return vals, None
    tol = max(float(vals[0]), 1e-300) * n * np.finfo(np.float64).eps * 10
    rank = int((vals > tol).sum())
    if kk > rank:
        log.warning("model axis: asked for %d basis vectors but the Gram has numerical rank %d", kk, rank)
        kk = rank
    coef = vecs_t[:, :kk] / torch.sqrt(vals_t[:kk])
    if center != "none":
        coef = coef - coef.mean(dim=0, keepdim=True)
    return vals, coef


class ChunkedGram:
    """Model-axis Gram ``K_ij = <X_i, X_j>`` of items stored in chunks in their own dtype, float64 blocks.

    ``prepare(chunk, device, slot)`` upcasts one stored chunk for computing (e.g. to float64 on the device;
    ``slot`` 0 / 1 lets it reuse a buffer for the new / the stored chunk of a block) and
    ``inner(a, b)`` returns the (n_a, n_b) block of inner products between two prepared chunks; only blocks
    with q <= p are computed. Peak extra memory: two prepared chunks plus the N x N Gram.
    """

    def __init__(self, prepare, inner, chunk: int = 32, device=None, cat=None):
        self.prepare, self.inner, self.chunk = prepare, inner, max(1, int(chunk))
        self.device = pick_device(device)
        self.cat = cat if cat is not None else (lambda items: torch.cat(items, dim=0))
        self.chunks: list = []
        self.sizes: list[int] = []
        self._pending: list = []
        self._blocks: dict = {}

    @property
    def n(self) -> int:
        return sum(self.sizes) + len(self._pending)

    def add(self, item) -> None:
        """Add one item (with a leading axis of length 1); it is stored when a chunk is full."""
        self._pending.append(item)
        if len(self._pending) >= self.chunk:
            self._flush()

    def add_chunk(self, chunk, size: int) -> None:
        """Store an already-batched chunk of ``size`` items (e.g. a view of an in-memory stack)."""
        self._flush()
        self._store(chunk, size)

    def _flush(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            self._store(self.cat(items), len(items))

    def _store(self, chunk, size: int) -> None:
        p = len(self.chunks)
        self.chunks.append(chunk)
        self.sizes.append(size)
        pa = self.prepare(chunk, self.device, 0)
        for q in range(p):
            self._blocks[(p, q)] = self.inner(pa, self.prepare(self.chunks[q], self.device, 1))
        self._blocks[(p, p)] = self.inner(pa, pa)

    def finalize(self) -> tuple[torch.Tensor, list]:
        """Return the Gram (N, N) float64 and the list of stored chunks."""
        self._flush()
        offs = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        gram = torch.zeros(int(offs[-1]), int(offs[-1]), dtype=ACCUM_DTYPE, device=self.device)
        for (p, q), blk in self._blocks.items():
            gram[offs[p]:offs[p + 1], offs[q]:offs[q + 1]] = blk
            gram[offs[q]:offs[q + 1], offs[p]:offs[p + 1]] = blk.T
        return gram, self.chunks


def gram_top_evr(S: torch.Tensor, view: str, k: int, center: str = "models") -> float:
    """Top-k EVR of a stack ``S: (N, d_out, d_in)`` from the eigenvalues of its smaller Gram matrix.

    ``view`` "rows": rows of all models stacked, Gram ``(d_in, d_in)``; "model": flattened models, Gram
    ``(N, N)``. ``center`` "models" subtracts the mean model first, anything else uses the raw stack. The fast
    path of notebook 07's bootstrap loops, equal to ``stack_spectrum(S, view, center).top_evr(k)`` (checked there).
    """
    X = S - S.mean(0) if center == "models" else S
    X = X.reshape(-1, X.shape[2]) if view == "rows" else X.reshape(len(X), -1)
    ev = torch.linalg.eigvalsh(X.T @ X if view == "rows" else X @ X.T).flip(0).clamp_min(0)
    return float(ev[:k].sum() / ev.sum())
