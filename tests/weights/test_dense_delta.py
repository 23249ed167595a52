"""Dense-delta files on tiny seeded tensors: round trip, one rounding when added to bfloat16 weights, bitwise
restore, refusals naming the file and the key."""

from __future__ import annotations

import json

import pytest
import torch

from uws_core.weights.dense_delta import (DELTA_META, DenseDeltaError, add_dense_delta, is_dense_delta,
                                          read_dense_delta, restore_weights, write_dense_delta)


def tiny_model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=True), torch.nn.Linear(4, 3, bias=False))
    return m.to(dtype)


def test_round_trip_and_json(tmp_path):
    gen = torch.Generator().manual_seed(1)
    deltas = {"0.weight": torch.randn(4, 6, generator=gen, dtype=torch.float64)}
    d = write_dense_delta(deltas, tmp_path / "v", scaling=2.0, source="t/mean_of_others", pair_rank=5)
    assert is_dense_delta(d) and not is_dense_delta(tmp_path)
    meta, got = read_dense_delta(d, tiny_model(torch.float32))
    assert meta["keys"] == ["0.weight"] and meta["dtype"] == "bfloat16" and meta["scaling_applied"] == 2.0
    assert meta["source"] == "t/mean_of_others" and meta["pair_rank"] == 5
    assert got["0.weight"].dtype == torch.bfloat16  # one rounding: relative error <= 2^-8 per entry
    assert torch.equal(got["0.weight"], deltas["0.weight"].to(torch.bfloat16))
    err = (got["0.weight"].double() - deltas["0.weight"]).abs()
    assert bool((err <= 2.0 ** -8 * deltas["0.weight"].abs()).all())
    _, got32 = read_dense_delta(write_dense_delta(deltas, tmp_path / "w", 1.0, "s", torch.float32))
    assert torch.equal(got32["0.weight"], deltas["0.weight"].float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_add_rounds_once_and_restore_is_bitwise(dtype):
    model = tiny_model(dtype)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    delta = 0.01 * torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    originals = add_dense_delta(model, {"0.weight": delta})
    assert set(originals) == {"0.weight"} and originals["0.weight"].device.type == "cpu"
    want = (w0["0.weight"].float() + delta).to(dtype)  # sum in float32, rounded once to the weights' dtype
    assert torch.equal(model.get_parameter("0.weight").detach(), want)
    assert torch.equal(model.get_parameter("1.weight").detach(), w0["1.weight"])  # untouched keys stay
    restore_weights(model, originals)
    assert all(torch.equal(model.state_dict()[k], w0[k]) for k in w0)


def test_refusals_name_file_and_key(tmp_path):
    with pytest.raises(DenseDeltaError, match=r"key 'x.bias' needs a '<module>.weight' name"):
        write_dense_delta({"x.bias": torch.ones(3, 3)}, tmp_path / "a", 1.0, "s")
    with pytest.raises(DenseDeltaError, match=r"dtype torch.int8 is not one of"):
        write_dense_delta({"0.weight": torch.ones(4, 6)}, tmp_path / "b", 1.0, "s", torch.int8)
    d = write_dense_delta({"1.weight": torch.ones(4, 6)}, tmp_path / "c", 1.0, "s")
    with pytest.raises(DenseDeltaError, match=r"c/dense_delta.safetensors: key '1.weight' has shape \(4, 6\), but "
                                              r"that weight of base model the base is \(3, 4\)"):
        read_dense_delta(d, tiny_model(torch.float32))
    (d / DELTA_META).write_text(json.dumps({"format": "something else", "version": 1}))
    with pytest.raises(DenseDeltaError, match=r"c/dense_delta.json: not format 'uws-dense-delta' version 1"):
        read_dense_delta(d)
    (d / DELTA_META).write_text("{not json")
    with pytest.raises(DenseDeltaError, match=r"c/dense_delta.json: cannot read"):
        read_dense_delta(d)
