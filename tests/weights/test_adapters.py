"""uws_core.weights.adapters: PEFT LoRA adapters written by peft itself, read back lazily, and every refusal."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from uws_core.weights.adapters import (AdapterFormatError, AdapterSet, MissingAdapterFileError, parse_module_key,
                               read_adapter_config)

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
K1 = "base_model.model.model.layers.1.self_attn.k_proj"
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def three(make_adapters):
    return make_adapters(n=3, r=4, alpha=8)


def _edit_weights(d, fn):
    """Load an adapter's safetensors, let fn edit the dict in place, save it back."""
    path = d / WEIGHTS
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_read_back_shapes_values_and_scaling(three):
    s = AdapterSet.from_dirs(three.dirs)
    assert s.names == ["adapter_0", "adapter_1", "adapter_2"] and len(s) == 3
    assert s.module_keys == sorted(three.factors[0])  # same 6 keys (2 layers x q,k,v) in natural order
    assert len(s.module_keys) == 6
    np.testing.assert_array_equal(s.scalings, [2.0, 2.0, 2.0])  # alpha / r = 8 / 4
    assert s.shape(Q0) == (32, 4, 32) and s.shape(K1) == (16, 4, 32)  # GQA: k/v out = 2 kv heads * 8
    for key in s.module_keys:
        b, a = s.factors(key)  # (N, d_out, r), (N, r, d_in)
        assert b.dtype == a.dtype == torch.float64
        for i in range(3):
            b_ref, a_ref, delta = three.factors[i][key]
            assert torch.equal(b[i], b_ref) and torch.equal(a[i], a_ref)
            assert b[i].abs().sum() > 0  # lora_B was randomised
            # scaled factors reproduce PEFT's own update (computed in float32 by peft)
            bs, as_ = s.load(i, key, scaled=True)
            torch.testing.assert_close(bs @ as_, delta, rtol=1e-5, atol=1e-5)
    cfg = s.configs[0]
    assert cfg.r == 4 and cfg.lora_alpha == 8 and not cfg.use_rslora and cfg.scaling == 2.0
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj"}
    assert cfg.base_model_name_or_path is None


def test_iter_factors_one_at_a_time_matches_stack(three):
    s = AdapterSet.from_dirs(three.dirs)
    b, a = s.factors(K1, scaled=True)
    seen = []
    for i, (name, b_i, a_i) in enumerate(s.iter_factors(K1, scaled=True)):
        seen.append(name)
        assert b_i.shape == (16, 4) and a_i.shape == (4, 32)
        assert torch.equal(b_i, b[i]) and torch.equal(a_i, a[i])
        assert torch.equal(b_i, three.factors[i][K1][0] * 2.0)
    assert seen == s.names
    assert torch.equal(s.load("adapter_1", K1)[1], three.factors[1][K1][1])


def test_from_root_nested_and_natural_order(make_adapters, tmp_path):
    root = tmp_path / "hub"
    make_adapters(root=root / "owner", n=2)
    make_adapters(root=root / "other", n=1, seed=1)
    s = AdapterSet.from_root(root)
    assert s.names == ["other/adapter_0", "owner/adapter_0", "owner/adapter_1"]
    assert len(s.module_keys) == 6


def test_rslora_scaling(make_adapters):
    w = make_adapters(n=2, r=4, alpha=8, use_rslora=True)
    s = AdapterSet.from_dirs(w.dirs)
    np.testing.assert_allclose(s.scalings, [8 / math.sqrt(4)] * 2, rtol=0, atol=1e-15)
    bs, as_ = s.load(0, Q0, scaled=True)
    torch.testing.assert_close(bs @ as_, w.factors[0][Q0][2], rtol=1e-5, atol=1e-5)


def test_bf16_upcast_exact(make_adapters):
    w = make_adapters(n=2, dtype=torch.bfloat16)
    s = AdapterSet.from_dirs(w.dirs)
    b, a = s.factors(Q0)
    assert b.dtype == torch.float64
    assert torch.equal(b[1], w.factors[1][Q0][0]) and torch.equal(a[0], w.factors[0][Q0][1])


@pytest.mark.parametrize("key,expected", [
    (Q0, (0, "q_proj")),
    ("base_model.model.model.layers.12.mlp.down_proj", (12, "down_proj")),
    ("base_model.model.model.layers.3.self_attn.v_proj.lora_A.weight", (3, "v_proj")),
    ("model.layers.10.self_attn.o_proj.weight", (10, "o_proj")),
    ("transformer.h.7.attn.c_attn.weight", (7, "c_attn")),
    ("encoder.block.2.layer.0.SelfAttention.q", (2, "q")),
    ("lm_head.weight", (None, "lm_head")),
])
def test_parse_module_key(key, expected):
    assert parse_module_key(key) == expected


# ----- refusals: each names the adapter directory and, where there is one, the key -----

def test_missing_directory_config_and_weights(three, tmp_path):
    with pytest.raises(MissingAdapterFileError, match="does not exist"):
        AdapterSet.from_dirs([tmp_path / "nope"])
    d = three.dirs[1]
    (d / WEIGHTS).unlink()
    with pytest.raises(MissingAdapterFileError, match=f"{d}.*{WEIGHTS} is missing"):
        AdapterSet.from_dirs(three.dirs)
    (d / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{d}.*adapter_config.json is missing"):
        AdapterSet.from_dirs(three.dirs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingAdapterFileError, match="no adapter"):
        AdapterSet.from_root(tmp_path / "empty")


def test_pickle_refused(three):
    d = three.dirs[0]
    (d / WEIGHTS).rename(d / "adapter_model.bin")
    with pytest.raises(AdapterFormatError, match="pickles are not loaded"):
        AdapterSet.from_dirs(three.dirs)


@pytest.mark.parametrize("damage", ["half", "garbage_header", "trailing_bytes"])
def test_corrupt_safetensors(three, damage):
    path = three.dirs[2] / WEIGHTS
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2],
                      "garbage_header": b"\xff" * 8 + b"not a header" * 10,
                      "trailing_bytes": data + b"\0"}[damage])
    with pytest.raises(AdapterFormatError, match=f"adapter {three.dirs[2]}.*truncated or corrupt"):
        AdapterSet.from_dirs(three.dirs)


