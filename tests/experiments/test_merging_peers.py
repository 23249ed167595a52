"""Merges against the peers: the replication's TIES / task arithmetic (re-written here from
cahlen/universal-subspace-stress-test experiments/phase3_merging/run_merge.py L92-146) and peft's
``add_weighted_adapter`` (ties, dare_linear, linear, cat, svd) on PEFT adapters with different lora_alpha."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_causal_lm, write_adapters
from uws_core.experiments import merging as M
from uws_core.experiments.peft_merge import peft_factor_merge
from uws_core.weights.peft_state import lora_pair_from_dense

ALPHAS = (4, 8, 32)  # r = 4: scalings 1, 2, 8
F32 = 2e-5  # peft merges in float32; ours in float64 from the same stored values (relative to the update's scale)


def replication_ties(stack: np.ndarray, keep_density: float) -> np.ndarray:
    """run_merge.py L126-145: per-task top |values| (int(D * density), at least 1, ties kept), elect +1 where
    the positive mass >= the negative mass, mean of the kept entries that match the elected sign."""
    k = stack.shape[0]
    flat = stack.reshape(k, -1)
    k_keep = max(int(flat.shape[1] * keep_density), 1)
    thresholds = -np.sort(-np.abs(flat), axis=1)[:, k_keep - 1]
    trimmed = flat * (np.abs(flat) >= thresholds[:, None])
    total_pos, total_neg = trimmed.clip(min=0).sum(0), (-trimmed.clip(max=0)).sum(0)
    elected = np.where(total_pos >= total_neg, 1.0, -1.0)
    match = (np.sign(trimmed) == elected).astype(float)
    return ((trimmed * match).sum(0) / np.maximum(match.sum(0), 1.0)).reshape(stack.shape[1:])


def test_ties_default_is_the_replications_and_the_old_convention_is_kept():
    gen = torch.Generator().manual_seed(0)
    deltas = [{"w": torch.randn(6, 11, generator=gen, dtype=torch.float64)} for _ in range(4)]
    stack = np.stack([d["w"].numpy() for d in deltas])
    for density in (0.05, 0.2, 0.25, 0.5, 1.0):
        np.testing.assert_allclose(M.ties_merge(deltas, density)["w"].numpy(), replication_ties(stack, density),
                                   rtol=0, atol=1e-15)
    # 0.2 * 7 = 1.4: floor keeps 1, ceil keeps 2
    row = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.1]], dtype=torch.float64)
    assert int((M.ties_trim(row, 0.2) != 0).sum()) == 1
    assert int((M.ties_trim(row, 0.2, "ceil_elect_zero") != 0).sum()) == 2
    # exact cancellation: the peers elect +1 and keep the positive entry, the old convention merges nothing
    cancel = [{"w": torch.tensor([2.0, 1.0], dtype=torch.float64)}, {"w": torch.tensor([-2.0, 3.0], dtype=torch.float64)}]
    assert M.ties_merge(cancel, 1.0)["w"].tolist() == [2.0, 2.0]
    assert M.ties_merge(cancel, 1.0, convention="ceil_elect_zero")["w"].tolist() == [0.0, 2.0]
    old = M.ties_merge(deltas, 0.2, convention="ceil_elect_zero")["w"]  # 0.2 * 66 = 13.2: 14 kept, not 13
    assert int((old != M.ties_merge(deltas, 0.2)["w"]).sum()) > 0
    with pytest.raises(ValueError, match="convention"):
        M.ties_merge(deltas, 0.2, convention="floor")


def test_task_arithmetic_is_the_replications_plain_sum():
    gen = torch.Generator().manual_seed(1)
    deltas = [{"w": torch.randn(3, 4, generator=gen, dtype=torch.float64)} for _ in range(5)]
    total = np.sum([d["w"].numpy() for d in deltas], axis=0)  # run_merge.py L102-109: stack.sum(dim=0)
    np.testing.assert_allclose(M.task_arithmetic(deltas, 1.0)["w"].numpy(), total, rtol=0, atol=1e-15)
    np.testing.assert_allclose(M.mean_merge(deltas)["w"].numpy(), total / 5, rtol=0, atol=1e-15)  # its header's 1/K


@pytest.fixture(scope="module")
def peft_population(tmp_path_factory):
    """Three PEFT adapters (r = 4, lora_alpha 4 / 8 / 32) loaded into one PeftModel as a0, a1, a2."""
    from peft import PeftModel

    root = tmp_path_factory.mktemp("peft_merge")
    written = [write_adapters(root, n=1, r=4, alpha=al, seed=40 + j, prefix=f"alpha{al}") for j, al in enumerate(ALPHAS)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(tiny_causal_lm(seed=1234), str(written[0].dirs[0]), adapter_name="a0")
        for j, w in enumerate(written[1:], 1):
            model.load_adapter(str(w.dirs[0]), adapter_name=f"a{j}")
    factors = [w.factors[0] for w in written]  # module -> (B, A, delta)
    return model, factors, np.array(ALPHAS) / 4.0


def peft_merged(model, name, combination, weights, **kw) -> dict:
    adapters = ["a0", "a1", "a2"]
    model.add_weighted_adapter(adapters, list(weights), name, combination_type=combination, **kw)
    return {n: m.get_delta_weight(name).detach().to(torch.float64) for n, m in model.named_modules()
            if hasattr(m, "lora_A") and name in m.lora_A}


def stacks(factors, module):
    return (torch.stack([f[module][0] for f in factors]), torch.stack([f[module][1] for f in factors]))


def assert_close_rel(got, want, tol=F32):
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= tol * max(scale, 1.0), (float((got - want).abs().max()), scale)


@pytest.mark.filterwarnings("ignore:The density 1.0:UserWarning")  # peft's note that density 1 prunes nothing
@pytest.mark.parametrize("combination,density", [("ties", 0.5), ("ties", 0.2), ("linear", 1.0), ("dare_linear", 1.0)])
def test_peft_factor_merges(peft_population, combination, density):
    model, factors, scal = peft_population
    w = np.array([0.5, 0.3, 0.7])
    merged = peft_merged(model, f"m_{combination}_{int(density * 100)}", combination, w, density=density)
    assert len(merged) == 6
    how = "ties" if combination == "ties" else "linear"
    for module, got in merged.items():
        b, a = stacks(factors, module)
        bm, am = peft_factor_merge(b, a, w, scal, how=how, density=density)
        assert_close_rel(got, bm @ am)


def test_peft_linear_is_k_times_the_factor_mean(peft_population):
    model, factors, _ = peft_population
    # equal alphas: reuse adapter a1 (s = 2) three times through its factors, w_i = 1/K
    b, a = stacks(factors, next(iter(factors[0])))
    b3, a3 = b[1:2].repeat(3, 1, 1) + 0.1 * b[:3], a[1:2].repeat(3, 1, 1) + 0.1 * a[:3]
    bm, am = peft_factor_merge(b3, a3, np.full(3, 1 / 3), np.full(3, 2.0), how="linear")
    factor_mean = 2.0 * b3.mean(0) @ a3.mean(0)  # uws's "mean of A and B separately" at scaling 2
    torch.testing.assert_close(bm @ am, 3 * factor_mean, rtol=1e-12, atol=1e-12)


def test_peft_cat_and_svd_are_task_arithmetic_of_the_updates(peft_population):
    model, factors, scal = peft_population
    cat = peft_merged(model, "m_cat", "cat", [0.5, 0.5, 0.5])
    svd = peft_merged(model, "m_svd", "svd", [0.5, 0.5, 0.5])
    for module in cat:
        b, a = stacks(factors, module)
        updates = [{"w": s * bi @ ai} for s, bi, ai in zip(scal, b, a)]  # s_i B_i A_i
        ta = M.task_arithmetic(updates, 0.5)["w"]
        assert_close_rel(cat[module], ta)
        bb, aa = lora_pair_from_dense(ta, max_rank=4)
        assert_close_rel(svd[module], bb @ aa)
        assert float((svd[module] - ta).abs().max()) > 1e-3  # rank 4 of a rank-12 sum: not the sum itself
