"""Leave-one-out LoRA projection on tiny seeded factors, checked against dense numpy computations."""

import numpy as np
import pytest
import torch

from uws_core.experiments import lora_projection as lp
from uws_core.weights.peft_state import split_lora_state
from uws_core.linalg.spectral import ShapeMismatchError

PFX = "base_model.model.model.layers.{}.self_attn.{}"


def make_states(n=7, r=2, shapes=((4, 3), (2, 3)), seed=0):
    """n PEFT-keyed states; module m has B (d_out, r), A (r, d_in) with shapes[m] = (d_out, d_in)."""
    gen = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(n):
        st = {}
        for m, (d_out, d_in) in enumerate(shapes):
            key = PFX.format(m, "q_proj")
            st[key + ".lora_A.weight"] = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
            st[key + ".lora_B.weight"] = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
        states.append(st)
    return states


def dense(state, scaling=1.0):
    """{module: scaling * B @ A} float64 numpy."""
    return {m: scaling * (b.double() @ a.double()).numpy() for m, (b, a) in split_lora_state(state).items()}


def rel(x, y):
    num = sum(np.sum((x[m] - y[m]) ** 2) for m in y)
    return float(np.sqrt(num / sum(np.sum(y[m] ** 2) for m in y)))


def dense_product_projection(others, target, k, add_mean):
    """Model-axis PCA of the flattened deltas of ``others`` (numpy SVD), projection of ``target``."""
    out = {}
    for m in target:
        x = np.stack([o[m].ravel() for o in others])  # (n, D)
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        v = vt[:k].T  # (D, k)
        c = mean if add_mean else 0.0
        out[m] = (c + v @ (v.T @ (target[m].ravel() - c))).reshape(target[m].shape)
    return out


def dense_factor_projection(states, j, k, add_mean):
    """The authors' recipe in numpy: SVD of [A_i^T] and [B_i] (i != j) centred by the mean column."""
    split = [split_lora_state(s) for s in states]
    out = {}
    for m in split[0]:
        proj = []
        for side in (0, 1):  # B: columns of B_i; A: columns of A_i^T
            cols = [(p[m][side] if side == 0 else p[m][side].T).numpy() for i, p in enumerate(split) if i != j]
            x = np.concatenate(cols, axis=1)  # (d, n r)
            mu = x.mean(1, keepdims=True)
            u = np.linalg.svd(x - mu, full_matrices=False)[0][:, :k]
            t = split[j][m][side].numpy() if side == 0 else split[j][m][side].numpy().T
            c = mu if add_mean else 0.0
            proj.append(c + u @ (u.T @ (t - c)))
        out[m] = proj[0] @ proj[1].T
    return out


@pytest.fixture
def stack():
    return lp.LoraStack.from_states(make_states(), scaling=2.0)


