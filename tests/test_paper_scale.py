"""The paper-scale branch of notebook 01 runs on adapters laid out as the manifest's hub ids.

Nothing here can download the real Lots-of-LoRAs adapters, so the test writes small PEFT adapters (real
peft, tiny Mistral, q/k/v) under the names of the first entries of data_manifests/mistral7b_loras.csv and
executes the notebook with UWS_SCALE=paper: the same code path a reviewer with the downloads runs.
"""
import json
import shutil
from pathlib import Path

import pytest

from conftest import write_adapters
from uws_core.manifests import load_manifest, lora_split

REPO = Path(__file__).resolve().parent.parent
N = 6


def test_notebook_01_at_paper_scale_on_manifest_layout(tmp_path, monkeypatch):
    pm = pytest.importorskip("papermill")
    ids = list(lora_split(load_manifest("mistral7b_loras"), "train")["repo_id"][:N])
    written = write_adapters(tmp_path / "written", n=N, r=4, alpha=8)
    root = tmp_path / "hub"
    for repo_id, d in zip(ids, written.dirs):
        (root / repo_id).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(d), root / repo_id)
    monkeypatch.setenv("UWS_SCALE", "paper")
    monkeypatch.setenv("UWS_MISTRAL_LORA_DIR", str(root))
    monkeypatch.setenv("UWS_RESULTS", str(tmp_path / "results"))
    pm.execute_notebook(str(REPO / "notebooks" / "01_mistral7b_lora_spectra.ipynb"), str(tmp_path / "out.ipynb"),
                        cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
                        parameters={"N_BOOT": 2})
    res = json.loads((tmp_path / "results" / "01_mistral7b_lora_spectra.json").read_text())
    assert res["scale"] == "paper"
    assert res["results"]["n_adapters"] == N and res["results"]["rank"] == 4
    assert "population" not in res["results"]           # no training records at paper scale
