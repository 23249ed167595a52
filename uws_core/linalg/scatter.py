"""Row scatter accumulators: the float64 Gram ``X^T X`` of a stream of row blocks, centred on the fly.

Used by :class:`uws_core.linalg.spectral.StreamingSpectrum` (rows / cols unfoldings of N checkpoints) and
:class:`uws_core.linalg.varying_rank.StackedRowSpectrum` (kohya LoRAs of varying rank). The centring follows
Chan, Golub & LeVeque's pairwise update of a running mean and scatter, so no ``sum X^T X - N M^T M`` cancellation.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg.blas import dsyrk

from uws_core.linalg.device import ACCUM_DTYPE

__all__ = ["RowScatter", "use_syrk", "syrk_lower_update", "symmetrize_from_lower_", "USE_SYRK_ON_CPU"]


class RowScatter:
    """Centred row scatter ``X^T X`` of a stream of row blocks (d_rows, d_feat), float64 (``n`` blocks, ``n_rows`` rows).

    "models" keeps a running mean matrix (d_rows, d_feat), "samples" a running mean row; both are updated
    with Chan et al.'s pairwise formula, which avoids the cancellation of ``sum X^T X - N M^T M``.

    Kernel: on CPU outside the laptop populations' numerical pin (paper scale, the ``uws`` command) each update
    is one BLAS ``dsyrk`` into the lower triangle of the Gram, in place (OpenBLAS through SciPy: half the flops
    of torch's ``addmm``; 100.8 against 46.5 GFLOP/s GEMM-equivalent at one thread for X (1024, 3584),
    benchmarks/streaming_results.md); under the pin
    (:func:`uws_core.linalg.numerics.is_pinned`: laptop notebooks) and on CUDA, torch's ``addmm_``, whose bits
    the pin keeps equal across CPUs. Read the Gram with :meth:`full_gram` (it fills the upper triangle once).
    """

    def __init__(self, d_rows: int | None, d_feat: int, center: str, device):
        # d_rows: rows per block; only "models" needs it fixed (its mean is a matrix); "samples" and "none"
        # take blocks of any height (kohya LoRAs: one block of r_i rows per adapter, r_i varying)
        self.center, self.n, self.n_rows, self.d_rows = center, 0, 0, d_rows
        self.gram = torch.zeros(d_feat, d_feat, dtype=ACCUM_DTYPE, device=device)
        self.syrk = use_syrk(self.gram)
        self._lower_only = False  # True while only the lower triangle of ``gram`` is up to date
        self.mean = None
        if center == "models":
            self.mean = torch.zeros(d_rows, d_feat, dtype=ACCUM_DTYPE, device=device)
        elif center == "samples":
            self.mean = torch.zeros(d_feat, dtype=ACCUM_DTYPE, device=device)

    def _update(self, x: torch.Tensor, alpha: float = 1.0) -> None:
        """``gram += alpha x^T x`` for x (m, d_feat) float64."""
        if self.syrk:
            syrk_lower_update(self.gram, x, alpha)
            self._lower_only = True
        else:
            self.gram.addmm_(x.T, x, alpha=alpha)

    def add(self, x: torch.Tensor) -> None:  # x: (d_rows, d_feat) float64
        if self.center == "none":
            self._update(x)
        elif self.center == "models":
            delta = x - self.mean  # deviation from the running mean matrix
            self._update(delta, self.n / (self.n + 1))
            self.mean.add_(delta, alpha=1.0 / (self.n + 1))
        else:
            n_a, n_b = self.n_rows, x.shape[0]
            mb = x.mean(dim=0)
            xb = x - mb
            delta = mb - self.mean
            self._update(xb)
            self.gram.add_(torch.outer(delta, delta), alpha=n_a * n_b / (n_a + n_b))
            self.mean.add_(delta, alpha=n_b / (n_a + n_b))
        self.n += 1
        self.n_rows += x.shape[0]

    def full_gram(self) -> torch.Tensor:
        """The symmetric Gram (d_feat, d_feat); after syrk updates its upper triangle is filled from the lower,
        in place (:func:`symmetrize_from_lower_`: no d x d temporary, so the key's memory bound holds)."""
        if self._lower_only:
            symmetrize_from_lower_(self.gram)
            self._lower_only = False
        return self.gram


def symmetrize_from_lower_(g: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Copy the strict lower triangle of a square ``g`` (d, d) onto its upper triangle, in place, ``block`` rows at
    a time (temporaries of at most ``block x block``; a ``tril + tril.T`` would hold three d x d copies: 4.9 GB
    at d = 14336). Returns ``g``."""
    d = g.shape[0]
    for i0 in range(0, d, block):
        i1 = min(i0 + block, d)
        g[i0:i1, i1:] = g[i1:, i0:i1].T  # right of the diagonal block, from below it (disjoint regions)
        diag = g[i0:i1, i0:i1]
        diag.copy_(torch.tril(diag) + torch.tril(diag, -1).T)
    return g


def use_syrk(gram: torch.Tensor) -> bool:
    """Whether Gram updates of ``gram`` go through SciPy's ``dsyrk`` (CPU float64, outside the numerical pin)."""
    from uws_core.linalg.numerics import is_pinned

    return USE_SYRK_ON_CPU and gram.device.type == "cpu" and gram.dtype == torch.float64 and not is_pinned()


USE_SYRK_ON_CPU = True  # tests switch it to compare the two kernels


def syrk_lower_update(gram: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> None:
    """In place ``tril(gram) += alpha tril(x^T x)`` by BLAS ``dsyrk`` (gram (d, d) C-contiguous float64 CPU,
    x (m, d)). The C-ordered gram is passed as its Fortran-ordered transpose and x^T as a Fortran view of x,
    so neither is copied; only the lower triangle of ``gram`` (upper of the Fortran view) is written."""
    xn = np.ascontiguousarray(x.numpy())
    gt = gram.numpy().T  # Fortran-contiguous view of the same memory
    out = dsyrk(alpha, xn.T, beta=1.0, c=gt, trans=0, lower=0, overwrite_c=1)
    if not np.shares_memory(out, gt):  # f2py made a copy: write it back (never expected for these layouts)
        gt[...] = out
