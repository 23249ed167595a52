"""The paper-scale branch of notebook 01 runs on adapters laid out as the manifest's hub ids.

Nothing here can download the real Lots-of-LoRAs adapters, so the test writes small PEFT adapters (real
peft, tiny Mistral, q/k/v) under the names of the first entries of data_manifests/mistral7b_loras.csv and
executes the notebook with UWS_SCALE=paper: the same code path a reviewer with the downloads runs.
"""

from conftest import adapters_under_manifest_ids, run_notebook
from task_world import write_task_world
from vit_world import write_vit_family
from uws_core.report import claims
from uws_core.weights.manifests import load_manifest

N = 6


def test_notebook_01_at_paper_scale_on_manifest_layout(tmp_path):
    adapters_under_manifest_ids(tmp_path / "hub", N)
    res = run_notebook("01_mistral7b_lora_spectra", tmp_path, {"UWS_MISTRAL_LORA_DIR": tmp_path / "hub"},
                       {"N_BOOT": 2})
    assert res["n_adapters"] == N and res["rank"] == 4
    assert "population" not in res                      # no training records at paper scale


def test_notebook_07_at_paper_scale_on_manifest_layout(tmp_path):
    """Random inits are generated from the base's config.json; no scratch models, no LoRAs: both skipped."""
    ids = list(load_manifest("vit")["repo_id"][:10])
    write_vit_family(tmp_path / "hub", ids, "google/vit-base-patch16-224")
    res = run_notebook("07_null_models", tmp_path, {"UWS_VIT_DIR": tmp_path / "hub", "UWS_MISTRAL_LORA_DIR": None,
                                                    "UWS_CACHE": tmp_path / "cache"},
                       {"N_BOOT": 2, "N_RANDOM_INIT": 6, "HALF_SIZES": [2, 4], "STABLE_LAYER": 0})
    assert res["params"]["N_RANDOM_INIT"] == 6 and res["params"]["HALF_SIZES"] == [2, 4]
    assert res["scratch_vs_finetune"] == [] and res["lora_shared_init"] is None
    assert len(res["base_inheritance"]) == 6           # 6 encoder matrices of the one layer
    assert len(list((tmp_path / "cache" / "random_init").glob("*/seed_5/model.safetensors"))) == 1


def test_notebook_06_at_paper_scale_counts_bytes_from_streamed_spectra(tmp_path):
    """LoRA adapters and ViTs under manifest ids; no Llama dir: that population is skipped."""
    adapters_under_manifest_ids(tmp_path / "loras", N)
    write_vit_family(tmp_path / "vits", list(load_manifest("vit")["repo_id"][:8]), "google/vit-base-patch16-224")
    res = run_notebook("06_compression", tmp_path, {"UWS_MISTRAL_LORA_DIR": tmp_path / "loras",
                                                    "UWS_VIT_DIR": tmp_path / "vits", "UWS_LLAMA_DIR": None})
    assert set(res["tables"]) == {"lora", "vit"}
    vit = {row["setting"]: row for row in res["tables"]["vit"]}
    assert "acc" not in vit["k=16"] and vit["90% EV"]["ratio"] > 0        # bytes only, no quality at paper scale
    assert (tmp_path / "results" / "06_spectra" / "vit" / "spectra.json").is_file()


def test_notebook_05_at_paper_scale_builds_the_bases_and_counts_only(tmp_path):
    """The manifest's ViTs (tiny ones under their hub ids, the base beside them): the paper-scale loader
    (uws_core.experiments.adaptation_data.vit_adaptation_paper) builds the frozen bases with the mean task vector,
    the notebook reports the trainable counts and trains nothing (no task data at paper scale)."""
    ids = list(load_manifest("vit")["repo_id"][:6])
    write_vit_family(tmp_path / "hub", ids, "google/vit-base-patch16-224")
    res = run_notebook("05_subspace_adaptation", tmp_path, {"UWS_VIT_DIR": tmp_path / "hub", "UWS_MISTRAL_BASE": None,
                                                            "UWS_TASK_DATA_DIR": None}, {"MAX_MODELS": 6})
    assert "vit_summary" not in res and "lm_tasks" not in res    # no run at paper scale
    assert "UWS_MISTRAL_BASE and UWS_TASK_DATA_DIR not set" in res["functional"]   # the Mistral-7B part says why not
    counts = {(r["method"], r["k"]): r for r in res["trainable_counts"]}
    # one block: q, k, v, attention out (32 x 32), fc1 (64 x 32), fc2 (32 x 64)
    assert counts["full", 0]["ours"] == 4 * 32 * 32 + 2 * 64 * 32
    assert counts["subspace", 4]["ours"] == 4 * (4 * 32 + 64 + 32)  # d_out * k per matrix
    assert counts["full", 0]["vit_b"] == 12 * (4 * 768 * 768 + 2 * 3072 * 768)


def test_notebook_06_at_paper_scale_measures_the_rouge_l_kept_at_each_k(tmp_path):
    """A tiny base, 6 PEFT adapters of it under training ids (2 of them the authors' IID test tasks, with tiny
    datasets): the LoRA table gets its bytes from streamed spectra and its quality from ROUGE-L of the rebuilt
    adapters on the 2 tasks."""
    w = write_task_world(tmp_path, n_train=4, n_iid=2, n_ood=0)
    res = run_notebook("06_compression", tmp_path, {"UWS_MISTRAL_LORA_DIR": w["loras"], "UWS_VIT_DIR": None,
                                                    "UWS_LLAMA_DIR": None, "UWS_MISTRAL_BASE": w["base"],
                                                    "UWS_TASK_DATA_DIR": w["data"]}, {"N_BOOT_ROUGE": 200})
    assert set(res["tables"]) == {"lora"}
    f = res["functional_paper"]
    assert f["tasks"] == w["iid"] and f["missing"] == []
    table = {r["setting"]: r for r in f["table"]}
    assert list(table) == ["base", "own", "k=1", "k=4", "k=16", "k=32", "k=64", "80% EV", "90% EV", "95% EV"]
    assert {r["setting"] for r in res["tables"]["lora"]} == set(list(table)[2:])   # one quality row per bytes row
    for r in table.values():
        assert r["tasks"] == 2 and r["n"] == 6 and 0 <= r["rougeL_lo"] <= r["rougeL"] <= r["rougeL_hi"] <= 100
    assert table["own"]["rougeL"] > table["base"]["rougeL"]          # the fixture's adapters are fitted to their tasks
    assert table["own"]["rougeL/own"] == 1.0 and table["own"]["gain kept"] == 1.0 and table["base"]["gain kept"] == 0
    # k = 64 spans the whole 32-dim input and 32 / 16-dim output spaces of the tiny adapters: the adapter comes back
    assert table["k=64"]["rougeL"] == table["own"]["rougeL"]
    assert {p["comparison"] for p in f["paired"]} == {f"{s} - own" for s in list(table)[2:]}
    row = claims.lora_compression(claims.load_all(tmp_path / "results"))   # the ledger reads the ROUGE-L kept
    assert row.verdict in (claims.HOLDS, claims.FAILS) and "keeping 95% ROUGE-L" in row.ours

