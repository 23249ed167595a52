"""``uws manifest lock`` and ``uws download`` through the real ``huggingface_hub`` client, against a local hub.

Every test runs the command line in a subprocess with ``HF_ENDPOINT`` pointing at :class:`hub_emulator.HubEmulator`
(127.0.0.1, stopped by the test) and ``HF_HOME`` in a temporary directory, so the code under test talks HTTP to
what looks like the hub: model info with blobs, paths-info, resolve with LFS redirects, the hub's error codes.
The injected fake of ``tests/test_hub.py`` stays for the cases HTTP cannot serve (a hub listing hostile names,
checked in ``tests/test_hostile_inputs.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save

from hub_emulator import HubEmulator
from uws_core.weights.manifests import MANIFEST_DIR

ROOT = Path(__file__).resolve().parents[2]
LORA_IDS = ["alice/lora-a", "alice/lora-b", "bob/lora-c"]


def adapter_files(seed: int, r: int = 2, d: int = 8) -> dict[str, bytes]:
    """A tiny PEFT adapter (two modules, rank r, float32) as file name -> bytes."""
    g = torch.Generator().manual_seed(seed)
    tensors = {f"base_model.model.model.layers.0.self_attn.{m}_proj.lora_{w}.weight":
               torch.randn(*((r, d) if w == "A" else (d, r)), generator=g) for m in ("q", "v") for w in ("A", "B")}
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"]}
    return {"adapter_config.json": json.dumps(cfg).encode(), "adapter_model.safetensors": save(tensors),
            "README.md": b"card\n", "adapter_model.bin": b"pickle: never fetched"}


def sharded_files(seed: int) -> dict[str, bytes]:
    """A tiny GPT-2-like checkpoint in two shards with its index and config."""
    g = torch.Generator().manual_seed(seed)
    shards = {f"model-0000{i + 1}-of-00002.safetensors": {f"h.{i}.mlp.c_fc.weight": torch.randn(4, 6, generator=g)}
              for i in range(2)}
    index = {"metadata": {}, "weight_map": {k: name for name, t in shards.items() for k in t}}
    return {"config.json": b'{"model_type": "gpt2"}', "model.safetensors.index.json": json.dumps(index).encode(),
            **{name: save(t) for name, t in shards.items()}}


class Setup:
    def __init__(self, tmp_path: Path, hub: HubEmulator):
        self.tmp, self.hub = tmp_path, hub
        self.mdir = tmp_path / "manifests"
        shutil.copytree(MANIFEST_DIR, self.mdir)
        self.dest = tmp_path / "dest"
        self.victim = tmp_path / "victim"  # a sibling of dest that nothing may touch
        self.victim.mkdir()
        (self.victim / "keep.txt").write_text("precious\n")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        self.env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
                        HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT), HF_HUB_ETAG_TIMEOUT="5",
                        HF_HUB_DOWNLOAD_TIMEOUT="5", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")

    def use_ids(self, family: str, ids: list[str]) -> Path:
        """Put ``ids`` as the first rows of ``family``'s manifest (expected shapes cleared: tiny models)."""
        csv = self.mdir / f"{family}.csv"
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        df.loc[:len(ids) - 1, "repo_id"] = ids
        df.loc[:len(ids) - 1, "expected_shapes"] = ""
        df.to_csv(csv, index=False, lineterminator="\n")
        return csv

    def uws(self, *args, env: dict | None = None, code: int | None = 0) -> str:
        proc = subprocess.run([sys.executable, "-m", "uws_core.cli", *map(str, args)], cwd=self.tmp,
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out
        if code is not None:
            assert proc.returncode == code, out
        return out

    def lock_alice(self) -> Path:
        """Alice's two adapters on the hub and locked in the manifest; returns the manifest's path."""
        for i, rid in enumerate(LORA_IDS[:2]):
            self.hub.commit(rid, adapter_files(i))
        csv = self.use_ids("mistral7b_loras", LORA_IDS[:2])
        self.uws("manifest", "lock", csv, "--only", "^alice/")
        return csv

    def manifest(self, family: str = "mistral7b_loras") -> pd.DataFrame:
        return pd.read_csv(self.mdir / f"{family}.csv", dtype=str, keep_default_na=False)

    def victim_intact(self) -> None:
        assert sorted(p.name for p in self.victim.iterdir()) == ["keep.txt"]
        assert (self.victim / "keep.txt").read_text() == "precious\n"


@pytest.fixture
def setup(tmp_path):
    with HubEmulator() as hub:
        yield Setup(tmp_path, hub)


def test_lock_then_pinned_download_after_main_moved_and_rerun(setup):
    s, hub = setup, setup.hub
    shas = {rid: hub.commit(rid, adapter_files(i)) for i, rid in enumerate(LORA_IDS)}
    old = {rid: adapter_files(i)["adapter_model.safetensors"] for i, rid in enumerate(LORA_IDS)}
    csv = s.use_ids("mistral7b_loras", LORA_IDS)
    out = s.uws("manifest", "lock", csv, "--only", "^(alice|bob)/")
    assert "3 entries locked, 0 failed" in out
    df = s.manifest().set_index("repo_id")
    for rid in LORA_IDS:
        assert df.at[rid, "revision"] == shas[rid] and df.at[rid, "hub_status"] == "locked"
        assert "adapter_model.bin" not in df.at[rid, "checksums"] and "README" not in df.at[rid, "checksums"]
    hub.commit(LORA_IDS[0], adapter_files(99))  # main moves on after the lock
    out = s.uws("download", csv, "--only", "^(alice|bob)/", "--dest", s.dest)
    assert "6 downloaded" in out, out
    for rid in LORA_IDS:  # the pinned commit's bytes, not main's
        assert (s.dest / rid / "adapter_model.safetensors").read_bytes() == old[rid]
        assert not (s.dest / rid / "adapter_model.bin").exists()
    gets = hub.content_gets()
    out = s.uws("download", csv, "--only", "^(alice|bob)/", "--dest", s.dest)
    assert "6 present" in out and hub.content_gets() == gets  # a rerun fetches nothing
    s.victim_intact()


def test_sharded_checkpoint_is_fetched_whole_and_loads(setup):
    s, hub = setup, setup.hub
    hub.commit("carol/tiny-gpt2", sharded_files(0))
    hub.commit("carol/tiny-gpt2-b", sharded_files(1))
    csv = s.use_ids("gpt2", ["carol/tiny-gpt2", "carol/tiny-gpt2-b"])
    assert "2 entries locked" in s.uws("manifest", "lock", csv, "--only", "^carol/")
    out = s.uws("download", csv, "--only", "^carol/", "--dest", s.dest)
    assert "8 downloaded" in out
    res = s.tmp / "spectra"
    s.uws("spectra", s.dest, "--out", res)
    assert json.loads((res / "spectra.json").read_text())["n_models"] == 2


def test_dropped_and_tampered_transfers_never_reach_dest_and_a_rerun_recovers(setup):
    s, hub = setup, setup.hub
    csv = s.lock_alice()
    hub.fault(LORA_IDS[0], "adapter_model.safetensors", *["drop"] * 12)  # more than the client's retries
    hub.fault(LORA_IDS[1], "adapter_model.safetensors", "tamper")
    out = s.uws("download", csv, "--only", "^alice/", "--dest", s.dest, code=1)
    assert f"error: {LORA_IDS[0]}/adapter_model.safetensors" in out
    assert f"refused: {LORA_IDS[1]}/adapter_model.safetensors: sha256" in out
    for rid in LORA_IDS[:2]:  # neither entry is visible to loaders
        assert not (s.dest / rid).exists()
    rejected = s.tmp / ".dest.rejected" / LORA_IDS[1] / "adapter_model.safetensors"
    assert rejected.is_file()
    hub.faults.clear()
    out = s.uws("download", csv, "--only", "^alice/", "--dest", s.dest, code=1)  # the refused file stays refused
    assert f"{LORA_IDS[0]}: ok" not in out and "refused earlier" in out and (s.dest / LORA_IDS[0]).is_dir()
    rejected.unlink()
    out = s.uws("download", csv, "--only", "^alice/", "--dest", s.dest)
    assert (s.dest / LORA_IDS[1] / "adapter_model.safetensors").read_bytes() == \
        adapter_files(1)["adapter_model.safetensors"]
    s.victim_intact()


def test_a_single_dropped_connection_is_resumed_by_the_client(setup):
    s, hub = setup, setup.hub
    hub.commit(LORA_IDS[0], adapter_files(0))
    csv = s.use_ids("mistral7b_loras", LORA_IDS[:1])
    s.uws("manifest", "lock", csv, "--only", "^alice/lora-a$")
    hub.fault(LORA_IDS[0], "adapter_model.safetensors", "drop")
    out = s.uws("download", csv, "--only", "^alice/lora-a$", "--dest", s.dest)
    assert "2 downloaded" in out
    assert hub.content_gets("/lfs/") == 2  # the broken transfer and its retry, within one run


def test_gated_missing_and_revision_errors_keep_the_hubs_whole_message(setup):
    s, hub = setup, setup.hub
    hub.commit(LORA_IDS[0], adapter_files(0), gated="auto")
    hub.commit(LORA_IDS[1], adapter_files(1))
    csv = s.use_ids("mistral7b_loras", LORA_IDS)  # LORA_IDS[2] is not on the hub
    out = s.uws("manifest", "lock", csv, "--only", "^(alice|bob)/")
    assert "1 entries locked, 2 failed" in out
    df = s.manifest().set_index("repo_id")
    assert df.at[LORA_IDS[0], "hub_status"] == "lock_failed" and "is gated" in df.at[LORA_IDS[0], "hub_note"]
    assert "Repository Not Found" in df.at[LORA_IDS[2], "hub_note"]
    hub.repos[LORA_IDS[1]].gated = "manual"  # gated after the lock
    out = s.uws("download", csv, "--only", "^alice/lora-b$", "--dest", s.dest, code=1)
    assert "Cannot access gated repo" in out and not (s.dest / LORA_IDS[1]).exists()
    hub.repos[LORA_IDS[1]].gated = False
    hub.repos[LORA_IDS[1]].commits.pop()  # history rewritten: the pinned revision is gone
    hub.commit(LORA_IDS[1], adapter_files(5), replace=True)
    out = s.uws("download", csv, "--only", "^alice/lora-b$", "--dest", s.dest, code=1)
    assert "Revision Not Found" in out


def test_offline_relock_changes_nothing_and_offline_download_verifies_local_files(setup):
    s, hub = setup, setup.hub
    csv = s.lock_alice()
    s.uws("download", csv, "--only", "^alice/", "--dest", s.dest)
    before = csv.read_bytes()
    for var in ("TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE"):
        out = s.uws("manifest", "lock", csv, "--relock", env={var: "1"}, code=2)
        assert "needs the network" in out and csv.read_bytes() == before
    n = len(hub.requests)
    stamp = s.dest / LORA_IDS[0] / ".uws-verified.json"
    stamp.unlink()  # no record of an earlier verification: the files are hashed again
    out = s.uws("download", csv, "--only", "^alice/", "--dest", s.dest, env={"TRANSFORMERS_OFFLINE": "1"})
    assert "4 present" in out and len(hub.requests) == n  # offline: verified locally, no request
    f = s.dest / LORA_IDS[0] / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    out = s.uws("download", csv, "--only", "^alice/", "--dest", s.dest, env={"TRANSFORMERS_OFFLINE": "1"}, code=1)
    assert "local copy: sha256" in out and not (s.dest / LORA_IDS[0]).exists()


def test_a_failing_relock_keeps_the_previous_pin(setup):
    s, hub = setup, setup.hub
    csv = s.lock_alice()
    pins = s.manifest().set_index("repo_id").loc[LORA_IDS[:2], ["revision", "checksums"]].copy()
    del hub.repos[LORA_IDS[0]]  # gone from the hub
    hub.commit(LORA_IDS[1], adapter_files(7))  # main moved
    out = s.uws("manifest", "lock", csv, "--only", "^alice/", "--relock")
    assert "previous pin kept" in out and "Repository Not Found" in out
    df = s.manifest().set_index("repo_id")
    assert df.at[LORA_IDS[0], "hub_status"] == "locked"
    assert (df.loc[LORA_IDS[0], ["revision", "checksums"]] == pins.loc[LORA_IDS[0]]).all()
    assert df.at[LORA_IDS[1], "revision"] == hub.repos[LORA_IDS[1]].commits[-1][0]


def test_a_damaged_file_left_in_staging_is_fetched_again(setup):
    s, hub = setup, setup.hub
    hub.commit(LORA_IDS[0], adapter_files(0))
    csv = s.use_ids("mistral7b_loras", LORA_IDS[:1])
    s.uws("manifest", "lock", csv, "--only", "^alice/lora-a$")
    hub.fault(LORA_IDS[0], "adapter_model.safetensors", *["drop"] * 12)
    out = s.uws("download", csv, "--only", "^alice/lora-a$", "--dest", s.dest, code=1)
    assert "staged" in out or "1 staged" in out
    staged = s.tmp / ".dest.staging" / LORA_IDS[0] / "adapter_config.json"
    assert staged.is_file()
    staged.write_bytes(b"{broken")  # damaged while waiting in staging
    hub.faults.clear()
    out = s.uws("download", csv, "--only", "^alice/lora-a$", "--dest", s.dest)
    assert "2 downloaded" in out
    assert (s.dest / LORA_IDS[0] / "adapter_config.json").read_bytes() == adapter_files(0)["adapter_config.json"]
    assert hashlib.sha256((s.dest / LORA_IDS[0] / "adapter_model.safetensors").read_bytes()).hexdigest() == \
        hashlib.sha256(adapter_files(0)["adapter_model.safetensors"]).hexdigest()
