"""The Llama population (uws_core.zoo.llama_zoo): config, held-out fine-tunes, records and files, determinism, cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

import uws_core.zoo.llama_zoo as lz
from uws_core.weights.checkpoints import CheckpointSet
from uws_core.zoo.llama_zoo import LlamaZooConfig, build_llama_population, load_state, unseen_finetune

TINY = LlamaZooConfig.tiny()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset built once into a temporary cache; treat as read-only."""
    root = tmp_path_factory.mktemp("llama_cache")
    return build_llama_population(TINY, cache_dir=root), root


def test_config_refuses_bad_input():
    with pytest.raises(ValueError, match="num_kv_heads|num_heads"):
        LlamaZooConfig(num_heads=4, num_kv_heads=3)


def test_model_names_are_reexported():
    import uws_core.zoo.llama_model as lm

    for name in ("llama_config", "init_state", "llama_logits", "train_models", "evaluate_models", "save_llama",
                 "load_state", "MATRIX_TYPES"):
        assert getattr(lz, name) is getattr(lm, name) and name in lz.__all__
    assert "compute_settings" not in lm.__all__ + lz.__all__  # one home: uws_core.linalg.numerics


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
    with caplog.at_level(logging.WARNING, logger="uws_core.weights.cache"):
        again = build_llama_population(TINY, cache_dir=tmp_path)
    assert "does not match" in caplog.text
    assert (again.dirs[0] / "model.safetensors").read_bytes() == good
