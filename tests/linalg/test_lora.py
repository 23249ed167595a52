import numpy as np
import pytest
import torch

from conftest import numpy_spectrum_reference
from uws_core.linalg.lora import (StreamingLoraSpectrum, lora_factor_spectra, lora_product_spectrum,
                                  lora_products)
from uws_core.linalg.lora_model_basis import FactoredModelBasis
from uws_core.linalg.spectral import NonFiniteWeightError, ShapeMismatchError, stack_spectrum
from uws_core.linalg.subspace import principal_angles, project, reconstruct

COMBOS = [(u, c) for u in ("model", "rows", "cols") for c in ("none", "models", "samples")]


def planted_lora(n=9, d_out=14, d_in=12, r=3, k=2, noise=0.05, seed=0, dtype=torch.float32):
    """LoRA pairs sharing a planted rank-k output/input space: B_i = U diag(c_i) + noise, A_i = V^T + noise."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d_out, r, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d_in, r, generator=g, dtype=torch.float64))[0]
    scale = torch.tensor([3.0, 2.0] + [0.3] * (r - 2), dtype=torch.float64)[:r] if k == 2 else torch.ones(r)
    c = torch.randn(n, r, generator=g, dtype=torch.float64) * scale + 0.5
    b = u * c[:, None, :] + noise * torch.randn(n, d_out, r, generator=g, dtype=torch.float64)
    a = v.T.expand(n, r, d_in) + noise * torch.randn(n, r, d_in, generator=g, dtype=torch.float64)
    return b.to(dtype), a.to(dtype)


def _numpy_spectrum(p, unfolding, center):
    return numpy_spectrum_reference(p.numpy(), unfolding, center)


def _dense_basis(sp):
    return sp.basis if sp.basis is not None else sp.factored.materialize()


@pytest.mark.parametrize("n", [9, 2])  # 9*3 >= d: d x d Gram route; 2*3 < d: QR (N r)-space route
@pytest.mark.parametrize("unfolding,center", COMBOS)
def test_factored_matches_dense_reference(unfolding, center, n):
    b, a = planted_lora(n=n)
    scaling = np.linspace(0.5, 2.0, n)
    p = lora_products(b, a, scaling)
    ref_var, ref_total, ref_basis = _numpy_spectrum(p, unfolding, center)
    sp = lora_product_spectrum(b, a, unfolding, center, k=2, scaling=scaling)
    assert sp.n_components == len(ref_var)
    np.testing.assert_allclose(sp.variances, ref_var, rtol=1e-9, atol=1e-9 * ref_var[0])
    assert sp.total_variance == pytest.approx(ref_total, rel=1e-10)
    assert principal_angles(_dense_basis(sp), ref_basis[:, :2]).max() < 1e-8
    dense = stack_spectrum(p, unfolding, center, k=2)
    if unfolding != "model" and center != "none":
        torch.testing.assert_close(sp.mean, dense.mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("unfolding,center", COMBOS)
def test_streaming_one_adapter_at_a_time(unfolding, center):
    b, a = planted_lora(n=10, seed=1)
    acc = StreamingLoraSpectrum(unfolding, center, shape=(14, 12), device="cpu", chunk=4, key="q_proj")
    for i in range(10):
        acc.add(b[i], a[i], name=f"adapter{i}", scaling=2.0)
    got = acc.finalize(k=3)
    ref = lora_product_spectrum(b, a, unfolding, center, k=3, scaling=2.0)
    np.testing.assert_allclose(got.variances, ref.variances, rtol=1e-9, atol=1e-10 * ref.variances[0])
    assert principal_angles(_dense_basis(got), _dense_basis(ref)).max() < 1e-8
    if unfolding == "model":
        assert got.factored.chunks[0][0].dtype == torch.float32  # inputs kept in their own dtype


def test_planted_subspace_is_recovered():
    b, a = planted_lora(n=40, d_out=30, d_in=25, r=4, noise=0.01, seed=2)
    rows = lora_product_spectrum(b, a, "rows", "none", k=4)
    v = a.double().mean(dim=0).T  # (d_in, r): the planted input space
    assert principal_angles(rows.basis, v).max() < 0.05
    assert rows.top_evr(4) > 0.99


@pytest.mark.parametrize("scaling", [None, np.linspace(0.5, 2.0, 8)])
def test_factored_basis_projection_and_reconstruction(scaling):
    b, a = planted_lora(n=8, seed=3)
    sp = lora_product_spectrum(b, a, "model", "models", k=4, scaling=scaling)
    fb = sp.factored
    assert isinstance(fb, FactoredModelBasis) and fb.k == 4 and fb.n_models == 8
    u = fb.materialize()  # (d_out*d_in, k)
    torch.testing.assert_close(u.T @ u, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    ref = stack_spectrum(lora_products(b, a, scaling), "model", "models", k=4)
    assert sp.total_variance == pytest.approx(ref.total_variance, rel=1e-12)
    bn, an = planted_lora(n=3, seed=4, r=2)  # new adapters, another rank
    pn = lora_products(bn, an)
    coords = fb.project(bn, an)
    dense_coords = project(pn, u, mean=ref.mean, unfolding="model")
    torch.testing.assert_close(coords, dense_coords, rtol=0, atol=1e-11)
    rec_dense = reconstruct(dense_coords, u, mean=ref.mean, unfolding="model", shape=(14, 12))
    torch.testing.assert_close(fb.reconstruct(coords, dense=True), rec_dense, rtol=0, atol=1e-11)
    b_hat, a_hat = fb.reconstruct(coords)  # factored: rank N r
    assert b_hat.shape == (3, 14, 8 * 3) and a_hat.shape == (8 * 3, 12)
    torch.testing.assert_close(b_hat @ a_hat, rec_dense, rtol=0, atol=1e-11)
    err = (pn - rec_dense).flatten(1).norm(dim=1) / pn.flatten(1).norm(dim=1)
    np.testing.assert_allclose(fb.reconstruction_error(bn, an), err.numpy(), rtol=1e-8)
    # without the mean (the authors' convention): P_hat = proj(P)
    c0 = project(pn, u, unfolding="model")
    torch.testing.assert_close(fb.project(bn, an, center=False), c0, rtol=0, atol=1e-11)
    rec0 = reconstruct(c0, u, unfolding="model", shape=(14, 12))
    err0 = (pn - rec0).flatten(1).norm(dim=1) / pn.flatten(1).norm(dim=1)
    np.testing.assert_allclose(fb.reconstruction_error(bn, an, add_mean=False), err0.numpy(), rtol=1e-8)
    np.testing.assert_allclose(fb.reconstruction_error(bn, an, k=2), fb.reconstruction_error(bn, an, k=2))
    with pytest.raises(MemoryError):
        fb.materialize(max_bytes=10)


def test_lora_factor_spectra_is_the_authors_recipe():
    b, a = planted_lora(n=6, seed=5)
    sa, sb = lora_factor_spectra(b, a, center="samples", k=3)
    # authors: A_i^T side by side -> d_in x (N r), subtract the mean column, left singular vectors
    at = np.concatenate([ai.double().numpy().T for ai in a], axis=1)
    at = at - at.mean(axis=1, keepdims=True)
    ua, s, _ = np.linalg.svd(at, full_matrices=False)
    np.testing.assert_allclose(sa.variances, s ** 2, rtol=1e-10, atol=1e-12)
    assert sa.unfolding == "rows" and principal_angles(sa.basis, ua[:, :3]).max() < 1e-8
    bt = np.concatenate([bi.double().numpy() for bi in b], axis=1)
    bt = bt - bt.mean(axis=1, keepdims=True)
    ub, s, _ = np.linalg.svd(bt, full_matrices=False)
    np.testing.assert_allclose(sb.variances, s ** 2, rtol=1e-10, atol=1e-12)
    assert sb.unfolding == "cols" and principal_angles(sb.basis, ub[:, :3]).max() < 1e-8
    # A_hat = (U U^T A^T)^T without the mean
    a_hat = reconstruct(project(a, sa.basis), sa.basis)
    torch.testing.assert_close(a_hat, a.double() @ sa.basis @ sa.basis.T)


def test_validation_names_adapter_and_key():
    b, a = planted_lora(n=2)
    acc = StreamingLoraSpectrum("model", "models", shape=(14, 12), key="layers.3.v_proj")
    acc.add(b[0], a[0], name="task001")
    with pytest.raises(ShapeMismatchError, match="task002.*rank 2.*v_proj"):
        acc.add(b[1, :, :2], a[1, :2], name="task002")
    with pytest.raises(ShapeMismatchError, match="task003.*v_proj"):
        acc.add(b[1, :10], a[1], name="task003")
    bad = b[1].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match="task004.*v_proj"):
        acc.add(bad, a[1], name="task004")
    with pytest.raises(ShapeMismatchError):
        lora_product_spectrum(b, a.transpose(1, 2))


def test_rows_large_feature_dim_uses_in_place_eigensolver():
    b, a = planted_lora(n=45, d_out=20, d_in=600, r=14, seed=6)  # N r = 630 >= d_in = 600 > 512
    p = lora_products(b, a)
    ref_var, _, ref_basis = _numpy_spectrum(p, "rows", "models")
    acc = StreamingLoraSpectrum("rows", "models", shape=(20, 600))
    acc.add_chunk(b, a)
    sp = acc.finalize(k=3)
    np.testing.assert_allclose(sp.variances, ref_var, rtol=1e-9, atol=1e-9 * ref_var[0])
    assert principal_angles(sp.basis, ref_basis[:, :3]).max() < 1e-8
    with pytest.raises(RuntimeError, match="already"):
        acc.finalize(k=3)
