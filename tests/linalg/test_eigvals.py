"""Tests of uws_core.linalg.eigvals: the two-stage LAPACK eigenvalues against scipy's one-stage driver."""

import numpy as np
import pytest
import scipy.linalg
import torch

from uws_core.linalg import eigvals
from uws_core.linalg.eigvals import TWO_STAGE_MIN_N, symmetric_eigvals, two_stage_available
from uws_core.linalg.subspace import eigh_descending


def _gram(d: int, m: int, seed: int = 0) -> np.ndarray:
    """A PSD Gram (d, d) with 8 planted strong directions over a noise floor, like a LoRA stack's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, d))
    x[:, :8] *= 20.0
    return x.T @ x


def test_two_stage_routine_found_with_scipy_wheels():
    """SciPy's wheels bundle reference LAPACK >= 3.7 inside scipy-openblas: the routine must be found there
    (if this fails on a SciPy built against another LAPACK, the fallback is used and only speed is lost)."""
    assert two_stage_available()


@pytest.mark.parametrize("d", [TWO_STAGE_MIN_N, TWO_STAGE_MIN_N + 37])
def test_two_stage_matches_one_stage(d):
    g = _gram(d, d + 200)
    ref = scipy.linalg.eigh(g, eigvals_only=True, driver="evd")
    got = symmetric_eigvals(g)
    assert got.shape == (d,)
    tot = np.trace(g)
    assert np.abs(got - ref).max() / tot < 1e-13  # each eigenvalue, in EVR units
    assert np.abs(np.cumsum(got[::-1]) - np.cumsum(ref[::-1])).max() / tot < 1e-13  # the EVR curve
    assert np.all(np.diff(got) >= 0)  # ascending, as LAPACK returns them


def test_input_untouched_unless_overwrite_and_layouts_agree():
    g = _gram(TWO_STAGE_MIN_N, 1100, seed=1)
    keep = g.copy()
    a = symmetric_eigvals(g)
    assert np.array_equal(g, keep)
    b = symmetric_eigvals(np.asfortranarray(g))
    c = symmetric_eigvals(g.astype(np.float32).astype(np.float64))  # a copied input
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.trace(g))
    assert np.abs(a - c).max() / np.trace(g) < 1e-6
    d = symmetric_eigvals(g, overwrite=True)
    np.testing.assert_allclose(a, d, rtol=0, atol=1e-12 * np.trace(keep))


def test_small_orders_and_env_switch_use_one_stage(monkeypatch):
    g = _gram(64, 100)
    ref = scipy.linalg.eigh(g, eigvals_only=True, driver="evd")
    assert np.array_equal(symmetric_eigvals(g), ref)  # below TWO_STAGE_MIN_N: the one-stage driver, same bits
    big = _gram(TWO_STAGE_MIN_N, 1100, seed=2)
    monkeypatch.setenv(eigvals.EIGVALS_ENV, "evd")
    assert not two_stage_available()
    assert np.array_equal(symmetric_eigvals(big), scipy.linalg.eigh(big, eigvals_only=True, driver="evd"))


def test_missing_library_falls_back(monkeypatch):
    monkeypatch.setattr(eigvals, "_two_stage_routine", lambda: None)
    big = _gram(TWO_STAGE_MIN_N, 1100, seed=3)
    assert np.array_equal(symmetric_eigvals(big), scipy.linalg.eigh(big, eigvals_only=True, driver="evd"))


def test_two_stage_float32_and_forced_order():
    from uws_core.linalg.eigvals import two_stage_eigvals

    g = _gram(40, 60, seed=7)  # below TWO_STAGE_MIN_N: forced through the two-stage routine all the same
    ref = scipy.linalg.eigh(g, eigvals_only=True)
    assert np.abs(two_stage_eigvals(g) - ref).max() < 1e-12 * np.trace(g)
    w32 = two_stage_eigvals(g.astype(np.float32), dtype=np.float32)
    assert w32.dtype == np.float32 and 0 < np.abs(w32 - ref).max() / np.trace(g) < 1e-5


def test_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        symmetric_eigvals(np.zeros((3, 4)))


def test_eigh_descending_uses_it_for_values(monkeypatch):
    import uws_core.linalg.subspace as subspace

    calls = []
    monkeypatch.setattr(subspace, "symmetric_eigvals", lambda m: calls.append(m.shape) or symmetric_eigvals(m))
    g = torch.from_numpy(_gram(TWO_STAGE_MIN_N, 1100, seed=4))
    vals, vecs = eigh_descending(g, 0)
    assert vecs is None
    ref = np.clip(torch.linalg.eigvalsh(g).flip(0).numpy(), 0, None)
    assert np.abs(vals - ref).max() / float(torch.trace(g)) < 1e-13
    vals5, vecs5 = eigh_descending(g, 5)
    np.testing.assert_array_equal(vals5, vals)
    assert calls == [(TWO_STAGE_MIN_N, TWO_STAGE_MIN_N)] * 2  # the two-stage path, not torch's eigvalsh
    eigh_descending(torch.from_numpy(_gram(64, 80)), 0)
    assert len(calls) == 2  # below TWO_STAGE_MIN_N: torch, as the laptop notebooks always ran
    # the top-5 vectors are eigenvectors of the returned values
    resid = g @ vecs5 - vecs5 * torch.from_numpy(vals5[:5].copy())
    assert float(resid.norm(dim=0).max()) < 1e-8 * float(torch.trace(g))
