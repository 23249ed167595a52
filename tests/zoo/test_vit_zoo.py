"""The ViT population: functional forward vs transformers, seeded training, files, cache."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import uws_core.zoo.vit_zoo as vz
from uws_core.weights.checkpoints import CheckpointFormatError, CheckpointSet
from uws_core.zoo.vit_zoo import (VitZooConfig, build_vit_populations, default_cache_dir, evaluate_states, init_state,
                              load_state)

TINY = VitZooConfig.tiny()
QUERY0 = "vit.encoder.layer.0.attention.attention.query.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset built once into a temporary cache; treat as read-only."""
    root = tmp_path_factory.mktemp("vit_cache")
    return build_vit_populations(TINY, cache_dir=root), root


def test_tiny_population_records_and_files(tiny):
    pop, _ = tiny
    r = pop.records
    assert r["kind"].value_counts().to_dict() == {"finetune": 6, "random_init": 4, "scratch": 2, "base": 1}
    assert len(pop.finetune_dirs) == 6 and len(pop.random_init_dirs) == 4 and len(pop.scratch_dirs) == 2
    assert r["name"].is_unique and r["seed"].is_unique
    assert set(r.loc[r.kind == "finetune", "group"]) == {"fit", "unseen"}
    assert r["test_acc"].between(0, 1).all() and (r["n_test"] > 0).all() and (r["n_train"] > r["n_test"]).all()
    for col in ("task", "lr", "epochs", "weight_decay", "steps", "final_train_loss", "train_acc"):
        assert col in r.columns
    for d in [pop.base_dir, *pop.finetune_dirs, *pop.random_init_dirs, *pop.scratch_dirs]:
        assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    row = r[r.kind == "finetune"].iloc[0]
    d = pop.root / row["dir"]
    assert pop.evaluate(d, row["task"]) == pytest.approx(row["test_acc"], abs=1e-12)
    assert pop.evaluate(load_state(d), row["task"]) == pytest.approx(row["test_acc"], abs=1e-12)
    assert pop.evaluate(d, row["task"], split="train") == pytest.approx(row["train_acc"], abs=1e-12)


def test_checkpointset_reads_the_population(tiny):
    pop, _ = tiny
    init = CheckpointSet.from_dirs(pop.random_init_dirs)  # all heads have 10 classes
    assert QUERY0 in init.weight_keys and "classifier.weight" in init.weight_keys
    assert init.stack(QUERY0).shape == (4, TINY.hidden_size, TINY.hidden_size)
    with pytest.raises(CheckpointFormatError, match="classifier"):
        CheckpointSet.from_dirs(pop.finetune_dirs)  # each task has its own head size
    ft = CheckpointSet.from_dirs(pop.finetune_dirs, strict=False)
    assert "classifier.weight" not in ft.weight_keys
    assert "vit.encoder.layer.0.intermediate.dense.weight" in ft.weight_keys
    assert ft.shape("vit.encoder.layer.0.output.dense.weight") == (TINY.hidden_size, TINY.intermediate_size)


def test_finetunes_start_from_the_base_and_scratch_models_do_not(tiny):
    pop, _ = tiny
    base = load_state(pop.base_dir)[QUERY0]
    for d in pop.finetune_dirs:
        rel = float((load_state(d)[QUERY0] - base).norm() / base.norm())
        assert 0 < rel < 0.5
    for d in pop.scratch_dirs + pop.random_init_dirs:
        assert float((load_state(d)[QUERY0] - base).norm() / base.norm()) > 0.5


def test_cache_is_reread_without_training(tiny, monkeypatch):
    pop, root = tiny
    monkeypatch.setattr(vz, "_build", lambda *a, **k: pytest.fail("trained again instead of reading the cache"))
    again = build_vit_populations(TINY, cache_dir=root)
    assert again.root == pop.root
    pd.testing.assert_frame_equal(again.records, pop.records)


@pytest.mark.parametrize("damage", ["marker", "model"])
def test_partial_cache_is_rebuilt_and_the_rebuild_is_identical(tiny, tmp_path, monkeypatch, damage):
    pop, root = tiny
    copy = tmp_path / "cache"
    shutil.copytree(root, copy)
    target = copy / "vit" / TINY.digest()
    if damage == "marker":
        (target / "complete.json").unlink()
    else:
        (target / pop.records["dir"].iloc[3] / "model.safetensors").unlink()
    calls = []
    real = vz._build
    monkeypatch.setattr(vz, "_build", lambda *a, **k: calls.append(1) or real(*a, **k))
    rebuilt = build_vit_populations(TINY, cache_dir=copy)
    assert calls == [1] and rebuilt.root == target
    pd.testing.assert_frame_equal(rebuilt.records, pop.records)
    for d in pop.records["dir"]:  # deterministic: the rebuild reproduces every weight bit for bit
        a, b = load_file(str(pop.root / d / "model.safetensors")), load_file(str(target / d / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), d
    assert not list((copy / "vit").glob(".*.partial-*"))


def test_config_digest_and_typos():
    assert TINY.digest() != dataclasses.replace(TINY, seed=1).digest()
    assert TINY.digest() == VitZooConfig.tiny().digest()
    with pytest.raises(TypeError):
        VitZooConfig(hidden=32)  # a typo is an error, not a silent default


def test_cache_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UWS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("UWS_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "uws")


def test_evaluate_refuses_a_head_of_the_wrong_size():
    with pytest.raises(ValueError, match="3v8"):
        evaluate_states([init_state(TINY, 10, 0)], ["3v8"], TINY)


def test_full_default_population_meets_the_issue_sizes():
    cfg = VitZooConfig()
    assert len(vz.finetune_plan(cfg)) >= 64 and cfg.n_random_init >= 64 and cfg.n_scratch >= 16
    assert np.isclose(cfg.test_fraction, 0.3)