def test_mismatched_rank_across_adapters(make_adapters, tmp_path):
    a = make_adapters(n=2, r=4)
    b = make_adapters(root=tmp_path / "r8", n=1, r=8, alpha=16)
    with pytest.raises(AdapterFormatError, match=f"adapter {b.dirs[0]}: key .*lora_A.weight' has rank 8.*rank 4"):
        AdapterSet.from_dirs(a.dirs + b.dirs)


def test_mismatched_key_sets(make_adapters, tmp_path):
    a = make_adapters(n=2)
    b = make_adapters(root=tmp_path / "qv", n=1, target_modules=("q_proj", "v_proj"))
    with pytest.raises(AdapterFormatError, match=f"adapter {b.dirs[0]} lacks module .*k_proj"):
        AdapterSet.from_dirs(a.dirs + b.dirs)
    with pytest.raises(AdapterFormatError, match=f"adapter {a.dirs[0]} holds module .*k_proj"):
        AdapterSet.from_dirs(b.dirs + a.dirs)


def test_shape_mismatch_across_adapters(make_adapters, tmp_path):
    a = make_adapters(n=1)
    b = make_adapters(root=tmp_path / "wide", n=1, hidden_size=48)  # same keys and rank, d_in 48
    with pytest.raises(AdapterFormatError, match=f"adapter {b.dirs[0]}: module .*k_proj.*lora_A \\(4, 48\\)"):
        AdapterSet.from_dirs(a.dirs + b.dirs)


def test_a_without_b(three):
    d = three.dirs[1]
    _edit_weights(d, lambda t: t.pop(f"{Q0}.lora_B.weight"))
    with pytest.raises(AdapterFormatError, match=f"adapter {d}: key '{Q0}.lora_A.weight' has no matching lora_B"):
        AdapterSet.from_dirs(three.dirs)


def test_rank_differs_from_config(three):
    d = three.dirs[0]
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["r"] = 8
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterFormatError, match=f"adapter {d}: module .* rank 4 .* r=8"):
        AdapterSet.from_dirs(three.dirs)


def test_inner_rank_mismatch_within_adapter(three):
    d = three.dirs[0]
    _edit_weights(d, lambda t: t.update({f"{Q0}.lora_B.weight": torch.zeros(32, 3)}))
    with pytest.raises(AdapterFormatError, match=f"adapter {d}: module '{Q0}'.*inner ranks differ"):
        AdapterSet.from_dirs(three.dirs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_refused_at_load(three, bad):
    d = three.dirs[2]

    def poison(t):
        t[f"{K1}.lora_A.weight"][1, 3] = bad
    _edit_weights(d, poison)
    s = AdapterSet.from_dirs(three.dirs)  # headers are fine: the values are read lazily
    s.factors(Q0)
    with pytest.raises(AdapterFormatError, match=f"adapter {d}: key '{K1}.lora_A.weight'.*1 non-finite"):
        s.factors(K1)


@pytest.mark.parametrize("edit,match", [
    ({"rank_pattern": {"q_proj": 8}}, "non-empty 'rank_pattern'"),
    ({"alpha_pattern": {"v_proj": 4}}, "non-empty 'alpha_pattern'"),
    ({"peft_type": "IA3"}, "peft_type 'IA3'"),
    ({"r": 0}, "key 'r' .* positive integer"),
    ({"lora_alpha": None}, "key 'lora_alpha' .* number"),
])
def test_config_refusals(three, edit, match):
    d = three.dirs[0]
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(edit)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterFormatError, match=f"adapter {d}: {match}"):
        read_adapter_config(d)


def test_bad_json_config(three):
    d = three.dirs[0]
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFormatError, match=f"adapter {d}: .*not valid JSON"):
        AdapterSet.from_dirs(three.dirs)


def test_unknown_module_key_and_names(three):
    s = AdapterSet.from_dirs(three.dirs)
    with pytest.raises(KeyError, match="not a module key"):
        s.factors("model.layers.0.mlp.up_proj")
    with pytest.raises(KeyError, match="no adapter named"):
        s.load("adapter_9", Q0)
    with pytest.raises(AdapterFormatError, match="unique"):
        AdapterSet.from_dirs(three.dirs[:2], names=["x", "x"])
    # duplicate basenames get unique names from their paths
    other = three.dirs[0].parent.parent / "copy" / "adapter_0"
    shutil.copytree(three.dirs[0], other)
    assert AdapterSet.from_dirs([three.dirs[0], other]).names == ["adapters/adapter_0", "copy/adapter_0"]


def test_unpaired_factor_names_the_first_factor_without_its_partner():
    from uws_core.weights.adapters import unpaired_factor

    both = {"q": {"A": ("q.lora_A.weight", (4, 8)), "B": ("q.lora_B.weight", (8, 4))}}
    assert unpaired_factor(both) is None
    assert unpaired_factor({**both, "v": {"B": ("v.lora_B.weight", (8, 4))}}) == ("v.lora_B.weight", "A")
    assert unpaired_factor({"k": {"A": ("k.lora_down.weight", (4, 8))}}) == ("k.lora_down.weight", "B")
