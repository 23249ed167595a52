"""uws_core.linalg.recipes against independent implementations written here from the peers' cited lines.

The references below read the safetensors files directly (numpy), never through uws loaders or spectra:
* authors-pca: toshi2k2/unisub Mistral_LoRAs/run_pca.py L95-137 (mean matrix removed, axis-0 concatenation,
  sklearn PCA with their component rule) and generate_plots.py L22-43 (zero-padded mean over keys);
* authors-subspace: unisub NLG/get_subspaceadapter.py L153-180 (tall factors side by side, row mean removed,
  torch.svd_lowrank(q, niter=40));
* replication: cahlen/universal-subspace-stress-test experiments/phase1_lora_spectral/analyze.py L54-63,
  L110-148 (B@A unscaled, flattened, centred, N x N Gram eigvalsh; global-std null; in-sample errors).
Populations: PEFT adapters written by ``peft`` with three different lora_alpha, and tiny transformers checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from sklearn.decomposition import PCA

from conftest import write_adapters, write_checkpoints
from uws_core.linalg import recipes
from uws_core.weights.adapters import AdapterSet
from uws_core.cli import main

TOL = 1e-12  # float64 throughout; the spectra agree to round-off
ALPHAS = (4, 8, 32)  # per-adapter lora_alpha, r = 4: scalings 1, 2, 8


@pytest.fixture(scope="module")
def mixed_alpha_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_alpha")
    dirs = []
    for j, alpha in enumerate(ALPHAS):
        dirs += write_adapters(root, n=2, r=4, alpha=alpha, seed=20 + j, prefix=f"alpha{alpha}").dirs
    return root, dirs


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("ckpts"), n=3, seed=5)


# ----------------------------------------------------------------------- independent readers and recipes

def read_lora_numpy(dirs) -> tuple[dict, np.ndarray]:
    """{module: (A list (r, d_in), B list (d_out, r))} float64 and alpha_i / r, straight from the files."""
    mods: dict = {}
    scal = []
    for d in dirs:
        cfg = json.loads((Path(d) / "adapter_config.json").read_text())
        scal.append(cfg["lora_alpha"] / cfg["r"])
        for k, v in load_file(str(Path(d) / "adapter_model.safetensors")).items():
            mod, which = k.rsplit(".lora_", 1)
            mods.setdefault(mod, ({}, {}))[0 if which.startswith("A") else 1][str(d)] = v.astype(np.float64)
    return {m: ([a[str(d)] for d in dirs], [b[str(d)] for d in dirs]) for m, (a, b) in mods.items()}, np.array(scal)


def authors_pca_reference(data_list: list[np.ndarray]) -> np.ndarray | None:
    """run_pca.py L95-137 with sklearn's PCA; None where their script skips the key."""
    data_mean = sum(data_list) / len(data_list)
    data_array = np.concatenate([d - data_mean for d in data_list], axis=0)
    n_components = min(300, data_array.shape[0] - 1, data_array.shape[1] - 1)
    pca = PCA(n_components=n_components, svd_solver="full")
    pca.fit(data_array)
    e = pca.explained_variance_ratio_.sum()
    if e < 0.90:
        new_n = min(int((pca.n_components_ / e) * 0.9), data_array.shape[0] - 1)
        pca = PCA(n_components=new_n, svd_solver="full")
        try:
            pca.fit(data_array)
        except ValueError:
            return None
    return pca.explained_variance_ratio_


def authors_pca_numpy(data_list: list[np.ndarray]) -> np.ndarray:
    """The same stack, all components, by numpy's SVD: s^2 / sum s^2."""
    x = np.stack(data_list)
    mat = (x - x.mean(axis=0)).reshape(-1, x.shape[2])
    s = np.linalg.svd(mat, compute_uv=False)
    return s**2 / (s**2).sum()


def padded_mean(evrs) -> np.ndarray:
    """generate_plots.py L22-43: zero-pad to the longest, mean over keys."""
    width = max(len(e) for e in evrs)
    return np.mean([np.pad(e, (0, width - len(e))) for e in evrs], axis=0)


