"""uws_core.weights.peft_state on tiny seeded tensors: split / join, dense products, exact low-rank pairs (plain and
randomized SVD, factored QR), PEFT states of dense updates (read back by our loader, by peft and by tinylm)."""

import json
import warnings

import pytest
import torch

from conftest import tiny_causal_lm, write_adapters
from uws_core.weights import peft_state as P
from uws_core.linalg.spectral import ShapeMismatchError

KEY = "base_model.model.model.layers.0.self_attn.q_proj"


def _state(seed=0, modules=((KEY, 4, 3),), r=2):
    gen = torch.Generator().manual_seed(seed)
    st = {}
    for key, d_out, d_in in modules:
        st[key + P.LORA_A] = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
        st[key + P.LORA_B] = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
    return st


# ------------------------------------------------------------------------------------------ states <-> pairs
def test_split_join_roundtrip_sorted_modules():
    st = _state(modules=(("z.q_proj", 4, 3), ("a.k_proj", 2, 3)))
    pairs = P.split_lora_state(st)
    assert list(pairs) == ["a.k_proj", "z.q_proj"]
    assert torch.equal(pairs["z.q_proj"][0], st["z.q_proj" + P.LORA_B])
    again = P.join_lora_state(pairs, torch.float64)
    assert again.keys() == st.keys() and all(torch.equal(again[k], st[k]) for k in st)
    assert P.join_lora_state(pairs)["a.k_proj" + P.LORA_A].dtype == torch.float32


def test_split_errors_name_the_adapter_and_the_key():
    st = _state()
    with pytest.raises(KeyError, match=r"ada: key '.*q_proj\.lora_A\.weight' has no matching lora_B"):
        P.split_lora_state({KEY + P.LORA_A: st[KEY + P.LORA_A]}, name="ada")
    with pytest.raises(KeyError, match="'m.lora_B'"):
        P.split_lora_state({**st, "m.lora_B": torch.zeros(3, 2)})
    with pytest.raises(ShapeMismatchError, match="rank 3"):
        P.split_lora_state({**st, KEY + P.LORA_A: torch.zeros(3, 3)})
    with pytest.raises(ShapeMismatchError, match="2-D"):
        P.split_lora_state({**st, KEY + P.LORA_A: torch.zeros(2, 3, 1)})


def test_products_and_one_module_delta():
    st = _state(seed=1)
    want = 2.0 * st[KEY + P.LORA_B] @ st[KEY + P.LORA_A]
    prod = P.lora_products(st, 2.0)
    assert prod[KEY].dtype == torch.float64
    torch.testing.assert_close(prod[KEY], want, rtol=0, atol=1e-14)
    delta = P.lora_delta(st, KEY, 2.0)
    assert delta.dtype == torch.float32 and torch.equal(delta, prod[KEY].to(torch.float32))
    with pytest.raises(KeyError, match="lora_A"):
        P.lora_delta({"m.lora_B.weight": torch.zeros(3, 2)}, "m", 1.0)


# ------------------------------------------------------------------------------------------ exact pairs
def test_dense_to_exact_lora_pair():
    gen = torch.Generator().manual_seed(7)
    d = torch.randn(5, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 8, generator=gen, dtype=torch.float64)
    b, a = P.lora_pair_from_dense(d, scaling=2.0)
    assert b.shape == (5, 3) and a.shape == (3, 8)                                   # rank found = rank(D)
    torch.testing.assert_close(2.0 * b @ a, d, rtol=0, atol=1e-12)
    bt, at = P.lora_pair_from_dense(d, max_rank=1)
    assert bt.shape == (5, 1) and (bt @ at - d).abs().max() > 1e-3                   # truncation is lossy
    bz, az = P.lora_pair_from_dense(torch.zeros(4, 3))
    assert bz.shape == (4, 1) and not bz.any() and not az.any()                      # zero: one zero column
    with pytest.raises(ValueError, match="2-D"):
        P.lora_pair_from_dense(torch.zeros(2, 2, 2))


def test_randomized_truncation_is_exact_for_low_rank_updates():
    gen = torch.Generator().manual_seed(9)
    d = torch.randn(200, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 150, generator=gen, dtype=torch.float64)
    b, a = P.lora_pair_from_dense(d, scaling=2.0, max_rank=8)                         # randomized path (2 * 24 < 150)
    assert b.shape == (200, 6)
    torch.testing.assert_close(2.0 * b @ a, d, rtol=0, atol=1e-9)
    full = torch.randn(200, 150, generator=gen, dtype=torch.float64)
    b, a = P.lora_pair_from_dense(full, max_rank=8)
    s = torch.linalg.svdvals(full)
    best = float(s[8:].pow(2).sum().sqrt())                                            # Eckart-Young optimum
    assert b.shape == (200, 8) and best <= float((b @ a - full).norm()) < 1.05 * best


