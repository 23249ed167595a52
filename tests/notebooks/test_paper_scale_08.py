"""The paper-scale branch of notebook 08 evaluates the held-out adapters' reconstructions by ROUGE-L.

Nothing here can download Mistral-7B or the Lots-of-LoRAs adapters and task datasets, so the test writes a tiny
Mistral-architecture base with a real tokenizer file, PEFT adapters of it (real peft) under the manifest's hub ids of
a few training tasks and of two IID and two OOD test tasks, and tiny task datasets in the Lots-of-LoRAs schema and
file format under the task manifest's dataset ids, publishes them on the local hub emulator, locks and downloads
them with ``uws``, then executes the notebook with UWS_SCALE=paper: the code path a reviewer with the downloads
and a GPU runs (``docs/paper_scale.md``).
"""

from conftest import run_notebook, sibling_test_module
from task_world import publish_and_download, write_task_world
from uws_core.report import claims

hub_client = sibling_test_module("weights", "test_hub_client")
HubEmulator = sibling_test_module("weights", "hub_emulator").HubEmulator


def test_notebook_08_at_paper_scale_gives_rouge_tables_with_cis(tmp_path):
    """Through the emulated hub: adapters and datasets locked and downloaded by `uws`, the base loaded by its hub id
    at the pinned commit (main has moved on to a broken config)."""
    w = write_task_world(tmp_path / "world", n_train=4, n_iid=2, n_ood=2)
    with HubEmulator() as hub:
        env = publish_and_download(w, hub, hub_client.Setup(tmp_path, hub))
        res = run_notebook("08_lora_functional_loo", tmp_path, env, {"N_BOOT_ROUGE": 200, "K_PAPER": [2], "K_ERR": [0, 2]})
        assert any(f"/resolve/{env['UWS_MISTRAL_BASE_REVISION']}/model.safetensors" in p for _, p, _ in hub.requests)
    assert res["n_adapters"] == 6 and "accuracy_mean_pct" not in res     # 4 train + the 2 IID tasks (in train)
    f = res["functional_paper"]
    assert f["precision"] == "float32" and f["device"] == "cpu" and f["ks"] == [2]
    assert f["setup"]["base"] == "mistralai/Mistral-7B-Instruct-v0.2" and f["setup"]["revision"] == env[
        "UWS_MISTRAL_BASE_REVISION"]
    for group in ("iid", "ood"):
        g = f["groups"][group]
        assert g["tasks"] == w[group] and len(g["missing"]) == 8            # the other 8 of the authors' 10
        runs = {r["run"]: r for r in g["table"]}
        assert set(runs) == {"base", "own", "mean_of_others", "factors_mean_k2", "factors_nomean_k2", "product_mean_k2",
                             "product_nomean_k2", "factors_random_mean_k2", "factors_random_nomean_k2", "basis_only_k2"}
        assert runs["own"]["rougeL"] > runs["base"]["rougeL"]       # the fixture's adapters are fitted to their tasks
        for r in runs.values():
            assert r["tasks"] == 2 and r["n"] == 6
            for m in ("rougeL", "rougeL_max", "exact_match"):
                assert 0 <= r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"] <= 100
        paired = {p["comparison"]: p for p in g["paired"]}
        assert set(paired) >= {"B@A: mean + proj - mean only", "factors: fitted - random basis", "own - base"}
        d = paired["own - base"]
        assert d["lo"] <= d["diff"] <= d["hi"]
        assert abs(d["diff"] - (runs["own"]["rougeL"] - runs["base"]["rougeL"])) < 1e-9   # paired = difference of means
        assert set(g["gain_kept"]) == {"factors_nomean_k2 k=2", "product_mean_k2 k=2"}
    # per-example results are on disk, one line per test example, resumable
    ev = tmp_path / "results" / "08_task_eval" / "eval" / "ood" / "own"
    assert len((ev / f"{w['ood'][0]}.jsonl").read_text().splitlines()) == 3 and (ev / "summary.csv").is_file()
    adapters = tmp_path / "results" / "08_task_eval" / "adapters"      # the high-rank variants as dense deltas
    assert sorted({p.parent.name for p in adapters.glob("*/*/*/dense_delta.json")}) == [
        "basis_only_k2", "mean_of_others", "product_mean_k2", "product_nomean_k2"]
    assert len(list(adapters.glob("*/*/*/dense_delta.json"))) == 16                 # 4 per task, 4 tasks
    assert len(list(adapters.glob("*/*/own/adapter_config.json"))) == 4               # low rank: PEFT
    row = claims.lora_loo(claims.load_all(tmp_path / "results"))          # the ledger reads these numbers
    assert row.ours.startswith("paper scale, float32 on cpu, greedy decoding, full test splits: IID (2 tasks)")
    assert row.verdict in (claims.HOLDS, claims.FAILS)


def test_notebook_08_at_paper_scale_says_when_the_functional_part_cannot_run(tmp_path):
    w = write_task_world(tmp_path, n_train=6, n_iid=0, n_ood=0)
    res = run_notebook("08_lora_functional_loo", tmp_path, {"UWS_MISTRAL_LORA_DIR": w["loras"], "UWS_MISTRAL_BASE": None,
                                                            "UWS_TASK_DATA_DIR": None}, {"K_ERR": [0, 2]})
    assert "functional_paper" not in res and "UWS_MISTRAL_BASE and UWS_TASK_DATA_DIR not set" in res["functional"]
    row = claims.lora_loo(claims.load_all(tmp_path / "results"))
    assert row.verdict == claims.NOT_TESTED and row.ours.startswith("not measured at paper scale: functional")
