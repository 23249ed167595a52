"""uws_core.experiments.replication_loo against a dense numpy re-implementation of the replication's quantities
(cahlen/universal-subspace-stress-test @ dd57f0c: analyze.py L138-148, task_accuracy_test.py L53-96,
mean_vs_basis.py L210-219) on PEFT adapters written by ``peft`` with different lora_alpha."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import write_adapters
from uws_core.experiments import lora_projection as lp, replication_loo as rl
from uws_core.weights import peft_state as P

TOL = 1e-10
KS = (1, 2, 3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    states, names, scal = [], [], []
    for j, alpha in enumerate((4, 8, 32)):
        for d in write_adapters(root, n=2, r=4, alpha=alpha, seed=60 + j, prefix=f"alpha{alpha}").dirs:
            states.append(load_file(str(d / "adapter_model.safetensors")))
            names.append(d.name)
            scal.append(alpha / 4)
    st = lp.LoraStack.from_states(states, names, scaling=1.0)
    return lp.LoraStack(st.names, st.module_keys, st.shapes, np.array(scal), st.factors)


def dense(stack, module, scaled):
    b, a = (t.numpy() for t in stack.factors(module))
    dw = np.einsum("nor,nri->noi", b, a)  # (N, d_out, d_in)
    return dw * stack.scalings[:, None, None] if scaled else dw


def top_basis(x):  # x (n, D) centred -> right singular vectors (D, n)
    return np.linalg.svd(x, full_matrices=False)[2].T


def test_in_sample_errors_match_analyze(stack):
    got = rl.in_sample_relative_errors(stack, ks=KS).set_index(["module", "k"]).rel_error
    for module in stack.module_keys:
        xf = dense(stack, module, scaled=False).reshape(len(stack), -1)
        xc = xf - xf.mean(0)
        s_sq = np.clip(np.linalg.eigvalsh(xc @ xc.T)[::-1], 0, None)
        for k in KS:
            assert abs(got[(module, k)] - np.sqrt(s_sq[k:].sum() / (xf**2).sum())) < TOL


@pytest.mark.parametrize("scaling", ["none", "alpha-over-r"])
def test_loo_errors_match_task_accuracy_test(stack, scaling):
    got = rl.loo_relative_errors(stack, heldout=[0, 3], ks=KS, scaling=scaling).set_index(["adapter", "k"]).rel_error
    for j in (0, 3):
        num, den = dict.fromkeys(KS, 0.0), 0.0
        for module in stack.module_keys:
            x = dense(stack, module, scaled=scaling != "none").reshape(len(stack), -1)
            fit = np.delete(x, j, axis=0)
            mean = fit.mean(0)
            v = top_basis(fit - mean)
            den += (x[j] ** 2).sum()
            for k in KS:
                recon = v[:, :k] @ (v[:, :k].T @ (x[j] - mean)) + mean
                num[k] += ((x[j] - recon) ** 2).sum()
        for k in KS:
            assert abs(got[(stack.names[j], k)] - np.sqrt(num[k] / den)) < TOL


def test_basis_only_is_the_centred_projection_without_the_mean(stack):
    recon = rl.basis_only_reconstructions(stack, heldout=[2], ks=KS)
    uws_no_mean = lp.loo_reconstructions(stack, [2], ks=(2,), recipes=("product",), add_means=(False,))
    for module in stack.module_keys:
        x = dense(stack, module, scaled=True)
        shape = x.shape[1:]
        x = x.reshape(len(stack), -1)
        fit = np.delete(x, 2, axis=0)
        mean = fit.mean(0)
        v = top_basis(fit - mean)
        for k in KS:
            want = (v[:, :k] @ (v[:, :k].T @ (x[2] - mean))).reshape(shape)  # mean_vs_basis.py L212-219
            state, k_eff = recon[(2, k)]
            assert k_eff == k
            got = P.lora_products(state, float(stack.scalings[2]))[module].numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=TOL * max(1.0, np.abs(want).max()))
        # uws's "no mean" (V V^T P) is another quantity: it differs here by a visible amount
        other = P.lora_products(uws_no_mean[(2, "product", False, 2)][0], float(stack.scalings[2]))[module].numpy()
        basis2 = P.lora_products(recon[(2, 2)][0], float(stack.scalings[2]))[module].numpy()
        assert np.abs(other - basis2).max() > 1e-3 * np.abs(basis2).max()


def test_basis_only_accuracy_on_the_tiny_population(tmp_path):
    from uws_core.experiments.lora_loo_accuracy import loo_reconstruction_accuracy
    from uws_core.zoo.lora_zoo import LoraPopulationConfig, build_lora_population

    pop = build_lora_population(LoraPopulationConfig.tiny(), cache_dir=tmp_path / "pop", progress=False)
    tasks = list(pop.records["task"][:2])
    df = rl.basis_only_accuracy(pop, ks=(0, 2), tasks=tasks)
    assert len(df) == 4 and set(df.recipe) == {rl.BASIS_ONLY} and not df.add_mean.any()
    base = loo_reconstruction_accuracy(pop, ks=(0,), recipes=("product",), add_means=(False,), tasks=tasks)
    for t in tasks:  # k = 0: no update at all, the base model
        got = df[(df.task == t) & (df.k == 0)].accuracy.item()
        assert got == base[(base.task == t) & (base.method == "base")].accuracy.item()
