"""Tests of uws_core.experiments.adaptation on tiny seeded tensors and models."""

import numpy as np
import pytest
import torch

from uws_core.experiments import adaptation as ad
from uws_core.linalg.subspace import principal_angles


def _base(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w1": torch.randn(5, 4, generator=g), "w2": torch.randn(3, 5, generator=g),
            "b": torch.randn(3, generator=g)}


def _forward(weights, x):
    """A two-layer model on name-keyed weights with a run axis: x (G, n, 4) -> (G, n, 3)."""
    h = torch.tanh(x @ weights["w1"].transpose(1, 2))
    return h @ weights["w2"].transpose(1, 2) + weights["b"].unsqueeze(1)


def _regression_loss(x, y):
    return lambda weights, step: ((_forward(weights, x) - y) ** 2).mean(dim=(1, 2))


def test_subspace_update_matches_each_unfolding():
    g = torch.Generator().manual_seed(1)
    u_rows, u_cols, u_model = (torch.randn(4, 2, generator=g), torch.randn(5, 2, generator=g),
                               torch.randn(20, 3, generator=g))
    c_rows, c_cols, c_model = (torch.randn(2, 5, 2, generator=g), torch.randn(2, 2, 4, generator=g),
                               torch.randn(2, 3, generator=g))
    out = ad.subspace_update(c_rows, u_rows, "rows", (5, 4))
    torch.testing.assert_close(out[1], c_rows[1] @ u_rows.T, rtol=0, atol=1e-6)
    out = ad.subspace_update(c_cols, u_cols, "cols", (5, 4))
    torch.testing.assert_close(out[0], u_cols @ c_cols[0], rtol=0, atol=1e-6)
    out = ad.subspace_update(c_model, u_model, "model", (5, 4))
    torch.testing.assert_close(out[1], (u_model @ c_model[1]).reshape(5, 4), rtol=0, atol=1e-6)
    per_run = torch.stack([u_rows, 2 * u_rows])                         # (G, d, k): a basis per run
    torch.testing.assert_close(ad.subspace_update(c_rows, per_run, "rows", (5, 4))[1], 2 * c_rows[1] @ u_rows.T)
    with pytest.raises(ValueError, match="unfolding"):
        ad.subspace_update(c_rows, u_rows, "diagonal", (5, 4))


def test_shared_bases_by_index_equal_a_basis_per_run():
    base = _base()
    stack = torch.stack([ad.random_basis(20, 3, seed=s) for s in range(2)])         # two model-axis bases
    index = [1, 0, 1, 1]
    a, b = ad.Adapter(base, n_runs=4), ad.Adapter(base, n_runs=4)
    a.add_subspace("w1", stack, "model", index=index)
    b.add_subspace("w1", stack[index], "model")
    with torch.no_grad():
        coef = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        a.params["w1:coef"].copy_(coef)
        b.params["w1:coef"].copy_(coef)
    torch.testing.assert_close(a.update("w1"), b.update("w1"), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="index"):
        ad.Adapter(base, n_runs=4).add_subspace("w1", stack, "model", index=[0, 2, 0, 0])


def test_gradients_reach_only_trainable_and_frozen_parts_stay_bit_identical():
    base = _base()
    saved = {k: v.clone() for k, v in base.items()}
    adapter = ad.Adapter(base, n_runs=2)
    basis = ad.random_basis(4, 2, seed=3)
    start = torch.full((5, 4), 0.1)
    adapter.add_subspace("w1", basis, "rows", start=start)
    adapter.add_lora("w2", rank=2, scaling=2.0, seeds=[0, 1])
    frozen = {k: v.clone() for k, v in adapter.frozen.items()}
    frozen_base = {k: v.clone() for k, v in adapter.base.items()}
    x = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(4))
    loss = _regression_loss(x, torch.ones(2, 8, 3))(adapter.weights(), 0).sum()
    loss.backward()
    assert sorted(adapter.params) == ["w1:coef", "w2:lora_A", "w2:lora_B"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in adapter.params.items() if n != "w2:lora_A")
    assert adapter.params["w2:lora_A"].grad.abs().sum() == 0             # B = 0 at the start: no signal to A yet
    assert all(not t.requires_grad and t.grad is None for t in [*adapter.base.values(), *adapter.frozen.values()])
    ad.fit_runs(adapter, _regression_loss(x, torch.ones(2, 8, 3)), steps=20, lrs=[1e-2, 3e-2])
    for k in frozen:
        assert torch.equal(adapter.frozen[k], frozen[k]), k
    for k in frozen_base:
        assert torch.equal(adapter.base[k], frozen_base[k]) and torch.equal(base[k], saved[k]), k
    w = adapter.weights()
    assert torch.equal(w["b"][0], saved["b"]) and torch.equal(w["b"][1], saved["b"])  # not adapted: the base
    assert float(adapter.params["w1:coef"].detach().abs().max()) > 1e-3                    # and the coefficients moved
    # the update of w1 lies in the basis' row space: (W - W_base - S) (I - U U^T) = 0
    resid = (w["w1"] - saved["w1"] - start) @ (torch.eye(4) - basis @ basis.T)
    assert float(resid.detach().abs().max()) < 1e-6