# ------------------------------------------------------------------------------------------ states
def test_stack_refuses_mismatch_naming_the_key():
    states = make_states(n=3)
    key = PFX.format(1, "q_proj") + ".lora_B.weight"
    bad = dict(states[2])
    bad[key] = torch.zeros(5, 2, dtype=torch.float64)
    with pytest.raises(ShapeMismatchError, match=key.replace(".", r"\.")):
        lp.LoraStack.from_states([states[0], states[1], bad])
    missing = {k: v for k, v in states[2].items() if not k.startswith(PFX.format(1, ""))}
    with pytest.raises(KeyError, match=r"layers\.1"):
        lp.LoraStack.from_states([states[0], states[1], missing])
    nan = dict(states[2])
    nan[key] = torch.full((2, 2), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN|finite"):
        lp.LoraStack.from_states([states[0], states[1], nan])


# ------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("add_mean", [False, True])
def test_full_rank_reproduces_adapter(add_mean):
    # product: D = 2*3 = 6 <= n - 2 = 7 centred directions of the 8 others; factors: k >= d_out, d_in
    states = make_states(n=9, r=2, shapes=((2, 3),))
    st = lp.LoraStack.from_states(states, scaling=2.0)
    rec = lp.loo_reconstructions(st, [4], ks=(6,), add_means=(add_mean,))
    for recipe in lp.RECIPES:
        state, k_eff = rec[(4, recipe, add_mean, 6)]
        assert rel(dense(state, 2.0), dense(states[4], 2.0)) < 1e-6, recipe
    assert rec[(4, "product", add_mean, 6)][1] == 6


def test_full_rank_factors_on_larger_module():
    states = make_states(n=6, r=3, shapes=((4, 5),))
    rec = lp.loo_reconstructions(lp.LoraStack.from_states(states), [0], ks=(5,), recipes=("factors",))
    for add_mean in (False, True):
        assert rel(dense(rec[(0, "factors", add_mean, 5)][0]), dense(states[0])) < 1e-6


def test_k0_with_mean_is_the_mean_of_the_others(stack):
    states = make_states()
    rec = lp.loo_reconstructions(stack, [3], ks=(0,))
    others = [dense(s, 2.0) for i, s in enumerate(states) if i != 3]
    mean = {m: np.mean([o[m] for o in others], axis=0) for m in others[0]}
    assert rel(dense(rec[(3, "product", True, 0)][0], 2.0), mean) < 1e-10
    assert rel(dense(lp.mean_of_others(stack, 3), 2.0), mean) < 1e-10
    one_thread = lp.mean_of_others(stack, 3, num_threads=1)
    assert all(torch.equal(one_thread[k], v) for k, v in lp.mean_of_others(stack, 3).items())
    assert all(np.abs(v).max() == 0 for v in dense(rec[(3, "product", False, 0)][0]).values())  # basis only, k=0
    # factors at k=0 with the mean: every column of A_hat^T (of B_hat) is the others' mean column
    split = [split_lora_state(s) for i, s in enumerate(states) if i != 3]
    fac = split_lora_state(rec[(3, "factors", True, 0)][0])
    for m, (b, a) in fac.items():
        mu_a = torch.cat([p[m][1] for p in split]).mean(0)  # mean over all rows of the stacked A_i
        mu_b = torch.cat([p[m][0] for p in split], dim=1).mean(1)
        assert torch.allclose(a, mu_a.expand_as(a), atol=1e-12)
        assert torch.allclose(b, mu_b[:, None].expand_as(b), atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("add_mean", [False, True])
def test_product_path_matches_dense_numpy(stack, k, add_mean):
    states = make_states()
    rec = lp.loo_reconstructions(stack, [2], ks=(k,), recipes=("product",), add_means=(add_mean,))
    want = dense_product_projection([dense(s, 2.0) for i, s in enumerate(states) if i != 2], dense(states[2], 2.0),
                                    k, add_mean)
    assert rel(dense(rec[(2, "product", add_mean, k)][0], 2.0), want) < 1e-9


@pytest.mark.parametrize("add_mean", [False, True])
def test_factor_path_matches_dense_numpy(stack, add_mean):
    states = make_states()
    rec = lp.loo_reconstructions(stack, [5], ks=(2,), recipes=("factors",), add_means=(add_mean,))
    assert rel(dense(rec[(5, "factors", add_mean, 2)][0]), dense_factor_projection(states, 5, 2, add_mean)) < 1e-9


def test_heldout_adapter_never_enters_its_basis():
    states = make_states()
    perturbed = list(states)
    perturbed[1] = make_states(n=1, seed=99)[0]  # a different adapter in slot 1
    for recipe in lp.RECIPES:
        out = []
        for sts in (states, perturbed):
            st = lp.LoraStack.from_states(sts)
            B, A = st.factors(st.module_keys[0])
            idx = [i for i in range(len(sts)) if i != 1]
            if recipe == "product":
                out.append(lp.ProductLeaveOneOut(B, A, st.scalings).fit(idx, 3).materialize().abs())  # |basis|
            else:
                fb = lp.fit_factor_basis(B[idx], A[idx], k=3)
                out.append(torch.cat([fb.u_a @ fb.u_a.T, fb.mu_a[:, None]], dim=1))  # projector and mean
        assert torch.allclose(out[0], out[1], atol=1e-12), recipe
    # ... while the fit for another held-out adapter does see slot 1
    st0, st1 = lp.LoraStack.from_states(states), lp.LoraStack.from_states(perturbed)
    r0 = lp.loo_reconstructions(st0, [0], ks=(2,), recipes=("product",), add_means=(True,))
    r1 = lp.loo_reconstructions(st1, [0], ks=(2,), recipes=("product",), add_means=(True,))
    assert rel(dense(r1[(0, "product", True, 2)][0]), dense(r0[(0, "product", True, 2)][0])) > 1e-3


def test_relative_errors_match_dense(stack):
    states = make_states()
    err = lp.loo_relative_errors(stack, heldout=[2, 5], ks=(0, 1, 3), recipes=lp.RECIPES + lp.CONTROLS)
    rec = lp.loo_reconstructions(stack, [2, 5], ks=(0, 1, 3), recipes=lp.RECIPES + lp.CONTROLS)
    assert len(err) == 2 * 3 * 2 * 3
    for row in err.itertuples():
        j = stack.names.index(row.adapter)
        want = rel(dense(rec[(j, row.recipe, row.add_mean, row.k)][0]), dense(states[j]))
        assert row.rel_error == pytest.approx(want, rel=1e-6, abs=1e-7), row


def test_random_control_is_orthonormal_and_not_the_fit(stack):
    B, A = stack.factors(stack.module_keys[0])
    fb = lp.fit_factor_basis(B[1:], A[1:], k=2)
    rb = lp.random_factor_basis(B[1:], A[1:], 2, seed=3)
    assert torch.allclose(rb.u_a.T @ rb.u_a, torch.eye(rb.u_a.shape[1], dtype=torch.float64), atol=1e-12)
    assert rb.u_b.shape == fb.u_b.shape and rb.u_a.shape == fb.u_a.shape
    assert not torch.allclose(rb.u_a @ rb.u_a.T, fb.u_a @ fb.u_a.T, atol=1e-3)
    assert torch.allclose(rb.mu_a, fb.mu_a, atol=1e-14) and torch.allclose(rb.mu_b, fb.mu_b, atol=1e-14)
    assert torch.equal(lp.random_factor_basis(B[1:], A[1:], 2, seed=3).u_b, rb.u_b)  # seeded


def test_bad_arguments(stack):
    with pytest.raises(ValueError, match="recipe"):
        lp.loo_reconstructions(stack, [0], recipes=("svd",))
    with pytest.raises(IndexError, match="held-out index 9"):
        lp.loo_relative_errors(stack, heldout=[9])
    with pytest.raises(ValueError, match="ks"):
        lp.loo_reconstructions(stack, [0], ks=(-1,))
    with pytest.raises(KeyError, match="not a module key"):
        stack.factors("nope")


def test_notebook_08_weight_space_at_paper_scale(tmp_path):
    """The paper-scale branch runs on PEFT adapters laid out under the manifest's hub ids and, without the base
    model and the task data, skips the functional part with a printed statement."""
    from conftest import adapters_under_manifest_ids, run_notebook

    adapters_under_manifest_ids(tmp_path / "hub", 6)
    res = run_notebook("08_lora_functional_loo", tmp_path, {"UWS_MISTRAL_LORA_DIR": tmp_path / "hub",
                                                            "UWS_MISTRAL_BASE": None, "UWS_TASK_DATA_DIR": None},
                       {"N_HELDOUT": 3, "K_ERR": [0, 1, 4, 64], "N_BOOT": 100})
    assert res["n_adapters"] == 6 and res["n_heldout"] == 3
    assert res["functional"].startswith("functional evaluation not run: UWS_MISTRAL_BASE and UWS_TASK_DATA_DIR")
    fac, prod = res["median_rel_error"]["factors|mean=False"], res["median_rel_error"]["product|mean=False"]
    assert fac["64"] < fac["1"] <= 1.0 and prod["0"] == pytest.approx(1.0)  # k = 0 without mean: nothing
    assert "functional evaluation not run" in (tmp_path / "out.ipynb").read_text()
