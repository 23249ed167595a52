"""Spectra of LoRA populations whose ranks differ per adapter (kohya / SDXL LoRAs), accumulated one adapter at a time.

* :class:`StackedRowSpectrum`: the rows of all A_i (or columns of all B_i) stacked, ``(sum_i r_i, d)``, centred by
  the mean row: the authors' factor recipe with blocks of any height (float64 Gram, Chan's pairwise update).
* :class:`FactoredProductGram`: the model axis of the scaled products ``P_i = s_i B_i A_i``, centred by the mean
  product, from the factors alone (``<P_i, P_j>_F = s_i s_j tr((B_i^T B_j)(A_j A_i^T))``), never forming P_i.

Used by :mod:`uws_core.weights.kohya`; equal ranks go through :mod:`uws_core.linalg.lora` instead.
"""

from __future__ import annotations

import torch

from uws_core.linalg.device import ACCUM_DTYPE, pick_device
from uws_core.linalg.scatter import RowScatter
from uws_core.linalg.spectral import Spectrum
from uws_core.linalg.subspace import eigh_descending, model_axis_eigen, resolve_k

__all__ = ["StackedRowSpectrum", "FactoredProductGram"]


class StackedRowSpectrum:
    """Spectrum of row blocks of varying height stacked, ``(sum_i m_i, d)``, centred by the mean row.

    The accumulation is :class:`uws_core.linalg.scatter.RowScatter` ("samples": float64 Gram (d, d) of the centred
    stack and the running mean row, Chan et al.'s pairwise update per block of any height). Memory: ``8 d^2`` plus ``16 d^2``
    of eigensolver workspace in :meth:`finalize`. The result equals a dense SVD of the centred stack.
    """

    def __init__(self, d: int, device=None, key=None, matrix_side: str = "rows"):
        self.device, self.key, self.side = pick_device(device), key, matrix_side
        self.scatter = RowScatter(None, d, "samples", self.device)   # blocks of any height

    def add(self, x: torch.Tensor) -> None:
        """Add one block of rows ``(m, d)``."""
        self.scatter.add(x.to(self.device, ACCUM_DTYPE))

    def finalize(self, k: int | None = 0) -> Spectrum:
        """Squared singular values of the centred stack (and its top-k right singular vectors)."""
        sc = self.scatter
        if sc.n == 0:
            raise ValueError(f"no adapters were added (key {self.key!r})")
        gram = sc.full_gram()  # (d, d)
        d = gram.shape[0]
        n_comp = min(sc.n_rows, d)
        vals, vecs = eigh_descending(gram, resolve_k(k, n_comp))
        rows = self.side == "rows"  # A: rows in R^{d_in}; B: columns in R^{d_out}
        return Spectrum(variances=vals[:n_comp], total_variance=float(torch.trace(gram)),
                        basis=None if vecs is None else vecs.cpu(),
                        mean=(sc.mean.unsqueeze(0) if rows else sc.mean.unsqueeze(1)).cpu(),
                        unfolding="rows" if rows else "cols", center="samples", n_models=sc.n,
                        matrix_shape=(sc.n_rows, d) if rows else (d, sc.n_rows))


class FactoredProductGram:
    """Model-axis spectrum of ``P_i = s_i B_i A_i`` (flattened, centred by the mean P) from the factors alone.

    ``<P_i, P_j>_F = s_i s_j trace((B_i^T B_j)(A_j A_i^T))``: adding adapter i costs one ``(R, r_i)`` product on
    each side against the factors held so far (R = sum of their ranks), whose elementwise product is summed
    per adapter. Memory: the held factors ``8 R (d_out + d_in)`` (exact when ``capacity`` = R is given, else the
    capacity doubles and a copy is made while growing), ``16 R r_i`` workspace
    and the Gram ``8 N^2``; no ``d_out x d_in`` matrix is formed, and no common rank is needed.
    """

    def __init__(self, shape, device=None, key=None, capacity: int = 0):
        self.shape, self.device, self.key = (int(shape[0]), int(shape[1])), pick_device(device), key
        self._b = torch.zeros(self.shape[0], 0, dtype=ACCUM_DTYPE, device=self.device)  # (d_out, cap): s_j B_j
        self._a = torch.zeros(0, self.shape[1], dtype=ACCUM_DTYPE, device=self.device)  # (cap, d_in): A_j
        self._owner = torch.zeros(0, dtype=torch.long, device=self.device)  # adapter of each held rank-1 term
        self._rows: list[torch.Tensor] = []  # row i of the Gram: <P_i, P_j> for j <= i
        self.n_terms = 0
        self._grow(capacity, exact=True)  # the sum of the ranks when known: no regrowth copies

    def _grow(self, need: int, exact: bool = False) -> None:
        cap = self._a.shape[0]
        if need <= cap:
            return
        new = need if exact else max(need, 2 * cap, 64)
        b = torch.zeros(self.shape[0], new, dtype=ACCUM_DTYPE, device=self.device)
        a = torch.zeros(new, self.shape[1], dtype=ACCUM_DTYPE, device=self.device)
        owner = torch.zeros(new, dtype=torch.long, device=self.device)
        b[:, :cap], a[:cap], owner[:cap] = self._b, self._a, self._owner
        self._b, self._a, self._owner = b, a, owner

    def add(self, b: torch.Tensor, a: torch.Tensor, scale: float = 1.0) -> None:
        """Add one adapter's B (d_out, r) and A (r, d_in); the product is ``scale * B @ A``."""
        b = b.to(self.device, ACCUM_DTYPE) * scale
        a = a.to(self.device, ACCUM_DTYPE)
        i, r, n0 = len(self._rows), a.shape[0], self.n_terms
        self._grow(n0 + r)
        self._b[:, n0:n0 + r], self._a[n0:n0 + r], self._owner[n0:n0 + r] = b, a, i
        self.n_terms = n0 + r
        bb = self._b[:, :n0 + r].T @ b  # (R, r): B_j^T B_i, rank terms of all adapters so far against i's
        aa = self._a[:n0 + r] @ a.T  # (R, r): A_j A_i^T
        # <P_i, P_j> = sum_{p in j, q in i} (B_j^T B_i)_pq (A_j A_i^T)_pq (both symmetric in the pair)
        row = torch.zeros(i + 1, dtype=ACCUM_DTYPE, device=self.device)
        row.index_add_(0, self._owner[:n0 + r], (bb * aa).sum(dim=1))
        self._rows.append(row)

    def finalize(self) -> Spectrum:
        n = len(self._rows)
        if n == 0:
            raise ValueError(f"no adapters were added (key {self.key!r})")
        gram = torch.zeros(n, n, dtype=ACCUM_DTYPE, device=self.device)
        for i, row in enumerate(self._rows):
            gram[i, :i + 1] = row
            gram[:i + 1, i] = row
        vals, _ = model_axis_eigen(gram, "models", 0, self.shape[0] * self.shape[1])
        total = float(torch.trace(gram)) - float(gram.sum()) / n  # trace(H K H)
        return Spectrum(variances=vals, total_variance=total, basis=None, mean=None, unfolding="model",
                        center="models", n_models=n, matrix_shape=self.shape)
