import json

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import tucker

from conftest import numpy_spectrum_reference
from uws_core.linalg.spectral import (NonFiniteWeightError, ShapeMismatchError, Spectrum, StreamingSpectrum,
                               stack_spectrum, unfold)
from uws_core.linalg.subspace import principal_angles

COMBOS = [(u, c) for u in ("rows", "cols", "model") for c in ("none", "models", "samples")]


def planted_stack(n=8, d_out=9, d_in=7, k=2, noise=0.05, seed=0, mean_scale=0.5):
    """W_i = mean + U_out C_i U_in^T + noise: a planted rank-k row and column space shared by all models."""
    rng = np.random.default_rng(seed)
    u_out = np.linalg.qr(rng.standard_normal((d_out, k)))[0]
    u_in = np.linalg.qr(rng.standard_normal((d_in, k)))[0]
    coef = rng.standard_normal((n, k, k)) * (4.0 * 0.5 ** np.arange(k))
    mean = rng.standard_normal((d_out, d_in)) * mean_scale
    return mean + u_out @ coef @ u_in.T + noise * rng.standard_normal((n, d_out, d_in))


numpy_reference = numpy_spectrum_reference


def test_unfold_matches_tensorly_and_numpy():
    x = planted_stack()
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(unfold(t, "rows").numpy(), tl.unfold(x, 2).T)
    np.testing.assert_array_equal(unfold(t, "cols").numpy(), tl.unfold(x, 1).T)
    np.testing.assert_array_equal(unfold(t, "model").numpy(), tl.unfold(x, 0))
    with pytest.raises(ValueError, match="unfolding"):
        unfold(t, "mode-3")
    with pytest.raises(ShapeMismatchError):
        unfold(t[0], "rows")


@pytest.mark.parametrize("unfolding,center", COMBOS)
def test_stack_spectrum_matches_numpy(unfolding, center):
    x = planted_stack()
    ref_var, ref_total, ref_basis = numpy_reference(x, unfolding, center)
    sp = stack_spectrum(torch.from_numpy(x).float(), unfolding, center, k=3)  # float32 input upcast
    ref_var32, ref_total32, ref_basis32 = numpy_reference(x.astype(np.float32), unfolding, center)
    np.testing.assert_allclose(sp.variances, ref_var32, rtol=1e-10, atol=1e-10 * ref_var32[0])
    assert sp.total_variance == pytest.approx(ref_total32, rel=1e-12)
    assert sp.total_variance == pytest.approx(sp.variances.sum(), rel=1e-10)
    assert sp.basis.dtype == torch.float64 and sp.basis.shape == (ref_basis.shape[0], 3)
    assert principal_angles(sp.basis, ref_basis32[:, :3]).max() < 1e-8
    assert sp.n_models == 8 and sp.matrix_shape == (9, 7) and sp.n_components == len(ref_var)
    del ref_var, ref_total, ref_basis


@pytest.mark.parametrize("unfolding,center", COMBOS)
def test_streaming_matches_in_memory(unfolding, center):
    x = planted_stack(n=11, seed=1)
    mem = stack_spectrum(x, unfolding, center, k=4, device="cpu")
    st = StreamingSpectrum(unfolding, center, shape=(9, 7), device="cpu", chunk=4)  # chunk edge: 11 = 4+4+3
    for w in x.astype(np.float32):
        st.add(w)
    x32 = x.astype(np.float32)
    mem32 = stack_spectrum(x32, unfolding, center, k=4)
    got = st.finalize(k=4)
    np.testing.assert_allclose(got.variances, mem32.variances, rtol=1e-9, atol=1e-10 * mem32.variances[0])
    assert got.total_variance == pytest.approx(mem32.total_variance, rel=1e-11)
    assert principal_angles(got.basis, mem32.basis).max() < 1e-8
    assert torch.allclose(got.basis.T @ got.basis, torch.eye(4, dtype=torch.float64), atol=1e-12)
    if center == "none":
        assert got.mean is None and mem.mean is None
    else:
        torch.testing.assert_close(got.mean, mem32.mean, rtol=0, atol=1e-12)


