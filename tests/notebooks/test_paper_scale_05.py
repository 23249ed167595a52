"""The paper-scale branch of notebook 05 trains coefficients on the Mistral LoRAs' basis and scores them by ROUGE-L.

Nothing here can download Mistral-7B, the Lots-of-LoRAs adapters or their task datasets, so the test writes a tiny
Mistral-architecture base with a real tokenizer file, PEFT adapters of it under the manifest's ids of 4 training tasks
and of 2 of the authors' OOD tasks, and tiny task datasets (train / valid / test) in the Lots-of-LoRAs schema
(``task_world.write_task_world``), plus the tiny ViT family the notebook's ViT part reads at paper scale, and
executes the notebook with UWS_SCALE=paper: the code path a reviewer with the downloads and a GPU runs.
"""
from conftest import run_notebook
from task_world import write_task_world
from vit_world import write_vit_family
from uws_core.experiments import lora_coefficients as lc, task_study as ts
from uws_core.experiments.task_eval import Evaluator
from uws_core.report import claims
from uws_core.weights.manifests import load_manifest

RUNS = ["base", "own", "mean_only", "subspace_mean_k2", "subspace_nomean_k2", "random_mean_k2", "random_nomean_k2"]


def test_notebook_05_at_paper_scale_trains_coefficients_and_gives_rouge_tables_with_cis(tmp_path):
    w = write_task_world(tmp_path / "world", n_train=4, n_iid=0, n_ood=2)
    write_vit_family(tmp_path / "vit", list(load_manifest("vit")["repo_id"][:3]), "google/vit-base-patch16-224")
    env = {"UWS_VIT_DIR": tmp_path / "vit", "UWS_MISTRAL_LORA_DIR": w["loras"], "UWS_MISTRAL_BASE": w["base"],
           "UWS_MISTRAL_BASE_REVISION": None, "UWS_TASK_DATA_DIR": w["data"], "UWS_EVAL_LIMIT": None}
    res = run_notebook("05_subspace_adaptation", tmp_path, env, {"MAX_MODELS": 3, "K_PAPER": 2, "COEF_STEPS": 3,
                                                                 "COEF_BATCH": 2, "N_BOOT_ROUGE": 200})
    assert "vit_summary" not in res and "functional" not in res
    f = res["functional_paper"]
    assert f["tasks"] == w["ood"] and len(f["missing"]) == 8                 # the other 8 of the authors' 10 OOD tasks
    assert f["precision"] == "float32" and f["device"] == "cpu" and f["n_training_adapters"] == 4
    assert f["settings"]["k"] == 2 and f["settings"]["steps"] == 3 and f["settings"]["checkpointing"] is False
    table = {r["run"]: r for r in f["table"]}
    assert list(table) == RUNS
    for r in table.values():
        assert r["tasks"] == 2 and r["n"] == 6                              # 2 tasks x 3 test examples
        for m in ("rougeL", "rougeL_max", "exact_match"):
            assert 0 <= r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"] <= 100
    assert table["own"]["rougeL"] > table["base"]["rougeL"]                 # the fixture's own adapters fit their tasks
    paired = {p["comparison"]: p for p in f["paired"]}
    assert set(paired) == {"subspace + mean - mean only", "subspace - random basis (no mean)",
                           "subspace + mean - random basis + mean", "subspace (no mean) - base", "mean only - base",
                           "own - subspace + mean"}
    for name, p in paired.items():
        assert p["lo"] <= p["diff"] <= p["hi"], name
    d = paired["subspace (no mean) - base"]                                  # paired = difference of the means
    assert abs(d["diff"] - (table["subspace_nomean_k2"]["rougeL"] - table["base"]["rougeL"])) < 1e-9
    training = f["training"]
    assert len(training) == 8 and {t["trainable"] for t in training} == {2 * 6}   # k x (q, k, v of 2 layers)
    assert all(t["n_train_examples"] == 3 for t in training)
    adapters = tmp_path / "results" / "05_task_eval" / "adapters"
    assert len(list(adapters.glob("*/*/coefficients.json"))) == 2 * 5          # 4 trained + mean only, per task
    ev = tmp_path / "results" / "05_task_eval" / "eval" / "subspace_mean_k2"
    assert len((ev / f"{w['ood'][0]}.jsonl").read_text().splitlines()) == 3 and (ev / "summary.csv").is_file()
    # resumable: the same study again trains nothing (stored records and files kept) and scores nothing anew
    stamps = {p: p.stat().st_mtime_ns for p in adapters.rglob("*") if p.is_file()}
    setup = ts.functional_setup(str(w["base"]), None, w["data"], n_boot=200)
    again = lc.coefficient_study(Evaluator(setup.base), setup, *lc.paper_adapters(w["loras"]),
                                 tmp_path / "results" / "05_task_eval", lc.CoefficientSettings(**f["settings"]),
                                 progress=False)
    assert again["training"] == training and again["table"] == f["table"]
    assert {p: p.stat().st_mtime_ns for p in adapters.rglob("*") if p.is_file()} == stamps
    assert all(t["generated_now"] == 0 for t in again["timing"])
    row = claims.adaptation(claims.load_all(tmp_path / "results"))          # the ledger reads these numbers
    assert row.ours.startswith("paper scale, float32 on cpu, greedy decoding, full test splits, Mistral-7B, 2 OOD "
                               "tasks, 12 coefficients trained (3 steps of 2), ROUGE-L: subspace")
    assert row.verdict in (claims.HOLDS, claims.FAILS)
