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
