"""benchmarks/bench_eigensolvers.py at a tiny size: one case, its fields and its table row."""

import numpy as np

from benchmarks.bench_eigensolvers import _case, markdown


def test_one_small_case_compares_every_solver_with_the_full_eigh():
    res = _case(5, "a", "sample")  # A stack of 5 k_proj-shaped adapters: N r = 80 < d, an 80 x 80 Gram
    assert res["gram_dim"] == 80 and res["n"] == 5
    assert res["eigh_subset_top64"]["evr_max_diff"] < 1e-12  # LAPACK's partial solver: exact
    for k in (16, 64):
        sub = res[f"subspace_top{k}"]
        assert sub["converged"] and np.isfinite(sub["topk_cum_diff"]) and sub["topk_cum_diff"] < 1e-5
    assert 0 <= res["f32_gram_evr_max_diff"] < 1e-5  # float32 Gram, float64 eigh
    assert res["two_stage"]["evr_max_diff"] < 1e-13  # two-stage float64 = one-stage, below TWO_STAGE_MIN_N too
    assert 0 < res["two_stage"]["f32_evr_max_diff"] < 1e-4 and res["torch_eigvalsh_s"] > 0
    rows = markdown({"tiny": res})
    assert len(rows) == 3 and rows[2].startswith("| tiny |")
