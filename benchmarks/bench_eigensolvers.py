"""Benchmark: which eigensolver for the LoRA spectra at the real Mistral-7B shapes (issue 15, item "compute only
the components the analysis reports").

For the Gram of the centred A stack of N planted Mistral-7B-shaped adapters (``bench_paper_shapes.planted_factors``,
k_proj: A (N, 16, 4096)) at N = 100 (Gram (N r)^2 = 1600^2) and N = 500 (N r = 8000 >= d: Gram 4096^2), and of
the B stack of k_proj at N = 500 (Gram 1024^2), times in one process (the caller sets the threads):

* ``gram_f64`` / ``gram_f32``: the Gram by numpy (syrk), float64 and float32 (the float32 one's eigenvalues
  are then taken in float64 and compared: "EVR moved by");
* ``eigh_full``: ``scipy.linalg.eigh(eigvals_only=True, driver="evd")`` -- the one-stage LAPACK driver, what uws
  used before and still uses below d = 1024 (the reference of every difference below);
* ``two_stage``: LAPACK ``dsyevd_2stage`` (``uws_core.linalg.eigvals``) -- what uws uses from d = 1024; and in
  float32 (``ssyevd_2stage`` of the float32 Gram): the EVR error single precision would cost;
* ``torch_eigvalsh``: ``torch.linalg.eigvalsh`` (MKL; unpinned when run as below);
* ``eigh_subset_top64``: ``driver="evr", subset_by_index`` (LAPACK's partial solver; tridiagonalisation is the
  same, so no saving is expected for eigenvalues only);
* ``subspace_top16`` / ``subspace_top64``: :func:`uws_core.linalg.partial_eigen.top_eigvalsh` on the dense Gram
  (tol 1e-8 of the trace).

Each partial result is compared with the full float64 eigenvalues: the largest EVR difference over the
components it returns and the difference of the top-k cumulative EVR (the issue's bar is 1e-6 at k = 16).
Run ``python -m benchmarks.bench_eigensolvers --out FILE.json`` (about a minute on one core; it writes FILE.md too,
with the machine, threads and load). Run standalone it releases the laptop populations' numerical pin first, as
paper scale and the ``uws`` command run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from uws_core.linalg.numerics import is_pinned, release_pin

release_pin()  # before torch loads: paper-scale rates, as the `uws` command runs (no-op once torch is imported)

import numpy as np  # noqa: E402 (after release_pin)
import scipy.linalg
import torch

from benchmarks.bench_paper_shapes import SHAPES, planted_factors
from uws_core.linalg.eigvals import two_stage_eigvals
from uws_core.linalg.partial_eigen import top_eigvalsh

CASES = (("A stack, N = 100 (sample Gram, N r = 1600)", 100, "a", "sample"),
         ("A stack, N = 500 (feature Gram, d = 4096)", 500, "a", "feature"),
         ("B stack of k_proj, N = 500 (feature Gram, d = 1024)", 500, "b", "feature"))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _case(n: int, side: str, gram_side: str) -> dict:
    b, a = planted_factors(n, *SHAPES["k_proj"])
    x = (a.reshape(-1, a.shape[2]) if side == "a" else b.transpose(0, 2, 1).reshape(-1, b.shape[1])).astype(np.float64)
    x -= x.mean(axis=0)  # the authors' centring (mean row)
    del a, b
    x32 = x.astype(np.float32)
    if gram_side == "sample":
        t64, g = _timed(lambda: x @ x.T)
        t32, g32 = _timed(lambda: x32 @ x32.T)
    else:
        t64, g = _timed(lambda: x.T @ x)
        t32, g32 = _timed(lambda: x32.T @ x32)
    total = float(np.einsum("ij,ij->", x, x))  # exact trace: the EVR denominator
    t_full, ref = _timed(lambda: scipy.linalg.eigh(g, eigvals_only=True, driver="evd", check_finite=False)[::-1])
    ev32 = scipy.linalg.eigh(g32.astype(np.float64), eigvals_only=True, driver="evd", check_finite=False)[::-1]
    dim = g.shape[0]
    out = {"n": n, "gram_dim": dim, "gram_f64_s": t64, "gram_f32_s": t32, "eigh_full_s": t_full,
           "f32_gram_evr_max_diff": float(np.abs(ev32 - ref).max() / total),
           "f32_gram_top16_diff": float(abs(ev32[:16].sum() - ref[:16].sum()) / total)}
    t2, ev2 = _timed(lambda: two_stage_eigvals(g)[::-1])
    ev2_32 = two_stage_eigvals(g32.astype(np.float32), dtype=np.float32)[::-1].astype(np.float64)
    t_torch, _ = _timed(lambda: torch.linalg.eigvalsh(torch.from_numpy(g)))
    out["two_stage"] = {"s": t2, "evr_max_diff": float(np.abs(ev2 - ref).max() / total),
                        "f32_evr_max_diff": float(np.abs(ev2_32 - ref).max() / total),
                        "f32_evr_curve_max_diff": float(np.abs(np.cumsum(ev2_32) - np.cumsum(ref)).max() / total)}
    out["torch_eigvalsh_s"] = t_torch
    t_sub, sub = _timed(lambda: scipy.linalg.eigh(g, eigvals_only=True, driver="evr", subset_by_index=[dim - 64, dim - 1],
                                                  check_finite=False)[::-1])
    out["eigh_subset_top64"] = {"s": t_sub, "evr_max_diff": float(np.abs(sub - ref[:64]).max() / total)}
    gt = torch.from_numpy(g)
    op = lambda q: torch.from_numpy(g @ q.numpy())  # noqa: E731  numpy's GEMM, as factored_spectra uses on CPU
    for k in (16, 64):
        t, res = _timed(lambda: top_eigvalsh(op, dim, k, total, tol=1e-8))
        out[f"subspace_top{k}"] = {"s": t, "iterations": res.iterations, "converged": res.converged,
                                   "residual_bound": res.bound / total,
                                   "evr_max_diff": float(np.abs(res.values - ref[:k]).max() / total),
                                   "topk_cum_diff": float(abs(res.values.sum() - ref[:k].sum()) / total)}
    del gt
    return out


def solver_comparison() -> dict:
    return {label: _case(n, side, gs) for label, n, side, gs in CASES}


def markdown(res: dict) -> list[str]:
    lines = ["| Gram | full eigh (one-stage) s | two-stage s (EVR diff) | torch eigvalsh s | two-stage float32: EVR "
             "moved by (curve) | evr subset top-64 s | subspace top-16 s (iters; top-16 EVR diff) | "
             "subspace top-64 s (iters; top-64 EVR diff) | Gram f64 / f32 s | f32 Gram: EVR moved by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in res.items():
        s16, s64 = r["subspace_top16"], r["subspace_top64"]
        ts = r["two_stage"]
        lines.append(f"| {label} | {r['eigh_full_s']:.2f} | {ts['s']:.2f} ({ts['evr_max_diff']:.0e}) | "
                     f"{r['torch_eigvalsh_s']:.2f} | {ts['f32_evr_max_diff']:.1e} ({ts['f32_evr_curve_max_diff']:.1e}) | "
                     f"{r['eigh_subset_top64']['s']:.2f} | {s16['s']:.2f} "
                     f"({s16['iterations']}; {s16['topk_cum_diff']:.1e}) | {s64['s']:.2f} ({s64['iterations']}; "
                     f"{s64['topk_cum_diff']:.1e}) | {r['gram_f64_s']:.2f} / {r['gram_f32_s']:.2f} | "
                     f"{r['f32_gram_evr_max_diff']:.1e} |")
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the results")
    args = ap.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res = solver_comparison()
    args.out.write_text(json.dumps(res, indent=1))
    head = [f"# Eigensolvers at the real shapes (`python -m benchmarks.bench_eigensolvers`)", "",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores; torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; pinned: {is_pinned()}; load average "
            f"before {load}, after " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ". EVR differences are against "
            "the one-stage float64 eigh, in units of the exact trace; times are single runs.", ""]
    args.out.with_suffix(".md").write_text("\n".join(head + markdown(res)) + "\n")
    print("\n".join(markdown(res)))
    return res


if __name__ == "__main__":
    main()