def authors_subspace_reference(factors: list[np.ndarray], q: int = 256) -> np.ndarray:
    """get_subspaceadapter.py L149-180: tall factors side by side, row mean removed, svd_lowrank(q, niter=40)."""
    tensors = [torch.from_numpy(f) for f in factors]
    tensors = [t.t() if t.shape[0] < t.shape[1] else t for t in tensors]
    matrix = torch.cat(tensors, dim=1)  # (d, N r)
    matrix = matrix - matrix.mean(axis=1, keepdim=True)
    torch.manual_seed(0)
    _, s, _ = torch.svd_lowrank(matrix, q=min(q, *matrix.shape), niter=40)
    return (s**2 / (matrix**2).sum()).numpy()


def replication_reference(a_list, b_list, scal=None) -> dict:
    """analyze.py L110-148: dW = B @ A (unscaled unless ``scal``), flattened, centred, Gram eigvalsh."""
    a, b = np.stack(a_list), np.stack(b_list)  # (N, r, d_in), (N, d_out, r)
    dw = np.einsum("nor,nri->noi", b, a)
    if scal is not None:
        dw = dw * scal[:, None, None]
    xf = dw.reshape(len(a), -1)
    mean = xf.mean(axis=0)
    xc = xf - mean
    ev = np.clip(np.linalg.eigvalsh(xc @ xc.T)[::-1], 0.0, None)
    s_sq = ev
    evr = s_sq / s_sq.sum()
    norm_sq = (xf**2).sum()
    n = len(a)
    recon = {k: float(np.sqrt(s_sq[k:].sum() / norm_sq)) for k in [1, 2, 4, 8, 16, 32, 64, min(n - 1, 96)] if k <= n}
    return {"evr": evr, "recon": recon, "mean_energy_fraction": n * (mean**2).sum() / norm_sq,
            "sigma_A": a.reshape(-1).std(ddof=1), "sigma_B": b.reshape(-1).std(ddof=1)}


def run_cli(tmp_path, *args) -> dict:
    out = tmp_path / "spec.json"
    assert main(["spectrum", *map(str, args), "--out", str(out)]) == 0
    return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------- tests

def test_authors_pca_matches_sklearn_on_peft_adapters(mixed_alpha_adapters, tmp_path):
    root, dirs = mixed_alpha_adapters
    mods, _ = read_lora_numpy(dirs)
    res = run_cli(tmp_path, root, "--recipe", "authors-pca")
    assert res["recipe"] == "authors-pca" and "run_pca.py" in res["recipe_source"] and res["unfolding"] is None
    aset = AdapterSet.from_root(root)
    ref_all = []
    for key, got in res["keys"].items():
        assert got["recipe"] == "authors-pca"
        a_list, b_list = mods[key]
        for part, data in (("lora_A", a_list), ("lora_B", b_list)):
            ref = authors_pca_reference(data)
            assert got[part]["authors_n_components"] == len(ref)
            np.testing.assert_allclose(got[part]["authors_evr"], ref, rtol=0, atol=TOL)
            np.testing.assert_allclose(got[part]["evr"], authors_pca_numpy(data), rtol=0, atol=TOL)
            ref_all.append(ref)
        # B's features are r-dimensional: at most r - 1 = 3 components kept
        assert got["lora_B"]["authors_n_components"] <= 3 and got["lora_B"]["shape"] == [b_list[0].shape[0], 4]
        spec_a, spec_b = recipes.authors_pca_lora(*aset.factors(key))
        np.testing.assert_allclose(recipes.authors_pca_evr(spec_a), authors_pca_reference(a_list), atol=TOL)
    np.testing.assert_allclose(res["authors_figure_evr"]["all_keys"], padded_mean(ref_all), rtol=0, atol=TOL)


