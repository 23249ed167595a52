"""Task evaluation on a tiny MistralForCausalLM with a real tokenizer file, tiny task datasets in the Lots-of-LoRAs
format served by the local hub emulator, fetched with ``uws download`` and read by ``datasets``; ROUGE-L checked
against hand-computed values; resume after an interruption; refusals naming file, model and key."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import sibling_test_module
from task_fixtures import task_dataset_files, write_task_dataset, write_tiny_adapter, write_tiny_base
from uws_core.experiments.task_eval import DECODINGS, Evaluator, TaskEvalError, evaluate_task, evaluate_tasks
from uws_core.experiments.task_scores import (bootstrap_mean_ci, bootstrap_task_mean_ci, exact_match, rouge_l,
                                              score_prediction, summarize)

hub_client = sibling_test_module("weights", "test_hub_client")
HubEmulator = sibling_test_module("weights", "hub_emulator").HubEmulator
TASKS = ("task280_toy", "task190_toy")


# ---------------------------------------------------------------------------------------------- scores by hand
@pytest.mark.parametrize("pred, ref, want", [
    ("the red fox", "red fox jumps", 2 / 3),   # LCS "red fox": P = R = 2/3
    ("a b c d", "a c", 2 / 3),                 # LCS 2: P = 2/4, R = 2/2, F = 2PR/(P+R) = 2/3
    ("cats running", "cat runs", 1.0),         # Porter stems: cat run / cat run
    ("Yes!", "yes", 1.0),                      # case and punctuation dropped by rouge-score's tokenizer
    ("no", "yes", 0.0),
    ("", "yes", 0.0),                          # an empty prediction scores 0
    ("   ", "", 0.0),
    ("猫", "猫", 0.0),                          # no [a-z0-9] token: rouge-score (and the authors) score 0
])
def test_rouge_l_matches_hand_computed_values(pred, ref, want):
    assert rouge_l(pred, ref) == pytest.approx(want, abs=1e-12)


def test_first_reference_best_reference_and_exact_match():
    s = score_prediction("blue", ["green", "blue sky"])
    assert s["rougeL"] == 0.0 and s["rougeL_max"] == pytest.approx(2 / 3, abs=1e-12)  # P = 1, R = 1/2
    assert s["exact_match"] == 0.0
    assert exact_match("The cat.", ["dog", "the  cat"]) == 1.0
    assert exact_match("猫", ["猫"]) == 1.0
    assert exact_match("", [""]) == 0.0 and exact_match(" . ", [""]) == 0.0  # empty never counts as correct


def test_bootstrap_cis():
    rng = np.random.default_rng(0)
    v = rng.random(200)
    m, lo, hi = bootstrap_mean_ci(v, n_boot=4000, seed=1)
    assert m == pytest.approx(v.mean()) and lo < m < hi
    se = v.std(ddof=1) / np.sqrt(v.size)  # the percentile interval is close to the normal one here
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_mean_ci(np.full(5, 0.3)) == pytest.approx((0.3, 0.3, 0.3))
    m, lo, hi = bootstrap_task_mean_ci({"a": [1.0, 1.0], "b": [0.0, 0.0, 0.0]}, n_boot=2000)
    assert m == 0.5 and lo == 0.0 and hi == 1.0  # task-level resampling: all-a or all-b draws occur
    recs = pd.DataFrame({"task": ["a", "a", "b"], "rougeL": [1.0, 0.5, 0.0], "rougeL_max": [1.0, 1.0, 0.5],
                         "exact_match": [1.0, 0.0, 0.0]})
    s = summarize(recs, n_boot=500).set_index("task")
    assert s.loc["a", "rougeL"] == pytest.approx(75.0) and s.loc["ALL", "rougeL"] == pytest.approx(37.5)
    assert int(s.loc["ALL", "n"]) == 3
    with pytest.raises(KeyError, match="exact_match"):
        summarize(recs.drop(columns="exact_match"))
    from uws_core.experiments.task_scores import paired_difference_ci

    recs["id"] = ["1", "2", "1"]
    better = recs.assign(rougeL=recs["rougeL"] + 0.1)[::-1]  # order does not matter: paired by (task, id)
    assert paired_difference_ci(better, recs, n_boot=300) == pytest.approx((10.0, 10.0, 10.0))
    with pytest.raises(KeyError, match=r"\('b', '1'\) is scored in one run only"):
        paired_difference_ci(recs, recs[recs.task == "a"])


def test_gpu_memory_figures_quoted_in_docs():
    from uws_core.experiments.task_eval import generation_memory_bytes

    greedy = generation_memory_bytes(batch=8, prompt_tokens=1000)
    assert greedy["kv_per_token"] == 128 * 1024 and greedy["weights"] / 1e9 == pytest.approx(14.5, abs=0.05)
    assert greedy["kv_cache"] / 1e9 == pytest.approx(1.1, abs=0.05)
    assert generation_memory_bytes(batch=8, prompt_tokens=1000, beams=4)["kv_cache"] / 1e9 == pytest.approx(4.3, abs=0.05)


# ---------------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = write_tiny_base(root / "base", TASKS)
    adapters = [write_tiny_adapter(base, root / f"adapter{i}", seed=i) for i in range(2)]
    data = {t: write_task_dataset(root / t, t, n_test=5) for t in TASKS}
    return {"root": root, "base": base, "adapters": adapters, "data": data, "ev": Evaluator(base)}


def test_generation_scores_and_files(tiny, tmp_path):
    ev = tiny["ev"]
    res = evaluate_tasks(ev, tiny["data"], tmp_path, "own", adapter=tiny["adapters"][0], batch_size=2, progress=False)
    recs = res["records"]
    assert list(recs["task"].unique()) == list(TASKS) and len(recs) == 10
    for r in recs.itertuples():  # stored scores are those of the stored predictions
        assert r.rougeL == rouge_l(r.prediction, r.references[0])
    lines = (tmp_path / "own" / "task280_toy.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [f"task280_toy-test-{i}" for i in range(5)]
    summary = pd.read_csv(tmp_path / "own" / "summary.csv")
    assert set(summary["task"]) == {*TASKS, "ALL"} and set(summary["precision"]) == {"float32"}
    assert json.loads(lines[0])["precision"] == "float32"  # every result says how the base ran
    run = json.loads((tmp_path / "own" / "run.json").read_text())
    assert run["device"] == "cpu" and [t["generated_now"] for t in run["timing"]] == [5, 5]
    assert all(t["peak_memory_bytes"] > 0 and t["seconds"] > 0 for t in run["timing"])
    # batching does not change greedy predictions (left padding, attention mask); another adapter does
    one = evaluate_tasks(ev, tiny["data"], tmp_path, "own_b1", adapter=tiny["adapters"][0], batch_size=1,
                         progress=False)["records"]
    assert list(one["prediction"]) == list(recs["prediction"])
    other = evaluate_tasks(ev, tiny["data"], tmp_path, "other", adapter=tiny["adapters"][1], progress=False)
    assert list(other["records"]["prediction"]) != list(recs["prediction"])
    base = evaluate_tasks(ev, tiny["data"], tmp_path, "base", adapter=None, progress=False)["records"]
    assert list(base["prediction"]) != list(recs["prediction"])
    fresh = evaluate_tasks(Evaluator(tiny["base"]), tiny["data"], tmp_path, "base_fresh", progress=False)["records"]
    assert list(fresh["prediction"]) == list(base["prediction"])  # adapters once loaded leave no trace on the base


def test_authors_decoding_keeps_the_text_after_the_last_output(tiny, tmp_path):
    ev = tiny["ev"]
    ev.use_adapter(tiny["adapters"][0])
    preds, n_new = ev.generate(["Input: q1 test. Output:"], DECODINGS["authors"])
    full, _ = ev.generate(["Input: q1 test. Output:"], DECODINGS["greedy"].__class__("x", 4, 32, False))
    assert n_new > 0 and preds[0] == full[0].split("Output:")[-1].strip()


def test_resume_after_interruption_gives_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    ev, data = tiny["ev"], tiny["data"]
    straight = evaluate_tasks(ev, data, tmp_path / "a", "r", adapter=tiny["adapters"][1], batch_size=2,
                              progress=False)
    real, calls = Evaluator.generate, {"n": 0}

    def dies_on_second_batch(self, inputs, decoding):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, inputs, decoding)

    monkeypatch.setattr(Evaluator, "generate", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_tasks(ev, data, tmp_path / "b", "r", adapter=tiny["adapters"][1], batch_size=2, progress=False)
    assert len((tmp_path / "b" / "r" / "task280_toy.jsonl").read_text().splitlines()) == 2  # the first batch kept
    monkeypatch.setattr(Evaluator, "generate", real)
    resumed = evaluate_tasks(ev, data, tmp_path / "b", "r", adapter=tiny["adapters"][1], batch_size=2,
                             progress=False)
    assert [t["generated_now"] for t in resumed["timing"]] == [3, 5]
    pd.testing.assert_frame_equal(resumed["records"], straight["records"])
    pd.testing.assert_frame_equal(resumed["summary"], straight["summary"])
    again = evaluate_tasks(ev, data, tmp_path / "b", "r", adapter=tiny["adapters"][1], progress=False)
    assert [t["generated_now"] for t in again["timing"]] == [0, 0]


def test_refusals_name_file_model_and_key(tiny, tmp_path):
    import shutil

    ev, data = tiny["ev"], tiny["data"]
    one = {"task280_toy": data["task280_toy"]}
    ad = shutil.copytree(tiny["adapters"][0], tmp_path / "ad")
    evaluate_tasks(ev, one, tmp_path, "r", adapter=ad, limit=2, progress=False)
    with pytest.raises(TaskEvalError, match=r"r/task280_toy.meta.json: key 'decoding' was"):
        evaluate_tasks(ev, one, tmp_path, "r", adapter=ad, decoding="authors", progress=False)
    shutil.copy(tiny["adapters"][1] / "adapter_model.safetensors", ad / "adapter_model.safetensors")
    with pytest.raises(TaskEvalError, match=r"key 'adapter_sha256' was"):  # the same path, other weights
        evaluate_tasks(ev, one, tmp_path, "r", adapter=ad, progress=False)
    evaluate_tasks(ev, one, tmp_path, "r3", adapter=tiny["adapters"][0], limit=2, progress=False)
    f = tmp_path / "r3" / "task280_toy.jsonl"
    f.write_text(f.read_text() + "{not json\n")
    with pytest.raises(TaskEvalError, match=rf"results file {f}, line 3"):
        evaluate_tasks(ev, one, tmp_path, "r3", adapter=tiny["adapters"][0], progress=False)
    # an adapter of another base: shapes differ; its key and the base are named
    other_base = write_tiny_base(tmp_path / "wide", TASKS, hidden=48)
    wide = write_tiny_adapter(other_base, tmp_path / "wide_adapter", seed=0)
    with pytest.raises(TaskEvalError, match=r"adapter_model.safetensors: key '.*layers.0.self_attn.[qkv]_proj.lora_"
                                            rf"[AB].weight' has shape .* base model {tiny['base']}"):
        ev.use_adapter(wide)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskEvalError, match=r"empty: adapter_config.json is missing"):
        ev.use_adapter(tmp_path / "empty")
    (tmp_path / "nobase").mkdir()
    with pytest.raises(TaskEvalError, match=r"base model .*nobase: no config.json"):
        Evaluator(tmp_path / "nobase")
    with pytest.raises(TaskEvalError, match="4-bit needs bitsandbytes and a GPU"):
        Evaluator(tiny["base"], quantize="4bit", device="cpu")
    with pytest.raises(TaskEvalError, match=r"run 'r2': no adapter for task\(s\) \['task190_toy'\]"):
        evaluate_tasks(ev, data, tmp_path, "r2", adapter={"task280_toy": tiny["adapters"][0]}, progress=False)


def test_evaluate_task_writes_inside_the_output_dir_only(tiny, tmp_path):
    from uws_core.weights.safe_paths import UnsafePathError

    ex = []
    with pytest.raises(UnsafePathError):
        evaluate_task(tiny["ev"], ex, tmp_path, "../escape", "t", DECODINGS["greedy"])


# ---------------------------------------------------------------------------------------------- through the hub
def test_uws_evaluate_on_adapters_and_tasks_downloaded_from_the_emulated_hub(tiny, tmp_path):
    lora_ids = ["alice/tiny-mistral-task280", "alice/tiny-mistral-task190"]
    dataset_ids = ["Lots-of-LoRAs/task280_stereoset_classification_stereotype_type",
                   "Lots-of-LoRAs/task190_snli_classification"]
    with HubEmulator() as hub:
        s = hub_client.Setup(tmp_path, hub)
        for rid, d in zip(lora_ids, tiny["adapters"]):
            hub.commit(rid, {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()})
        for rid, t in zip(dataset_ids, ("task280", "task190")):
            hub.commit(rid, task_dataset_files(t + "_toy", n_test=3), repo_type="dataset")
        lora_csv = s.use_ids("mistral7b_loras", lora_ids)
        task_csv = s.mdir / "lots_of_loras_tasks.csv"
        assert "2 entries locked" in s.uws("manifest", "lock", lora_csv, "--only", "^alice/")
        assert "2 entries locked" in s.uws("manifest", "lock", task_csv, "--where", "split=eval;ood_test",
                                           "--limit", "2")
        s.uws("download", lora_csv, "--only", "^alice/", "--dest", s.dest / "loras")
        s.uws("download", task_csv, "--where", "split=eval;ood_test", "--limit", "2", "--dest", s.dest / "data")
        # the base from the hub at a pinned commit (main moves on to a broken config afterwards)
        base_sha = hub.commit("mistralai/Mistral-7B-Instruct-v0.2", {p.name: p.read_bytes()
                                                                     for p in tiny["base"].iterdir()})
        hub.commit("mistralai/Mistral-7B-Instruct-v0.2", {"config.json": b"{}"})
        out = tmp_path / "eval"
        # the committed manifest names the tasks: --data-root + --tasks finds the downloaded datasets
        cmd = [sys.executable, "-m", "uws_core.cli", "evaluate", "--base", "mistralai/Mistral-7B-Instruct-v0.2",
               "--base-revision", base_sha, "--adapter", s.dest / "loras" / lora_ids[0], "--data-root",
               s.dest / "data", "--tasks", "task280,task190", "--out", out, "--batch-size", "2"]
        proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=s.env, timeout=600)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert any(f"/resolve/{base_sha}/model.safetensors" in p for _, p, _ in hub.requests)
    assert f"Mistral-7B-Instruct-v0.2@{base_sha}" in proc.stdout
    assert "tiny-mistral-task280: ROUGE-L" in proc.stdout and "over 2 task(s), 6 examples" in proc.stdout
    from uws_core.experiments.task_eval import load_summaries

    summary = load_summaries(out).set_index("task")
    assert list(summary.index) == ["task280", "task190", "ALL"] and (summary["n"] == [3, 3, 6]).all()
    cmd[5:8] = [tiny["base"]]  # a local base, no hub
    bad = subprocess.run(list(map(str, cmd[:10] + ["--tasks", "task99999", "--out", out])), capture_output=True,
                         text=True, env=s.env, timeout=600)
    assert bad.returncode == 2 and "task 'task99999' is not in data_manifests/lots_of_loras_tasks.csv" in bad.stderr


def test_task_selection_from_the_manifest(tmp_path):
    import argparse

    from uws_core.experiments.task_data import TaskDataError
    from uws_core.experiments.task_eval_cli import _task_dirs

    root = tmp_path / "data"
    for rid in ("Lots-of-LoRAs/task280_stereoset_classification_stereotype_type", "Lots-of-LoRAs/task190_snli_classification"):
        (root / rid).mkdir(parents=True)
    (tmp_path / "v" / "task190").mkdir(parents=True)
    ns = dict(task_data=None, data_root=root, which=None, tasks=None, variants=None)
    assert list(_task_dirs(argparse.Namespace(**{**ns, "tasks": "task280,task190"}))) == ["task280", "task190"]
    by_variants = _task_dirs(argparse.Namespace(**{**ns, "variants": tmp_path / "v"}))  # the tasks the variants have
    assert by_variants == {"task190": root / "Lots-of-LoRAs/task190_snli_classification"}
    with pytest.raises(TaskDataError, match=r"task task391: dataset Lots-of-LoRAs/task391_causal_relationship is "
                                            r"not under .*uws download lots_of_loras_tasks"):
        _task_dirs(argparse.Namespace(**{**ns, "which": "ood"}))
    named = _task_dirs(argparse.Namespace(**{**ns, "data_root": None, "task_data": [f"t1={root}", str(root)]}))
    assert named == {"t1": root, "data": root}
    with pytest.raises(TaskEvalError, match="either --task-data or --data-root"):
        _task_dirs(argparse.Namespace(**{**ns, "task_data": [str(root)]}))
