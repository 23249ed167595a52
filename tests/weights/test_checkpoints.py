"""uws_core.weights.checkpoints: tiny transformers checkpoints (single file and sharded) and every refusal."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from uws_core.weights.checkpoints import (CheckpointFormatError, CheckpointSet, MissingCheckpointFileError,
                                  natural_key)

Q1 = "model.layers.1.self_attn.q_proj.weight"
K0 = "model.layers.0.self_attn.k_proj.weight"


def _assert_matches(cs, written):
    assert cs.weight_keys == sorted(written.weights[0], key=natural_key)
    for key in cs.weight_keys:
        stack = cs.stack(key)  # (N, d_out, d_in)
        assert stack.dtype == torch.float64 and stack.shape == (len(cs), *cs.shape(key))
        for i, w in enumerate(written.weights):
            assert torch.equal(stack[i], w[key]), (i, key)


def test_single_file_read_back(make_checkpoints):
    w = make_checkpoints(n=3)
    assert all((d / "model.safetensors").is_file() for d in w.dirs)
    cs = CheckpointSet.from_dirs(w.dirs)
    assert cs.names == ["model_0", "model_1", "model_2"]
    # 2 layers x 7 projections + embed_tokens + lm_head (untied); 1-D norms are not weight keys
    assert len(cs.weight_keys) == 16 and "model.norm.weight" not in cs.weight_keys
    assert cs.weight_keys.index("model.layers.1.mlp.down_proj.weight") > cs.weight_keys.index(Q1.replace("1", "0"))
    assert cs.shape(K0) == (16, 32) and cs.shape("model.layers.0.mlp.up_proj.weight") == (64, 32)
    _assert_matches(cs, w)


def test_sharded_read_back_and_mixed_layouts(make_checkpoints, tmp_path):
    sharded = make_checkpoints(n=2, max_shard_size="20KB")
    for d in sharded.dirs:
        assert (d / "model.safetensors.index.json").is_file() and not (d / "model.safetensors").exists()
        assert len(list(d.glob("model-*-of-*.safetensors"))) > 1
    _assert_matches(CheckpointSet.from_dirs(sharded.dirs), sharded)
    single = make_checkpoints(root=tmp_path / "single", n=1, seed=5)
    mixed = CheckpointSet.from_dirs(sharded.dirs + single.dirs, names=["a", "b", "c"])
    assert torch.equal(mixed.stack(Q1)[2], single.weights[0][Q1])


def test_iter_key_one_at_a_time_and_load_by_name(make_checkpoints):
    w = make_checkpoints(n=3, arch="llama", max_shard_size="20KB")
    cs = CheckpointSet.from_root(w.dirs[0].parent)
    got = list(cs.iter_key(Q1))
    assert [name for name, _ in got] == cs.names
    for (name, wi), ref in zip(got, w.weights):
        assert wi.shape == (32, 32) and torch.equal(wi, ref[Q1])
    assert torch.equal(cs.load("model_2", K0), w.weights[2][K0])
    with pytest.raises(KeyError, match="not a 2-D weight"):
        cs.stack("model.norm.weight")
    with pytest.raises(KeyError, match="no model named"):
        cs.load("model_7", K0)


def test_from_root_nested(make_checkpoints, tmp_path):
    make_checkpoints(root=tmp_path / "hub" / "org_b", n=1)
    make_checkpoints(root=tmp_path / "hub" / "org_a", n=2, max_shard_size="20KB")
    cs = CheckpointSet.from_root(tmp_path / "hub")
    assert cs.names == ["org_a/model_0", "org_a/model_1", "org_b/model_0"]


def test_bf16_and_fp16_upcast_exact(make_checkpoints, tmp_path):
    for dtype, code in ((torch.bfloat16, "BF16"), (torch.float16, "F16")):
        w = make_checkpoints(root=tmp_path / code, n=2, dtype=dtype)
        cs = CheckpointSet.from_dirs(w.dirs)
        assert cs.dtype(Q1) == code
        _assert_matches(cs, w)


# ----- refusals: each names the model directory or file and the key -----

def test_missing_dirs_and_files(make_checkpoints, tmp_path):
    with pytest.raises(MissingCheckpointFileError, match="does not exist"):
        CheckpointSet.from_dirs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
        CheckpointSet.from_dirs([tmp_path / "empty"])
    with pytest.raises(MissingCheckpointFileError, match="no checkpoint"):
        CheckpointSet.from_root(tmp_path / "empty")


def test_pickle_refused(make_checkpoints):
    w = make_checkpoints(n=2)
    (w.dirs[1] / "model.safetensors").rename(w.dirs[1] / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match=f"{w.dirs[1]}: only pickle weights"):
        CheckpointSet.from_dirs(w.dirs)


def test_missing_shard(make_checkpoints):
    w = make_checkpoints(n=2, max_shard_size="20KB")
    shard = sorted(w.dirs[1].glob("model-*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(MissingCheckpointFileError, match=f"model_1.*shard {shard.name} named in .*does not exist"):
        CheckpointSet.from_dirs(w.dirs)


def test_index_key_absent_from_shard_and_bad_index(make_checkpoints):
    w = make_checkpoints(n=2, max_shard_size="20KB")
    index = w.dirs[0] / "model.safetensors.index.json"
    meta = json.loads(index.read_text())
    meta["weight_map"]["model.layers.9.self_attn.q_proj.weight"] = meta["weight_map"][Q1]
    index.write_text(json.dumps(meta))
    with pytest.raises(CheckpointFormatError, match="key 'model.layers.9.self_attn.q_proj.weight' in .*which lacks it"):
        CheckpointSet.from_dirs(w.dirs)
    index.write_text('{"metadata": {}}')
    with pytest.raises(CheckpointFormatError, match=f"malformed index {index}"):
        CheckpointSet.from_dirs(w.dirs)


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("damage", ["half", "garbage_header"])
def test_truncated_or_corrupt_file(make_checkpoints, sharded, damage):
    w = make_checkpoints(n=2, max_shard_size="20KB" if sharded else None)
    path = sorted(w.dirs[1].glob("model*.safetensors"))[-1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "half" else b"\x10\x00" + b"\xff" * 100)
    with pytest.raises(CheckpointFormatError, match=f"model 'model_1'.*{path} is not a readable safetensors file"):
        CheckpointSet.from_dirs(w.dirs)


def test_key_missing_in_one_model(make_checkpoints, tmp_path, caplog):
    w = make_checkpoints(n=3)
    path = w.dirs[2] / "model.safetensors"
    tensors = load_file(str(path))
    tensors.pop(Q1)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointFormatError, match=f"model 'model_2' .* lacks 2-D weight '{Q1}'"):
        CheckpointSet.from_dirs(w.dirs)
    with caplog.at_level(logging.WARNING, logger="uws_core.weights.checkpoints"):
        cs = CheckpointSet.from_dirs(w.dirs, strict=False)
    assert Q1 not in cs.weight_keys and len(cs.weight_keys) == 15 and "15 of 16" in caplog.text
    # a model with an extra 2-D weight is refused as well
    with pytest.raises(CheckpointFormatError, match=f"model 'model_0' .* holds 2-D weight '{Q1}'"):
        CheckpointSet.from_dirs([w.dirs[2], w.dirs[0]])


def test_shape_mismatch(make_checkpoints, tmp_path):
    a = make_checkpoints(n=2)
    b = make_checkpoints(root=tmp_path / "wide", n=1, intermediate_size=48)
    with pytest.raises(CheckpointFormatError, match=r"model 'model_0': key 'model.layers.0.mlp.down_proj.weight' "
                                                    r"has shape \(32, 48\).*but \(32, 64\)"):
        CheckpointSet.from_dirs(a.dirs + b.dirs, names=["x", "y", "model_0"])
    cs = CheckpointSet.from_dirs(a.dirs + b.dirs, names=["x", "y", "z"], strict=False)
    assert len(cs.weight_keys) == 16 - 6 and Q1 in cs.weight_keys  # 3 MLP matrices x 2 layers dropped


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_refused_at_load(make_checkpoints, bad):
    w = make_checkpoints(n=2, max_shard_size="20KB")
    index = json.loads((w.dirs[0] / "model.safetensors.index.json").read_text())["weight_map"]
    path = w.dirs[0] / index[K0]
    tensors = load_file(str(path))
    tensors[K0][0, 0] = bad
    save_file(tensors, str(path), metadata={"format": "pt"})
    cs = CheckpointSet.from_dirs(w.dirs)  # headers fine; values are read lazily
    cs.stack(Q1)
    with pytest.raises(CheckpointFormatError, match=f"model 'model_0': key '{K0}' in {path} holds 1 non-finite"):
        cs.stack(K0)


def test_save_checkpoint_round_trip_keeps_progress_bars(tmp_path):
    import transformers.utils.logging as hf_logging

    from conftest import tiny_causal_lm
    from uws_core.weights.checkpoints import MissingCheckpointFileError, load_checkpoint_state, save_checkpoint

    model = tiny_causal_lm(seed=5, arch="llama")
    hf_logging.enable_progress_bar()
    out = save_checkpoint(model, tmp_path / "m")
    assert out == tmp_path / "m" and (out / "config.json").is_file()
    assert hf_logging.is_progress_bar_enabled()                                # the caller's setting is restored
    state = load_checkpoint_state(out)
    assert set(state) == set(model.state_dict())                               # untied head: every tensor
    for key, t in state.items():
        assert torch.equal(t, model.state_dict()[key]), key
    with pytest.raises(MissingCheckpointFileError, match="model.safetensors does not exist"):
        load_checkpoint_state(tmp_path / "none")


def test_named_paths_and_model_dirs_under_name_what_is_wrong(tmp_path):
    from pathlib import Path

    from uws_core.weights.checkpoints import model_dirs_under, named_paths

    paths, names = named_paths(["a/x", "b/x"], None, ValueError, "things")
    assert paths == [Path("a/x"), Path("b/x")] and len(set(names)) == 2  # same basenames made unique
    with pytest.raises(ValueError, match="no things given"):
        named_paths([], None, ValueError, "things")
    with pytest.raises(ValueError, match=r"names must be unique, one per LoRA; got \['n', 'n'\]"):
        named_paths(["a", "b"], ["n", "n"], ValueError, "things", one="LoRA")
    with pytest.raises(ValueError, match="thing root .* does not exist"):
        model_dirs_under(tmp_path / "absent", lambda r: [], ValueError, "thing", "marker.json")
    with pytest.raises(ValueError, match=r"no thing \(marker.json\) under"):
        model_dirs_under(tmp_path, lambda r: [], ValueError, "thing", "marker.json")
    (tmp_path / "o" / "m").mkdir(parents=True)
    assert model_dirs_under(tmp_path, lambda r: [r / "o" / "m"], ValueError, "thing", "marker.json") == (
        [tmp_path / "o" / "m"], ["o/m"])