def test_authors_pca_on_checkpoints(tiny_checkpoints, tmp_path):
    res = run_cli(tmp_path, *tiny_checkpoints.dirs, "--recipe", "authors-pca", "--keys", "layers\\.0\\.|lm_head")
    raw = [load_file(str(d / "model.safetensors")) for d in tiny_checkpoints.dirs]
    assert len(res["keys"]) > 3
    for key, got in res["keys"].items():
        ref = authors_pca_reference([r[key].astype(np.float64) for r in raw])
        np.testing.assert_allclose(got["weight"]["authors_evr"], ref, rtol=0, atol=TOL)


def test_authors_component_rule_refit_and_skip():
    # 10 x 5 stack explaining 0.5 in its first 4 components: refit at int(4 / 0.5 * 0.9) = 7 > min(10, 5): skipped
    evr = np.array([0.2, 0.1, 0.1, 0.1, 0.5])
    assert recipes.authors_pca_n_components(10, 5, evr) is None
    assert recipes.authors_pca_n_components(10, 5, np.array([0.5, 0.3, 0.1, 0.05, 0.05])) == 4
    # 8 rows x 40 cols with 0.8 in 7 components: refit at min(int(7 / 0.8 * 0.9), 7) = 7
    assert recipes.authors_pca_n_components(8, 40, np.r_[np.full(7, 0.8 / 7), 0.2]) == 7
    assert recipes.authors_pca_n_components(5, 4, np.zeros(4)) is None


def test_authors_subspace_is_uws_adapter_views(mixed_alpha_adapters, tmp_path):
    root, dirs = mixed_alpha_adapters
    mods, _ = read_lora_numpy(dirs)
    named = run_cli(tmp_path, root, "--recipe", "authors-subspace")
    generic = run_cli(tmp_path, root, "--unfolding", "model")  # the adapter views uws printed before names
    for key, got in named["keys"].items():
        a_list, b_list = mods[key]
        for part, data in (("lora_A", a_list), ("lora_B", b_list)):
            ref = authors_subspace_reference(data)
            np.testing.assert_allclose(got[part]["evr"][:len(ref)], ref, rtol=0, atol=TOL)
            np.testing.assert_allclose(generic["keys"][key][part]["evr"], got[part]["evr"], rtol=0, atol=TOL)


def test_replication_matches_gram_reference_and_scaling_matters(mixed_alpha_adapters, tmp_path):
    root, dirs = mixed_alpha_adapters
    mods, scal = read_lora_numpy(dirs)
    assert sorted(set(scal)) == [1.0, 2.0, 8.0]
    res = run_cli(tmp_path, root, "--recipe", "replication")
    scaled = run_cli(tmp_path, root, "--recipe", "replication", "--scaling", "alpha-over-r")
    assert res["scaling"] == "none" and scaled["scaling"] == "alpha-over-r"
    max_gap = 0.0
    for key, got in res["keys"].items():
        a_list, b_list = mods[key]
        ref = replication_reference(a_list, b_list)
        p = got["product"]
        assert p["scaled"] is False
        np.testing.assert_allclose(p["evr"], ref["evr"], rtol=0, atol=TOL)
        for k, v in ref["recon"].items():
            assert abs(p["recon_err"][str(k)] ** 2 - v**2) < TOL  # squared: the k = N-1 tail is round-off
        assert abs(p["mean_energy_fraction"] - ref["mean_energy_fraction"]) < 1e-10
        assert abs(p["sigma_A"] - ref["sigma_A"]) < TOL and abs(p["sigma_B"] - ref["sigma_B"]) < TOL
        ref_s = replication_reference(a_list, b_list, scal)
        np.testing.assert_allclose(scaled["keys"][key]["product"]["evr"], ref_s["evr"], rtol=0, atol=TOL)
        max_gap = max(max_gap, np.abs(np.cumsum(ref["evr"]) - np.cumsum(ref_s["evr"])).max())
    assert max_gap > 0.01  # alphas differ: the two scalings give different spectra