def test_full_rank_orthonormal_basis_represents_any_update_and_low_rank_does_not():
    base = _base()
    g = torch.Generator().manual_seed(5)
    target = torch.randn(5, 4, generator=g)                               # any update of w1
    for unfolding, d in (("rows", 4), ("cols", 5), ("model", 20)):
        adapter = ad.Adapter(base, n_runs=1)
        u = ad.random_basis(d, d, seed=6)
        adapter.add_subspace("w1", u, unfolding)
        with torch.no_grad():                                             # the coefficients of the target
            c = {"rows": lambda: target @ u, "cols": lambda: u.T @ target,
                 "model": lambda: target.reshape(-1) @ u}[unfolding]()
            adapter.params["w1:coef"].copy_(c.unsqueeze(0))
        torch.testing.assert_close(adapter.update("w1")[0], target, rtol=0, atol=1e-5)
    # training reaches a target that only a full basis can represent (quadratic loss in the weight)
    goal = base["w1"] + target
    errors = {}
    for k in (4, 2):
        adapter = ad.Adapter(base, n_runs=1)
        adapter.add_subspace("w1", ad.random_basis(4, k, seed=7), "rows")
        ad.fit_runs(adapter, lambda w, step: ((w["w1"] - goal) ** 2).sum(dim=(1, 2)), steps=300, lrs=[5e-2],
                    warmup_frac=0.02)
        errors[k] = float((adapter.update("w1")[0] - target).detach().abs().max())
    assert errors[4] < 2e-3, errors
    assert errors[2] > 0.1, errors


def test_runs_trained_together_equal_runs_trained_alone():
    base = _base()
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(2, 16, 4, generator=g), torch.randn(2, 16, 3, generator=g)
    bases = torch.stack([ad.random_basis(4, 2, seed=1), ad.random_basis(4, 2, seed=2)])

    def build(idx):
        a = ad.Adapter(base, n_runs=len(idx))
        a.add_subspace("w1", bases[idx], "rows")
        a.add_full("w2")
        return a

    both = build([0, 1])
    ad.fit_runs(both, _regression_loss(x, y), steps=30, lrs=[1e-2, 3e-2])
    for i, lr in enumerate([1e-2, 3e-2]):
        alone = build([i])
        ad.fit_runs(alone, _regression_loss(x[i:i + 1], y[i:i + 1]), steps=30, lrs=[lr])
        for n in alone.params:
            torch.testing.assert_close(both.params[n][i], alone.params[n][0], rtol=1e-5, atol=1e-6)


def test_parameter_counts_match_the_formula_and_hand_counts():
    base = {"a": torch.zeros(6, 4), "b": torch.zeros(3, 6), "head": torch.zeros(2, 3)}
    shapes = {"a": (6, 4), "b": (3, 6)}
    assert ad.trainable_parameter_count("subspace", shapes, k=2, unfolding="rows") == 6 * 2 + 3 * 2
    assert ad.trainable_parameter_count("subspace", shapes, k=2, unfolding="cols") == 2 * 4 + 2 * 6
    assert ad.trainable_parameter_count("subspace", shapes, k=2, unfolding="model") == 4
    assert ad.trainable_parameter_count("lora", shapes, k=2) == 2 * (6 + 4) + 2 * (3 + 6)
    assert ad.trainable_parameter_count("full", shapes) == 24 + 18
    assert ad.trainable_parameter_count("head", shapes) == 0
    for method, unfolding in (("subspace", "rows"), ("subspace", "cols"), ("subspace", "model"), ("lora", "rows"),
                              ("full", "rows")):
        adapter = ad.Adapter(base, n_runs=3)
        for key, (o, i) in shapes.items():
            if method == "subspace":
                d = {"rows": i, "cols": o, "model": o * i}[unfolding]
                adapter.add_subspace(key, ad.random_basis(d, 2, seed=0), unfolding)
            elif method == "lora":
                adapter.add_lora(key, 2, 1.0, seeds=[0, 1, 2])
            else:
                adapter.add_full(key)
        adapter.add_trainable("head", torch.zeros(3, 2, 3), counted=[6, 3, 6])     # padded heads: own counts
        expected = ad.trainable_parameter_count(method, shapes, k=2, unfolding=unfolding) + np.array([6, 3, 6])
        np.testing.assert_array_equal(adapter.n_trainable(), expected)


