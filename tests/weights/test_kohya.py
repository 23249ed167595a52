"""Kohya LoRA reader and varying-rank spectra, on tiny files with the real key names, against dense numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from uws_core.weights.kohya import (KohyaFormatError, KohyaLoraSet, find_kohya_dirs, is_kohya_lora, kohya_key_spectra,
                            kohya_population_spectra)

Q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # linear (12, 10)
FF = "lora_te1_text_model_encoder_layers_0_mlp_fc1"  # linear (14, 8)
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # conv 3x3: weight (6, 3, 3, 3) -> (6, 27)
SHAPES = {Q: (12, 10), FF: (14, 8), CONV: (6, 27)}
RANKS = (2, 3, 4, 3, 2)
ALPHAS = (1.0, 4.0, None, 2.5, 8.0)  # None: no alpha tensor for the linear modules of that LoRA


def kohya_tensors(seed: int, r: int, alpha) -> tuple[dict, dict]:
    """Tensors of one kohya file and the expected (B, A, scale) per module (float64)."""
    g = torch.Generator().manual_seed(seed)
    tensors, expected = {}, {}
    for key, (d_out, d_in) in SHAPES.items():
        if key == CONV:
            down = torch.randn(r, 3, 3, 3, generator=g)
            up = torch.randn(d_out, r, 1, 1, generator=g)
        else:
            down = torch.randn(r, d_in, generator=g)
            up = torch.randn(d_out, r, generator=g)
        down, up = down.to(torch.float16), up.to(torch.float16)  # kohya files are usually fp16
        tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"] = down, up
        a = alpha if alpha is not None or key == CONV else None
        a = 1.5 if a is None and key == CONV else a
        if a is not None:
            tensors[key + ".alpha"] = torch.tensor(a, dtype=torch.float16)
        expected[key] = (up.double().reshape(d_out, r), down.double().reshape(r, -1), (a / r) if a is not None else 1.0)
    return tensors, expected


@pytest.fixture
def loras(tmp_path):
    root = tmp_path / "loras"
    expected = []
    for i, (r, alpha) in enumerate(zip(RANKS, ALPHAS)):
        d = root / "KappaNeuro" / f"style-{i}"
        d.mkdir(parents=True)
        tensors, exp = kohya_tensors(i, r, alpha)
        save_file(tensors, str(d / f"style-{i}.safetensors"))
        expected.append(exp)
    return root, expected


def dense_row_variances(blocks):
    x = np.concatenate(blocks, axis=0)
    x = x - x.mean(axis=0, keepdims=True)
    return np.linalg.svd(x, compute_uv=False) ** 2, float((x * x).sum())


def assert_spectrum(spec, dense_vals, dense_total, tol=1e-10):
    n = min(len(dense_vals), spec.n_components)
    scale = dense_total
    assert abs(spec.total_variance - dense_total) <= tol * scale
    np.testing.assert_allclose(spec.variances[:n], dense_vals[:n], rtol=0, atol=tol * scale)
    assert np.all(np.abs(spec.variances[n:]) <= tol * scale)


def test_grouping_scales_and_shapes(loras):
    root, expected = loras
    assert len(find_kohya_dirs(root)) == 5 and is_kohya_lora(find_kohya_dirs(root)[0])
    lset = KohyaLoraSet.from_root(root)
    assert lset.names == [f"KappaNeuro/style-{i}" for i in range(5)]
    assert set(lset.module_keys) == set(SHAPES)
    for key, shape in SHAPES.items():
        assert lset.shape(key) == shape
        assert list(lset.ranks[key]) == list(RANKS)
        for i in range(5):
            b, a, s = lset.load(i, key)
            eb, ea, es = expected[i][key]
            assert b.dtype == torch.float64 and b.shape == (shape[0], RANKS[i]) and a.shape == (RANKS[i], shape[1])
            assert torch.equal(b, eb) and torch.equal(a, ea) and s == pytest.approx(es)
    assert lset.alpha_missing == {"KappaNeuro/style-2": sorted([FF, Q], key=lset.module_keys.index)}
    assert lset.scales[Q][2] == 1.0 and lset.scales[CONV][2] == pytest.approx(1.5 / 4)


def test_diffusers_naming(tmp_path):
    g = torch.Generator().manual_seed(0)
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({key + ".lora_A.weight": torch.randn(3, 10, generator=g),
               key + ".lora_B.weight": torch.randn(12, 3, generator=g)}, str(tmp_path / "a.safetensors"))
    lset = KohyaLoraSet([tmp_path / "a.safetensors"])
    assert lset.module_keys == [key] and lset.shape(key) == (12, 10) and lset.scales[key][0] == 1.0


def test_factor_and_product_spectra_match_dense(loras):
    root, expected = loras
    lset = KohyaLoraSet.from_root(root)
    for key in SHAPES:
        specs = kohya_key_spectra(lset, key, device="cpu", k=3)
        exp = [e[key] for e in expected]
        vals, total = dense_row_variances([a.numpy() for _, a, _ in exp])  # A rows: (sum r_i, d_in)
        assert_spectrum(specs["lora_A"], vals, total)
        vals, total = dense_row_variances([b.numpy().T for b, _, _ in exp])  # B columns: (sum r_i, d_out)
        assert_spectrum(specs["lora_B"], vals, total)
        assert specs["lora_A"].matrix_shape == (sum(RANKS), SHAPES[key][1])
        # model axis: dense PCA of the flattened scaled products (N, d_out*d_in), centred by the mean product
        vals, total = dense_row_variances([(s * b @ a).numpy().reshape(1, -1) for b, a, s in exp])
        assert_spectrum(specs["product"], vals, total)
        assert specs["product"].n_models == 5


def test_population_spectra_resume(loras, tmp_path):
    root, _ = loras
    out_full, out = tmp_path / "full", tmp_path / "resumed"
    full = kohya_population_spectra(root, out_full, progress=False)
    assert set(full["computed"]) == set(SHAPES) and full["kind"] == "kohya"

    class Stop(Exception):
        pass

    def stop_after_first(key, res):
        raise Stop

    with pytest.raises(Stop):
        kohya_population_spectra(root, out, progress=False, on_key_done=stop_after_first)
    assert len(list((out / "keys").glob("*.json"))) == 1
    res = kohya_population_spectra(root, out, resume=True, progress=False)
    assert len(res["resumed"]) == 1 and len(res["computed"]) == 2
    on_disk = json.loads((out / "spectra.json").read_text())
    for key in SHAPES:
        a, b = on_disk["keys"][key], full["keys"][key]
        assert a["ranks"] == list(RANKS) and a["spectra"] == b["spectra"]
        assert json.loads((out / "keys" / f"{key}.json").read_text())["spectra"] == b["spectra"]
    with pytest.raises(ValueError, match="already holds a run"):
        kohya_population_spectra(root, out, progress=False)
    dirs = sorted(root.glob("KappaNeuro/*"))  # the LoRA directories themselves; a memory limit skips the conv
    small = kohya_population_spectra(dirs, tmp_path / "small", max_key_bytes=20_000, progress=False)
    assert list(small["too_big"]) == [CONV] and small["keys"][Q]["spectra"] == full["keys"][Q]["spectra"]


def write_bad(tmp_path, mutate):
    tensors, _ = kohya_tensors(0, 2, 1.0)
    mutate(tensors)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    return path


def test_nan_names_file_and_key(tmp_path):
    def nan(t):
        t[Q + ".lora_up.weight"][0, 0] = float("nan")

    path = write_bad(tmp_path, nan)
    lset = KohyaLoraSet([path])
    with pytest.raises(KohyaFormatError, match=rf"{Q}\.lora_up\.weight.*bad\.safetensors.*NaN"):
        lset.load(0, Q)


def test_missing_partner_names_file_and_key(tmp_path):
    path = write_bad(tmp_path, lambda t: t.pop(FF + ".lora_up.weight"))
    with pytest.raises(KohyaFormatError, match=rf"{FF}\.lora_down\.weight.*bad\.safetensors.*no matching lora_up"):
        KohyaLoraSet([path])


def test_truncated_and_pickle_refused(tmp_path):
    path = write_bad(tmp_path, lambda t: None)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(KohyaFormatError, match="bad.safetensors.*truncated"):
        KohyaLoraSet([path])
    pdir = tmp_path / "pickled"
    pdir.mkdir()
    torch.save({Q + ".lora_down.weight": torch.zeros(2, 10)}, pdir / "style.ckpt")
    with pytest.raises(KohyaFormatError, match="style.ckpt.*pickles are not loaded"):
        KohyaLoraSet([pdir])
    with pytest.raises(KohyaFormatError, match="pickle"):
        KohyaLoraSet([pdir / "style.ckpt"])
    (pdir / "fake.safetensors").write_bytes((pdir / "style.ckpt").read_bytes())  # a pickle renamed
    with pytest.raises(KohyaFormatError, match="fake.safetensors.*not a readable safetensors"):
        KohyaLoraSet([pdir / "fake.safetensors"])


def test_nan_alpha_and_shape_mismatch(tmp_path):
    def nan_alpha(t):
        t[Q + ".alpha"] = torch.tensor(float("nan"))

    with pytest.raises(KohyaFormatError, match=rf"{Q}\.alpha.*bad\.safetensors"):
        KohyaLoraSet([write_bad(tmp_path, nan_alpha)])
    d1, d2 = tmp_path / "x", tmp_path / "y"
    d1.mkdir(), d2.mkdir()
    save_file(kohya_tensors(0, 2, 1.0)[0], str(d1 / "x.safetensors"))
    t = kohya_tensors(1, 2, 1.0)[0]
    t[Q + ".lora_up.weight"] = torch.zeros(13, 2, dtype=torch.float16)
    save_file(t, str(d2 / "y.safetensors"))
    with pytest.raises(KohyaFormatError, match=rf"'y'.*y\.safetensors.*{Q}.*\(13, 10\)"):
        KohyaLoraSet([d1, d2])
