"""Hostile and unlucky inputs against the command line and the download path (issue 12).

Each class of the issue is its own group of cases. Every case snapshots a sibling ``victim`` directory (files,
bytes, links) before and asserts it is unchanged after, and checks that the refusal names the file, the model
and (where there is one) the key, with exit status 2 and no traceback. Hub listings are served over HTTP by
``hub_emulator.HubEmulator`` to the real ``huggingface_hub.HfApi`` (in process, for speed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save, save_file

from hub_emulator import HubEmulator
from uws_core.weights import dtype_policy
from uws_core.weights.cache import CacheError, build_cached, verify_cache_dir
from uws_core.cli import main
from uws_core.weights.hub import download_manifest, lock_manifest
from uws_core.weights.manifests import MANIFEST_DIR, ManifestError, load_manifest, local_dir
from uws_core.weights.safe_paths import UnsafePathError, contained, write_text_atomic

SHA = "0123456789abcdef0123456789abcdef01234567"


# ------------------------------------------------------------------------------------------------ helpers

def snapshot(root: Path) -> dict:
    """Every entry under ``root``: relative path -> ("link", target) | ("file", sha256) | ("dir",)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = (("link", os.readlink(p)) if p.is_symlink() else ("file", hashlib.sha256(p.read_bytes()).hexdigest())
                    if p.is_file() else ("dir",))
    return out


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim"
    (v / "alice" / "lora-a").mkdir(parents=True)
    (v / "keep.txt").write_text("precious\n")
    (v / "alice" / "lora-a" / "adapter_model.safetensors").write_bytes(b"someone else's model")
    before = snapshot(v)
    yield v
    assert snapshot(v) == before, "something outside the destination changed"


def fails(capsys, *args, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*map(str, args)])
    out = capsys.readouterr()
    text = out.err + out.out
    assert exc.value.code == code, text
    assert "Traceback" not in text
    return text


def lora_bytes(seed=0, r=2, d=8, dtype=torch.float32) -> bytes:
    g = torch.Generator().manual_seed(seed)
    t = {f"base_model.model.model.layers.0.self_attn.q_proj.lora_{w}.weight":
         torch.randn(*((r, d) if w == "A" else (d, r)), generator=g).to(dtype) for w in ("A", "B")}
    return save(t)


def write_adapter(d: Path, seed=0, alpha=4, dtype=torch.float32, r=2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                       "target_modules": ["q_proj"]}))
    (d / "adapter_model.safetensors").write_bytes(lora_bytes(seed, r=r, dtype=dtype))
    return d