def test_replication_null_uses_global_std(mixed_alpha_adapters):
    root, _ = mixed_alpha_adapters
    aset = AdapterSet.from_root(root)
    key = aset.module_keys[0]
    b, a = aset.factors(key)
    gen = torch.Generator().manual_seed(3)
    a_null = (torch.randn(a.shape, generator=gen, dtype=torch.float64) * a.reshape(-1).std()).numpy()
    b_null = (torch.randn(b.shape, generator=gen, dtype=torch.float64) * b.reshape(-1).std()).numpy()
    ref = replication_reference(list(a_null), list(b_null))
    np.testing.assert_allclose(recipes.replication_null(b, a, seed=3).evr(), ref["evr"], rtol=0, atol=TOL)


def test_spectra_recipe_hook_matches_spectrum(mixed_alpha_adapters, tmp_path, tiny_checkpoints):
    root, _ = mixed_alpha_adapters
    for recipe, part in (("authors-pca", "lora_A"), ("replication", "product")):
        one = run_cli(tmp_path, root, "--recipe", recipe)
        out = tmp_path / recipe
        assert main(["spectra", str(root), "--out", str(out), "--recipe", recipe]) == 0
        summary = json.loads((out / "spectra.json").read_text())
        assert summary["recipe"] == recipe and summary["scaling"] == "none"
        for key, got in summary["keys"].items():
            assert got["recipe"] == recipe
            np.testing.assert_allclose(got["spectra"][part]["evr"], one["keys"][key][part]["evr"], atol=TOL)
        assert main(["spectra", str(root), "--out", str(out), "--recipe", recipe, "--resume"]) == 0
    np.testing.assert_allclose(summary["keys"][key]["spectra"]["product"]["null"]["evr"],
                               one["keys"][key]["product"]["null"]["evr"], atol=TOL)
    out = tmp_path / "ck"
    assert main(["spectra", *map(str, tiny_checkpoints.dirs), "--out", str(out), "--recipe", "authors-pca",
                 "--keys", "lm_head"]) == 0
    got = json.loads((out / "keys" / "lm_head.weight.json").read_text())["spectra"]["weight"]
    raw = [load_file(str(d / "model.safetensors"))["lm_head.weight"].astype(np.float64) for d in tiny_checkpoints.dirs]
    np.testing.assert_allclose(got["authors_evr"], authors_pca_reference(raw), rtol=0, atol=TOL)


def test_recipe_input_errors(mixed_alpha_adapters, tiny_checkpoints, tmp_path, capsys):
    root, _ = mixed_alpha_adapters
    for args, msg in (([*tiny_checkpoints.dirs, "--recipe", "replication"], "LoRA recipe"),
                      ([root, "--recipe", "replication", "--unfolding", "model"], "do not also give --unfolding"),
                      ([root], "give --unfolding")):
        with pytest.raises(SystemExit) as exc:
            main(["spectrum", *map(str, args), "--out", str(tmp_path / "x.json")])
        assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_generic_unfolding_with_scaling_none(mixed_alpha_adapters, tmp_path):
    root, dirs = mixed_alpha_adapters
    mods, _ = read_lora_numpy(dirs)
    one = run_cli(tmp_path, root, "--unfolding", "model", "--scaling", "none")
    out = tmp_path / "generic"
    assert main(["spectra", str(root), "--out", str(out), "--unfolding", "model", "--scaling", "none"]) == 0
    summary = json.loads((out / "spectra.json").read_text())
    assert one["recipe"] is None and summary["recipe"] is None and summary["scaling"] == "none"
    for key, got in summary["keys"].items():
        ref = replication_reference(*mods[key])["evr"]  # model axis, centred, unscaled = the replication's spectrum
        assert got["spectra"]["product"]["scaled"] is False and got["spectra"]["lora_A"]["recipe"] == "authors-subspace"
        np.testing.assert_allclose(got["spectra"]["product"]["evr"], ref, rtol=0, atol=TOL)
        np.testing.assert_allclose(one["keys"][key]["product"]["evr"], ref, rtol=0, atol=TOL)
