"""LoRA spectra from small (N r) x (N r) Grams: exact when the stacked factors have rank N r < d.

A population of N LoRA adapters of rank r for one module key gives stacks ``B (N, d_out, r)``,
``A (N, r, d_in)`` and updates ``P_i = s_i B_i A_i``. Every unfolding the project reports has rank at most
``N r``, so when ``N r < d`` (d the feature dimension) its nonzero spectrum is that of an ``(N r) x (N r)``
matrix and the ``d x d`` Gram (and its O(d^3) eigensolver) is not needed. Float64 throughout; results are
:class:`uws_core.linalg.spectral.Spectrum` objects with the same number of components as the dense path (zeros
padded beyond the rank) and the exact total variance (a trace), so EVR curves match the ``d x d`` route to
round-off (~1e-10, see tests/test_factored_spectra.py).

* :func:`stacked_rows_spectrum` -- one stack ``X (N, m, d)`` with the "rows" unfolding ``Xcat (N m, d)``,
  centred "none" / "samples" (mean row: the authors' LoRA recipe, toshi2k2/unisub) / "models" (mean matrix
  across models). Centring is applied to Xcat, then the sample Gram ``Xc Xc^T`` (N m x N m) is used when
  ``N m < d``, the feature Gram ``Xc^T Xc`` (d x d) otherwise. The A stack is ``X = A``; the B stack with the
  "cols" unfolding is ``X = B^T (N, r, d_out)``.
* :func:`factored_product_spectrum` -- the stack ``{P_i}`` in the "rows" (or "cols") unfolding with any
  centring. Rows of the centred stack are ``Z = Y Acat`` with ``Y (N d_out, N r)`` built from the ``s_j B_j``
  and the centring, so ``Z^T Z = Acat^T S Acat`` with ``S = Y^T Y`` (N r x N r) and
  ``eig(Z^T Z) \\ {0} = eig(L^T S L)`` for ``Acat Acat^T = L L^T`` (Cholesky; eigh square root when
  singular). ``S`` is ``(J ⊗ 1_rr) ∘ (s s^T ⊗ 1_rr) ∘ (Bcat^T Bcat)`` for "models" (J = I - 11^T/N),
  the block diagonal of ``s_i^2 B_i^T B_i`` for "none", and that minus ``u u^T / (N d_out)`` with
  ``u_i = s_i B_i^T 1`` for "samples". "model" (the replication's recipe, cahlen/universal-subspace-stress-
  test) uses the N x N Gram ``K_ij = s_i s_j <B_i^T B_j, A_i A_j^T>_F`` from the same two factor Grams.
* :func:`product_feature_spectrum` -- for ``N r >= d`` (e.g. N = 500 Mistral LoRAs, N r = 8000 > 4096): the
  d x d Gram of the centred rows / cols unfolding built from the factors, ``W^T W - N Pbar^T Pbar`` with
  ``W_i = s_i R_i A_i`` (``R_i^T R_i = B_i^T B_i``) and the mean ``Pbar`` from one GEMM; no d_out x d_in
  product per adapter (solver "factor_feature_gram" in ``uws spectra``).
* :func:`factored_lora_spectra` -- the three views ``uws spectra`` reports per key (lora_A, lora_B, product),
  or any set of product views (notebook 01), sharing the two factor Grams.

Only full spectra: a partial (top-k) eigensolver was measured against these (``uws_core.linalg.partial_eigen``,
``benchmarks/bench_eigensolvers.py``) and pays only for a few components at d = 4096 on these flat-tailed spectra.

Everything runs under torch on the device of :func:`uws_core.linalg.device.pick_device` (CUDA when present).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from scipy.linalg.blas import dtrmm

from uws_core.linalg.device import ACCUM_DTYPE, pick_device
from uws_core.linalg.eigvals import symmetric_eigvals
from uws_core.linalg.spectral import Spectrum, check_center, check_finite, check_unfolding
from uws_core.linalg.subspace import model_axis_eigen

__all__ = ["stacked_rows_spectrum", "factored_product_spectrum", "factored_lora_spectra", "uses_small_gram",
           "center_rows", "product_feature_spectrum", "product_feature_gram"]


def uses_small_gram(n_samples: int, d_feature: int) -> bool:
    """True when the (n_samples x n_samples) Gram is the smaller side (strictly smaller than d x d)."""
    return n_samples < d_feature


def center_rows(x: torch.Tensor, center: str) -> torch.Tensor:
    """Centre a stack ``(N, m, d)`` for the rows unfolding; returns a new float64 tensor of the same shape.

    "none": as is; "samples": minus the mean row over all N m rows; "models": minus the mean matrix (m, d)."""
    check_center(center)
    if center == "none":
        return x.clone()
    if center == "samples":
        return x - x.mean(dim=(0, 1), keepdim=True)
    return x - x.mean(dim=0, keepdim=True)


# ---------------------------------------------------------------- kernels: LAPACK/BLAS on CPU, torch elsewhere

def _use_lapack(t: torch.Tensor) -> bool:
    """CPU float64 goes through numpy/scipy (OpenBLAS syrk, LAPACK syevd(_2stage), trmm): about 2x torch's CPU path
    for these shapes on the 2-core machine (benchmarks/paper_shapes_results.md); CUDA stays in torch."""
    return t.device.type == "cpu" and USE_LAPACK_ON_CPU


USE_LAPACK_ON_CPU = True  # tests set it False to run the torch (CUDA) code path on CPU


def gram_rows(x: torch.Tensor) -> torch.Tensor:
    """``X X^T`` (n, n) float64 of a row matrix ``X (n, d)``, symmetric (numpy's matmul uses syrk for it)."""
    if _use_lapack(x):
        xn = x.numpy()
        return torch.from_numpy(xn @ xn.T)
    return x @ x.T


def _sym_eigvals(mat: torch.Tensor, n_comp: int) -> np.ndarray:
    """Descending eigenvalues of a symmetric PSD matrix, clipped at 0, padded with zeros to n_comp."""
    if _use_lapack(mat):
        vals = symmetric_eigvals(mat.numpy())[::-1]  # two-stage LAPACK at d >= 1024 (uws_core.linalg.eigvals)
    else:
        vals = torch.linalg.eigvalsh(mat).flip(0).cpu().numpy()
    full = np.zeros(n_comp)
    m = min(n_comp, vals.shape[0])
    full[:m] = np.clip(vals[:m], 0.0, None)
    return full


def _psd_product_eigvals(g_feat: torch.Tensor, s_mat: torch.Tensor, n_comp: int) -> np.ndarray:
    """Eigenvalues of G S (both PSD, N r x N r) as those of U S U^T with G = U^T U (Cholesky).

    When G is singular (e.g. two adapters with the same A) the eigh square root ``W = V sqrt(max(lam, 0))``
    is used instead, ``eig(W^T S W)``."""
    if _use_lapack(g_feat):
        g, s = g_feat.numpy(), np.asfortranarray(s_mat.numpy())
        try:
            u = scipy.linalg.cholesky(g, lower=False, check_finite=False)  # G = U^T U, U upper
            us = dtrmm(1.0, u, s, side=0)  # U S (triangular multiply: half a GEMM's flops)
            return _sym_eigvals(torch.from_numpy(dtrmm(1.0, u, us, side=1, trans_a=1)), n_comp)  # U S U^T
        except np.linalg.LinAlgError:
            pass
    else:
        chol, info = torch.linalg.cholesky_ex(g_feat)  # G = L L^T
        if int(info) == 0:
            return _sym_eigvals(chol.T @ s_mat @ chol, n_comp)
    lam, v = torch.linalg.eigh(g_feat)  # rank-deficient factors: symmetric square root
    w = v * lam.clamp_min(0.0).sqrt()
    return _sym_eigvals(w.T @ s_mat @ w, n_comp)


# -------------------------------------------------------------------------------------------------- spectra

#: centre a Gram in place of the data only when the removed mean carries at most this multiple of the
#: centred variance: the eigenvalue error is then <= ~eps * (1 + ratio) * total, i.e. < 1e-11 of the EVR
GRAM_CENTRING_MAX_RATIO = 1e4


def centered_sample_gram(x: torch.Tensor, center: str, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Gram ``Xc Xc^T`` (N m x N m) of the centred rows unfolding of ``X (N, m, d)``.

    From the uncentred ``gram = Xcat Xcat^T`` when given, by ``C G C`` with ``C = I - 11^T/(N m)``
    ("samples") or ``C = (I - 11^T/N) ⊗ I_m`` ("models") -- exact in exact arithmetic; used only when the
    mean's energy is at most :data:`GRAM_CENTRING_MAX_RATIO` times the centred variance (else, and when no
    ``gram`` is given, the data are centred first and their Gram formed)."""
    n, m, d = x.shape
    if center == "none":
        return gram if gram is not None else gram_rows(x.reshape(n * m, d))
    if gram is not None:
        g4 = gram.reshape(n, m, n, m)
        if center == "samples":
            g4 = gram - gram.mean(dim=0, keepdim=True) - gram.mean(dim=1, keepdim=True) + gram.mean()
        else:
            g4 = (g4 - g4.mean(dim=0, keepdim=True) - g4.mean(dim=2, keepdim=True)
                  + g4.mean(dim=(0, 2), keepdim=True))
        gc = g4.reshape(n * m, n * m)
        total_c, removed = float(torch.trace(gc)), float(torch.trace(gram) - torch.trace(gc))
        if removed <= GRAM_CENTRING_MAX_RATIO * max(total_c, 0.0):
            return gc
    return gram_rows(center_rows(x, center).reshape(n * m, d))


def stacked_rows_spectrum(x, center: str = "samples", device=None, unfolding: str = "rows",
                          matrix_shape=None, gram: torch.Tensor | None = None, check: bool = True) -> Spectrum:
    """Spectrum of the centred rows unfolding of a stack ``X (N, m, d)``, from the smaller of its two Grams.

    Plain truncated SVD of one unfolding (squared singular values only; no basis). ``Xc`` (N m, d) is the
    centred unfolding (:func:`center_rows`); its sample Gram ``Xc Xc^T`` (N m x N m,
    :func:`centered_sample_gram`, reusing an uncentred ``gram`` when given) when ``N m < d``, else the feature
    Gram ``Xc^T Xc`` (d x d). ``unfolding`` / ``matrix_shape`` only label the result (the B stack is passed as
    ``B^T`` with "cols"). Same numbers as ``uws_core.linalg.spectral.stack_spectrum(x, "rows", center)``.
    ``check=False`` skips the finiteness check (for callers that have already made it).
    """
    check_center(center)
    dev = pick_device(device)
    x = torch.as_tensor(x).to(dev, ACCUM_DTYPE)
    if x.ndim != 3:
        raise ValueError(f"a stack must be (N, m, d), got shape {tuple(x.shape)}")
    if check:
        check_finite(x)
    n, m, d = x.shape
    if uses_small_gram(n * m, d):
        g = centered_sample_gram(x, center, gram)  # (N m, N m)
    else:
        g = gram_rows(center_rows(x, center).reshape(n * m, d).T)  # (d, d)
    total = float(torch.trace(g))
    return Spectrum(variances=_sym_eigvals(g, min(n * m, d)), total_variance=total, basis=None, mean=None,
                    unfolding=unfolding, center=center, n_models=n,
                    matrix_shape=tuple(matrix_shape) if matrix_shape is not None else (m, d))


def _weight_gram(g_side: torch.Tensor, side: torch.Tensor, s: torch.Tensor, center: str, d_rows: int):
    """S = Y^T Y (N r x N r) for the row-side factors ``side (N, d_rows, r)`` with Gram ``g_side`` = Scat^T Scat.

    ``g_side`` is the uncentred (N r x N r) Gram of the row-side factors, ``s`` the (N,) scalings."""
    n, _, r = side.shape
    ss = (s[:, None] * s[None, :]).repeat_interleave(r, 0).repeat_interleave(r, 1)  # (N r, N r)
    if center == "models":
        j = torch.eye(n, dtype=ACCUM_DTYPE, device=s.device) - 1.0 / n  # J = I - 11^T/N, idempotent
        return g_side * ss * j.repeat_interleave(r, 0).repeat_interleave(r, 1)
    block = torch.block_diag(*[torch.ones(r, r, dtype=ACCUM_DTYPE, device=s.device)] * n)
    sg = g_side * ss * block  # blockdiag(s_i^2 B_i^T B_i)
    if center == "samples":
        u = (side.sum(dim=1) * s[:, None]).reshape(n * r)  # u_i = s_i B_i^T 1
        sg = sg - torch.outer(u, u) / (n * d_rows)
    return sg


def factored_product_spectrum(B, A, unfolding: str = "rows", center: str = "models", scaling=None, device=None,
                              grams=None, check: bool = True) -> Spectrum:
    """Spectrum of one unfolding of ``{s_i B_i A_i}`` from (N r) x (N r) Grams (no d x d matrix, no B@A).

    Parameters
    ----------
    B : (N, d_out, r), A : (N, r, d_in)
        LoRA factors (any float dtype; float64 inside).
    unfolding : {"rows", "cols", "model"}
    center : {"none", "models", "samples"}
    scaling : float or (N,), optional
        Per-adapter ``alpha / r`` (default 1).
    grams : (G_A, G_B), optional
        Precomputed ``Acat Acat^T`` and ``Bcat^T Bcat`` (N r x N r float64), shared with the factor views.

    Exact for any N r (the spectrum lives in an N r-dim space); the cost is O((N r)^2 d + (N r)^3), so it
    pays when ``N r < d_feature``. Same numbers as ``uws_core.linalg.lora.lora_product_spectrum`` up to round-off.
    """
    b, a, s, dev = _product_inputs(B, A, unfolding, center, scaling, device, check)
    n, d_out, r = b.shape
    d_in = a.shape[2]
    if grams is None:
        grams = _factor_grams(b, a)
    g_a, g_b = grams
    shape = (d_out, d_in)
    if unfolding == "model":
        ss = s[:, None] * s[None, :]
        k = (g_a * g_b).reshape(n, r, n, r).sum(dim=(1, 3)) * ss  # K_ij = s_i s_j <B_i^T B_j, A_i A_j^T>
        vals, _ = model_axis_eigen(k, center, 0, d_out * d_in)
        total = float(torch.trace(k)) - (float(k.sum()) / n if center != "none" else 0.0)
        return Spectrum(variances=vals, total_variance=total, basis=None, mean=None, unfolding="model",
                        center=center, n_models=n, matrix_shape=shape)
    if unfolding == "rows":  # rows of P_i = (s_i B_i) A_i: feature side A, row side B
        g_feat, g_side, side, d_rows, d_feat = g_a, g_b, b, d_out, d_in
    else:  # columns of P_i = rows of P_i^T = (s_i A_i^T) B_i^T: feature side B, row side A^T
        g_feat, g_side, side, d_rows, d_feat = g_b, g_a, a.transpose(1, 2), d_in, d_out
    s_mat = _weight_gram(g_side, side, s, center, d_rows)  # (N r, N r)
    total = float((g_feat * s_mat).sum())  # trace(G S): the exact squared norm of the centred unfolding
    n_comp = min(n * d_rows, d_feat)
    return Spectrum(variances=_psd_product_eigvals(g_feat, s_mat, n_comp), total_variance=total, basis=None,
                    mean=None, unfolding=unfolding, center=center, n_models=n, matrix_shape=shape)


def factored_lora_spectra(B, A, unfolding: str = "rows", center: str = "models", scaling=None,
                          factor_center: str = "samples", device=None, check: bool = True, products=None) -> dict:
    """The three spectra ``uws spectra`` reports for one LoRA module key, from small Grams where they pay.

    * ``lora_A``: A stack (N, r, d_in), "rows" unfolding, centred ``factor_center`` (authors' recipe:
      "samples"), unscaled -- :func:`stacked_rows_spectrum`;
    * ``lora_B``: B stack (N, d_out, r), "cols" unfolding (rows of B_i^T), same centring, unscaled;
    * ``product``: ``s_i B_i A_i`` in ``unfolding`` / ``center`` -- :func:`factored_product_spectrum` when
      its feature dimension exceeds N r (or for the model axis), else :func:`product_feature_spectrum` (the
      d x d Gram from the factors), or ``uws_core.linalg.lora.lora_product_spectrum`` when the mean dominates.
    * ``products``: optional ``{label: (unfolding, center)}``; then one product spectrum per label (instead
      of ``product``), all sharing the two factor Grams (notebook 01's views, ``experiments.views``).

    Returns ``{"lora_A": Spectrum, "lora_B": Spectrum, "product": Spectrum}`` (or the labels of ``products``).
    """
    from uws_core.linalg.lora import lora_product_spectrum

    dev = pick_device(device)
    b = torch.as_tensor(B).to(dev, ACCUM_DTYPE)  # (N, d_out, r)
    a = torch.as_tensor(A).to(dev, ACCUM_DTYPE)  # (N, r, d_in)
    if check:  # once for all views (``check=False``: the caller's loader has checked, e.g. AdapterSet)
        check_finite(b)
        check_finite(a)
    n, d_out, r = b.shape
    d_in = a.shape[2]
    products = {"product": (unfolding, center)} if products is None else dict(products)
    small = {label: u == "model" or uses_small_gram(n * r, d_in if u == "rows" else d_out)
             for label, (u, _) in products.items()}
    g_a, g_b = _factor_grams(b, a, need_a=any(small.values()) or uses_small_gram(n * r, d_in),
                             need_b=any(small.values()) or uses_small_gram(n * r, d_out))
    out = {"lora_A": stacked_rows_spectrum(a, factor_center, dev, "rows", (r, d_in), gram=g_a, check=False),
           "lora_B": stacked_rows_spectrum(b.transpose(1, 2), factor_center, dev, "cols", (d_out, r), gram=g_b,
                                           check=False)}
    for label, (unf, cen) in products.items():
        if small[label]:
            out[label] = factored_product_spectrum(b, a, unf, cen, scaling, dev, grams=(g_a, g_b), check=False)
        else:  # N r >= d: the d x d Gram from the factors; the streaming route when the mean dominates
            out[label] = (product_feature_spectrum(b, a, unf, cen, scaling, dev, check=False)
                          or lora_product_spectrum(b, a, unf, cen, k=0, device=dev, scaling=scaling))
    return out


def product_feature_gram(b: torch.Tensor, a: torch.Tensor, unfolding: str, center: str, s: torch.Tensor):
    """``(Z^T Z, trace)`` for the centred rows (or cols) unfolding ``Z`` of ``{s_i B_i A_i}`` (d_feat x d_feat).

    For N r >= d_feat. ``sum_i P_i^T P_i = W^T W`` with ``W_i = s_i R_i A_i`` (r x d_in) and
    ``B_i^T B_i = R_i^T R_i`` (symmetric square root), one syrk of ``W (N r, d_in)``; centring subtracts
    ``N Pbar^T Pbar`` ("models", ``Pbar = (1/N) sum_i s_i B_i A_i`` formed once, one GEMM) or ``N d_out m m^T``
    ("samples", m the mean row). Returns None when the removed mean carries more than
    :data:`GRAM_CENTRING_MAX_RATIO` times the centred variance (cancellation): the caller then centres first.
    "cols" is "rows" of ``P_i^T = (s_i A_i^T) B_i^T``. b (N, d_out, r), a (N, r, d_in) float64."""
    if unfolding == "cols":
        b, a = a.transpose(1, 2), b.transpose(1, 2)
    n, d_rows, r = b.shape
    lam, v = torch.linalg.eigh(b.transpose(1, 2) @ b)  # (N, r), (N, r, r): B_i^T B_i = V diag(lam) V^T
    root = (v * lam.clamp_min(0.0).sqrt()[:, None, :]).transpose(1, 2)  # R_i = diag(sqrt lam) V^T
    w = (s.view(n, 1, 1) * (root @ a)).reshape(n * r, a.shape[2])  # (N r, d_feat)
    gram = _gram_cols(w)  # (d_feat, d_feat) = W^T W
    if center == "none":
        return gram, float(torch.trace(gram))
    if center == "models":
        bs = (s.view(n, 1, 1) * b).transpose(0, 1).reshape(d_rows, n * r)  # [s_1 B_1 ... s_N B_N] (d_rows, N r)
        mean = _matmul(bs, a.reshape(n * r, a.shape[2])) / n  # Pbar (d_rows, d_feat): one GEMM
        removed = _gram_cols(mean) * n
    else:
        mean = torch.einsum("i,ir,ird->d", s, b.sum(dim=1), a)[None, :] / (n * d_rows)  # mean row (1, d_feat)
        removed = _gram_cols(mean) * (n * d_rows)
    gram = gram - removed
    total, gone = float(torch.trace(gram)), float(torch.trace(removed))
    if gone > GRAM_CENTRING_MAX_RATIO * max(total, 0.0):
        return None
    return gram, total


def _matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``X Y`` (numpy's GEMM on CPU: about 2x torch's single-thread CPU GEMM at these shapes)."""
    if _use_lapack(x):
        return torch.from_numpy(x.numpy() @ y.numpy())
    return x @ y


def _gram_cols(x: torch.Tensor) -> torch.Tensor:
    """``X^T X`` of ``X (n, d)`` (syrk through numpy on CPU)."""
    if _use_lapack(x):
        xn = x.numpy()
        return torch.from_numpy(xn.T @ xn)
    return x.T @ x


def product_feature_spectrum(B, A, unfolding: str = "rows", center: str = "models", scaling=None, device=None,
                             check: bool = True) -> Spectrum | None:
    """Spectrum of the rows / cols unfolding of ``{s_i B_i A_i}`` from its d_feat x d_feat Gram built from the
    factors (:func:`product_feature_gram`; no d_out x d_in product per adapter). For N r >= d_feat, where the
    (N r)^2 route of :func:`factored_product_spectrum` is the larger one. None when the mean dominates (see
    :func:`product_feature_gram`). Same numbers as ``uws_core.linalg.lora.lora_product_spectrum``."""
    if unfolding == "model":
        raise ValueError("product_feature_spectrum is for the rows / cols unfoldings")
    b, a, s, _ = _product_inputs(B, A, unfolding, center, scaling, device, check)
    n, d_out, r = b.shape
    res = product_feature_gram(b, a, unfolding, center, s)
    if res is None:
        return None
    gram, total = res
    d_rows, d_feat = (d_out, a.shape[2]) if unfolding == "rows" else (a.shape[2], d_out)
    return Spectrum(variances=_sym_eigvals(gram, min(n * d_rows, d_feat)), total_variance=total, basis=None,
                    mean=None, unfolding=unfolding, center=center, n_models=n, matrix_shape=(d_out, a.shape[2]))


def _product_inputs(B, A, unfolding, center, scaling, device, check):
    """Checked float64 ``b (N, d_out, r)``, ``a (N, r, d_in)``, scalings ``s (N,)`` and the device."""
    check_unfolding(unfolding)
    check_center(center)
    dev = pick_device(device)
    b = torch.as_tensor(B).to(dev, ACCUM_DTYPE)
    a = torch.as_tensor(A).to(dev, ACCUM_DTYPE)
    if check:
        check_finite(b)
        check_finite(a)
    return b, a, _scalings(scaling, b.shape[0], dev), dev


def _scalings(scaling, n: int, dev) -> torch.Tensor:
    """(N,) float64 per-adapter scalings (default 1)."""
    if scaling is None:
        return torch.ones(n, dtype=ACCUM_DTYPE, device=dev)
    return torch.as_tensor(np.broadcast_to(np.asarray(scaling, dtype=np.float64), (n,)).copy()).to(dev)


def _factor_grams(b: torch.Tensor, a: torch.Tensor, need_a: bool = True, need_b: bool = True):
    """``G_A = Acat Acat^T`` and ``G_B = Bcat^T Bcat`` (N r x N r float64; None when not needed)."""
    n, d_out, r = b.shape
    g_a = gram_rows(a.reshape(n * r, a.shape[2])) if need_a else None  # rows of all A_i
    g_b = gram_rows(b.transpose(1, 2).reshape(n * r, d_out)) if need_b else None  # columns of all B_i
    return g_a, g_b
