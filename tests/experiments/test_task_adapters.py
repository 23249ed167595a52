"""Held-out reconstructions and merges written as PEFT adapters: the updates read back exactly, peft loads them, and
``uws evaluate --variants`` evaluates each on its own task."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import REPO
from task_fixtures import write_task_dataset, write_tiny_adapter, write_tiny_base
from uws_core.experiments.lora_projection import LoraStack
from uws_core.experiments.task_adapters import heldout_variants, merge_variants, write_variants
from uws_core.weights.adapters import AdapterSet, read_adapter_config

TASKS = ("task280_toy", "task190_toy")


@pytest.fixture(scope="module")
def pop(tmp_path_factory):
    root = tmp_path_factory.mktemp("pop")
    base = write_tiny_base(root / "base", TASKS)
    dirs = [write_tiny_adapter(base, root / f"a{i}", seed=10 + i, r=2) for i in range(4)]
    return {"root": root, "base": base, "dirs": dirs,
            "stack": LoraStack.from_adapter_set(AdapterSet.from_dirs(dirs, [f"a{i}" for i in range(4)]))}


def deltas(directory) -> dict[str, torch.Tensor]:
    """scaling * B @ A per module, read back from a written adapter (float64)."""
    aset = AdapterSet.from_dirs([directory])
    out = {}
    for m in aset.module_keys:
        b, a = aset.factors(m)
        out[m] = aset.scalings[0] * b[0] @ a[0]
    return out


def test_written_variants_reproduce_their_updates(pop, tmp_path):
    stack, like = pop["stack"], read_adapter_config(pop["dirs"][0]).raw
    variants = heldout_variants(stack, 0, ks=(1, 2))
    assert {"own", "mean_of_others", "factors_mean_k1", "product_nomean_k2", "factors_random_mean_k2",
            "basis_only_k1"} <= set(variants)
    write_variants(variants, tmp_path, "task280_toy", like)
    own, mean = deltas(tmp_path / "task280_toy" / "own"), deltas(tmp_path / "task280_toy" / "mean_of_others")
    src = [deltas(d) for d in pop["dirs"]]
    for m in own:
        torch.testing.assert_close(own[m], src[0][m], rtol=1e-6, atol=1e-6)  # float32 on disk
        torch.testing.assert_close(mean[m], sum(s[m] for s in src[1:]) / 3, rtol=1e-5, atol=1e-6)
    merged = merge_variants(stack, task_arithmetic_lams=(0.5,), ties_densities=(0.2,))
    write_variants(merged, tmp_path, "task190_toy", like)
    mm = deltas(tmp_path / "task190_toy" / "merge_mean")
    ta = deltas(tmp_path / "task190_toy" / "merge_task_arithmetic_l0.5")
    for m in mm:
        torch.testing.assert_close(mm[m], sum(s[m] for s in src) / 4, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ta[m], 0.5 * sum(s[m] for s in src), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "task190_toy" / "merge_ties_d0.2" / "adapter_model.safetensors").is_file()


def test_uws_evaluate_runs_every_variant_on_its_own_task(pop, tmp_path):
    stack, like = pop["stack"], read_adapter_config(pop["dirs"][0]).raw
    data = [write_task_dataset(tmp_path / t, t, n_test=2) for t in TASKS]
    for j, t in enumerate(TASKS):
        v = heldout_variants(stack, j, ks=(1,), recipes=("factors",), add_means=(True,), basis_only=False)
        write_variants(v, tmp_path / "variants", t, like)
    cmd = [sys.executable, "-m", "uws_core.cli", "evaluate", "--base", pop["base"], "--variants",
           tmp_path / "variants", "--task-data", *data, "--out", tmp_path / "out", "--n-boot", "200"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    runs = ["factors_mean_k1", "factors_random_mean_k1", "mean_of_others", "own"]
    assert [ln.split(":")[0] for ln in proc.stdout.splitlines()[1:]] == runs
    for r in runs:
        s = pd.read_csv(tmp_path / "out" / r / "summary.csv")
        assert list(s["task"]) == [*TASKS, "ALL"] and list(s["n"]) == [2, 2, 4]
    (tmp_path / "variants" / TASKS[1] / "own").rename(tmp_path / "variants" / TASKS[1] / "gone")
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2 and "variant 'own' is missing for task(s) ['task190_toy']" in proc.stderr


def test_merge_command_writes_merges_and_own_per_task(pop, tmp_path):
    from uws_core.experiments.task_adapters import main

    extra = [f"--extra=task{i}={d}" for i, d in enumerate(pop["dirs"][:3])]
    assert main(["merge", "--adapters-root", str(tmp_path), "--tasks", "task0,task1,task2", *extra,
                 "--out", str(tmp_path / "m")]) == 0
    assert sorted(p.name for p in (tmp_path / "m" / "task1").iterdir()) == [
        "merge_mean", "merge_task_arithmetic_l0.3", "merge_ties_d0.2", "own"]
    own, src = deltas(tmp_path / "m" / "task1" / "own"), deltas(pop["dirs"][1])
    for m in own:
        torch.testing.assert_close(own[m], src[m], rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match=r"task 'task9' has no adapter in data_manifests/mistral7b_loras.csv"):
        main(["merge", "--adapters-root", str(tmp_path), "--tasks", "task0,task9", extra[0], "--out", str(tmp_path)])


@pytest.mark.parametrize("fmt,files", [("dense", {"dense_delta.json"}), ("pair", {"adapter_config.json"})])
def test_format_option_forces_the_written_format(pop, tmp_path, fmt, files):
    """--format dense / pair overrides the automatic rule for every variant; the update reads back either way."""
    from uws_core.experiments.task_adapters import main
    from uws_core.weights.dense_delta import read_dense_delta

    extra = [f"--extra=task{i}={d}" for i, d in enumerate(pop["dirs"][:2])]
    assert main(["merge", "--adapters-root", str(tmp_path), "--tasks", "task0,task1", *extra, "--format", fmt,
                 "--out", str(tmp_path / "m")]) == 0
    written = sorted((tmp_path / "m" / "task0").iterdir())
    assert len(written) == 4
    for d in written:
        names = {p.name for p in d.iterdir()}
        assert files <= names and not ({"dense_delta.json", "adapter_config.json"} - files) & names, d
    own = tmp_path / "m" / "task0" / "own"
    src = deltas(pop["dirs"][0])
    if fmt == "pair":
        got = deltas(own)
    else:
        _, dense = read_dense_delta(own)
        got = {"base_model.model." + k.removesuffix(".weight"): v.double() for k, v in dense.items()}
    for m in src:
        torch.testing.assert_close(got[m], src[m], rtol=1e-2, atol=1e-3)   # dense: bfloat16 on disk
    with pytest.raises(SystemExit):
        main(["merge", "--adapters-root", str(tmp_path), "--tasks", "task0,task1", *extra, "--format", "sparse",
              "--out", str(tmp_path / "m")])


@pytest.mark.parametrize("which", ["iid", "ood"])
def test_loo_command_on_a_small_train_set_under_the_manifest_ids(pop, tmp_path, monkeypatch, which):
    """The paper-scale entry point with the manifest's ids, the train list cut to 3 adapters (+ the held-out one)."""
    import shutil

    from uws_core.experiments import task_data
    from uws_core.experiments.task_adapters import main
    from uws_core.weights import manifests

    m = manifests.load_manifest("mistral7b_loras")
    train_only = list(m[m["split"] == "train"]["task_id"][:3])
    held = task_data.task_list(m, which)[0]
    train = train_only + ([held] if which == "iid" else [])
    for t, d in zip(train_only + [held], pop["dirs"]):
        shutil.copytree(d, tmp_path / "loras" / m.set_index("task_id").at[t, "repo_id"])
    monkeypatch.setattr(manifests, "lora_split", lambda df, split: df[df["task_id"].isin(train)])
    monkeypatch.setattr(task_data, "task_list", lambda df, w: [held])
    assert main(["loo", "--which", which, "--adapters-root", str(tmp_path / "loras"), "--ks", "1",
                 "--out", str(tmp_path / "v")]) == 0
    assert [p.name for p in (tmp_path / "v").iterdir()] == [held]
    names = sorted(p.name for p in (tmp_path / "v" / held).iterdir())
    assert "own" in names and "mean_of_others" in names and "basis_only_k1" in names
    mean, src = deltas(tmp_path / "v" / held / "mean_of_others"), [deltas(d) for d in pop["dirs"][:3]]
    for k in mean:  # the mean of the 3 train-only adapters: the held-out one never enters
        torch.testing.assert_close(mean[k], sum(s[k] for s in src) / 3, rtol=1e-5, atol=1e-6)
