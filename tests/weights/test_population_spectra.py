"""uws_core.weights.population_spectra on tiny checkpoints written by transformers (GPT-2, Flan-T5-style T5, ResNet,
Mistral, sharded) and PEFT adapters, against an independent numpy SVD; interrupted runs resume exactly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import numpy_spectrum_reference
from uws_core.weights.adapters import AdapterSet
from uws_core.weights.checkpoints import CheckpointSet
from uws_core.weights.memory_bounds import memory_bound_bytes
from uws_core.weights.population_spectra import (MatrixPopulation, ResumeError, open_population,
                                                 population_spectra)
from uws_core.linalg.spectral import stack_spectrum

TOL = 1e-10


def save_models(root, make, n=3):
    dirs = []
    for i in range(n):
        torch.manual_seed(10 + i)
        d = root / f"m{i}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make().save_pretrained(d)
        dirs.append(d)
    return dirs


def stored(dirs, key):
    """(N, ...) float64 stack of one key read straight from model.safetensors."""
    return np.stack([load_file(str(d / "model.safetensors"))[key].double().numpy() for d in dirs])


def check_weight(res, stack, unfolding, center):
    ev, total, _ = numpy_spectrum_reference(stack, unfolding, center)
    got = res["spectra"]["weight"]
    n = min(len(got["evr"]), len(ev))
    np.testing.assert_allclose(got["evr"][:n], (ev / total)[:n], rtol=0, atol=TOL)
    cum = np.cumsum(ev / total)
    assert got["k_at"]["0.9"] == int(np.argmax(cum >= 0.9)) + 1
    assert abs(got["top_evr"]["4"] - cum[min(4, len(cum)) - 1]) < TOL


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16)
    return save_models(tmp_path_factory.mktemp("gpt2"), lambda: GPT2LMHeadModel(cfg))


def test_gpt2_conv1d_weights_are_transposed_to_out_in(gpt2_dirs, tmp_path):
    pop = MatrixPopulation(gpt2_dirs)
    key = "transformer.h.1.attn.c_attn.weight"
    assert pop.conv1d and pop.stored_shapes[key] == (16, 48) and pop.shapes[key] == (48, 16)
    assert pop.orientation[key] == "Conv1D (in, out) transposed"
    assert pop.orientation["transformer.wte.weight"] == "as stored (out, in)"
    res = population_spectra(pop, tmp_path / "o", "rows", "models", keys=r"\.h\.1\.|wte", progress=False)
    assert res["computed"] == ["transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight",
                               "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
                               "transformer.wte.weight"]
    for key, r in res["keys"].items():
        stack = stored(gpt2_dirs, key)
        if r["orientation"].startswith("Conv1D"):
            stack = stack.transpose(0, 2, 1)  # (N, in, out) -> (N, out, in)
        assert r["shape"] == list(stack.shape[1:]) and r["layer"] in (1, None)
        check_weight(r, stack, "rows", "models")
    # c_fc is (in=16, out=64) on disk: rows of the (out, in) matrix live in R^16, so 16 components
    assert res["keys"]["transformer.h.1.mlp.c_fc.weight"]["spectra"]["weight"]["n_components"] == 16


def test_t5_encoder_and_decoder_keys(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=1, num_heads=2,
                   feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    dirs = save_models(tmp_path / "t5", lambda: T5ForConditionalGeneration(cfg))
    pop = open_population(dirs)
    assert not pop.conv1d
    res = population_spectra(pop, tmp_path / "o", "cols", "samples", keys=r"(SelfAttention\.q|EncDecAttention\.o|wi_0)",
                             progress=False)
    assert set(res["computed"]) == {"encoder.block.0.layer.0.SelfAttention.q.weight",
                                    "decoder.block.0.layer.0.SelfAttention.q.weight",
                                    "decoder.block.0.layer.1.EncDecAttention.o.weight",
                                    "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
                                    "decoder.block.0.layer.2.DenseReluDense.wi_0.weight"}
    for key, r in res["keys"].items():
        assert r["stack"] == key.split(".")[0] and r["layer"] == 0
        check_weight(r, stored(dirs, key), "cols", "samples")
    assert res["keys"]["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]["shape"] == [24, 16]


def test_resnet_convs_flattened_out_by_in_kh_kw(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=3)
    dirs = save_models(tmp_path / "resnet", lambda: ResNetForImageClassification(cfg))
    pop = MatrixPopulation(dirs)
    stem = "resnet.embedder.embedder.convolution.weight"
    assert pop.stored_shapes[stem] == (8, 3, 7, 7) and pop.shapes[stem] == (8, 147)
    assert "flattened" in pop.orientation[stem] and "classifier.1.weight" in pop.keys
    res = population_spectra(pop, tmp_path / "o", "rows", "none", keys=r"embedder|stages\.1\.layers\.0\.layer\.1|classifier",
                             progress=False)
    assert len(res["computed"]) == 3
    for key, r in res["keys"].items():
        stack = stored(dirs, key)
        check_weight(r, stack.reshape(stack.shape[0], stack.shape[1], -1), "rows", "none")
    assert res["keys"]["resnet.encoder.stages.1.layers.0.layer.1.convolution.weight"]["shape"] == [4, 36]


def test_adapters_authors_recipe_and_product(adapter_population, tmp_path):
    pop = adapter_population
    aset = AdapterSet.from_dirs(pop.dirs)
    res = population_spectra(aset, tmp_path / "o", "model", "models", keys=r"layers\.1\.", progress=False)
    assert len(res["computed"]) == 3 and res["kind"] == "adapters"
    scal = np.array([2.0, 2.0, 2.0, 4.0])  # alpha / r of the four adapters
    for key, r in res["keys"].items():
        b = np.stack([f[key][0].numpy() for f in pop.factors])  # (N, d_out, r)
        a = np.stack([f[key][1].numpy() for f in pop.factors])  # (N, r, d_in)
        for name, stack, unf, cen in (("lora_A", a, "rows", "samples"), ("lora_B", b, "cols", "samples"),
                                      ("product", scal[:, None, None] * b @ a, "model", "models")):
            ev, total, _ = numpy_spectrum_reference(stack, unf, cen)
            got = r["spectra"][name]
            np.testing.assert_allclose(got["evr"], (ev / total)[:len(got["evr"])], rtol=0, atol=TOL)
            assert got["unfolding"] == unf and got["center"] == cen


@pytest.mark.parametrize("unfolding,center", [("rows", "models"), ("cols", "samples"), ("model", "models")])
def test_adapters_factored_gram_equals_streaming_path(adapter_population, tmp_path, monkeypatch, unfolding, center):
    """N r = 16 < d: the (N r)^2 Gram solver; forcing the d x d streaming path gives the same EVR (1e-10)."""
    from uws_core.weights import population_spectra as ps

    aset = AdapterSet.from_dirs(adapter_population.dirs)
    fast = population_spectra(aset, tmp_path / "f", unfolding, center, keys=r"layers\.0\.", progress=False)
    monkeypatch.setattr(ps, "FACTORED_ADAPTER_KEYS", False)
    slow = population_spectra(aset, tmp_path / "s", unfolding, center, keys=r"layers\.0\.", progress=False)
    assert len(fast["computed"]) == 3
    for key, res in fast["keys"].items():
        assert res["solver"] == "factored_gram" and "solver" not in slow["keys"][key]
        for view in ("lora_A", "lora_B", "product"):
            got, ref = res["spectra"][view], slow["keys"][key]["spectra"][view]
            assert got["n_components"] == ref["n_components"] and got["k_at"] == ref["k_at"]
            np.testing.assert_allclose(got["evr"], ref["evr"], rtol=0, atol=TOL)
            np.testing.assert_allclose(got["total_variance"], ref["total_variance"], rtol=TOL)


def test_interrupted_run_resumes_to_the_uninterrupted_result(checkpoint_population, tmp_path):
    pop = MatrixPopulation(checkpoint_population.dirs)  # two single-file and two sharded checkpoints
    full = population_spectra(pop, tmp_path / "full", "rows", "models", progress=False)
    assert len(full["computed"]) == len(pop.keys) == 16

    def stop_after_two(key, res, seen=[]):
        seen.append(key)
        if len(seen) == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        population_spectra(pop, tmp_path / "part", "rows", "models", on_key_done=stop_after_two, progress=False)
    (tmp_path / "part" / "keys" / ".half-written.json.tmp").write_text("{")  # a write cut short is ignored
    assert len(list((tmp_path / "part" / "keys").glob("*.json"))) == 2
    with pytest.raises(ResumeError, match="pass resume=True"):
        population_spectra(pop, tmp_path / "part", "rows", "models", progress=False)
    with pytest.raises(ResumeError, match="unfolding: 'rows' there, 'cols' now"):
        population_spectra(pop, tmp_path / "part", "cols", "models", resume=True, progress=False)
    done = population_spectra(pop, tmp_path / "part", "rows", "models", resume=True, progress=False)
    assert done["resumed"] == full["computed"][:2] and done["computed"] == full["computed"][2:]

    def strip(r):
        return {k: v for k, v in r.items() if k != "timing"}

    assert {k: strip(v) for k, v in done["keys"].items()} == {k: strip(v) for k, v in full["keys"].items()}
    on_disk = json.loads((tmp_path / "part" / "spectra.json").read_text())
    assert list(on_disk["keys"]) == full["computed"]


def test_model_axis_basis_and_memory_guard(checkpoint_population, tmp_path):
    dirs = checkpoint_population.dirs
    cs = CheckpointSet.from_dirs(dirs)
    key = "model.layers.0.mlp.down_proj.weight"  # (32, 64)
    res = population_spectra(cs, tmp_path / "m", "model", "models", keys=[key], progress=False)
    stack = np.stack([w[key].numpy() for w in checkpoint_population.weights])
    check_weight(res["keys"][key], stack, "model", "models")
    res = population_spectra(cs, tmp_path / "b", "rows", "models", keys=[key], basis_k=5, progress=False)
    saved = load_file(str(tmp_path / "b" / "basis" / f"{key}.safetensors"))
    ref = stack_spectrum(torch.from_numpy(stack), "rows", "models", k=5)
    assert saved["basis"].shape == (64, 5) and saved["mean"].shape == (32, 64)
    np.testing.assert_allclose(saved["basis"].numpy(), ref.basis.numpy(), atol=1e-6)
    bound = memory_bound_bytes((32, 64), 4, "rows", "models", stored_bytes=4)
    assert bound["total"] == 8 * 64 ** 2 + 16 * 64 ** 2 + 8 * 32 * 64 + (2 * 4 + 32) * 32 * 64
    res = population_spectra(cs, tmp_path / "g", "rows", "models", keys=[key], max_key_bytes=bound["total"] - 1,
                             progress=False)
    assert res["computed"] == [] and res["too_big"][key]["total"] == bound["total"]


def test_non_finite_weight_is_refused_naming_model_and_key(checkpoint_population, tmp_path):
    import shutil

    from safetensors.torch import save_file

    dirs = [tmp_path / d.name for d in checkpoint_population.dirs[:2]]
    for src, dst in zip(checkpoint_population.dirs, dirs):
        shutil.copytree(src, dst)
    path = dirs[1] / "model.safetensors"
    tensors = load_file(str(path))
    key = "model.layers.1.self_attn.v_proj.weight"
    tensors[key][0, 0] = float("inf")
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"non-finite values in .*single_1.*{key}"):
        population_spectra(MatrixPopulation(dirs), tmp_path / "o", keys=[key], progress=False)
    assert not (tmp_path / "o" / "keys" / f"{key}.json").exists()  # nothing written for a refused key


@pytest.mark.parametrize("unfolding,center", [("rows", "models"), ("cols", "samples")])
def test_adapters_with_stack_rank_above_d_use_the_factor_feature_gram(tmp_path, monkeypatch, unfolding, center):
    """N r = 40 >= d = 32: the product's d x d Gram from the factors ("factor_feature_gram"); the same EVR
    as the d x d streaming route of before (1e-10)."""
    from conftest import write_adapters
    from uws_core.weights import population_spectra as ps

    aset = AdapterSet.from_dirs(write_adapters(tmp_path / "pop", n=10, r=4, alpha=8, seed=11).dirs)
    fast = population_spectra(aset, tmp_path / "f", unfolding, center, keys=r"layers\.0\.", progress=False)
    monkeypatch.setattr(ps, "FACTORED_ADAPTER_KEYS", False)
    slow = population_spectra(aset, tmp_path / "s", unfolding, center, keys=r"layers\.0\.", progress=False)
    assert len(fast["computed"]) == 3
    for key, res in fast["keys"].items():
        assert res["solver"] == "factor_feature_gram"
        for view in ("lora_A", "lora_B", "product"):
            got, ref = res["spectra"][view], slow["keys"][key]["spectra"][view]
            assert got["n_components"] == ref["n_components"] and got["k_at"] == ref["k_at"]
            np.testing.assert_allclose(got["evr"], ref["evr"], rtol=0, atol=TOL)
