"""uws_core.experiments.lora_loo_accuracy: the bootstrap interval and the leave-one-out accuracies on the tiny population."""

import numpy as np
import pytest

from uws_core.experiments import lora_loo_accuracy as la


def test_bootstrap_mean_ci():
    assert la.bootstrap_mean_ci(np.full(5, 0.25)) == (0.25, 0.25, 0.25)
    x = np.random.default_rng(0).normal(1.0, 1.0, 200)
    m, lo, hi = la.bootstrap_mean_ci(x, seed=1)
    assert lo < m < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)
    with pytest.raises(ValueError):
        la.bootstrap_mean_ci([])


@pytest.fixture(scope="module")
def tiny_pop(tmp_path_factory):
    from uws_core.zoo.lora_zoo import LoraPopulationConfig, build_lora_population

    return build_lora_population(LoraPopulationConfig.tiny(), cache_dir=tmp_path_factory.mktemp("pop"),
                                 progress=False)


def test_loo_accuracy_on_tiny_population(tiny_pop):
    pop = tiny_pop
    d_in = pop.config.hidden_size  # factors at k = d_in span everything: the adapter comes back exactly
    tasks = list(pop.records["task"][:2])
    df = la.loo_reconstruction_accuracy(pop, ks=(0, d_in), tasks=tasks)
    assert set(df.task) == set(tasks)
    for t in tasks:
        d = df[df.task == t].set_index(["method", "recipe", "add_mean", "k"]).accuracy
        rec = pop.records.set_index("task").loc[t]
        assert d[("base", "-", False, -1)] == pytest.approx(rec["base_acc"])
        assert d[("own", "-", False, -1)] == pytest.approx(rec["adapter_acc"])
        assert d[("reconstruction", "factors", False, d_in)] == d[("own", "-", False, -1)]
        assert d[("reconstruction", "product", True, 0)] == d[("mean_of_others", "-", False, -1)]
        assert d[("reconstruction", "product", False, 0)] == d[("base", "-", False, -1)]
    with pytest.raises(KeyError, match="no adapter for task"):
        la.loo_reconstruction_accuracy(pop, ks=(1,), tasks=["nope"])
