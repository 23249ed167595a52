"""Digit tasks of the ViT population: label maps, transforms, splits, and the fine-tune plan."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from uws_core.zoo.vit_tasks import (LABEL_MAPS, TRANSFORMS, VitTask, apply_transform, load_digit_images, parse_task,
                                split_indices, task_data, task_name)
from uws_core.zoo.vit_zoo import VitZooConfig, finetune_plan, scratch_plan


def test_digits_are_the_bundled_scikit_learn_images():
    x, y = load_digit_images()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32 and y.shape == (1797,)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == set(range(10))


def test_train_test_split_is_disjoint_complete_stratified_and_seeded():
    train, test = split_indices(0.3, 0)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1797))
    x, y = load_digit_images()
    frac = np.bincount(y[test], minlength=10) / np.bincount(y, minlength=10)
    np.testing.assert_allclose(frac, 0.3, atol=0.01)
    # canary: no test image is pixel-identical to a training image
    train_rows = {row.tobytes() for row in x[train].reshape(len(train), -1)}
    assert not any(row.tobytes() in train_rows for row in x[test].reshape(len(test), -1))
    np.testing.assert_array_equal(split_indices(0.3, 0)[1], test)
    assert not np.array_equal(split_indices(0.3, 1)[1], test)


def test_label_maps_are_contiguous_and_distinct():
    for name, m in LABEL_MAPS.items():
        assert len(m) == 10, name
        kept = sorted({c for c in m if c >= 0})
        assert kept == list(range(len(kept))) and len(kept) >= 2, name
    assert len(set(LABEL_MAPS.values())) == len(LABEL_MAPS)


def test_transforms_are_deterministic_in_range_and_distinct():
    x = load_digit_images()[0][:64]
    outs = {}
    for name in TRANSFORMS:
        a, b = apply_transform(name, x, seed=3), apply_transform(name, x, seed=3)
        np.testing.assert_array_equal(a, b)
        assert a.shape == x.shape and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
        outs[name] = a
    for n1, n2 in itertools.combinations(outs, 2):
        assert not np.allclose(outs[n1], outs[n2]), (n1, n2)
    np.testing.assert_array_equal(outs["rot90"][5], np.rot90(x[5]))
    np.testing.assert_allclose(outs["invert"], 1.0 - x)
    np.testing.assert_array_equal(outs["shift_right"][:, :, 1:], x[:, :, :-1])
    assert (outs["shift_right"][:, :, 0] == 0).all()


def test_task_names_round_trip_and_unknown_parts_are_refused():
    assert parse_task("even_odd+rot90") == VitTask("even_odd", "rot90")
    assert parse_task("digits10").name == "digits10" == task_name("digits10", "none")
    with pytest.raises(KeyError, match="spin"):
        parse_task("digits10+spin")
    with pytest.raises(KeyError, match="nope"):
        VitTask("nope")


def test_task_data_keeps_only_the_task_digits_and_is_repeatable():
    x, y = task_data("3v8", "test")
    _, test = split_indices(0.3, 0)
    digits = load_digit_images()[1][test]
    assert len(y) == int(np.isin(digits, (3, 8)).sum()) and set(np.unique(y)) == {0, 1}
    xn1, _ = task_data("digits10+noise0.4", "train")
    xn2, _ = task_data(VitTask("digits10", "noise0.4"), "train")
    np.testing.assert_array_equal(xn1, xn2)
    xt, _ = task_data("digits10+noise0.4", "test")
    assert not np.allclose(xt[:10], xn1[:10])  # train and test noise are different draws


def test_finetune_plan_has_64_plus_distinct_tasks_and_unique_settings():
    plan = finetune_plan(VitZooConfig())
    assert len(plan) >= 64
    assert len({p["name"] for p in plan}) == len(plan)
    assert len({(p["task"], p["lr"], p["epochs"], p["weight_decay"], p["seed"]) for p in plan}) == len(plan)
    assert {p["family"] for p in plan} == {"subset", "binary", "domain", "mixed", "sweep"}
    tasks = [p["task"] for p in plan if p["family"] != "sweep"]
    assert len(set(tasks)) == len(tasks)
    sweeps = [p for p in plan if p["family"] == "sweep"]
    assert len({p["lr"] for p in sweeps}) >= 4 and len({p["epochs"] for p in sweeps}) >= 3
    assert len({p["weight_decay"] for p in sweeps}) >= 3
    unseen = [p for p in plan if p["group"] == "unseen"]
    assert 5 <= len(unseen) < len(plan) // 4
    for p in plan:
        parse_task(p["task"])  # every task exists


def test_scratch_plan_reuses_finetune_tasks_with_distinct_seeds():
    cfg = VitZooConfig()
    plan = scratch_plan(cfg)
    assert len(plan) >= 16 and len({p["seed"] for p in plan}) == len(plan)
    ft_tasks = {p["task"] for p in finetune_plan(cfg)} | {cfg.base_task}
    assert {p["task"] for p in plan} <= ft_tasks