def test_bad_input_errors_name_the_key():
    adapter = ad.Adapter(_base(), n_runs=2)
    with pytest.raises(KeyError, match="nope"):
        adapter.add_subspace("nope", torch.eye(4)[:, :2])
    with pytest.raises(ValueError, match="'b'"):
        adapter.add_full("b")                                             # a bias is not a matrix
    with pytest.raises(ValueError, match="w1"):
        adapter.add_subspace("w1", torch.eye(5)[:, :2], "rows")           # d_in is 4
    with pytest.raises(ValueError, match="unfolding"):
        adapter.add_subspace("w1", torch.eye(4)[:, :2], "diag")
    with pytest.raises(ValueError, match="start offset of 'w1'"):
        adapter.add_full("w1", start=torch.zeros(4, 5))
    with pytest.raises(ValueError, match="non-finite"):
        adapter.add_subspace("w1", torch.full((4, 2), float("nan")))
    adapter.add_full("w1")
    with pytest.raises(KeyError, match="twice"):
        adapter.add_lora("w1", 2, 1.0, seeds=[0, 1])
    with pytest.raises(ValueError, match="one seed per run"):
        adapter.add_lora("w2", 2, 1.0, seeds=[0])
    with pytest.raises(ValueError, match="one learning rate per run"):
        ad.fit_runs(adapter, lambda w, s: w["w1"].sum(dim=(1, 2)), steps=1, lrs=[1e-3])
    with pytest.raises(ValueError, match="k=5"):
        ad.task_vector_basis(torch.randn(3, 4, 4), k=5, unfolding="rows")  # rows: only 4 components
    with pytest.raises(ValueError, match="method"):
        ad.trainable_parameter_count("prompt", {"a": (2, 2)})


def test_task_vector_basis_recovers_a_planted_subspace_and_the_mean():
    g = torch.Generator().manual_seed(9)
    u = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))[0]          # (d_in, 3) planted
    mean = torch.randn(6, 8, generator=g, dtype=torch.float64)
    updates = mean + torch.randn(20, 6, 3, generator=g, dtype=torch.float64) @ u.T        # (N, d_out, d_in)
    basis, m = ad.task_vector_basis(updates, k=3, unfolding="rows")
    assert basis.dtype == torch.float32 and basis.shape == (8, 3)
    assert principal_angles(basis.double(), u).max() < 1e-5
    torch.testing.assert_close(m.double(), updates.mean(0), rtol=0, atol=1e-5)
    basis_m, _ = ad.task_vector_basis(updates, k=4, unfolding="model")
    assert basis_m.shape == (48, 4)


def test_functional_forward_equals_a_loop_over_runs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    adapter = ad.Adapter(dict(net.named_parameters()), n_runs=3)
    adapter.add_subspace("0.weight", ad.random_basis(4, 2, seed=0), "rows")
    with torch.no_grad():
        adapter.params["0.weight:coef"].normal_()
    x = torch.randn(3, 5, 4)
    w = adapter.weights(with_frozen=False)
    out = ad.functional_forward(net, w, x)
    for i in range(3):
        ref = torch.func.functional_call(net, {"0.weight": w["0.weight"][i]}, (x[i],), strict=False)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_notebook_05_at_paper_scale_builds_bases_and_counts_only(tmp_path):
    """At paper scale the notebook builds the frozen bases from checkpoints under manifest hub ids, reports the
    trainable counts and trains nothing (no data sets for the public ViTs)."""
    from conftest import run_notebook
    from conftest import sibling_test_module

    write_vit_family = sibling_test_module("notebooks", "vit_world").write_vit_family
    from uws_core.weights.manifests import load_manifest

    write_vit_family(tmp_path / "hub", list(load_manifest("vit")["repo_id"][:6]), "google/vit-base-patch16-224")
    res = run_notebook("05_subspace_adaptation", tmp_path, {"UWS_VIT_DIR": tmp_path / "hub"})
    assert res["scale"] == "paper" and "vit_summary" not in res and "lm_table" not in res
    full = [r for r in res["trainable_counts"] if r["method"] == "full"][0]
    assert full["vit_b"] == 12 * (4 * 768 * 768 + 2 * 3072 * 768) and full["ours"] == 4 * 32 * 32 + 2 * 32 * 64
    text = (tmp_path / "out.ipynb").read_text()
    assert "not run here; no accuracy is reported at paper scale" in text
