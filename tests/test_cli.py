"""uws_core.cli: ``uws spectrum`` on tiny adapters and checkpoints, checked against a direct numpy SVD."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from uws_core.cli import main

TOL = 1e-10


def reference_evr(stack: np.ndarray, unfolding: str, center: str) -> np.ndarray:
    """EVR of one centred unfolding of a stack (N, d_out, d_in) by a dense numpy SVD."""
    x = np.asarray(stack, dtype=np.float64)
    n, d_out, d_in = x.shape
    if center == "models" or (center == "samples" and unfolding == "model"):
        x = x - x.mean(axis=0)  # cross-model mean matrix
    mat = {"rows": lambda: x.reshape(n * d_out, d_in),
           "cols": lambda: x.transpose(0, 2, 1).reshape(n * d_in, d_out),
           "model": lambda: x.reshape(n, d_out * d_in)}[unfolding]()
    if center == "samples":
        mat = mat - mat.mean(axis=0)  # mean sample of the unfolding
    s = np.linalg.svd(mat, compute_uv=False)
    return s**2 / (mat**2).sum()


def check_summary(got: dict, stack: np.ndarray, unfolding: str, center: str, k: int) -> None:
    ref = reference_evr(stack, unfolding, center)
    assert got["shape"] == list(stack.shape[1:]) and got["N"] == stack.shape[0]
    assert got["unfolding"] == unfolding and got["center"] == center
    assert len(got["evr"]) == len(ref)
    np.testing.assert_allclose(got["evr"], ref, rtol=0, atol=TOL)
    cum = np.cumsum(ref)
    for t in ("0.5", "0.9", "0.99"):
        assert got["k_at"][t] == int(np.argmax(cum >= float(t))) + 1
    assert got["top_k"] == k and abs(got["top_k_evr"] - cum[min(k, len(cum)) - 1]) < TOL


def run(tmp_path, *args) -> dict:
    out = tmp_path / "out" / "results.json"
    assert main(["spectrum", *map(str, args), "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("unfolding,center", [("rows", "models"), ("cols", "samples"), ("model", "models"),
                                              ("rows", "none"), ("cols", "models")])
def test_checkpoints_match_numpy(checkpoint_population, tmp_path, unfolding, center):
    pop = checkpoint_population
    res = run(tmp_path, *pop.dirs, "--unfolding", unfolding, "--center", center, "--k", 3)
    assert res["source"] == "checkpoints" and res["n_models"] == 4
    assert res["models"] == ["single_0", "single_1", "sharded_0", "sharded_1"]
    assert set(res["keys"]) == set(pop.weights[0]) and len(res["keys"]) == 16
    for key, got in res["keys"].items():
        stack = np.stack([w[key].numpy() for w in pop.weights])  # (N, d_out, d_in)
        check_summary(got, stack, unfolding, center, 3)
    assert res["keys"]["model.layers.1.self_attn.v_proj.weight"]["layer"] == 1
    assert res["keys"]["model.layers.1.self_attn.v_proj.weight"]["module"] == "v_proj"


@pytest.mark.parametrize("unfolding,center", [("model", "models"), ("rows", "none"), ("cols", "samples")])
def test_adapters_match_numpy(adapter_population, tmp_path, unfolding, center):
    pop = adapter_population
    root = pop.dirs[0].parent
    res = run(tmp_path, root, "--unfolding", unfolding, "--center", center)  # one root: detected
    assert res["source"] == "adapters" and res["models"] == ["adapter_0", "adapter_1", "adapter_2", "alpha16_0"]
    assert set(res["keys"]) == set(pop.factors[0]) and len(res["keys"]) == 6
    scal = np.array([2.0, 2.0, 2.0, 4.0])  # alpha / r
    for key, got in res["keys"].items():
        b = np.stack([f[key][0].numpy() for f in pop.factors])  # (N, d_out, r)
        a = np.stack([f[key][1].numpy() for f in pop.factors])  # (N, r, d_in)
        assert got["rank"] == 4 and got["N"] == 4 and got["shape"] == [b.shape[1], a.shape[2]]
        check_summary(got["lora_A"], a, "rows", "samples", 16)  # authors' recipe
        check_summary(got["lora_B"], b, "cols", "samples", 16)
        product = scal[:, None, None] * b @ a  # (N, d_out, d_in): the weight updates
        np.testing.assert_allclose(product, np.stack([f[key][2].numpy() for f in pop.factors]), atol=1e-5)
        check_summary(got["product"], product, unfolding, center, 16)
        assert got["product"]["scaled"] is True


def test_keys_regex_and_explicit_dirs(adapter_population, tmp_path):
    res = run(tmp_path, *adapter_population.dirs[:3], "--unfolding", "rows", "--keys", r"layers\.1\..*q_proj")
    assert list(res["keys"]) == ["base_model.model.model.layers.1.self_attn.q_proj"]
    assert res["n_models"] == 3 and res["keys_regex"] == r"layers\.1\..*q_proj"


def test_console_script_end_to_end(checkpoint_population, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "uws_core.cli", "spectrum", *map(str, checkpoint_population.dirs),
                           "--unfolding", "model", "--keys", "lm_head", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(out.read_text())["keys"]) == ["lm_head.weight"]


def test_untrained_adapters_warn_zero_variance(adapter_population, tmp_path, caplog):
    dirs = [tmp_path / d.name for d in adapter_population.dirs[:2]]
    for src, dst in zip(adapter_population.dirs, dirs):
        shutil.copytree(src, dst)
        path = dst / "adapter_model.safetensors"
        tensors = {k: (v * 0 if "lora_B" in k else v) for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})  # PEFT's init: B = 0
    with caplog.at_level(logging.WARNING, logger="uws_core.cli"):
        res = run(tmp_path, *dirs, "--unfolding", "model", "--keys", "layers.0.self_attn.q_proj")
    got = res["keys"]["base_model.model.model.layers.0.self_attn.q_proj"]
    assert got["product"]["total_variance"] == 0 and not any(got["product"]["evr"])
    assert got["lora_A"]["total_variance"] > 0 and "zero total variance" in caplog.text


# ----- errors: non-zero exit and a message naming the bad file -----

def fails(capsys, *args, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["spectrum", *map(str, args)])
    assert exc.value.code == code
    return capsys.readouterr().err


def test_truncated_checkpoint_is_named(checkpoint_population, tmp_path, capsys):
    dirs = [tmp_path / d.name for d in checkpoint_population.dirs]
    for src, dst in zip(checkpoint_population.dirs, dirs):
        shutil.copytree(src, dst)
    path = dirs[0] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    err = fails(capsys, *dirs, "--unfolding", "rows", "--out", tmp_path / "o.json")
    assert f"{path} is not a readable safetensors file" in err
    assert not (tmp_path / "o.json").exists()


def test_nan_adapter_is_named(adapter_population, tmp_path, capsys):
    dirs = [tmp_path / d.name for d in adapter_population.dirs]
    for src, dst in zip(adapter_population.dirs, dirs):
        shutil.copytree(src, dst)
    path = dirs[2] / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})
    err = fails(capsys, *dirs, "--unfolding", "model", "--out", tmp_path / "o.json")
    assert f"adapter {dirs[2]}: key '{key}' in {path} holds 1 non-finite" in err


def test_input_errors(adapter_population, checkpoint_population, tmp_path, capsys):
    out = tmp_path / "o.json"
    err = fails(capsys, tmp_path / "nope", "--unfolding", "rows", "--out", out)
    assert f"{tmp_path / 'nope'} is not a directory" in err
    err = fails(capsys, adapter_population.dirs[0], checkpoint_population.dirs[0], "--unfolding", "rows", "--out", out)
    assert "mix PEFT adapters and transformers checkpoints" in err
    (tmp_path / "empty").mkdir()
    err = fails(capsys, tmp_path / "empty", "--unfolding", "rows", "--out", out)
    assert f"{tmp_path / 'empty'} is neither a PEFT adapter directory" in err
    err = fails(capsys, *checkpoint_population.dirs, "--unfolding", "rows", "--keys", "nomatch", "--out", out)
    assert "no key matches --keys 'nomatch'" in err
    fails(capsys, *checkpoint_population.dirs, "--unfolding", "tucker", "--out", out, code=2)  # argparse
    fails(capsys, *checkpoint_population.dirs, "--unfolding", "rows", "--keys", "(", "--out", out, code=2)
    assert not out.exists()


# ----- uws spectra (streamed, resumable), uws manifest lock, uws download -----

def test_spectra_streams_matches_spectrum_and_resumes(checkpoint_population, tmp_path, capsys):
    root = checkpoint_population.dirs[0].parent
    one = run(tmp_path, root, "--unfolding", "rows", "--center", "models")
    out = tmp_path / "streamed"
    assert main(["spectra", str(root), "--out", str(out), "--keys", "layers"]) == 0
    assert "(14 computed, 0 resumed, 0 over the memory limit)" in capsys.readouterr().out
    streamed = json.loads((out / "spectra.json").read_text())
    assert streamed["models"] == one["models"]
    for key, got in streamed["keys"].items():
        ref = one["keys"][key]
        np.testing.assert_allclose(got["spectra"]["weight"]["evr"], ref["evr"][:512], rtol=0, atol=TOL)
        assert got["spectra"]["weight"]["k_at"]["0.9"] == ref["k_at"]["0.9"]
    err = fails_cmd(capsys, "spectra", root, "--out", out, "--keys", "layers")
    assert "already holds a run" in err and "--resume" in err
    assert main(["spectra", str(root), "--out", str(out), "--keys", "layers", "--resume"]) == 0
    assert "(0 computed, 14 resumed" in capsys.readouterr().out


def fails_cmd(capsys, *args, code: int = 2, api=None) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*map(str, args)], api=api)
    assert exc.value.code == code
    captured = capsys.readouterr()
    return captured.err + captured.out


def test_manifest_lock_and_download_with_an_injected_hub(adapter_population, tmp_path, capsys):
    from conftest import sibling_test_module

    from uws_core.weights.manifests import MANIFEST_DIR, load_manifest

    FakeHub = sibling_test_module("weights", "test_hub").FakeHub

    mdir = tmp_path / "manifests"
    shutil.copytree(MANIFEST_DIR, mdir)
    df = load_manifest("mistral7b_loras", mdir)
    ids = list(df["repo_id"][:2])
    for repo_id, d in zip(ids, adapter_population.dirs):
        shutil.copytree(d, tmp_path / "hub" / repo_id)
    df.loc[:1, "expected_shapes"] = ""  # tiny adapters: not Mistral-7B's shapes
    df.to_csv(mdir / "mistral7b_loras.csv", index=False, lineterminator="\n")
    hub, csv = FakeHub(tmp_path / "hub"), str(mdir / "mistral7b_loras.csv")
    assert main(["manifest", "lock", csv, "--limit", "2"], api=hub) == 0
    assert "2 entries locked, 0 failed" in capsys.readouterr().out
    dest = tmp_path / "dest"
    assert main(["download", csv, "--limit", "2", "--dest", str(dest)], api=hub) == 0
    assert "4 downloaded" in capsys.readouterr().out
    assert (dest / ids[1] / "adapter_model.safetensors").is_file()
    shutil.rmtree(dest / ids[1])
    hub.tamper[(ids[1], "adapter_model.safetensors")] = b"not a safetensors file"
    out = fails_cmd(capsys, "download", csv, "--limit", "2", "--dest", dest, "--only", "task", api=hub, code=1)
    assert "2 present" in out and f"refused: {ids[1]}/adapter_model.safetensors: size" in out
    err = fails_cmd(capsys, "manifest", "lock", "bert", api=hub)
    assert "'bert' is neither a model family" in err
    assert main(["download", csv, "--dest", str(dest), "--where", "split=eval;ood_test", "--where", "task_id=task280"],
                api=hub) == 0
    assert "mistral7b_loras: 1 entries" in capsys.readouterr().out  # the first entry only: present and verified
    err = fails_cmd(capsys, "download", csv, "--dest", dest, "--where", "colour=red", api=hub)
    assert "--where names column 'colour'" in err


def test_spectra_dispatches_kohya_loras(tmp_path, capsys):
    """A root of kohya-format LoRA files (ranks differing per adapter) goes through uws_core.weights.kohya."""
    from conftest import sibling_test_module

    kohya = sibling_test_module("weights", "test_kohya")
    RANKS, write_kohya_root = kohya.RANKS, kohya.write_kohya_root

    root = write_kohya_root(tmp_path / "sdxl")
    out = tmp_path / "out"
    assert main(["spectra", str(root), "--out", str(out)]) == 0
    res = json.loads((out / "spectra.json").read_text())
    assert res["kind"] == "kohya" and res["n_models"] == len(RANKS)
    for key in res["keys"].values():
        assert set(key["spectra"]) == {"lora_A", "lora_B", "product"} and len(set(key["ranks"])) > 1
    err = fails_cmd(capsys, "spectrum", root, "--unfolding", "model", "--out", tmp_path / "one.json")
    assert "uws spectra" in err


def test_parser_and_hub_commands_start_without_torch():
    """`uws --help`, `uws manifest lock` and `uws download` import neither torch nor transformers (about 2 s of CPU
    per call): the parser's choices come from linalg.conventions, the hub checks headers with safetensors' numpy
    framework (weights.safetensors_header)."""
    code = ("import sys; from uws_core import cli; import uws_core.weights.hub, uws_core.weights.manifests; "
            "cli.build_parser(); print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", [[], ["spectrum"], ["spectra"], ["report"], ["download"], ["manifest"],
                                     ["manifest", "lock"]])
def test_every_help_page_renders(command, capsys):
    """`--help` of every command prints its options (argparse %-formats help strings: a bare "80%" in one made
    `uws spectra --help` raise TypeError)."""
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--help" in out
