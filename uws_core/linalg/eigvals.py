"""Eigenvalues (no vectors) of a dense symmetric float64 matrix on CPU by LAPACK's two-stage tridiagonal reduction.

Every full spectrum of the project ends in the eigenvalues of a symmetric Gram, and at paper shapes
(d = 4096: the A stack, the B stack of q_proj and the product rows of 500 Mistral LoRAs) the one-stage
reduction of ``dsyevd`` / ``dsyev`` (half of its flops in the memory-bound ``dsymv``) is most of the cost.
LAPACK 3.7 added ``dsyevd_2stage`` (Haidar, Ltaief & Dongarra 2011; Haidar et al. 2013: dense -> band by
BLAS-3, then band -> tridiagonal by bulge chasing), available for ``JOBZ = 'N'`` only, which is what a
spectrum needs. It is in the reference LAPACK that SciPy's wheels bundle (scipy-openblas), exported as
``scipy_LAPACKE_dsyevd_2stage`` (or ``LAPACKE_dsyevd_2stage`` in a system OpenBLAS), but SciPy's Python
wrappers do not expose it, so it is called through ``ctypes`` (LAPACKE, column-major, lower triangle). The
timings against ``scipy.linalg.eigh(..., driver="evd")`` and torch's ``eigvalsh`` at the real shapes, and the
EVR error of float32, are in benchmarks/eigensolvers_results_1thread.md and _2threads.md
(``benchmarks/bench_eigensolvers.py``); the eigenvalues agree with the one-stage driver to round-off
(tests/linalg/test_eigvals.py).

When the library or the symbol is not there (another BLAS, a SciPy built against Accelerate or MKL), or for
``n < TWO_STAGE_MIN_N`` (where the band stage does not pay and the laptop notebooks keep their bits), the
values come from ``scipy.linalg.eigh(eigvals_only=True, driver="evd")``. ``UWS_EIGVALS=evd`` forces that
path (for comparisons). Only the CPU path lives here; on CUDA the callers use ``torch.linalg.eigvalsh``.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np
import scipy
import scipy.linalg

__all__ = ["symmetric_eigvals", "two_stage_eigvals", "two_stage_available", "TWO_STAGE_MIN_N", "EIGVALS_ENV"]

#: smallest order at which the two-stage reduction is used (below it the one-stage driver is as fast)
TWO_STAGE_MIN_N = 1024
#: environment variable: ``evd`` forces scipy's one-stage driver
EIGVALS_ENV = "UWS_EIGVALS"
#: the largest order given to the two-stage routine (32-bit LAPACKE integers; above it the one-stage driver)
_MAX_N = 16384
_LAPACK_COL_MAJOR = 102
#: the LAPACKE symbol of each precision (``d``: float64; ``s``: float32, for the benchmark's error check only)
_SYMBOLS = {"d": ("scipy_LAPACKE_dsyevd_2stage", "LAPACKE_dsyevd_2stage"),
            "s": ("scipy_LAPACKE_ssyevd_2stage", "LAPACKE_ssyevd_2stage")}


@functools.lru_cache(maxsize=2)
def _two_stage_routine(prec: str = "d"):
    """The ``LAPACKE_{d,s}syevd_2stage`` function of the OpenBLAS bundled with SciPy (32-bit ints), or None."""
    libdir = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "libscipy_openblas*.so*"))):
        if "openblas64" in os.path.basename(path):  # 64-bit-integer builds need other argument types
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SYMBOLS[prec]:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_int, ctypes.c_void_p]
                return fn
    return None


def two_stage_available() -> bool:
    """True when the two-stage LAPACK routine was found (and is not switched off by ``UWS_EIGVALS=evd``)."""
    return os.environ.get(EIGVALS_ENV, "").strip().lower() != "evd" and _two_stage_routine() is not None


def symmetric_eigvals(mat: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """All eigenvalues of a symmetric float64 matrix ``mat`` (n, n), ascending (LAPACK's order).

    Only the lower triangle is read (of the column-major view; a C-ordered symmetric matrix is its own
    transpose, so no copy is made for the layout). ``overwrite=True`` lets the routine destroy ``mat``
    (contiguous float64 only); otherwise it works on a copy. Two-stage LAPACK for ``n >= TWO_STAGE_MIN_N``
    when available, else ``scipy.linalg.eigh(eigvals_only=True, driver="evd")``. Raises
    ``numpy.linalg.LinAlgError`` when LAPACK reports that it did not converge.
    """
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"symmetric_eigvals needs a square matrix, got shape {mat.shape}")
    n = mat.shape[0]
    fn = _two_stage_routine() if TWO_STAGE_MIN_N <= n <= _MAX_N and two_stage_available() else None
    if fn is None:
        return scipy.linalg.eigh(mat, eigvals_only=True, driver="evd", overwrite_a=overwrite, check_finite=False)
    return two_stage_eigvals(mat, overwrite, fn)


def two_stage_eigvals(mat: np.ndarray, overwrite: bool = False, fn=None, dtype=np.float64) -> np.ndarray:
    """All eigenvalues of a symmetric ``mat`` by LAPACK's two-stage reduction whatever its order (``dtype``
    float64, or float32 for ``ssyevd_2stage``: the benchmark's check of what single precision would cost).
    Raises RuntimeError when the routine is not available, ``numpy.linalg.LinAlgError`` when it fails."""
    prec = "s" if np.dtype(dtype) == np.float32 else "d"
    fn = fn or _two_stage_routine(prec)
    if fn is None:
        raise RuntimeError(f"LAPACK {prec}syevd_2stage was not found in SciPy's bundled OpenBLAS")
    n = mat.shape[0]
    contiguous = mat.dtype == dtype and (mat.flags.c_contiguous or mat.flags.f_contiguous)
    a = mat if (overwrite and contiguous) else np.array(mat, dtype=dtype, order="C", copy=True)
    w = np.empty(n, dtype=dtype)
    info = fn(_LAPACK_COL_MAJOR, b"N", b"L", n, a.ctypes.data, n, w.ctypes.data)
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK {prec}syevd_2stage failed with info={info} (order {n})")
    return w
