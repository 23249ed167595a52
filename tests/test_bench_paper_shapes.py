"""benchmarks/bench_paper_shapes.py at a tiny size: the adapters it writes, and one end-to-end run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.bench_paper_shapes import ALPHA, KEY, RANK, SHAPES, planted_factors, write_adapters
from uws_core.weights.adapters import AdapterSet
from uws_core.weights.population_spectra import population_spectra
from uws_core.linalg.spectral import stack_spectrum

REPO = Path(__file__).resolve().parents[1]


def test_adapters_have_mistral_shapes_key_names_and_scaling(tmp_path):
    dirs = write_adapters(tmp_path, n=3, layers=1)
    assert [d.relative_to(tmp_path).as_posix() for d in dirs] == [f"synthetic/mistral-7b-lora-00{i}" for i in range(3)]
    aset = AdapterSet.from_root(tmp_path)
    assert len(aset) == 3 and np.allclose(aset.scalings, ALPHA / RANK)
    for module, (d_out, d_in) in SHAPES.items():
        key = KEY.format(layer=0, module=module, ab="A").rsplit(".lora_A", 1)[0]
        assert key in aset.module_keys and aset.shape(key) == (d_out, RANK, d_in)
    b_ref, a_ref = planted_factors(3, *SHAPES["k_proj"], seed=0 + 100 * 0 + 1)  # layer 0, module index 1
    assert b_ref.dtype == np.float32
    b, a = aset.load(2, KEY.format(layer=0, module="k_proj", ab="A").rsplit(".lora_A", 1)[0])
    np.testing.assert_array_equal(b.numpy(), b_ref[2])  # float32 on disk, exactly upcast
    np.testing.assert_array_equal(a.numpy(), a_ref[2])

def test_uws_spectra_on_the_written_adapters_matches_a_float64_svd(tmp_path, monkeypatch):
    monkeypatch.setitem(SHAPES, "k_proj", (64, 256))  # Mistral's k_proj is (1024, 4096): same path, 256x less work
    write_adapters(tmp_path / "pop", n=3, layers=1, modules=("k_proj",))
    aset = AdapterSet.from_root(tmp_path / "pop")
    res = population_spectra(aset, tmp_path / "out", keys=r"k_proj", progress=False)
    (key, got), = res["keys"].items()
    assert got["solver"] == "factored_gram"  # N r = 48 < 256
    b = np.stack([aset.load(i, key)[0].numpy() for i in range(3)])
    a = np.stack([aset.load(i, key)[1].numpy() for i in range(3)])
    ref = stack_spectrum(a, "rows", "samples", k=0, device="cpu").evr()
    np.testing.assert_allclose(got["spectra"]["lora_A"]["evr"], ref[:len(got["spectra"]["lora_A"]["evr"])],
                               rtol=0, atol=1e-10)
    ref_p = stack_spectrum(ALPHA / RANK * b @ a, "rows", "models", k=0, device="cpu").evr()
    n_p = len(got["spectra"]["product"]["evr"])
    np.testing.assert_allclose(got["spectra"]["product"]["evr"], ref_p[:n_p], rtol=0, atol=1e-10)


def test_benchmark_end_to_end_tiny(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_paper_shapes", "--n", "3", "--layers", "1",
                           "--peer-n", "6", "--repeat", "1", "--threads", "1",
                           "--large-n", "20", "--solvers", "0", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "UWS_BENCH_HIDDEN": "256"})  # every shape / 16: the same code paths
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "paper_shapes_results.json").read_text())
    assert data["hidden"] == 256 and data["shapes"]["q_proj"] == [256, 256]
    assert set(data["runs"]) == {"threads=1", "before (d x d path), threads=1", "N=20, threads=1"}
    large = data["runs"]["N=20, threads=1"]["keys"]  # N r = 320 >= d = 256: the d x d Gram from the factors
    assert len(large) == 3 and {k["solver"] for k in large} == {"factor_feature_gram"}
    before = data["runs"]["before (d x d path), threads=1"]["keys"]
    assert [k["module"] for k in before] == ["k_proj", "q_proj"] and {k["solver"] for k in before} == {"streaming d x d"}
    run = data["runs"]["threads=1"]
    for k in before:  # the two solvers give the same spectra
        new = next(x for x in run["keys"] if x["key"] == k["key"])
        assert all(abs(new["top16_evr"][v] - k["top16_evr"][v]) < 1e-10 for v in k["top16_evr"])
    assert len(run["keys"]) == 3 and {k["solver"] for k in run["keys"]} == {"factored_gram"}
    assert run["peak_rss_bytes"] > 0 and set(run["peak_per_shape_class"]) == {"q_proj", "k_proj"}
    assert "extrapolated_96_keys_s" in run["extrapolation"] and run["extrapolation"]["keys"] == 96
    peers = data["peers"]
    assert set(peers) == {"references", "threads=1"}
    assert set(peers["references"]) == {"reference_model_axis", "reference_authors"}
    timed = peers["threads=1"]
    assert set(timed) == {"replication", "uws_model_axis", "authors", "uws_authors", "speedups"}
    assert all(timed[k]["top16_within_tol"] for k in ("replication", "uws_model_axis", "authors", "uws_authors"))
    assert timed["uws_authors"]["evr_max_diff_vs_float64"] < 1e-10  # float64 Gram route: round-off only
    assert timed["uws_model_axis"]["evr_max_diff_vs_float64"] < 1e-10
    assert timed["authors"]["components_compared"] == 6 * RANK - 1  # sklearn: min(300, N r - 1, d - 1)
    assert timed["speedups"]["authors_vs_sklearn"] > 0
    assert data["machine"]["cores"] >= 1 and data["load_before"] and data["load_after"]
    md = (tmp_path / "paper_shapes_results.md").read_text()
    assert "Scaled-down shapes (UWS_BENCH_HIDDEN=256)" in md
    assert "Extrapolated (not measured)" in md and "replication" in md and "CUDA:" in md
