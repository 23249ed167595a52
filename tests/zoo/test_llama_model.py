"""The Llama model (uws_core.zoo.llama_model): functional forward vs transformers, batched training, evaluation."""

from __future__ import annotations

import pytest
import torch

from uws_core.zoo.llama_model import evaluate_models, init_state, llama_config, llama_logits, train_models
from uws_core.zoo.llama_zoo import LlamaZooConfig
from uws_core.zoo.tasks import CharTokenizer, make_tasks

V = CharTokenizer().vocab_size


def _random_state(cfg, seed):
    """transformers' init with every tensor perturbed, so norms and scales are not the trivial init."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in init_state(cfg, V, seed).items()}


def test_functional_forward_equals_transformers():
    from transformers import LlamaForCausalLM

    cfg = LlamaZooConfig.tiny(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)  # GQA 2 : 1
    states = [_random_state(cfg, s) for s in range(3)]
    ids = torch.randint(3, V, (3, 5, 11), generator=torch.Generator().manual_seed(0))
    out = llama_logits({k: torch.stack([s[k] for s in states]) for k in states[0]}, ids, cfg)
    for i, st in enumerate(states):
        model = LlamaForCausalLM(llama_config(cfg, V)).eval()
        model.load_state_dict(st)
        with torch.no_grad():
            ref = model(input_ids=ids[i]).logits
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=1e-5)
        assert float(ref.std()) > 0.5  # not a degenerate comparison


def test_batched_training_equals_training_alone():
    cfg = LlamaZooConfig.tiny(batch_size=3)
    tasks = make_tasks(4, seed=0, n_train=8, n_val=2, n_test=4)
    base = init_state(cfg, V, 0)
    sets, lrs, steps, seeds = [tasks[0].train, tasks[1].train], [3e-3, 1e-3], [5, 3], [11, 12]
    together, loss_t = train_models(base, sets, lrs, steps, seeds, cfg)
    for i in range(2):
        alone, loss_a = train_models(base, sets[i:i + 1], lrs[i:i + 1], steps[i:i + 1], seeds[i:i + 1], cfg)
        for k in base:
            torch.testing.assert_close(together[i][k], alone[0][k], atol=2e-6, rtol=1e-5)
        assert loss_t[i] == pytest.approx(loss_a[0], abs=1e-5)
    moved = max(float((together[1][k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-4  # the model with fewer steps trained, and stopped (equality with its own 3-step run)


def test_training_lowers_the_loss():
    cfg = LlamaZooConfig.tiny(batch_size=8)
    task = make_tasks(1, seed=0, n_train=16, n_val=2, n_test=8)[0]
    base = init_state(cfg, V, 0)
    trained, _ = train_models(base, [task.train], [1e-2], [40], [0], cfg)
    before, _ = evaluate_models([base], [task.train], cfg)
    after, _ = evaluate_models(trained, [task.train], cfg)
    assert after[0] < 0.7 * before[0]


def test_train_models_refuses_bad_input():
    cfg = LlamaZooConfig.tiny(batch_size=4)
    task = make_tasks(1, seed=0, n_train=3, n_val=1, n_test=1)[0]
    with pytest.raises(ValueError, match="batch_size"):
        train_models(init_state(cfg, V, 0), [task.train], [1e-3], [2], [0], cfg)
    with pytest.raises(ValueError, match="seeds"):
        train_models(init_state(cfg, V, 0), [task.train], [1e-3], [2], [0, 1], cfg)