def test_compact_pair_is_exact_and_low_rank():
    gen = torch.Generator().manual_seed(1)
    b = torch.randn(5, 12, generator=gen, dtype=torch.float64)  # rank 12 > min(5, 4): compacts to 4
    a = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    b2, a2 = P.compact_lora_pair(b, a)
    assert b2.shape == (5, 4) and a2.shape == (4, 4)
    assert torch.allclose(b2 @ a2, b @ a, rtol=0, atol=1e-12 * float((b @ a).abs().max()))
    b3, a3 = P.compact_lora_pair(b[:, :2], a[:2])  # rank 2 stays rank 2
    assert b3.shape[1] == 2 and torch.allclose(b3 @ a3, b[:, :2] @ a[:2], atol=1e-12)
    bz, az = P.compact_lora_pair(torch.zeros(5, 3), torch.zeros(3, 4))
    assert bz.shape == (5, 1) and az.shape == (1, 4) and not bz.any()


def test_numerical_rank_is_relative_to_the_largest_value():
    s = torch.tensor([4.0, 1.0, 4e-11, 0.0], dtype=torch.float64)
    assert P.numerical_rank(s, 1e-10) == 2 and P.numerical_rank(s, 1e-12) == 3
    assert P.numerical_rank(torch.zeros(3, dtype=torch.float64), 1e-10) == 1
    assert P.numerical_rank(torch.zeros(0, dtype=torch.float64), 1e-10) == 1


def test_peft_state_from_dense_pads_to_one_rank():
    gen = torch.Generator().manual_seed(7)
    d = torch.randn(5, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 8, generator=gen, dtype=torch.float64)
    state = P.peft_state_from_dense({"x.q_proj": d, "x.k_proj": d[:, :4].clone() * 0 + d[:, :1]}, scaling=0.5)
    assert state["x.k_proj" + P.LORA_B].shape == (5, 3)                               # rank 1 padded to 3
    back = P.lora_products(state, 0.5)
    torch.testing.assert_close(back["x.q_proj"], d, rtol=0, atol=1e-12)
    torch.testing.assert_close(back["x.k_proj"], d[:, :1].expand(5, 4), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ base-model keys
def test_dense_lora_state_merges_to_base_plus_update():
    from uws_core.zoo.tinylm import merge_lora_state

    torch.manual_seed(0)
    net = torch.nn.Module()
    net.model = torch.nn.Module()
    net.model.q_proj = torch.nn.Linear(4, 3, bias=False)
    before = net.model.q_proj.weight.detach().clone()
    delta = torch.randn(3, 4)
    state = P.dense_lora_state({"model.q_proj.weight": delta})
    assert P.peft_weight_key("base_model.model.model.q_proj") == "model.q_proj.weight"
    merge_lora_state(net, state, scaling=1.0)
    torch.testing.assert_close(net.model.q_proj.weight.detach(), before + delta, rtol=0, atol=1e-6)
    torch.testing.assert_close(P.lora_delta(state, "base_model.model.model.q_proj", 2.0), 2 * delta)
    with pytest.raises(KeyError, match="prefix"):
        P.peft_weight_key("model.layers.0.self_attn.q_proj")
    with pytest.raises(ValueError, match="'model.q_proj'"):
        P.dense_lora_state({"model.q_proj": delta})


# ------------------------------------------------------------------------------------------ files
def test_merged_pair_saved_as_peft_adapter_is_read_back(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from uws_core.weights.adapters import AdapterSet, read_adapter_config
    from uws_core.experiments.merging import ties_merge
    written = write_adapters(tmp_path / "src", n=3, r=4, alpha=8)
    states = [load_file(str(p / "adapter_model.safetensors")) for p in written.dirs]
    merged = ties_merge([P.lora_products(s, 2.0) for s in states], density=0.3)
    state = P.peft_state_from_dense(merged, scaling=1.0)
    out = P.save_peft_adapter(state, tmp_path / "merged", read_adapter_config(written.dirs[0]).raw)
    aset = AdapterSet.from_dirs([out])
    assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == aset.configs[0].r
    for mod in aset.module_keys:
        b, a = aset.load(0, mod, scaled=True)
        torch.testing.assert_close(b @ a, merged[mod], rtol=0, atol=1e-4)            # float32 files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(tiny_causal_lm(seed=1234), str(out))
    name, mod = next((n, m) for n, m in model.named_modules() if n.endswith("layers.1.self_attn.v_proj"))
    torch.testing.assert_close(mod.get_delta_weight("default").double(), merged[name], rtol=0, atol=1e-4)
    two_ranks = {**state, **P.join_lora_state({"x.o_proj": (torch.zeros(2, 1), torch.zeros(1, 2))})}
    with pytest.raises(ValueError, match="one rank per adapter"):
        P.save_peft_adapter(two_ranks, tmp_path / "bad", {})
