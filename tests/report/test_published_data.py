"""data_manifests/published: checksums, refusal of a changed file, and the numbers uws_core.report.published derives."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from uws_core.report import published

DIR = Path(__file__).resolve().parents[2] / "data_manifests" / "published"


def test_every_file_matches_its_sha256_and_is_listed_in_the_readme():
    sums = [line.split() for line in (DIR / "SHA256SUMS").read_text().splitlines()]
    assert len(sums) == 10
    readme = (DIR / "README.md").read_text()
    for digest, name in sums:
        assert hashlib.sha256((DIR / name).read_bytes()).hexdigest() == digest, name
        assert digest in readme and name in readme
    listed = {name.removeprefix("./") for _, name in sums}
    on_disk = {p.relative_to(DIR).as_posix() for p in DIR.rglob("*") if p.is_file()} - {"SHA256SUMS", "README.md"}
    assert listed == on_disk
    assert "MIT License" in (DIR / "replication" / "LICENSE").read_text()
    assert "dd57f0c11186abcf4bc23b4565f418bebe12e83a" in readme and "2244a9a51a04001956cb8008a6c3ccd23de70b24" in readme


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "published"
    shutil.copytree(DIR, copy)
    target = copy / "replication" / "phase3_merging" / "results" / "phase3_ties_sweep.json"
    target.chmod(0o644)
    target.write_text(target.read_text().replace("0.65", "0.70", 1))
    monkeypatch.setattr(published, "PUBLISHED_DIR", copy)
    published._checksums.cache_clear()
    try:
        with pytest.raises(published.PublishedDataError, match="phase3_ties_sweep.json has sha256"):
            published.read_published("replication/phase3_merging/results/phase3_ties_sweep.json")
        with pytest.raises(published.PublishedDataError, match="no entry"):
            published.read_published("replication/other.json")
    finally:
        monkeypatch.undo()
        published._checksums.cache_clear()


def test_spectra_numbers_come_from_phase1_report():
    raw = json.loads((DIR / "replication/phase1_lora_spectral/results/phase1_report.json").read_text())
    assert raw["n_loras"] == 100 and len(raw["layers"]) == 96
    top16 = np.median([m["top16_vit"] for m in raw["layers"].values()])
    rep = published.LORA_SPECTRA["replication"]
    assert rep["top_evr"][16] == round(top16, 4) == 0.4308
    assert rep["null_top_evr"] == {1: 0.0104, 4: 0.0414, 16: 0.1647, 32: 0.3278, 64: 0.6512}
    assert rep["recon_error_k16"] == 0.7505
    assert published.replication_phase1_modules()["model.layers.0.self_attn.k_proj"]["top16_vit"] == pytest.approx(
        0.4878218173980713, abs=1e-15)


def test_loo_merging_adaptation_and_family_numbers():
    loo = published.LORA_LOO["replication"]
    assert (loo["base"], loo["own"], loo["mean_only"], loo["mean_plus_k16"]) == (29.5, 68.5, (43.5, 44.0), (43.5, 44.5))
    assert loo["basis_only"] == (29.0, 31.0) and loo["by_n"][100]["basis_k16"] == 31.0  # README: N=100 31.0%, N=500 29.0%
    rep = published.MERGING["replication"]
    assert (rep["mean"], rep["subspace"], rep["ties_d0.2"], rep["ties_best"], rep["task_arithmetic"], rep["individual"]) \
        == (69.4, 69.4, 41.2, 57.5, 34.4, 85.6)
    assert published.ADAPTATION["replication_k16"] == {"lora_r16": 76.7, "subspace_plus_mean": 73.3, "basis_only": 75.0,
                                                        "own_adapter": 80.0, "base": 60.0,
                                                        "source": published.REPLICATION}
    assert published.ADAPTATION["replication_k4"]["subspace_plus_mean"] == 63.3
    vit = published.VIT
    assert (vit["replication_random_init"]["top16_evr"], vit["replication_random_init"]["mp_null_top16_evr"]) == (0.1649, 0.1648)
    later = vit["authors_later_savings_90ev"]
    assert (later["vit"], later["gpt2"], later["llama"], later["flan_t5"]) == (0.626, 0.646, 0.671, 0.851)
    fam = published.authors_family_summary()
    assert [round(1 / (1 - fam[f]["savings_90_pct"] / 100), 2) for f in ("ViT", "GPT-2", "LLaMA", "Flan-T5 GLUE")] \
        == [2.68, 2.82, 3.04, 6.72]
    errs = published.replication_loo_weight_errors()
    assert len(errs) == 10 and errs["task020"][16] == pytest.approx(1.0661505183395366, abs=1e-15)