def write_checkpoint(d: Path, tensors: dict, config: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    return d


def checkpoint_weights(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(6, 4, generator=g) for i in range(2)}


def manifest_with(tmp_path: Path, rows: list[dict], family: str = "mistral7b_loras") -> Path:
    """A copy of data_manifests/ whose first rows of ``family`` are replaced by ``rows`` (column -> value)."""
    mdir = tmp_path / "manifests"
    if not mdir.exists():
        shutil.copytree(MANIFEST_DIR, mdir)
    csv = mdir / f"{family}.csv"
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for i, row in enumerate(rows):
        for col, value in {"expected_shapes": "", "hub_note": "", **row}.items():
            df.loc[i, col] = value
    df.to_csv(csv, index=False, lineterminator="\n")
    return csv


def locked_row(repo_id: str, files: dict[str, bytes]) -> dict:
    sums = ";".join(f"{n}=sha256:{hashlib.sha256(b).hexdigest()}@{len(b)}" for n, b in files.items())
    return {"repo_id": repo_id, "revision": SHA, "checksums": sums, "hub_status": "locked",
            "files": ";".join(files)}


ADAPTER = {"adapter_config.json": b'{"peft_type": "LORA", "r": 2, "lora_alpha": 4}',
           "adapter_model.safetensors": lora_bytes(0)}


# ---------------------------------------------------------------------- writes outside the destination

@pytest.mark.parametrize("repo_id", ["../victim", "/tmp/abs/path", "../dest", "alice/../../victim", "a/b/c",
                                     "alice/..", "alice/lora--x", "alice/x.git", "alice/l\u00f6ra"])
def test_hostile_repo_ids_are_refused_before_anything_is_touched(tmp_path, victim, capsys, monkeypatch, repo_id):
    dest = tmp_path / "dest"
    write_adapter(dest / "bob" / "ok")  # a verified model already in dest
    before = snapshot(dest)
    csv = manifest_with(tmp_path, [locked_row(repo_id, ADAPTER)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = fails(capsys, "download", csv, "--dest", dest, "--limit", "1")
    assert str(csv) in err and "row 1" in err and "'repo_id'" in err and repr(repo_id) in err
    assert snapshot(dest) == before
    assert local_dir(tmp_path, repo_id) is None  # never resolved to a directory either


@pytest.mark.parametrize("name", ["../../x.safetensors", "/etc/x.safetensors", "../lora-b/adapter_model.safetensors",
                                  "a/../../x.safetensors", "..\\x.safetensors", "C:x.safetensors", "./x.safetensors",
                                  "a//x.safetensors", "x\x00.safetensors"])
def test_hostile_file_names_in_a_manifest_are_refused(tmp_path, victim, capsys, monkeypatch, name):
    csv = manifest_with(tmp_path, [locked_row("alice/lora-a", {**ADAPTER, name: b"evil"})])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = fails(capsys, "download", csv, "--dest", tmp_path / "dest", "--limit", "1")
    assert str(csv) in err and "'checksums'" in err and "alice/lora-a" in err
    assert not (tmp_path / "dest" / "alice").exists()


@pytest.mark.parametrize("name,pattern", [("..\\..\\evil.safetensors", "*.safetensors"),
                                          ("sub/../../evil.safetensors", "sub/*"),
                                          ("sub/./evil.safetensors", "sub/*")])
def test_hostile_file_names_from_the_hub_listing_are_never_locked(tmp_path, victim, name, pattern):
    from huggingface_hub import HfApi

    with HubEmulator() as hub:
        hub.commit("alice/lora-a", {**ADAPTER, name: b"evil"})
        csv = manifest_with(tmp_path, [{"repo_id": "alice/lora-a", "files": pattern, "hub_status": "unlocked",
                                        "revision": "", "checksums": ""}])
        res = lock_manifest("mistral7b_loras", api=HfApi(endpoint=hub.url), manifest_dir=csv.parent, limit=1,
                            progress=False)
    assert res["locked"] == 0 and repr(name) in res["failed"][0]["reason"]
    row = load_manifest("mistral7b_loras", csv.parent).iloc[0]
    assert row["hub_status"] == "lock_failed" and row["checksums"] == ""


def test_symlinked_owner_or_entry_directory_is_refused(tmp_path, victim, monkeypatch):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "alice").symlink_to(victim / "alice")  # owner directory planted as a link out of dest
    (dest / "bob").mkdir()
    (dest / "bob" / "lora-c").symlink_to(victim)  # entry directory planted as a link
    csv = manifest_with(tmp_path, [locked_row("alice/lora-a", ADAPTER), locked_row("bob/lora-c", ADAPTER)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = download_manifest("mistral7b_loras", dest, manifest_dir=csv.parent, limit=2, progress=False)
    for rid in ("alice/lora-a", "bob/lora-c"):
        assert rep.entries[rid].startswith("refused") and "symbolic link" in rep.entries[rid]
        assert rid in rep.entries[rid]


def test_a_symlinked_dest_is_followed_once_and_a_planted_file_link_is_refused(tmp_path, victim, monkeypatch):
    real = tmp_path / "disk" / "dest"
    entry = real / "alice" / "lora-a"
    entry.mkdir(parents=True)
    (entry / "adapter_model.safetensors").symlink_to(victim / "alice" / "lora-a" / "adapter_model.safetensors")
    (tmp_path / "dest").symlink_to(real)  # --dest itself may be a link (a mounted disk)
    csv = manifest_with(tmp_path, [locked_row("alice/lora-a", ADAPTER)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = download_manifest("mistral7b_loras", tmp_path / "dest", manifest_dir=csv.parent, limit=1, progress=False)
    assert "symbolic link" in rep.entries["alice/lora-a"] and "adapter_model.safetensors" in rep.entries["alice/lora-a"]
    assert (real / "uws-download-mistral7b_loras.json").is_file()


def test_a_keys_dir_planted_as_a_link_is_refused(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(2):
        write_checkpoint(pop / f"m{i}", checkpoint_weights(i))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keys").symlink_to(victim)
    err = fails(capsys, "spectra", pop, "--out", tmp_path / "out")
    assert "keys is a symbolic link" in err


def test_planted_symlink_in_staging_is_refused(tmp_path, victim, monkeypatch):
    dest = tmp_path / "dest"
    stage = tmp_path / ".dest.staging" / "alice" / "lora-a"
    stage.mkdir(parents=True)
    (stage / "adapter_model.safetensors").symlink_to(victim / "keep.txt")
    csv = manifest_with(tmp_path, [locked_row("alice/lora-a", ADAPTER)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = download_manifest("mistral7b_loras", dest, manifest_dir=csv.parent, limit=1, progress=False)
    assert "symbolic link" in rep.entries["alice/lora-a"] and "adapter_model.safetensors" in rep.entries["alice/lora-a"]


def test_unpublish_moves_only_the_entrys_listed_files(tmp_path, victim, monkeypatch):
    dest = tmp_path / "dest"
    entry = dest / "alice" / "lora-a"
    entry.mkdir(parents=True)
    (entry / "adapter_config.json").write_bytes(ADAPTER["adapter_config.json"])  # verified, listed
    (entry / "my_notes.txt").write_text("mine\n")  # a user's own file
    (entry / "sub").mkdir()
    (entry / "sub" / "results.json").write_text("{}")
    csv = manifest_with(tmp_path, [locked_row("alice/lora-a", ADAPTER)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the weights are missing: the entry is incomplete
    rep = download_manifest("mistral7b_loras", dest, manifest_dir=csv.parent, limit=1, progress=False)
    assert rep.entries["alice/lora-a"] == "missing"
    assert (entry / "my_notes.txt").read_text() == "mine\n" and (entry / "sub" / "results.json").is_file()
    assert not (entry / "adapter_config.json").exists()  # the partial model is not visible to loaders
    assert (tmp_path / ".dest.staging" / "alice" / "lora-a" / "adapter_config.json").is_file()


def test_offline_never_hashes_a_file_outside_dest(tmp_path, victim, monkeypatch):
    """The issue's ``../<other repo>/...`` name: refused at load, so victim's file is never read as the entry's copy."""
    csv = manifest_with(tmp_path, [locked_row("alice/lora-a", {"../../victim/keep.txt": b"precious\n"})])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ManifestError, match="keep.txt"):
        download_manifest("mistral7b_loras", tmp_path / "dest", manifest_dir=csv.parent, limit=1, progress=False)


def test_containment_rule_directly(tmp_path, victim):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(victim)
    for rel in ("../victim/keep.txt", "/abs", "link/keep.txt", "a/../../x", ""):
        with pytest.raises(UnsafePathError):
            contained(tmp_path / "root", rel)
    assert contained(tmp_path / "root", "a/b.txt") == tmp_path / "root" / "a" / "b.txt"


def test_atomic_writes_never_follow_a_planted_symlink(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    for name in (".spectra.json.tmp", "spectra.json"):  # the old fixed temp name, and the target itself
        (out / name).symlink_to(victim / "keep.txt")
    write_text_atomic(out / "spectra.json", "{}")
    assert (out / "spectra.json").read_text() == "{}" and not (out / "spectra.json").is_symlink()


def test_run_dir_writers_stay_inside_out_with_planted_links(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(3):
        write_checkpoint(pop / f"m{i}", checkpoint_weights(i))
    out = tmp_path / "out"
    (out / "keys").mkdir(parents=True)
    (out / ".run.json.tmp").symlink_to(victim / "keep.txt")
    (out / ".spectra.json.tmp").symlink_to(victim / "keep.txt")
    assert main(["spectra", str(pop), "--out", str(out)]) == 0  # keys/ exists but holds nothing: allowed
    assert json.loads((out / "spectra.json").read_text())["n_models"] == 3
    assert (out / ".run.json.tmp").is_symlink() and (out / ".spectra.json.tmp").is_symlink()  # never used


# ---------------------------------------------------------------------------------- weight maps, shards

def sharded(d: Path, shards: dict[str, dict], weight_map: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, t in shards.items():
        save_file(t, str(d / name))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "config.json").write_text('{"model_type": "llama"}')
    return d


@pytest.mark.parametrize("shard", ["../m1/model.safetensors", "/abs/model.safetensors", "link/model.safetensors"])
def test_weight_map_pointing_outside_the_model_is_refused(tmp_path, victim, capsys, shard):
    pop = tmp_path / "pop"
    write_checkpoint(pop / "m1", checkpoint_weights(1))
    d = sharded(pop / "m0", {}, {k: shard for k in checkpoint_weights(0)})
    (d / "link").symlink_to(pop / "m1")
    err = fails(capsys, "spectra", d, pop / "m1", "--out", tmp_path / "out")
    assert "m0" in err and "model.safetensors.index.json" in err and "model.layers.0.mlp.up_proj.weight" in err
    assert repr(shard) in err or "symbolic link" in err


def test_a_key_held_by_two_shards_is_refused(tmp_path, victim, capsys):
    w = checkpoint_weights(0)
    k0, k1 = list(w)
    d = sharded(tmp_path / "pop" / "m0", {"a.safetensors": {k0: w[k0], k1: w[k1]}, "b.safetensors": {k1: w[k1] * 2}},
                {k0: "a.safetensors", k1: "b.safetensors"})
    err = fails(capsys, "spectrum", d, "--unfolding", "rows", "--out", tmp_path / "o.json")
    assert "m0" in err and repr(k1) in err and "a.safetensors" in err and "b.safetensors" in err


def test_an_index_naming_a_key_twice_is_refused(tmp_path, victim, capsys):
    w = checkpoint_weights(0)
    k0 = next(iter(w))
    d = sharded(tmp_path / "pop" / "m0", {"a.safetensors": w}, {})
    entries = ", ".join(f'"{k}": "a.safetensors"' for k in w)
    (d / "model.safetensors.index.json").write_text(f'{{"weight_map": {{{entries}, "{k0}": "a.safetensors"}}}}')
    err = fails(capsys, "spectrum", d, "--unfolding", "rows", "--out", tmp_path / "o.json")
    assert "model.safetensors.index.json" in err and repr(k0) in err and "twice" in err


def test_two_weight_sets_in_one_folder_are_refused(tmp_path, victim, capsys):
    d = write_checkpoint(tmp_path / "pop" / "m0", checkpoint_weights(0))
    sharded(d, {"a.safetensors": checkpoint_weights(5)}, {k: "a.safetensors" for k in checkpoint_weights(5)})
    err = fails(capsys, "spectrum", d, "--unfolding", "rows", "--out", tmp_path / "o.json")
    assert "two weight sets" in err and "m0" in err


# ---------------------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype,code", [(torch.int8, "I8"), (torch.uint8, "U8"), (torch.bool, "BOOL"),
                                        (torch.int64, "I64")])
def test_integer_and_bool_lora_factors_are_refused(tmp_path, victim, capsys, dtype, code):
    pop = tmp_path / "pop"
    write_adapter(pop / "a0")
    write_adapter(pop / "a1", seed=1, dtype=dtype)
    err = fails(capsys, "spectra", pop, "--out", tmp_path / "out")
    assert "a1" in err and "adapter_model.safetensors" in err and code in err and "lora_A.weight" in err


@pytest.mark.parametrize("dtype,code", [(torch.int8, "I8"), (torch.uint8, "U8"), (torch.int64, "I64")])
def test_integer_kohya_factors_and_checkpoint_weights_are_refused(tmp_path, victim, capsys, dtype, code):
    k = tmp_path / "kohya" / "style-0"
    k.mkdir(parents=True)
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 4, dtype=dtype),
               "lora_unet_x.lora_up.weight": torch.ones(4, 2), "lora_unet_x.alpha": torch.tensor(2.0)},
              str(k / "lora.safetensors"))
    err = fails(capsys, "spectra", k, "--out", tmp_path / "out")
    assert "style-0" in err and "lora.safetensors" in err and "lora_unet_x.lora_down.weight" in err and code in err
    pop = tmp_path / "pop"
    write_checkpoint(pop / "m0", checkpoint_weights(0))
    w = checkpoint_weights(1)
    w["model.layers.1.mlp.up_proj.weight"] = w["model.layers.1.mlp.up_proj.weight"].to(dtype)  # one int8 weight
    write_checkpoint(pop / "m1", w)
    for cmd in (["spectra", pop, "--out", tmp_path / "out2"],
                ["spectrum", pop, "--unfolding", "rows", "--out", tmp_path / "o.json"]):
        err = fails(capsys, *cmd)
        assert "'m1'" in err and "model.safetensors" in err and "model.layers.1.mlp.up_proj.weight" in err and code in err


def test_integer_buffers_that_are_not_weights_are_skipped(tmp_path, capsys):
    pop = tmp_path / "pop"
    for i in range(2):
        write_checkpoint(pop / f"m{i}", {**checkpoint_weights(i), "embeddings.position_ids": torch.arange(8)[None]})
    assert main(["spectrum", str(pop), "--unfolding", "rows", "--out", str(tmp_path / "o.json")]) == 0
    assert len(json.loads((tmp_path / "o.json").read_text())["keys"]) == 2


# --------------------------------------------------------------------------------- sizes and memory

def test_a_112_byte_file_declaring_0_by_30000_is_refused_before_allocating(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(2):
        write_checkpoint(pop / f"m{i}", {"model.layers.0.mlp.up_proj.weight": torch.zeros(0, 30000)})
    f = pop / "m0" / "model.safetensors"
    assert f.stat().st_size < 200
    for cmd in (["spectra", pop, "--out", tmp_path / "out"],
                ["spectrum", pop, "--unfolding", "rows", "--out", tmp_path / "o.json"]):
        err = fails(capsys, *cmd)
        assert "zero size" in err and "(0, 30000)" in err and "m0" in err and "up_proj.weight" in err
    k = tmp_path / "zero-lora"
    write_adapter(k, r=2)
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 0),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2)},
              str(k / "adapter_model.safetensors"))
    err = fails(capsys, "spectra", k, "--out", tmp_path / "out3")
    assert "zero size" in err and "lora_A.weight" in err and "zero-lora" in err


def test_memory_guard_refuses_a_huge_key_before_allocating(tmp_path, victim, capsys, monkeypatch):
    pop = tmp_path / "pop"
    for i in range(2):  # (1, 30000): 240 kB on disk, a 7.2 GB Gram in the rows unfolding
        write_checkpoint(pop / f"m{i}", {"model.layers.0.mlp.up_proj.weight": torch.ones(1, 30000) * (i + 1)})
    monkeypatch.setattr(dtype_policy, "available_memory_bytes", lambda: 2 << 30)  # a 2 GiB machine
    assert dtype_policy.default_memory_limit_bytes() == pytest.approx(0.8 * (2 << 30))
    err = fails(capsys, "spectrum", pop, "--unfolding", "rows", "--out", tmp_path / "o.json")
    assert "model.layers.0.mlp.up_proj.weight" in err and "(1, 30000)" in err and "memory limit 1.60 GiB" in err
    assert not (tmp_path / "o.json").exists()
    assert main(["spectra", str(pop), "--out", str(tmp_path / "out")]) == 0  # skipped and reported, by default
    assert "1 over the memory limit" in capsys.readouterr().out
    err = fails(capsys, "spectrum", pop, "--unfolding", "rows", "--out", tmp_path / "o.json", "--max-key-gib", "0")
    assert "--max-key-gib must be > 0" in err
    assert main(["spectrum", str(pop), "--unfolding", "model", "--out", str(tmp_path / "o.json")]) == 0  # fits


# ------------------------------------------------------------------------------------- alpha and rank

@pytest.mark.parametrize("alpha", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_lora_alpha_is_refused(tmp_path, victim, capsys, alpha):
    pop = tmp_path / "pop"
    write_adapter(pop / "a0")
    d = write_adapter(pop / "a1", seed=1)
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": %s}' % alpha)
    err = fails(capsys, "spectra", pop, "--out", tmp_path / "out")
    assert "a1" in err and "adapter_config.json" in err and "lora_alpha" in err


def test_non_finite_kohya_alpha_and_rank_0_are_refused(tmp_path, victim, capsys):
    k = tmp_path / "k" / "style-nan"
    k.mkdir(parents=True)
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 2),
               "lora_unet_x.alpha": torch.tensor(math.nan)}, str(k / "lora.safetensors"))
    err = fails(capsys, "spectra", k, "--out", tmp_path / "out")
    assert "style-nan" in err and "lora_unet_x.alpha" in err and "finite" in err
    z = tmp_path / "k" / "style-rank0"
    z.mkdir(parents=True)
    save_file({"lora_unet_x.lora_down.weight": torch.ones(0, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 0),
               "lora_unet_x.alpha": torch.tensor(1.0)}, str(z / "lora.safetensors"))
    err = fails(capsys, "spectra", z, "--out", tmp_path / "out2")
    assert "style-rank0" in err and "lora_unet_x.lora_down.weight" in err and "rank 0" in err


def test_an_unusual_architecture_in_config_is_refused_by_name(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    write_checkpoint(pop / "m0", checkpoint_weights(0))
    write_checkpoint(pop / "m1", checkpoint_weights(1), config={"model_type": ["gpt2", "llama"]})
    err = fails(capsys, "spectra", pop, "--out", tmp_path / "out")
    assert "'m1'" in err and "config.json" in err and "model_type" in err
    write_checkpoint(pop / "m1", checkpoint_weights(1), config={"model_type": "gpt2"})  # a mixed population
    err = fails(capsys, "spectra", pop, "--out", tmp_path / "out")
    assert "'m0'" in err and "'m1'" in err and "gpt2" in err and "config.json" in err


# ------------------------------------------------------------------------------------------------ resume

def test_resume_after_an_input_changed_is_refused(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(3):
        write_checkpoint(pop / f"m{i}", checkpoint_weights(i))
    out = tmp_path / "out"
    assert main(["spectra", str(pop), "--out", str(out), "--keys", "layers.0"]) == 0
    capsys.readouterr()
    write_checkpoint(pop / "m1", checkpoint_weights(7))  # same keys and shapes, other values
    err = fails(capsys, "spectra", pop, "--out", out, "--resume")
    assert "inputs changed" in err and "'m1'" in err and "model.safetensors" in err
    write_checkpoint(pop / "m1", checkpoint_weights(1))  # restored byte for byte: the resume goes on
    assert main(["spectra", str(pop), "--out", str(out), "--resume"]) == 0
    assert "1 computed, 1 resumed" in capsys.readouterr().out
    (pop / "m1" / "extra.safetensors").write_bytes(b"")  # not a file the model is read from: no effect
    (pop / "m2" / "config.json").write_text('{"model_type": "llama", "vocab_size": 9}')  # a file it is read from
    err = fails(capsys, "spectra", pop, "--out", out, "--resume")
    assert "'m2'" in err and "config.json" in err


def test_damaged_key_file_on_resume_is_recomputed_and_stale_keys_are_refused(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(3):
        write_checkpoint(pop / f"m{i}", checkpoint_weights(i))
    out = tmp_path / "out"
    assert main(["spectra", str(pop), "--out", str(out)]) == 0
    capsys.readouterr()
    key_file = out / "keys" / "model.layers.0.mlp.up_proj.weight.json"
    good = json.loads(key_file.read_text())
    key_file.write_text('{"key": "model.layers.0.mlp.up_')  # a torn write
    assert main(["spectra", str(pop), "--out", str(out), "--resume"]) == 0
    assert "1 computed, 1 resumed" in capsys.readouterr().out
    assert json.loads(key_file.read_text())["spectra"] == good["spectra"]
    (out / "run.json").unlink()
    err = fails(capsys, "spectra", pop, "--out", out)
    assert "run.json is missing" in err and str(out / "keys") in err
    (out / "run.json").write_text("[1, 2")
    err = fails(capsys, "spectra", pop, "--out", out, "--resume")
    assert "run.json is damaged" in err


def test_key_names_cannot_write_outside_out(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(2):
        write_checkpoint(pop / f"m{i}", {"../../../victim/keep.txt.weight": torch.randn(3, 2) + i,
                                         "/abs/x.weight": torch.randn(3, 2) - i})
    out = tmp_path / "out"
    assert main(["spectra", str(pop), "--out", str(out)]) == 0
    written = [p for p in (out / "keys").iterdir()]
    assert len(written) == 2 and all(p.parent == out / "keys" for p in written)


# ------------------------------------------------------------------------------------------------- cache

def _build(tmp: Path) -> dict:
    (tmp / "weights.bin").write_bytes(b"w" * 10)
    return {"n": 1}


@pytest.mark.parametrize("damage", ["extra", "missing", "emptied", "unsafe", "symlink"])
def test_cache_checks_the_exact_file_set(tmp_path, victim, damage):
    final = build_cached(tmp_path / "cache" / "entry", _build, 1)
    manifest = final / "complete.json"
    m = json.loads(manifest.read_text())
    if damage == "extra":
        (final / "planted.py").write_text("print('hi')")
    elif damage == "missing":
        m["files"]["other.bin"] = "0" * 64
        manifest.write_text(json.dumps(m))
    elif damage == "emptied":
        m["files"] = {}
        (final / "weights.bin").unlink()
        manifest.write_text(json.dumps(m))
    elif damage == "unsafe":
        m["files"]["../../victim/keep.txt"] = hashlib.sha256(b"precious\n").hexdigest()
        manifest.write_text(json.dumps(m))
    else:
        (final / "weights.bin").unlink()
        (final / "weights.bin").symlink_to(victim / "keep.txt")
    with pytest.raises(CacheError, match={"extra": "planted.py", "missing": "other.bin", "emptied": "lists no file",
                                          "unsafe": "unsafe path", "symlink": "symbolic link"}[damage]):
        verify_cache_dir(final, 1)
    build_cached(final, _build, 1)  # rebuilt
    verify_cache_dir(final, 1)


def test_a_build_that_writes_nothing_is_never_recorded(tmp_path):
    with pytest.raises(CacheError, match="wrote no file"):
        build_cached(tmp_path / "cache" / "entry", lambda tmp: None, 1)
    assert not (tmp_path / "cache" / "entry").exists()


# ------------------------------------------------------------------------------- what else an attacker tries

def test_truncated_header_claiming_a_huge_length_is_refused(tmp_path, victim, capsys):
    d = tmp_path / "pop" / "m0"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    err = fails(capsys, "spectrum", d, "--unfolding", "rows", "--out", tmp_path / "o.json")
    assert "m0" in err and "model.safetensors" in err and "not a readable safetensors file" in err


def test_output_paths_that_are_symlinks_are_replaced_not_written_through(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(2):
        write_checkpoint(pop / f"m{i}", checkpoint_weights(i))
    out = tmp_path / "o.json"
    out.symlink_to(victim / "keep.txt")
    assert main(["spectrum", str(pop), "--unfolding", "rows", "--out", str(out)]) == 0
    assert not out.is_symlink() and json.loads(out.read_text())["n_models"] == 2


def test_pickles_are_never_loaded(tmp_path, victim, capsys):
    d = tmp_path / "pop" / "m0"
    d.mkdir(parents=True)
    (d / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    (d / "config.json").write_text("{}")
    err = fails(capsys, "spectra", tmp_path / "pop", "--out", tmp_path / "out")
    assert not (tmp_path / "pwned").exists() and "pop" in err


@pytest.mark.parametrize("fault", ["sha", "lfs_hex", "size"])
def test_malformed_hub_metadata_fails_one_entry_and_keeps_the_others(tmp_path, victim, fault):
    from huggingface_hub import HfApi

    with HubEmulator() as hub:
        hub.commit("alice/lora-a", ADAPTER)
        hub.commit("alice/lora-b", ADAPTER)

        def mangle(obj):
            if obj["id"] != "alice/lora-a":
                return obj
            if fault == "sha":
                obj["sha"] = "../../x"
            for s in obj["siblings"]:
                if s.get("lfs") and fault == "lfs_hex":
                    s["lfs"]["sha256"] = "not hex;x=y"
                if fault == "size":
                    s["size"] = -5
            return obj

        hub.mangle_model_info = mangle
        csv = manifest_with(tmp_path, [{"repo_id": rid, "hub_status": "unlocked", "revision": "", "checksums": "",
                                        "files": "adapter_config.json;adapter_model.safetensors"}
                                       for rid in ("alice/lora-a", "alice/lora-b")])
        res = lock_manifest("mistral7b_loras", api=HfApi(endpoint=hub.url), manifest_dir=csv.parent, limit=2,
                            progress=False)
    assert res["locked"] == 1 and res["failed"][0]["repo_id"] == "alice/lora-a"
    df = load_manifest("mistral7b_loras", csv.parent)
    assert list(df["hub_status"][:2]) == ["lock_failed", "locked"]


def test_malformed_manifest_csv_and_index_values_are_named(tmp_path, victim, capsys):
    csv = manifest_with(tmp_path, [])
    csv.write_text(csv.read_text() + '"unterminated,\n')
    err = fails(capsys, "download", csv, "--dest", tmp_path / "dest")
    assert str(csv) in err
    w = checkpoint_weights(0)
    d = sharded(tmp_path / "pop" / "m0", {"a.safetensors": w}, {k: ["a.safetensors"] for k in w})
    err = fails(capsys, "spectrum", d, "--unfolding", "rows", "--out", tmp_path / "o.json")
    assert "model.safetensors.index.json" in err and "not a shard file name" in err and "m0" in err


def test_non_finite_weights_are_named(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    write_checkpoint(pop / "m0", checkpoint_weights(0))
    w = checkpoint_weights(1)
    w["model.layers.1.mlp.up_proj.weight"][2, 1] = math.nan
    write_checkpoint(pop / "m1", w)
    for cmd in (["spectra", pop, "--out", tmp_path / "out"],
                ["spectrum", pop, "--unfolding", "rows", "--out", tmp_path / "o.json"]):
        err = fails(capsys, *cmd)
        assert "m1" in err and "model.layers.1.mlp.up_proj.weight" in err


@pytest.mark.parametrize("name", [".uws-verified.json", ".cache/huggingface/download/adapter_model.safetensors.metadata"])
def test_hub_files_named_like_our_stamp_or_the_clients_metadata_are_never_locked(tmp_path, victim, name):
    from huggingface_hub import HfApi

    with HubEmulator() as hub:
        hub.commit("alice/lora-a", {**ADAPTER, name: b"{}"})
        csv = manifest_with(tmp_path, [{"repo_id": "alice/lora-a", "files": "*;.cache/*/*/*", "hub_status": "unlocked",
                                        "revision": "", "checksums": ""}])
        res = lock_manifest("mistral7b_loras", api=HfApi(endpoint=hub.url), manifest_dir=csv.parent, limit=1,
                            progress=False)
    assert res["locked"] == 0 and "reserved" in res["failed"][0]["reason"]


def test_a_file_where_an_entry_directory_should_be_fails_that_entry_only(tmp_path, victim, monkeypatch):
    dest = tmp_path / "dest"
    (dest / "alice").mkdir(parents=True)
    (dest / "alice" / "lora-a").write_text("not a directory")
    entry_b = dest / "alice" / "lora-b"
    entry_b.mkdir()
    for n, b in ADAPTER.items():
        (entry_b / n).write_bytes(b)
    csv = manifest_with(tmp_path, [locked_row("alice/lora-a", ADAPTER), locked_row("alice/lora-b", ADAPTER)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = download_manifest("mistral7b_loras", dest, manifest_dir=csv.parent, limit=2, progress=False)
    assert rep.entries["alice/lora-b"] == "ok" and rep.entries["alice/lora-a"] != "ok"
    assert (dest / "alice" / "lora-a").read_text() == "not a directory"


def test_an_empty_floating_matrix_not_named_weight_is_refused(tmp_path, victim, capsys):
    pop = tmp_path / "pop"
    for i in range(2):
        write_checkpoint(pop / f"m{i}", {**checkpoint_weights(i), "model.extra_scale": torch.zeros(0, 7)})
    err = fails(capsys, "spectra", pop, "--out", tmp_path / "out")
    assert "model.extra_scale" in err and "zero size" in err


@pytest.mark.parametrize("fault", ["folder", "negative_size", "other_lfs", "hostile_extra"])
def test_nonsense_paths_info_at_download_fails_that_entry_only(tmp_path, victim, fault):
    from huggingface_hub import HfApi

    with HubEmulator() as hub:
        hub.commit("alice/lora-a", ADAPTER)
        hub.commit("alice/lora-b", ADAPTER)
        csv = manifest_with(tmp_path, [{"repo_id": rid, "hub_status": "unlocked", "revision": "", "checksums": "",
                                        "files": "adapter_config.json;adapter_model.safetensors"}
                                       for rid in ("alice/lora-a", "alice/lora-b")])
        api = HfApi(endpoint=hub.url)
        assert lock_manifest("mistral7b_loras", api=api, manifest_dir=csv.parent, limit=2, progress=False)["locked"] == 2

        def mangle(entries):
            if not entries or fault == "hostile_extra":
                return entries + [{"type": "file", "path": "../../victim/keep.txt", "size": 9, "oid": "0" * 40}]
            e = entries[0]
            if fault == "folder":
                return [{"type": "directory", "path": e["path"], "oid": "0" * 40}] + entries[1:]
            if fault == "negative_size":
                e["size"] = -1
            for other in entries if fault == "other_lfs" else []:
                if other.get("lfs"):
                    other["lfs"]["oid"] = "f" * 64
            return entries

        dest = tmp_path / "dest"
        hub.mangle_paths_info = mangle
        rep = download_manifest("mistral7b_loras", dest, api=api, manifest_dir=csv.parent, limit=2, progress=False)
    if fault == "hostile_extra":  # an extra name in the answer is ignored: only the locked names are used
        assert rep.entries == {"alice/lora-a": "ok", "alice/lora-b": "ok"}
    else:
        assert all(v in ("error", "refused") for v in rep.entries.values()) and not (dest / "alice").exists()


def test_a_transient_outage_during_relock_keeps_every_pin(tmp_path, victim):
    from huggingface_hub import HfApi

    with HubEmulator() as hub:
        hub.commit("alice/lora-a", ADAPTER)
        csv = manifest_with(tmp_path, [{"repo_id": "alice/lora-a", "hub_status": "unlocked", "revision": "",
                                        "checksums": "", "files": "adapter_config.json;adapter_model.safetensors"}])
        api = HfApi(endpoint=hub.url)
        assert lock_manifest("mistral7b_loras", api=api, manifest_dir=csv.parent, limit=1, progress=False)["locked"] == 1
        before = load_manifest("mistral7b_loras", csv.parent).iloc[0]
        hub.mangle_model_info = lambda info: None  # 503 from now on
        res = lock_manifest("mistral7b_loras", api=api, manifest_dir=csv.parent, limit=1, relock=True, progress=False)
    after = load_manifest("mistral7b_loras", csv.parent).iloc[0]
    assert res["locked"] == 0 and "previous pin kept" in res["failed"][0]["reason"] and "503" in res["failed"][0]["reason"]
    assert (after[["revision", "checksums", "hub_status"]] == before[["revision", "checksums", "hub_status"]]).all()


def test_an_entry_that_cannot_fit_on_the_disk_is_not_started(tmp_path, victim, monkeypatch):
    from huggingface_hub import HfApi

    from uws_core.weights import hub as hub_module

    with HubEmulator() as hub:
        hub.commit("alice/lora-a", ADAPTER)
        csv = manifest_with(tmp_path, [{"repo_id": "alice/lora-a", "hub_status": "unlocked", "revision": "",
                                        "checksums": "", "files": "adapter_config.json;adapter_model.safetensors"}])
        api = HfApi(endpoint=hub.url)
        lock_manifest("mistral7b_loras", api=api, manifest_dir=csv.parent, limit=1, progress=False)
        monkeypatch.setattr(hub_module, "free_bytes", lambda path: 100)  # a nearly full disk
        rep = download_manifest("mistral7b_loras", tmp_path / "dest", api=api, manifest_dir=csv.parent, limit=1,
                                progress=False)
        assert rep.entries["alice/lora-a"] == "error" and "free on that disk" in rep.files[0].detail
        assert hub.content_gets() == 0
