"""Spectra of a stack of LoRA updates ``P_i = s_i * B_i @ A_i`` computed in factored form.

Factors follow PEFT: ``B: (N, d_out, r)``, ``A: (N, r, d_in)``, scaling ``s_i = alpha/r`` (1 by default). No
``d_out x d_in`` matrix is formed per adapter; only sums of products (the cross-model mean) may be.

* Model axis ("model", the replication's recipe: B@A flattened, centred PCA): the Gram
  ``K_ij = <P_i, P_j>_F = s_i s_j * sum over the r x r block of (Bcat^T Bcat) * (Acat Acat^T)``, centred as
  ``H K H``; the basis lives in R^{d_out*d_in} and is kept as loadings over models
  (:class:`uws_core.linalg.lora_model_basis.FactoredModelBasis`: ``basis_j = sum_i coef_ij P_i``), with
  projection / reconstruction of new adapters by inner products only.
* Rows ("rows", basis in R^{d_in}): ``sum_i A_i^T (B_i^T B_i) A_i = F^T F`` with ``F_i = R_i A_i`` (``R_i`` from
  the QR of ``B_i``), minus ``N M^T M`` for "models" centring (``M = Bcat Acat / N``, the running sum); when
  ``N*r < d_in`` the same is done in the (N r)-dim span of ``Acat^T`` (QR) and mapped back.
* Cols ("cols", basis in R^{d_out}): the rows computation on the transposed pairs ``(A_i^T, B_i^T)``.
* The authors' recipe analyses A and B separately (:func:`lora_factor_spectra`).
"""

from __future__ import annotations

import numpy as np
import torch

from uws_core.linalg.device import ACCUM_DTYPE, pick_device
from uws_core.linalg.spectral import (ShapeMismatchError, Spectrum, check_center, check_finite, check_unfolding,
                               stack_spectrum)
from uws_core.linalg.subspace import ChunkedGram, eigh_descending, model_axis_eigen, resolve_k
from uws_core.linalg.lora_model_basis import (FactoredModelBasis, LoraChunkLayout, check_lora_pairs, concat_chunks,
                                              lora_gram_block, lora_scaling_vector)

__all__ = ["lora_product_spectrum", "lora_factor_spectra", "lora_products", "StreamingLoraSpectrum"]


