import json

import numpy as np
import pytest

from uws_core.report import results


def test_save_and_load_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("UWS_RESULTS", str(tmp_path))
    path = results.save_results("99_demo", {"evr": np.array([0.5, 0.25]), "k": np.int64(3), 1: np.float32(0.5)})
    data = json.loads(path.read_text())
    assert data["scale"] == "laptop"
    assert data["results"] == {"evr": [0.5, 0.25], "k": 3, "1": 0.5}
    assert results.load_results("99_demo")["results"]["k"] == 3
    with pytest.raises(FileNotFoundError, match="notebooks/98_missing.ipynb"):
        results.load_results("98_missing")


def test_scale_is_validated(monkeypatch):
    monkeypatch.setenv("UWS_SCALE", "huge")
    with pytest.raises(ValueError, match="huge"):
        results.scale()
    monkeypatch.setenv("UWS_SCALE", "paper")
    assert results.scale() == "paper"


def test_nan_is_written_as_null(tmp_path, monkeypatch):
    monkeypatch.setenv("UWS_RESULTS", str(tmp_path))
    path = results.save_results("99_nan", {"x": float("nan")})
    assert json.loads(path.read_text())["results"]["x"] is None


def test_relative_results_dir_is_taken_from_the_repository_root(tmp_path, monkeypatch):
    """A notebook kernel runs in notebooks/: a relative UWS_RESULTS must name the same directory there as anywhere."""
    repo, elsewhere = tmp_path / "repo", tmp_path / "repo" / "notebooks"
    elsewhere.mkdir(parents=True)
    monkeypatch.setattr(results, "REPO", repo)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("UWS_RESULTS", "results/native")
    assert results.results_dir() == repo / "results" / "native"
    assert (repo / "results" / "native" / "figures").is_dir() and not (elsewhere / "results").exists()
    monkeypatch.setenv("UWS_RESULTS", str(tmp_path / "abs"))
    assert results.results_dir() == tmp_path / "abs"
