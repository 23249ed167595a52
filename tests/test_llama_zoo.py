"""The Llama population: functional forward vs transformers, batched training, files, determinism, cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import uws_core.llama_zoo as lz
from uws_core.checkpoints import CheckpointSet
from uws_core.llama_zoo import (LlamaZooConfig, build_llama_population, evaluate_models, init_state, llama_logits,
                                load_state, train_models, unseen_finetune)
from uws_core.tasks import CharTokenizer, make_tasks

TINY = LlamaZooConfig.tiny()
V = CharTokenizer().vocab_size


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset built once into a temporary cache; treat as read-only."""
    root = tmp_path_factory.mktemp("llama_cache")
    return build_llama_population(TINY, cache_dir=root), root


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
        model = LlamaForCausalLM(lz.llama_config(cfg, V)).eval()
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
    with pytest.raises(ValueError, match="num_kv_heads|num_heads"):
        LlamaZooConfig(num_heads=4, num_kv_heads=3)


def test_unseen_models_rotate_through_task_groups():
    held = [j for j in range(40) if unseen_finetune(j, 8)]
    assert held == [0, 9, 18, 27, 36]
    assert {j % 4 for j in held} == {0, 1, 2, 3}  # the plan cycles 4 task groups


def test_tiny_population_records_and_files(tiny):
    pop, _ = tiny
    r = pop.records
    assert list(r.columns) == lz.RECORD_COLUMNS and len(r) == TINY.n_finetunes
    assert set(r["group"]) == {"fit", "unseen"} and (r["group"] == "unseen").sum() == 2
    assert set(r["task_group"]) == {"instruction", "domain", "language", "reward"}
    assert r["name"].is_unique and r["seed"].is_unique
    assert r[["test_acc", "base_test_acc"]].stack().between(0, 1).all()
    assert (r["test_loss"] > 0).all() and (r["n_test"] == TINY.n_test * TINY.tasks_per_model).all()
    for d in [pop.base_dir, *pop.dirs]:
        assert (d / "model.safetensors").is_file() and json.loads((d / "config.json").read_text())[
            "architectures"] == ["LlamaForCausalLM"]
    info = pop.info
    assert info["summary"]["n_finetunes"] == TINY.n_finetunes and info["timings_s"]["total_s"] > 0


def test_files_reproduce_the_records(tiny):
    pop, _ = tiny
    states = [load_state(d) for d in pop.dirs]
    loss, acc = pop.evaluate(states, list(pop.records["name"]))
    np.testing.assert_allclose(loss, pop.records["test_loss"], rtol=1e-6)
    np.testing.assert_allclose(acc, pop.records["test_acc"], atol=1e-12)
    base_loss, base_acc = pop.evaluate([load_state(pop.base_dir)] * len(states), list(pop.records["name"]))
    np.testing.assert_allclose(base_loss, pop.records["base_test_loss"], rtol=1e-6)
    np.testing.assert_allclose(base_acc, pop.records["base_test_acc"], atol=1e-12)
    with pytest.raises(KeyError, match="no fine-tune"):
        pop.examples("nope")


def test_checkpointset_reads_real_llama_keys(tiny):
    pop, _ = tiny
    cs = CheckpointSet.from_dirs(pop.dirs)
    for t in lz.MATRIX_TYPES.values():
        assert f"model.layers.0.{t}.weight" in cs.weight_keys
    h, kv = TINY.hidden_size, TINY.hidden_size // TINY.num_heads * TINY.num_kv_heads
    assert cs.shape("model.layers.0.self_attn.k_proj.weight") == (kv, h)
    assert cs.shape("model.layers.0.mlp.down_proj.weight") == (h, TINY.intermediate_size)
    base = load_state(pop.base_dir)["model.layers.0.mlp.up_proj.weight"].double()
    for name, w in cs.iter_key("model.layers.0.mlp.up_proj.weight"):
        assert 0 < float((w - base).norm() / base.norm()) < 1.0, name  # fine-tunes moved away from the base


def test_rebuild_is_bit_identical(tiny, tmp_path):
    pop, _ = tiny
    again = build_llama_population(TINY, cache_dir=tmp_path)
    files = lambda p: json.loads((p.root / "complete.json").read_text())["files"]  # noqa: E731
    assert files(again) == files(pop)  # sha256 of every weight file, and of records.csv
    other = build_llama_population(LlamaZooConfig.tiny(seed=1), cache_dir=tmp_path)
    assert files(other)["finetunes/" + other.records["name"][0] + "/model.safetensors"] != \
        files(pop)["finetunes/" + pop.records["name"][0] + "/model.safetensors"]


def test_cache_is_reread_without_training(tiny, monkeypatch):
    pop, root = tiny
    monkeypatch.setattr(lz, "_build", lambda *a, **k: pytest.fail("trained again instead of reading the cache"))
    again = build_llama_population(TINY, cache_dir=root)
    assert again.root == pop.root
    pd.testing.assert_frame_equal(again.records, pop.records)


def test_damaged_cache_is_rebuilt(tmp_path, caplog):
    pop = build_llama_population(TINY, cache_dir=tmp_path)
    target = pop.dirs[0] / "model.safetensors"
    good = target.read_bytes()
    target.write_bytes(good[:-8] + b"\0" * 8)
    with caplog.at_level(logging.WARNING, logger="uws_core.cache"):
        again = build_llama_population(TINY, cache_dir=tmp_path)
    assert "does not match" in caplog.text
    assert (again.dirs[0] / "model.safetensors").read_bytes() == good
