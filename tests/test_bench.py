"""Smoke test of benchmarks/bench_lora_subspace.py in --quick mode (tiny sizes, a temp output folder)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_mode_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_lora_subspace", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    recs = data["records"]
    assert {r["method"] for r in recs} == {"factored", "dense", "tensorly"}
    assert not [r for r in recs if "error" in r]
    angles = [r["max_angle_vs_factored"] for r in recs if "max_angle_vs_factored" in r]
    assert len(angles) == 3 and max(angles) < 1e-8  # factored == dense == tensorly subspaces
    assert all(r["peak_bytes"] >= 0 and r["seconds"] > 0 for r in recs)
    md = (tmp_path / "results.md").read_text()
    assert "| model | models | 12 | 48 | factored |" in md and "## Targets" in md


def test_task_eval_bench_quick_mode_writes_rates(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_task_eval", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads((tmp_path / "task_eval_results.json").read_text())["runs"]
    assert [(r["hidden"], r["decoding"]) for r in runs] == [(32, "greedy"), (32, "authors")]
    assert all(r["generated_now"] == 4 and r["examples_per_s"] > 0 and r["peak_memory_bytes"] > 0 for r in runs)


def test_streaming_bench_quick_mode_times_the_kernels_the_code_uses(tmp_path):
    """bench_streaming runs unpinned (paper-scale rates): its Gram rate is the dsyrk kernel StreamingSpectrum uses
    there, with torch's addmm beside it, and its eigenvalue fit times eigh_descending (two-stage LAPACK)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_streaming", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "streaming_results.json").read_text())
    gemm = data["measured"]["gemm"]
    assert gemm["kernel"] == "syrk" and set(gemm["by_kernel"]) == {"syrk", "addmm"}
    assert data["rates"]["gram_GFLOPs"] == gemm["by_kernel"]["syrk"]["GFLOPs"] > 0
    assert set(data["measured"]["eig"]["torch_eigvalsh_seconds"]) == set(data["measured"]["eig"]["seconds"])
    md = (tmp_path / "streaming_results.md").read_text()
    assert "syrk (best of 3) (the kernel used)" in md and "two-stage" in md


def test_nb01_key_bench_times_both_shapes(tmp_path):
    """bench_nb01_key on 3 tiny-N adapters: both shape classes timed through notebook 01's views and nulls."""
    from benchmarks.bench_nb01_key import time_keys
    from benchmarks.bench_paper_shapes import write_adapters

    write_adapters(tmp_path, 3, 1)
    per_key = time_keys(tmp_path)
    assert set(per_key) == {"k_proj", "q_proj"} and all(t > 0 for t in per_key.values())
