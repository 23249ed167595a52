"""Merges on hand-computed cases, the subspace-merge = mean identity, KnOTS dense vs factored, bad input, and
the evaluators on tiny populations (LoRA <-> dense conversions: tests/test_peft_state.py)."""

import numpy as np
import pytest
import torch

from uws_core.experiments import merging as M

from uws_core.weights import peft_state as P

# 3 tasks, 2x3 matrices, no ties in magnitude within a task (TIES worked by hand below)
T1 = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]], dtype=torch.float64)
T2 = torch.tensor([[-3.0, 1.0, 2.0], [2.5, -0.5, -1.5]], dtype=torch.float64)
T3 = torch.tensor([[2.0, -1.0, -4.0], [-1.0, 3.0, 0.25]], dtype=torch.float64)
HAND = [{"w": T1}, {"w": T2}, {"w": T3}]


def random_deltas(n=5, seed=0, shapes=None):
    gen = torch.Generator().manual_seed(seed)
    shapes = shapes or {"a.weight": (4, 6), "a.bias": (4,), "emb": (1, 3, 5), "b.weight": (6, 4)}
    return [{k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()} for _ in range(n)]


def test_mean_and_task_arithmetic_by_hand():
    torch.testing.assert_close(M.mean_merge(HAND)["w"], (T1 + T2 + T3) / 3, rtol=0, atol=1e-15)
    ta = torch.tensor([[0.0, -2.0, 1.0], [2.0, 6.5, -2.25]], dtype=torch.float64)
    torch.testing.assert_close(M.task_arithmetic(HAND, 0.5)["w"], 0.5 * ta, rtol=0, atol=1e-15)