def test_streaming_model_axis_with_d_smaller_than_n():
    x = planted_stack(n=30, d_out=3, d_in=4, seed=2)
    st = StreamingSpectrum("model", "models", shape=(3, 4))
    for w in x:
        st.add(w)
    got, ref = st.finalize(k=3), stack_spectrum(x, "model", "models", k=3)
    assert got.n_components == ref.n_components == 12
    np.testing.assert_allclose(got.variances, ref.variances, rtol=1e-9, atol=1e-9 * ref.variances[0])


@pytest.mark.parametrize("unfolding,mode", [("rows", 2), ("cols", 1)])
def test_uncentred_basis_spans_tensorly_hosvd(unfolding, mode):
    x = planted_stack(n=10, d_out=12, d_in=11, k=3, seed=3, mean_scale=0.0)
    k = 3
    _, factors = tucker(tl.tensor(x), rank=[10, k, k], n_iter_max=0, init="svd")
    st = StreamingSpectrum(unfolding, "none", shape=(12, 11))
    for w in x:
        st.add(w)
    for sp in (stack_spectrum(x, unfolding, "none", k=k), st.finalize(k=k)):
        assert principal_angles(sp.basis, factors[mode]).max() < 1e-8


def test_spectrum_methods_and_round_trip():
    x = planted_stack()
    sp = stack_spectrum(x, "rows", "models", k=None)
    assert sp.evr().sum() == pytest.approx(1.0, abs=1e-12)
    assert sp.cumulative_evr()[-1] == pytest.approx(1.0, abs=1e-12)
    assert sp.top_evr(2) > 0.95  # planted rank 2 with small noise
    assert sp.k_at(0.95) == 2 and sp.k_at(0.0) == 0
    d = sp.to_dict()
    json.dumps(d)
    assert d["unfolding"] == "rows" and d["basis_k"] == 7 and d["k_at"]["0.95"] == 2
    coef = sp.project(x)  # full basis: exact round trip with the mean
    assert coef.shape == (8, 9, 7)
    np.testing.assert_allclose(sp.reconstruct(coef).numpy(), x, atol=1e-12)
    cols = stack_spectrum(x, "cols", "samples", k=None)
    np.testing.assert_allclose(cols.reconstruct(cols.project(x)).numpy(), x, atol=1e-12)
    model = stack_spectrum(x, "model", "models", k=3)
    c = model.project(x[:2], k=2)
    assert c.shape == (2, 2)
    assert model.reconstruct(c).shape == (2, 9, 7)
    assert stack_spectrum(x, "rows", "none", k=0).basis is None
    with pytest.raises(ValueError):
        stack_spectrum(x, "rows", "none", k=0).project(x)
    assert isinstance(sp, Spectrum)


def test_validation_errors_name_model_and_key():
    st = StreamingSpectrum("rows", "models", shape=(3, 4), key="layers.0.q_proj")
    st.add(np.ones((3, 4)))
    with pytest.raises(ShapeMismatchError, match="m2.*layers.0.q_proj"):
        st.add(np.ones((4, 3)), name="m2")
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteWeightError, match="#1.*q_proj"):
        st.add(bad)
    with pytest.raises(ValueError, match="center"):
        StreamingSpectrum("rows", "mean", shape=(3, 4))
    with pytest.raises(ValueError, match="no models"):
        StreamingSpectrum("model", "none", shape=(3, 4)).finalize()
    with pytest.raises(NonFiniteWeightError):
        stack_spectrum(np.full((2, 3, 3), np.inf))


def test_bf16_input_and_env_device(monkeypatch):
    monkeypatch.setenv("UWS_DEVICE", "cpu")
    x = torch.from_numpy(planted_stack()).to(torch.bfloat16)
    sp = stack_spectrum(x, "cols", "models", k=2)
    ref_var, _, _ = numpy_reference(x.double().numpy(), "cols", "models")
    np.testing.assert_allclose(sp.variances, ref_var, rtol=1e-10, atol=1e-10 * ref_var[0])
    assert sp.basis.device.type == "cpu"

