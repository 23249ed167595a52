import numpy as np
import pytest
import torch

from uws_core.linalg.subspace import (ChunkedGram, eigh_descending, explained_variance_ratio, k_for_threshold,
                               principal_angles, project, random_orthonormal_basis, reconstruct)


def _rotated_pair(d, k, angles, seed=0):
    """Two k-dim subspaces of R^d with the given principal angles (exact by construction)."""
    q = random_orthonormal_basis(d, 2 * k, seed=seed)
    e, f = q[:, :k], q[:, k:]
    ang = torch.as_tensor(angles, dtype=torch.float64)
    return e, e * torch.cos(ang) + f * torch.sin(ang)


def test_evr_and_k_for_threshold():
    v = np.array([5.0, 3.0, 1.0, 1.0])
    evr = explained_variance_ratio(v)
    np.testing.assert_allclose(evr, [0.5, 0.3, 0.1, 0.1])
    np.testing.assert_allclose(explained_variance_ratio(v, 20.0), v / 20)
    assert k_for_threshold(evr, 0.5) == 1
    assert k_for_threshold(evr, 0.8) == 2
    assert k_for_threshold(evr, 0.81) == 3
    assert k_for_threshold(evr, 1.0) == 4
    assert k_for_threshold(evr, 0.0) == 0
    assert k_for_threshold(np.array([0.2, 0.1]), 0.9) == 2  # never reached -> all
    with pytest.raises(ValueError):
        k_for_threshold(evr, 1.5)


def test_project_reconstruct_all_unfoldings():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5, 4))
    mean = rng.standard_normal((5, 4))
    u_rows = random_orthonormal_basis(4, 2, seed=1).numpy()
    c = project(w, u_rows, mean=mean, unfolding="rows")
    np.testing.assert_allclose(c.numpy(), (w - mean) @ u_rows, atol=1e-14)
    np.testing.assert_allclose(reconstruct(c, u_rows, mean=mean).numpy(),
                               (w - mean) @ u_rows @ u_rows.T + mean, atol=1e-14)
    u_cols = random_orthonormal_basis(5, 2, seed=2).numpy()
    c = project(w, u_cols, unfolding="cols")
    np.testing.assert_allclose(c.numpy(), u_cols.T @ w, atol=1e-14)
    np.testing.assert_allclose(reconstruct(c, u_cols, unfolding="cols").numpy(), u_cols @ u_cols.T @ w, atol=1e-14)
    u_mod = random_orthonormal_basis(20, 20, seed=3)  # full basis: exact round trip
    c = project(w, u_mod, mean=mean, unfolding="model")
    assert c.shape == (3, 20)
    np.testing.assert_allclose(reconstruct(c, u_mod, mean=mean, unfolding="model", shape=(5, 4)).numpy(), w,
                               atol=1e-13)
    with pytest.raises(ValueError, match="shape"):
        reconstruct(c, u_mod, unfolding="model")


@pytest.mark.parametrize("angles", [[1e-10, 3e-9, 2e-8], [0.1, 0.7, 1.2], [0.0, np.pi / 4, np.pi / 2]])
def test_principal_angles_known(angles):
    u, v = _rotated_pair(30, 3, angles)
    got = principal_angles(u, v)
    np.testing.assert_allclose(got, np.sort(angles), rtol=1e-6, atol=1e-14)
    np.testing.assert_allclose(principal_angles(v, u), got, atol=1e-14)


def test_principal_angles_tiny_is_accurate_to_1e8():
    # cos-based arccos cannot resolve 1e-9 rad (cos = 1 - 5e-19); the sine formula must
    u, v = _rotated_pair(50, 4, [1e-9, 1e-9, 2e-9, 5e-9], seed=4)
    got = principal_angles(u * 3.0 + 0.0, v @ random_orthonormal_basis(4, 4, seed=9))  # non-orthonormal spans
    assert np.abs(got - np.array([1e-9, 1e-9, 2e-9, 5e-9])).max() < 1e-14


def test_principal_angles_unequal_dims():
    q = random_orthonormal_basis(10, 5, seed=0)
    assert principal_angles(q[:, :2], q).shape == (2,)
    assert principal_angles(q[:, :2], q).max() < 1e-14
    assert np.allclose(principal_angles(q[:, :2], q[:, 2:4]), np.pi / 2)
    with pytest.raises(ValueError):
        principal_angles(q, torch.zeros(9, 2))


def test_random_orthonormal_basis_seeded():
    a = random_orthonormal_basis(40, 6, seed=7)
    assert a.dtype == torch.float64 and a.shape == (40, 6)
    assert torch.allclose(a.T @ a, torch.eye(6, dtype=torch.float64), atol=1e-14)
    assert torch.equal(a, random_orthonormal_basis(40, 6, seed=7))
    assert not torch.equal(a, random_orthonormal_basis(40, 6, seed=8))


@pytest.mark.parametrize("n,k", [(20, 3), (600, 5), (600, 0)])
def test_eigh_descending_matches_numpy(n, k):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, n + 7))
    g = x @ x.T
    vals, vecs = eigh_descending(torch.from_numpy(g), k)
    ref_vals, ref_vecs = np.linalg.eigh(g)
    np.testing.assert_allclose(vals, ref_vals[::-1], rtol=1e-10, atol=1e-8)
    if k:
        assert principal_angles(vecs, ref_vecs[:, ::-1][:, :k].copy()).max() < 1e-8
    else:
        assert vecs is None


def test_chunked_gram_matches_direct():
    x = torch.randn(11, 6, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    acc = ChunkedGram(lambda c, dev, slot: c.to(dev, torch.float64), lambda a, b: a @ b.T, chunk=4, device="cpu")
    for i in range(11):
        acc.add(x[i:i + 1])
    gram, chunks = acc.finalize()
    assert [c.shape[0] for c in chunks] == [4, 4, 3] and chunks[0].dtype == torch.float32
    torch.testing.assert_close(gram, x.double() @ x.double().T, rtol=0, atol=1e-12)


def test_eigh_descending_in_place_path():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 650))
    g = x @ x.T
    ref_vals, ref_vecs = np.linalg.eigh(g)
    vals, vecs = eigh_descending(torch.from_numpy(g.copy()), 4, overwrite=True)
    np.testing.assert_allclose(vals, ref_vals[::-1], rtol=1e-10, atol=1e-8)
    assert principal_angles(vecs, ref_vecs[:, ::-1][:, :4].copy()).max() < 1e-8


def test_eigh_descending_subspace_iteration_path():
    # planted top-4 well above the rest: the block subspace iteration converges and must match LAPACK
    rng = np.random.default_rng(2)
    q = np.linalg.qr(rng.standard_normal((600, 600)))[0]
    spectrum = np.concatenate([[100.0, 80.0, 60.0, 50.0], rng.uniform(0.0, 1.0, 596)])
    g = (q * spectrum) @ q.T
    vals, vecs = eigh_descending(torch.from_numpy(g), 4)
    np.testing.assert_allclose(vals, np.sort(spectrum)[::-1], rtol=1e-10, atol=1e-10)
    assert principal_angles(vecs, q[:, :4]).max() < 1e-10