def test_ties_by_hand():
    # density 0.5 keeps ceil(3) = 3 entries per task: T1 -> {4, 3, -2}, T2 -> {-3, 2.5, 2}, T3 -> {-4, 3, 2}
    trimmed = M.ties_trim(torch.stack([T1, T2, T3]), 0.5)
    assert torch.equal(trimmed[0], torch.tensor([[0.0, -2, 3], [0, 4, 0]], dtype=torch.float64))
    assert torch.equal(trimmed[1], torch.tensor([[-3.0, 0, 2], [2.5, 0, 0]], dtype=torch.float64))
    # summed trimmed values [[-1, -2, 1], [2.5, 7, 0]] elect signs [[-, -, +], [+, +, 0]];
    # disjoint means: -3 | -2 | (3+2)/2 | 2.5 | (4+3)/2 | nothing agrees -> 0
    want = torch.tensor([[-3.0, -2.0, 2.5], [2.5, 3.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(M.ties_merge(HAND, density=0.5)["w"], want, rtol=0, atol=1e-15)
    torch.testing.assert_close(M.ties_merge(HAND, density=0.5, lam=0.4)["w"], 0.4 * want, rtol=0, atol=1e-15)
    # density 1: no trimming; entry (0, 2) = 3, 2, -4: sum +1 elects +, mean of 3 and 2
    assert M.ties_merge(HAND, density=1.0)["w"][0, 2] == 2.5
    # ties at the threshold are all kept
    assert int((M.ties_trim(torch.tensor([[1.0, 1.0, 1.0, 0.5]]), 0.25) != 0).sum()) == 3


def test_dare_rescales_seeds_and_has_the_right_mean():
    d = random_deltas(3, seed=1)
    torch.testing.assert_close(M.dare_merge(d, p=0.0, lam=0.3)["a.weight"], M.task_arithmetic(d, 0.3)["a.weight"])
    one = M.dare_merge(d[:1], p=0.75, seed=4)
    x = d[0]["b.weight"]
    kept = one["b.weight"] != 0
    torch.testing.assert_close(one["b.weight"][kept], 4.0 * x[kept], rtol=0, atol=1e-14)  # survivors times 1/(1-p)
    assert 0.1 < kept.double().mean() < 0.45                                           # about a quarter survives
    assert all(torch.equal(one[k], M.dare_merge(d[:1], p=0.75, seed=4)[k]) for k in one)  # seeded
    assert not torch.equal(one["b.weight"], M.dare_merge(d[:1], p=0.75, seed=5)["b.weight"])
    reordered = [dict(reversed(list(t.items()))) for t in d[:1]]                          # key order is irrelevant
    assert torch.equal(M.dare_merge(reordered, p=0.75, seed=4)["emb"], one["emb"])
    avg = torch.stack([M.dare_merge(d[:1], p=0.5, seed=s)["a.weight"] for s in range(2000)]).mean(0)
    torch.testing.assert_close(avg, d[0]["a.weight"], rtol=0, atol=0.15)               # unbiased: E = delta
    ties = M.dare_merge(d, p=0.5, seed=0, combine="ties")
    assert set(ties) == set(d[0])


@pytest.mark.parametrize("unfolding", ["rows", "cols", "model"])
@pytest.mark.parametrize("k", [1, 3, 100])
def test_subspace_merge_with_centred_coefficients_is_the_mean(unfolding, k):
    d = random_deltas(5, seed=2)
    merged, mean = M.subspace_merge(d, k=k, unfolding=unfolding), M.mean_merge(d)
    for key in mean:
        assert merged[key].shape == mean[key].shape
        torch.testing.assert_close(merged[key], mean[key], rtol=0, atol=1e-12)


def test_subspace_basis_and_other_coefficient_rules():
    d = random_deltas(6, seed=3)
    basis = M.fit_subspace(d, k=3, unfolding="rows")
    b = basis["b.weight"]
    torch.testing.assert_close(b.basis.T @ b.basis, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    c = torch.stack([t["b.weight"] for t in d]) - torch.stack([t["b.weight"] for t in d]).mean(0)
    s = np.linalg.svd(c.reshape(-1, 4).numpy(), compute_uv=False)                       # numpy reference, rows unfolding
    np.testing.assert_allclose(b.evr.numpy(), (s[:3] ** 2) / (s ** 2).sum(), rtol=1e-10)
    # TIES on the coordinates is not the mean
    ties = M.subspace_merge(d, k=3, coefficients="ties", density=0.5)
    assert (ties["b.weight"] - M.mean_merge(d)["b.weight"]).abs().max() > 1e-3
    # a basis fitted on a larger population: merged = M_pop + U U^T (mean - M_pop); with the full space, the mean
    pop = random_deltas(9, seed=4)
    part = pop[:4]
    full = M.fit_subspace(pop, k=100, unfolding="rows")
    torch.testing.assert_close(M.subspace_merge(part, k=100, basis=full)["a.weight"], M.mean_merge(part)["a.weight"],
                               rtol=0, atol=1e-12)
    one = M.fit_subspace(pop, k=1, unfolding="rows")["a.weight"]
    u, mp = one.basis, one.mean
    want = mp + (M.mean_merge(part)["a.weight"] - mp) @ u @ u.T
    torch.testing.assert_close(M.subspace_merge(part, k=1, basis=M.fit_subspace(pop, 1))["a.weight"], want,
                               rtol=0, atol=1e-12)


def test_svd_aligned_merge_identities_and_factored_path():
    d = random_deltas(4, seed=5, shapes={"w": (6, 5)})
    torch.testing.assert_close(M.svd_aligned_merge(d, merge="mean")["w"], M.mean_merge(d)["w"], rtol=0, atol=1e-12)
    torch.testing.assert_close(M.svd_aligned_merge(d, merge="sum", lam=0.3)["w"], M.task_arithmetic(d, 0.3)["w"],
                               rtol=0, atol=1e-12)
    # LoRAs: the factored path equals the dense one, and its pair has rank <= n r
    gen = torch.Generator().manual_seed(6)
    B, A = torch.randn(4, 7, 2, generator=gen, dtype=torch.float64), torch.randn(4, 2, 9, generator=gen, dtype=torch.float64)
    dense = [{"m": B[i] @ A[i]} for i in range(4)]
    for how in ("ties", "mean"):
        bm, am = M.lora_svd_aligned_merge(B, A, merge=how, density=0.3, lam=0.8)
        assert bm.shape[1] == am.shape[0] <= 8
        torch.testing.assert_close(bm @ am, M.svd_aligned_merge(dense, merge=how, density=0.3, lam=0.8)["m"],
                                   rtol=0, atol=1e-10)
    # KnOTS-TIES differs from TIES on the raw updates
    assert (M.svd_aligned_merge(dense, "ties", 0.3)["m"] - M.ties_merge(dense, 0.3)["m"]).abs().max() > 1e-3


def test_bad_input_names_the_key():
    good = random_deltas(2, seed=8)
    with pytest.raises(KeyError, match="a.bias"):
        M.mean_merge([good[0], {k: v for k, v in good[1].items() if k != "a.bias"}])
    with pytest.raises(ValueError, match="b.weight"):
        M.ties_merge([good[0], {**good[1], "b.weight": torch.zeros(2, 2)}], 0.5)
    bad = {**good[1], "emb": good[1]["emb"].clone()}
    bad["emb"][0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="task 1: key 'emb' holds NaN"):
        M.subspace_merge([good[0], bad], k=2)
    with pytest.raises(ValueError, match="density"):
        M.ties_merge(good, density=0.0)
    with pytest.raises(ValueError, match="p must be"):
        M.dare_merge(good, p=1.0)
    with pytest.raises(ValueError, match="unfolding"):
        M.fit_subspace(good, 2, unfolding="tubes")
    with pytest.raises(KeyError, match="'v' is not a key of the base"):
        M.apply_delta({"w": T1}, {"v": T1})
    with pytest.raises(ValueError, match="'w' has shape \\(3, 2\\)"):
        M.apply_delta({"w": T1}, {"w": T1.T})
    with pytest.raises(KeyError, match="fine-tune 1 has no key 'w'"):
        M.task_vectors([{"w": T1}, {"v": T1}], {"w": T2})


def test_statistics():
    assert M.sign_agreement([{"w": torch.tensor([1.0, -1.0, 2.0, 0.0])}, {"w": torch.tensor([2.0, 1.0, 0.0, 0.0])}]) == 2 / 3
    assert M.norm({"a": torch.tensor([3.0]), "b": torch.tensor([[4.0]])}) == 5.0


def test_lora_merge_scoring_matches_the_population(tmp_path):
    from uws_core.zoo.lora_zoo import LoraPopulationConfig, build_lora_population
    pop = build_lora_population(LoraPopulationConfig.tiny(), cache_dir=tmp_path, progress=False)
    tasks = list(pop.records["task"][:3])
    np.testing.assert_array_equal(pop.evaluate_many(tasks), pop.records["base_acc"][:3].to_numpy())
    state = pop.adapter_state(1)
    # one merge scored on several tasks == each task scored on its own merge
    np.testing.assert_array_equal(pop.evaluate_many(tasks, state), [pop.evaluate(t, state) for t in tasks])
    # a dense update passed back as an exact PEFT pair scores as the adapter itself
    dense = P.peft_state_from_dense(P.lora_products(state, pop.scaling), scaling=pop.scaling)
    assert pop.evaluate_many([tasks[1]], dense, "val")[0] == pop.evaluate_many([tasks[1]], state, "val")[0]


def test_vit_accuracy_validation_subset(tmp_path):
    from uws_core.zoo.vit_zoo import VitZooConfig, build_vit_populations, load_state
    from uws_core.zoo.vit_tasks import task_data, train_sample_indices
    vp = build_vit_populations(VitZooConfig.tiny(), cache_dir=tmp_path)
    ft = vp.records[vp.records["kind"] == "finetune"]
    states, tasks = [load_state(vp.root / d) for d in ft["dir"]], list(ft["task"])
    np.testing.assert_array_equal(M.vit_accuracy(states, tasks, vp.config, "test"), vp.evaluate_many(states, tasks))
    np.testing.assert_allclose(M.vit_accuracy(states, tasks, vp.config, "val", n_val=10**6),
                               vp.evaluate_many(states, tasks, "train"), rtol=0, atol=1e-12)  # the whole train split
    n = len(task_data(tasks[0], "train")[1])
    idx = train_sample_indices(n, 50, tasks[0])
    assert len(idx) == 50 == len(set(idx)) and np.array_equal(idx, train_sample_indices(n, 50, tasks[0]))
    assert not np.array_equal(idx, train_sample_indices(n, 50, tasks[1]))


def test_randomized_subspace_fit_matches_the_exact_one():
    gen = torch.Generator().manual_seed(10)
    # 6 updates (200, 1100) sharing a 5-dimensional input space plus small noise: a clear spectral gap after 5
    basis = torch.linalg.qr(torch.randn(1100, 5, generator=gen, dtype=torch.float64))[0]
    d = [{"w": torch.randn(200, 5, generator=gen, dtype=torch.float64) * 10 @ basis.T
          + 1e-3 * torch.randn(200, 1100, generator=gen, dtype=torch.float64)} for _ in range(6)]
    fast = M.fit_subspace(d, k=5)["w"]                                                # min(1200, 1100) >= 1024: randomized
    c = torch.stack([t["w"] for t in d]) - torch.stack([t["w"] for t in d]).mean(0)
    _, s, vt = torch.linalg.svd(c.reshape(-1, 1100), full_matrices=False)
    cos = torch.linalg.svdvals(fast.basis.T @ vt[:5].T)                              # cosines of principal angles
    assert float(cos.min()) > 1 - 1e-9
    torch.testing.assert_close(fast.evr, s[:5] ** 2 / (s ** 2).sum(), rtol=1e-8, atol=0)
    torch.testing.assert_close(M.subspace_merge(d, 5)["w"], M.mean_merge(d)["w"], rtol=0, atol=1e-12)