def _default_chunk(rank: int) -> int:
    return max(1, 1024 // max(rank, 1))  # about 1024 stacked factor rows per Gram block: efficient GEMMs


class _LoraRowScatter:
    """Centred scatter of the rows unfolding of ``{B_i A_i}`` in R^{d_feat} (d x d Gram, float64)."""

    def __init__(self, d_rows: int, d_feat: int, center: str, device):
        self.center, self.n, self.d_rows, self.device = center, 0, d_rows, device
        self.gram = torch.zeros(d_feat, d_feat, dtype=ACCUM_DTYPE, device=device)
        self.sum = None
        if center == "models":
            self.sum = torch.zeros(d_rows, d_feat, dtype=ACCUM_DTYPE, device=device)  # sum_i B_i A_i
        elif center == "samples":
            self.sum = torch.zeros(d_feat, dtype=ACCUM_DTYPE, device=device)  # sum of all rows

    def add_chunk(self, b: torch.Tensor, a: torch.Tensor) -> None:  # b (c, d_rows, r), a (c, r, d_feat) f64
        c, _, r = b.shape
        rb = torch.linalg.qr(b, mode="r").R  # (c, r, r): B_i^T B_i = R_i^T R_i
        f = (rb @ a).reshape(c * r, -1)  # (c r, d_feat)
        self.gram.addmm_(f.T, f)
        if self.center == "models":
            self.sum.addmm_(b.permute(1, 0, 2).reshape(self.d_rows, c * r), a.reshape(c * r, -1))
        elif self.center == "samples":
            self.sum.add_(b.sum(dim=1).reshape(c * r) @ a.reshape(c * r, -1))
        self.n += c

    def finish(self):
        """Centred Gram and mean, both made in place (the accumulator is spent): ``(gram, mean or None)``.

        "models": gram - N M^T M and mean M (d_rows, d_feat); "samples": gram - n m m^T and the mean row."""
        if self.center == "models":
            self.gram.addmm_(self.sum.T, self.sum, alpha=-1.0 / self.n)  # - N M^T M with M = sum / N
            return self.gram, self.sum.div_(self.n)
        if self.center == "samples":
            n_rows = self.n * self.d_rows
            self.gram.sub_(torch.outer(self.sum, self.sum) / n_rows)
            return self.gram, self.sum.div_(n_rows).unsqueeze(0)  # (1, d_feat)
        return self.gram, None


class StreamingLoraSpectrum:
    """Spectrum of the stack ``{s_i B_i A_i}`` accumulated one adapter (or chunk) at a time, factored.

    ``unfolding`` ("model", "rows" or "cols"), ``center``, ``shape`` (d_out, d_in), ``device`` and ``key`` are
    those of :class:`uws_core.linalg.spectral.StreamingSpectrum`; ``chunk`` is the number of adapters per
    model-axis Gram block (default 1024 // r).

    Memory: rows/cols keep a float64 d x d Gram (d = d_in / d_out) plus the running sum matrix for
    "models" centring; the model axis keeps the N x N Gram plus the factors in their own dtype.
    """

    def __init__(self, unfolding: str = "model", center: str = "models", shape=None, device=None, key=None,
                 chunk: int | None = None):
        self.unfolding, self.center = check_unfolding(unfolding), check_center(center)
        if shape is None or len(shape) != 2:
            raise ValueError(f"shape must be (d_out, d_in), got {shape!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.device, self.key, self.chunk = pick_device(device), key, chunk
        self.n, self.rank = 0, None
        self._pending: list = []
        self._gram = None
        self._scatter = None

    def _setup(self, r: int) -> None:
        self.rank = r
        self.chunk = self.chunk or _default_chunk(r)
        d_out, d_in = self.shape
        if self.unfolding == "model":
            self._gram = ChunkedGram(LoraChunkLayout(), lora_gram_block, chunk=self.chunk, device=self.device, cat=concat_chunks)
        elif self.unfolding == "rows":
            self._scatter = _LoraRowScatter(d_out, d_in, self.center, self.device)
        else:
            self._scatter = _LoraRowScatter(d_in, d_out, self.center, self.device)

    def _validate(self, b, a, name, first_index):
        b, a = check_lora_pairs(b, a)
        d_out, d_in = self.shape
        if b.shape[1] != d_out or a.shape[2] != d_in:
            raise ShapeMismatchError(f"adapter {name if name is not None else '#' + str(first_index)}"
                                     f"{'' if self.key is None else ', key ' + repr(self.key)}: B {tuple(b.shape[1:])}"
                                     f" and A {tuple(a.shape[1:])} do not give shape {self.shape}")
        if self.rank is None:
            self._setup(b.shape[2])
        elif b.shape[2] != self.rank:
            raise ShapeMismatchError(f"adapter {name if name is not None else '#' + str(first_index)} has rank "
                                     f"{b.shape[2]}, expected {self.rank} (key {self.key!r})")
        check_finite(b, name, first_index, self.key)
        check_finite(a, name, first_index, self.key)
        return b, a

    def add(self, b, a, name=None, scaling: float = 1.0) -> None:
        """Add one adapter: ``B (d_out, r)``, ``A (r, d_in)`` (any float dtype), update ``scaling * B @ A``."""
        b, a = self._validate(b, a, name, self.n)
        self._pending.append((b, a, torch.full((1,), float(scaling), dtype=ACCUM_DTYPE)))
        self.n += 1
        if len(self._pending) >= self.chunk:
            self._flush()

    def add_chunk(self, b, a, scaling=None) -> None:
        """Add several adapters at once, ``B (c, d_out, r)``, ``A (c, r, d_in)``; stored as given (views)."""
        b, a = self._validate(b, a, None, self.n)
        self._flush()
        s = lora_scaling_vector(scaling, b.shape[0])
        for i0 in range(0, b.shape[0], self.chunk):  # Gram blocks of ``chunk`` adapters whatever the input
            self._consume((b[i0:i0 + self.chunk], a[i0:i0 + self.chunk], s[i0:i0 + self.chunk]))
        self.n += b.shape[0]

    def _flush(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            self._consume(concat_chunks(items))

    def _consume(self, chunk) -> None:
        if self.unfolding == "model":
            self._gram.add_chunk(chunk, chunk[0].shape[0])
            return
        b, a, s = chunk
        sub = max(1, 256 // b.shape[2])  # float64 copies of ~256 factor rows at a time keep the peak low
        for i0 in range(0, b.shape[0], sub):
            b64 = b[i0:i0 + sub].to(self.device, ACCUM_DTYPE) * s[i0:i0 + sub].to(self.device).view(-1, 1, 1)
            a64 = a[i0:i0 + sub].to(self.device, ACCUM_DTYPE)
            if self.unfolding == "rows":
                self._scatter.add_chunk(b64, a64)
            else:  # cols of P_i are rows of P_i^T = A_i^T B_i^T
                self._scatter.add_chunk(a64.transpose(1, 2), b64.transpose(1, 2))

    def finalize(self, k: int | None = None) -> Spectrum:
        """Spectrum of the centred unfolding; ``k`` as in :func:`uws_core.linalg.spectral.stack_spectrum`.

        For the model axis ``basis`` is None and ``factored`` holds a :class:`FactoredModelBasis`."""
        if self.n == 0:
            raise ValueError(f"no adapters were added (key {self.key!r})")
        if self.unfolding != "model" and self._scatter is None:
            raise RuntimeError("finalize() was already called; the rows/cols accumulator is spent")
        self._flush()
        d_out, d_in = self.shape
        if self.unfolding == "model":
            gram, chunks = self._gram.finalize()
            vals, coef = model_axis_eigen(gram, self.center, k, d_out * d_in)
            fb = None if coef is None else FactoredModelBasis(chunks, gram, coef, self.center, self.shape,
                                                              self.device)
            total = float(torch.trace(gram)) - (float(gram.sum()) / self.n if self.center != "none" else 0.0)
            return Spectrum(variances=vals, total_variance=total, basis=None, mean=None,
                            unfolding="model", center=self.center, n_models=self.n, matrix_shape=self.shape,
                            factored=fb)
        d_rows, d_feat = (d_out, d_in) if self.unfolding == "rows" else (d_in, d_out)
        n_comp = min(self.n * d_rows, d_feat)
        gram, mean = self._scatter.finish()
        self._scatter = None  # spent: finalize() works once
        total = float(torch.trace(gram))
        vals, vecs = eigh_descending(gram, resolve_k(k, n_comp), overwrite=True)
        return _row_spectrum(vals, vecs, mean, total, self, n_comp)


def _row_spectrum(vals, vecs, mean, total, acc, n_comp, q=None) -> Spectrum:
    """Assemble a rows/cols Spectrum; ``q`` (d_feat, m) maps reduced coordinates back (QR route)."""
    if q is not None:
        vecs = None if vecs is None else q @ vecs
        mean = None if mean is None else mean @ q.T
    if mean is not None and acc.unfolding == "cols":
        mean = mean.T  # matrix frame (d_out, d_in) or (d_out, 1)
    full = np.zeros(n_comp)
    full[:min(n_comp, vals.shape[0])] = vals[:n_comp]
    return Spectrum(variances=full, total_variance=total, basis=None if vecs is None else vecs.cpu(),
                    mean=None if mean is None else mean.cpu(), unfolding=acc.unfolding, center=acc.center,
                    n_models=acc.n, matrix_shape=acc.shape)


def lora_product_spectrum(B, A, unfolding: str = "model", center: str = "models", k: int | None = None,
                          device=None, scaling=None, key=None) -> Spectrum:
    """Spectrum of one unfolding of the stack ``P_i = s_i B_i @ A_i``, in factored form.

    Parameters
    ----------
    B : (N, d_out, r), A : (N, r, d_in)
        PEFT LoRA factors for one weight key (any float dtype; computed in float64).
    unfolding : {"model", "rows", "cols"}
        "model" = the replication's recipe (B@A flattened, one sample per adapter).
    center : {"none", "models", "samples"}
    k : int, optional
        Basis size (None: all components, 0: none).
    scaling : float or (N,), optional
        Per-adapter ``alpha / r`` applied to the product (default 1).

    Returns
    -------
    Spectrum
        Same numbers as ``stack_spectrum(lora_products(B, A), unfolding, center)`` up to round-off; for the
        model axis the basis is in ``Spectrum.factored``.
    """
    b, a = check_lora_pairs(B, A)
    n, d_out, r = b.shape
    d_in = a.shape[2]
    check_unfolding(unfolding)
    check_center(center)
    acc = StreamingLoraSpectrum(unfolding, center, shape=(d_out, d_in), device=device, key=key)
    s = lora_scaling_vector(scaling, n)
    d_feat = d_in if unfolding == "rows" else d_out
    if unfolding == "model" or n * r >= d_feat:
        acc.add_chunk(b, a, s)  # stored as views, in blocks of 1024 // r adapters
        return acc.finalize(k)
    # Few adapters: work in the (N r)-dim span of the stacked feature-side factors (QR), then map back.
    dev = acc.device
    b64 = b.to(dev, ACCUM_DTYPE) * s.to(dev).view(n, 1, 1)
    a64 = a.to(dev, ACCUM_DTYPE)
    check_finite(b64, key=key)
    check_finite(a64, key=key)
    rows_side, feat_side = (b64, a64) if unfolding == "rows" else (a64.transpose(1, 2), b64.transpose(1, 2))
    q, rr = torch.linalg.qr(feat_side.reshape(n * r, d_feat).T)  # (d_feat, N r), (N r, N r)
    small = rr.T.reshape(n, r, n * r)  # feature-side factors in Q coordinates, (N, r, N r)
    scatter = _LoraRowScatter(rows_side.shape[1], n * r, center, dev)
    scatter.add_chunk(rows_side, small)
    acc.n = n
    d_rows = rows_side.shape[1]
    gram, mean = scatter.finish()
    total = float(torch.trace(gram))
    vals, vecs = eigh_descending(gram, resolve_k(k, min(n * d_rows, d_feat, n * r)), overwrite=True)
    return _row_spectrum(vals, vecs, mean, total, acc, min(n * d_rows, d_feat), q=q)


def lora_factor_spectra(B, A, center: str = "samples", k: int | None = None, device=None):
    """The authors' LoRA recipe: A and B analysed separately, never the product.

    A stack (N, r, d_in) with the "rows" unfolding -> basis in R^{d_in} (the d_in x (N r) concatenation of
    A_i^T); B stack (N, d_out, r) with the "cols" unfolding -> basis in R^{d_out}; both centred as ``center``
    ("samples" = the authors' mean-column subtraction). Plain truncated SVD of each unfolding.

    Returns
    -------
    (Spectrum of A, Spectrum of B)
    """
    b, a = check_lora_pairs(B, A)
    return (stack_spectrum(a, "rows", center, k=k, device=device),
            stack_spectrum(b, "cols", center, k=k, device=device))


def lora_products(B, A, scaling=None) -> torch.Tensor:
    """Dense ``s_i B_i @ A_i`` stack (N, d_out, d_in) float64 -- a reference for small sizes only."""
    b, a = check_lora_pairs(B, A)
    s = lora_scaling_vector(scaling, b.shape[0])
    return (b.to(ACCUM_DTYPE) @ a.to(ACCUM_DTYPE)) * s.view(-1, 1, 1)
