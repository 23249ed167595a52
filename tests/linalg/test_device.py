import numpy as np
import pytest
import torch

from uws_core.linalg.device import ACCUM_DTYPE, as_tensor, pick_device


def test_pick_device_default_and_override(monkeypatch):
    monkeypatch.delenv("UWS_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    monkeypatch.setenv("UWS_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit choice wins


def test_pick_device_rejects_bad_env(monkeypatch):
    monkeypatch.setenv("UWS_DEVICE", "not-a-device")
    with pytest.raises(ValueError, match="UWS_DEVICE"):
        pick_device()


def test_as_tensor_dtypes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = as_tensor(x)
    assert t.dtype == ACCUM_DTYPE == torch.float64 and t.device.type == "cpu"
    assert as_tensor(x, dtype=None).dtype == torch.float32  # keep the input's own dtype
    bf = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    assert as_tensor(bf).tolist() == [1.5, -2.25]  # exact upcast
