"""uws_core.experiments.adaptation_tasks: the ViT task splits, batched loss and accuracy against the population evaluator,
and the causal-LM loss against a loop over runs."""

import numpy as np
import torch

from uws_core.experiments import adaptation as ad
from uws_core.experiments import adaptation_tasks as at


def test_vit_split_and_accuracy_agree_with_the_population_evaluator():
    from uws_core.zoo.vit_model import evaluate_states, init_state
    from uws_core.zoo.vit_tasks import held_out_split
    from uws_core.zoo.vit_zoo import VitZooConfig

    cfg = VitZooConfig.tiny()
    tasks = ["3v8", "low5+rot90"]
    splits = [held_out_split(t, cfg) for t in tasks]
    again = held_out_split(tasks[0], cfg)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(again[name][1], splits[0][name][1])
    n_tr, n_va = len(splits[0]["train"][1]), len(splits[0]["val"][1])
    assert abs(n_va - 0.2 * (n_tr + n_va)) <= 1
    tr, va = splits[0]["train"][0].reshape(n_tr, -1), splits[0]["val"][0].reshape(n_va, -1)
    assert not (tr[:, None] == va[None]).all(-1).any()                   # val images are not train images
    states = [init_state(cfg, 2, 1), init_state(cfg, 5, 2)]
    adapter = ad.Adapter(states[1], n_runs=2)
    head = torch.zeros(2, 5, cfg.hidden_size)
    head[0, :2], head[1] = states[0]["classifier.weight"], states[1]["classifier.weight"]
    bias = torch.zeros(2, 5)
    bias[0, :2], bias[1] = states[0]["classifier.bias"], states[1]["classifier.bias"]
    adapter.add_trainable("classifier.weight", head)
    adapter.add_trainable("classifier.bias", bias)
    acc = at.vit_accuracy(adapter.weights(), splits, "test", [2, 5], cfg, chunk=50)
    shared = {k: v for k, v in states[1].items() if not k.startswith("classifier.")}
    ref = evaluate_states([{**shared, **{k: v for k, v in s.items() if k.startswith("classifier.")}} for s in states],
                          tasks, cfg, "test")
    np.testing.assert_allclose(acc, ref, rtol=0, atol=1e-12)
    loss = at.vit_loss_fn(splits, [2, 5], seeds=[0, 1], batch_size=8, steps=3, config=cfg)(adapter.weights(), 0)
    assert loss.shape == (2,) and bool(torch.isfinite(loss).all())


def test_lm_loss_is_each_runs_answer_nll_on_its_own_seeded_batch():
    from conftest import tiny_causal_lm
    from uws_core.zoo.tinylm import answer_nll

    lm = tiny_causal_lm(seed=0, attn_implementation="eager").requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (2, 5, 7), generator=gen)                  # (G, n, T); pad id 0 at the end of some
    ids[:, :, 6] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, :, 3:6] = True                                                # the answer tokens
    key = "model.layers.0.self_attn.q_proj.weight"
    w = {key: torch.stack([lm.state_dict()[key], 1.1 * lm.state_dict()[key]])}   # two runs, different weights
    loss = at.lm_loss_fn(lm, ids, mask, seeds=[0, 1], batch_size=3)(w, 0)
    for g, seed in enumerate([0, 1]):
        pick = torch.from_numpy(np.random.default_rng(seed).choice(5, 3, replace=False))
        logits = torch.func.functional_call(lm, {key: w[key][g]}, (ids[g, pick, :6],), {"use_cache": False},
                                            strict=False).logits
        want = answer_nll(logits, ids[g, pick, :6], mask[g, pick, :6]).mean()
        torch.testing.assert_close(loss[g], want, rtol=0, atol=1e-5)
