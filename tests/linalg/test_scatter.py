"""Tests of uws_core.linalg.scatter: the dsyrk Gram kernel (unpinned CPU) against torch's addmm, through
StreamingSpectrum, on tiny seeded stacks."""

import numpy as np
import pytest
import torch

from uws_core.linalg.spectral import StreamingSpectrum, stack_spectrum


@pytest.fixture
def unpinned(monkeypatch):
    """As at paper scale / in the `uws` command: the numerical pin is off, so RowScatter uses dsyrk on CPU."""
    import uws_core.linalg.numerics as numerics

    monkeypatch.setattr(numerics, "is_pinned", lambda: False)


@pytest.mark.parametrize("unfolding", ["rows", "cols"])
@pytest.mark.parametrize("center", ["none", "models", "samples"])
def test_streaming_syrk_kernel_matches_addmm(unpinned, monkeypatch, unfolding, center):
    import uws_core.linalg.scatter as scatter

    W = np.random.default_rng(5).standard_normal((7, 5, 9))  # (N, d_out, d_in)
    got = {}
    for syrk in (True, False):
        monkeypatch.setattr(scatter, "USE_SYRK_ON_CPU", syrk)
        ss = StreamingSpectrum(unfolding, center, shape=(5, 9))
        assert ss._scatter.syrk is syrk
        for w in W:
            ss.add(w)
        got[syrk] = ss.finalize(k=3)
    ref = stack_spectrum(torch.from_numpy(W), unfolding, center)
    n = min(len(ref.variances), len(got[True].variances))
    np.testing.assert_allclose(got[True].variances, got[False].variances, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[True].variances[:n], ref.variances[:n], rtol=0, atol=1e-12)
    assert abs(got[True].total_variance - ref.total_variance) < 1e-12 * ref.total_variance
    torch.testing.assert_close(got[True].basis, got[False].basis, rtol=0, atol=1e-12)


def test_syrk_update_is_in_place_and_full_gram_symmetric(unpinned):
    from uws_core.linalg.scatter import RowScatter, syrk_lower_update

    x = torch.from_numpy(np.random.default_rng(6).standard_normal((11, 6)))
    g = torch.zeros(6, 6, dtype=torch.float64)
    ptr = g.data_ptr()
    syrk_lower_update(g, x, 0.5)
    assert g.data_ptr() == ptr
    torch.testing.assert_close(torch.tril(g), torch.tril(0.5 * x.T @ x), rtol=0, atol=1e-13)
    assert float(torch.triu(g, 1).abs().max()) == 0.0  # only the lower triangle is written
    sc = RowScatter(11, 6, "none", "cpu")
    assert sc.syrk
    sc.add(x)
    sc.add(2 * x)
    full = sc.full_gram()
    torch.testing.assert_close(full, full.T, rtol=0, atol=0)
    torch.testing.assert_close(full, 5 * x.T @ x, rtol=0, atol=1e-12)


def test_pinned_process_keeps_torch_kernel():
    """Laptop notebooks run pinned: their Gram updates stay on torch's addmm, whose bits the pin fixes."""
    from uws_core.linalg import numerics
    from uws_core.linalg.scatter import use_syrk

    g = torch.zeros(3, 3, dtype=torch.float64)
    assert use_syrk(g) is (not numerics.is_pinned())
    assert not use_syrk(g.float())


@pytest.mark.parametrize("d, block", [(1, 4), (7, 3), (9, 9), (10, 4)])
def test_symmetrize_from_lower_in_place_by_blocks(d, block):
    from uws_core.linalg.scatter import symmetrize_from_lower_

    g = torch.from_numpy(np.random.default_rng(d).standard_normal((d, d)))
    want = torch.tril(g) + torch.tril(g, -1).T
    ptr = g.data_ptr()
    out = symmetrize_from_lower_(g, block=block)
    assert out.data_ptr() == ptr
    torch.testing.assert_close(g, want, rtol=0, atol=0)
