"""uws_core.weights.hub: lock and download against a local fake hub (files on disk), no network.

``FakeHub`` offers the three ``HfApi`` methods the module uses (``model_info(files_metadata=True)``,
``get_paths_info``, ``hf_hub_download``) and returns huggingface_hub's own ``RepoSibling`` / ``RepoFile``
objects, so the code under test reads the same fields it reads from the real hub.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import httpx2  # the HTTP client huggingface_hub itself uses (its errors carry its responses)
import pandas as pd
import pytest
import torch
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import BlobLfsInfo, RepoFile, RepoSibling

from conftest import write_adapters
from uws_core.weights.adapters import AdapterSet
from uws_core.weights.file_checks import file_sha256, git_blob_sha1
from uws_core.weights.hub import HubError, download_manifest, lock_manifest, side_dirs
from uws_core.weights.manifests import MANIFEST_DIR, ManifestError, load_manifest, local_dirs, parse_checksums

LFS_MIN = 10 << 20  # as on the hub: files of 10 MiB or more, and all safetensors, are stored in LFS


def _http_error(cls, msg):
    return cls(msg, response=httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/x")))


class FakeHub:
    """Repositories as directories ``root/owner/name/<files>``; one commit per repository (its content hash)."""

    def __init__(self, root: Path):
        self.root = root
        self.calls = {"model_info": 0, "get_paths_info": 0, "hf_hub_download": 0}
        self.tamper: dict[tuple[str, str], bytes] = {}  # (repo, file) -> bytes delivered instead
        self.fail: set[tuple[str, str]] = set()  # (repo, file) whose transfer breaks off

    def _files(self, repo_id):
        d = self.root / repo_id
        if not d.is_dir():
            raise _http_error(RepositoryNotFoundError, f"404 Client Error. Repository Not Found for url: {repo_id}")
        return {p.relative_to(d).as_posix(): p for p in sorted(d.rglob("*")) if p.is_file()}

    def sha(self, repo_id):
        h = hashlib.sha1()
        for name, p in self._files(repo_id).items():
            h.update(name.encode() + p.read_bytes())
        return h.hexdigest()

    def _check_rev(self, repo_id, revision):
        if revision not in (None, "main", self.sha(repo_id)):
            raise _http_error(RevisionNotFoundError, f"404 Client Error. Revision Not Found: {revision}")

    def _meta(self, name, p):
        size = p.stat().st_size
        lfs = None
        if size >= LFS_MIN or name.endswith(".safetensors"):
            lfs = {"size": size, "oid": file_sha256(p), "pointerSize": 134}
        return size, git_blob_sha1(p), lfs

    def model_info(self, repo_id, *, revision=None, files_metadata=False):
        self.calls["model_info"] += 1
        self._check_rev(repo_id, revision)
        sibs = []
        for name, p in self._files(repo_id).items():
            size, blob, lfs = self._meta(name, p)
            sibs.append(RepoSibling(rfilename=name) if not files_metadata else RepoSibling(
                rfilename=name, size=size, blob_id=blob,
                lfs=None if lfs is None else BlobLfsInfo(size=size, sha256=lfs["oid"], pointer_size=134)))
        return SimpleNamespace(id=repo_id, sha=self.sha(repo_id), siblings=sibs)

    def get_paths_info(self, repo_id, paths, *, revision=None):
        self.calls["get_paths_info"] += 1
        self._check_rev(repo_id, revision)
        files = self._files(repo_id)
        out = []
        for name in paths:
            if name in files:
                size, blob, lfs = self._meta(name, files[name])
                out.append(RepoFile(path=name, size=size, oid=blob, lfs=lfs))
        return out

    def hf_hub_download(self, *, repo_id, filename, revision=None, local_dir=None, force_download=False):
        self.calls["hf_hub_download"] += 1
        self._check_rev(repo_id, revision)
        if (repo_id, filename) in self.fail:
            raise ConnectionError(f"connection reset while fetching {repo_id}/{filename}")
        out = Path(local_dir) / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        data = self.tamper.get((repo_id, filename), self._files(repo_id)[filename].read_bytes())
        out.write_bytes(data)
        return str(out)


class NoNetwork:
    def __getattr__(self, name):
        raise AssertionError(f"the hub was contacted ({name}) although HF_HUB_OFFLINE is set")


TINY_SHAPES = "q_proj.lora_A.weight=4x32;q_proj.lora_B.weight=32x4;v_proj.lora_B.weight=16x4"


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory):
    return write_adapters(tmp_path_factory.mktemp("written"), n=3, r=4, alpha=8, target_modules=("q_proj", "v_proj"))


@pytest.fixture
def hub_setup(tmp_path, tiny_adapters):
    """A copy of data_manifests/ and a fake hub holding tiny adapters under the first 3 Mistral ids."""
    mdir = tmp_path / "manifests"
    shutil.copytree(MANIFEST_DIR, mdir)
    df = load_manifest("mistral7b_loras", mdir)
    ids = list(df["repo_id"][:4])
    hub_root = tmp_path / "hub"
    written = tiny_adapters
    for repo_id, d in zip(ids, written.dirs):
        shutil.copytree(d, hub_root / repo_id)
        (hub_root / repo_id / "README.md").write_text("model card\n")
        torch.save({"x": torch.zeros(2)}, hub_root / repo_id / "adapter_model.bin")  # a pickle beside: never fetched
    (hub_root / ids[3]).mkdir(parents=True)  # pickles only
    torch.save({"x": torch.zeros(2)}, hub_root / ids[3] / "adapter_model.bin")
    (hub_root / ids[3] / "adapter_config.json").write_text("{}")
    df.loc[:3, "expected_shapes"] = TINY_SHAPES
    df.to_csv(mdir / "mistral7b_loras.csv", index=False, lineterminator="\n")
    only = "|".join(i.split("-")[-1] + "$" for i in ids + [df["repo_id"][4]])  # the 4 above + one not on the hub
    return SimpleNamespace(mdir=mdir, ids=ids, hub=FakeHub(hub_root), only=only, written=written,
                           missing=df["repo_id"][4], dest=tmp_path / "dest")


def test_lock_pins_revisions_and_hub_checksums(hub_setup):
    s = hub_setup
    res = lock_manifest("mistral7b_loras", api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    assert res["locked"] == 3 and len(res["failed"]) == 2
    reasons = {f["repo_id"]: f["reason"] for f in res["failed"]}
    assert "pickles only: adapter_model.bin" in reasons[s.ids[3]]
    assert reasons[s.missing].startswith("RepositoryNotFoundError")
    df = load_manifest("mistral7b_loras", s.mdir)  # what lock wrote validates
    row = df.iloc[0]
    assert row["hub_status"] == "locked" and row["revision"] == s.hub.sha(s.ids[0])
    sums = {c.name: c for c in parse_checksums(row["checksums"])}
    assert set(sums) == {"adapter_config.json", "adapter_model.safetensors"}  # no README, no pickle
    st = s.hub.root / s.ids[0] / "adapter_model.safetensors"
    assert sums["adapter_model.safetensors"].algo == "sha256"
    assert sums["adapter_model.safetensors"].hex == hashlib.sha256(st.read_bytes()).hexdigest()
    cfg = s.hub.root / s.ids[0] / "adapter_config.json"
    git = shutil.which("git")
    if git:  # git's own blob id of the small file
        assert sums["adapter_config.json"].hex == subprocess.run([git, "hash-object", str(cfg)], capture_output=True,
                                                                 text=True, check=True).stdout.strip()
    assert sums["adapter_config.json"].size == cfg.stat().st_size
    assert df.iloc[3]["hub_status"] == "lock_failed" and df.iloc[5]["hub_status"] == "unlocked"
    n = s.hub.calls["model_info"]
    lock_manifest("mistral7b_loras", api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    assert s.hub.calls["model_info"] - n == 2  # locked entries are kept; only the 2 failures are retried
    res = lock_manifest("mistral7b_loras", api=s.hub, manifest_dir=s.mdir, only=s.only, relock=True, progress=False)
    assert s.hub.calls["model_info"] - n == 7 and res["locked"] == 3  # --relock re-resolves the locked ones too


def test_download_verifies_resumes_and_loads(hub_setup):
    s = hub_setup
    lock_manifest("mistral7b_loras", api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    s.hub.fail.add((s.ids[1], "adapter_model.safetensors"))  # the connection drops on one file
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    assert rep.count("downloaded") == 4 and rep.count("staged") == 1 and rep.count("error") == 1 and not rep.ok
    assert rep.entries[s.ids[3]].startswith("lock_failed") and rep.entries[s.missing].startswith("lock_failed")
    assert not (s.dest / s.ids[0] / "adapter_model.bin").exists()  # pickles never fetched
    assert not (s.dest / s.ids[1]).exists()  # an incomplete entry is not published: its config waits in staging
    assert local_dirs(load_manifest("mistral7b_loras", s.mdir).iloc[:3], s.dest, allow_missing=True) == \
        [s.dest / s.ids[0], s.dest / s.ids[2]]
    s.hub.fail.clear()
    n = s.hub.calls["hf_hub_download"]
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    assert s.hub.calls["hf_hub_download"] - n == 1  # resumed: only the missing file is fetched
    assert rep.count("present") == 4 and rep.count("downloaded") == 2
    assert "earlier run" in [f.detail for f in rep.files if f.repo_id == s.ids[1]][0]
    assert [rep.entries[i] for i in s.ids[:3]] == ["ok"] * 3
    df = load_manifest("mistral7b_loras", s.mdir)
    aset = AdapterSet.from_dirs(local_dirs(df.iloc[:3], s.dest))
    b, a = aset.load(0, "base_model.model.model.layers.0.self_attn.q_proj")
    want_b, want_a, _ = s.written.factors[0]["base_model.model.model.layers.0.self_attn.q_proj"]
    assert torch.equal(b, want_b) and torch.equal(a, want_a)
    assert (s.dest / "uws-download-mistral7b_loras.json").is_file()


def test_corrupt_transfer_is_refused_and_kept_away_from_loaders(hub_setup):
    s = hub_setup
    lock_manifest("mistral7b_loras", api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    good = (s.hub.root / s.ids[0] / "adapter_model.safetensors").read_bytes()
    s.hub.tamper[(s.ids[0], "adapter_model.safetensors")] = good[:-8] + b"\0" * 8  # same size, other bytes
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.ids[0] + "$",
                            progress=False)
    bad = [f for f in rep.files if f.status == "refused"]
    assert len(bad) == 1 and "sha256" in bad[0].detail and rep.entries[s.ids[0]] == "refused"
    assert not (s.dest / s.ids[0]).exists()  # neither the bad file nor the entry's good config stays in dest
    _, rejected = side_dirs(s.dest)
    assert (rejected / s.ids[0] / "adapter_model.safetensors").read_bytes() != good
    with pytest.raises(ManifestError, match="1 of 1 manifest entries are not under"):
        local_dirs(load_manifest("mistral7b_loras", s.mdir).iloc[:1], s.dest)
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.ids[0] + "$",
                            progress=False)  # not fetched again until the rejected copy is deleted
    assert rep.count("downloaded") == 0 and "refused earlier" in rep.files[0].detail


def test_local_corruption_and_lock_mismatch_and_shapes(hub_setup):
    s = hub_setup
    lock_manifest("mistral7b_loras", api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.ids[0] + "$", progress=False)
    local = s.dest / s.ids[0] / "adapter_model.safetensors"
    local.write_bytes(local.read_bytes()[:-1])  # truncated on disk after download
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.ids[0] + "$",
                            progress=False)
    assert [f.status for f in rep.files] == ["present", "refused", "downloaded"] and rep.ok
    assert "size" in rep.files[1].detail and file_sha256(local) == file_sha256(s.hub.root / s.ids[0] / local.name)
    # a lock that disagrees with the hub's metadata at the pinned revision refuses the entry
    df = load_manifest("mistral7b_loras", s.mdir)
    df.loc[1, "checksums"] = ";".join(c if "safetensors" not in c else c.split(":")[0] + ":" + "0" * 64 + "@" + c.split("@")[1]
                 for c in df.loc[1, "checksums"].split(";"))
    # expected shapes of the real Mistral-7B adapters: the tiny ones do not match them
    df.loc[2, "expected_shapes"] = load_manifest("mistral7b_loras")["expected_shapes"][0]
    df.to_csv(s.mdir / "mistral7b_loras.csv", index=False, lineterminator="\n")
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=f"{s.ids[1]}$|{s.ids[2]}$",
                            progress=False)
    assert rep.entries[s.ids[1]] == "refused" and "differs from the lock" in rep.files[0].detail
    assert rep.entries[s.ids[2]] == "refused"
    assert any("has shape (4, 32), expected (16, 4096)" in f.detail for f in rep.files)
    assert not (s.dest / s.ids[1]).exists() and not (s.dest / s.ids[2]).exists()


def test_offline_verifies_local_files_and_never_calls_the_hub(hub_setup, monkeypatch):
    s = hub_setup
    lock_manifest("mistral7b_loras", api=s.hub, manifest_dir=s.mdir, only=s.only, progress=False)
    download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.ids[0] + "$", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = download_manifest("mistral7b_loras", s.dest, api=NoNetwork(), manifest_dir=s.mdir,
                            only=f"{s.ids[0]}$|{s.ids[1]}$", progress=False)
    assert rep.offline and rep.entries == {s.ids[0]: "ok", s.ids[1]: "missing"}
    assert rep.count("present") == 2 and rep.count("missing_offline") == 2
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        lock_manifest("mistral7b_loras", api=NoNetwork(), manifest_dir=s.mdir)


def test_unlocked_entries_are_refused_unless_unpinned_is_allowed(hub_setup):
    s = hub_setup
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.ids[0] + "$",
                            progress=False)
    assert rep.entries[s.ids[0]].startswith("unlocked: run `uws manifest lock` first") and not rep.files
    rep = download_manifest("mistral7b_loras", s.dest, api=s.hub, manifest_dir=s.mdir, only=s.ids[0] + "$",
                            allow_unpinned=True, progress=False)
    assert rep.entries[s.ids[0]] == "ok" and rep.count("downloaded") == 2
    rep = download_manifest("vit", s.dest, api=NoNetwork(), manifest_dir=s.mdir, limit=2, progress=False)
    assert all(v.startswith("unresolved: owner missing") for v in rep.entries.values()) and len(rep.entries) == 2


def test_full_checkpoint_download_skips_pickles(tmp_path):
    """A GPT-2 checkpoint written by transformers, with a pickle beside it: only config + safetensors come."""
    from transformers import GPT2Config, GPT2LMHeadModel

    mdir = tmp_path / "manifests"
    shutil.copytree(MANIFEST_DIR, mdir)
    df = load_manifest("gpt2", mdir)
    repo_id = df["repo_id"][0]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    model.save_pretrained(tmp_path / "hub" / repo_id)
    torch.save(model.state_dict(), tmp_path / "hub" / repo_id / "pytorch_model.bin")
    df.loc[0, "expected_shapes"] = "attn.c_attn.weight=16x48;mlp.c_fc.weight=16x64"  # Conv1D: (in, out)
    df.to_csv(mdir / "gpt2.csv", index=False, lineterminator="\n")
    hub = FakeHub(tmp_path / "hub")
    lock_manifest("gpt2", api=hub, manifest_dir=mdir, limit=1, progress=False)
    rep = download_manifest("gpt2", tmp_path / "dest", api=hub, manifest_dir=mdir, limit=1, progress=False)
    got = sorted(p.name for p in (tmp_path / "dest" / repo_id).iterdir() if not p.name.startswith("."))
    assert rep.ok and got == ["config.json", "model.safetensors"]  # no pickle, no generation_config.json


def test_manifest_lock_columns_are_validated(tmp_path):
    mdir = tmp_path / "m"
    shutil.copytree(MANIFEST_DIR, mdir)
    base = load_manifest("gpt2", mdir)
    path = mdir / "gpt2.csv"

    def refused(edit, match):
        df = base.copy()
        edit(df)
        df.to_csv(path, index=False, lineterminator="\n")
        with pytest.raises(ManifestError, match=match):
            load_manifest("gpt2", mdir)

    where = rf"manifest {path}, row 3 \(line 4, repo_id 'ai-forever/rugpt3small_based_on_gpt2'\), column"
    refused(lambda d: d.__setitem__("revision", d["revision"].where(d.index != 2, "main")),
            where + " 'revision': 'main' is not a 40-hex commit sha")
    refused(lambda d: d.loc.__setitem__((2, "hub_status"), "locked"), where + " 'revision': .*no revision")
    refused(lambda d: d.loc.__setitem__((2, "checksums"), "model.safetensors=sha256:abc@10"),
            where + " 'checksums': bad checksum entry")
    refused(lambda d: d.loc.__setitem__((2, "files"), "pytorch_model.bin"), where + " 'files': .*pickles")
    refused(lambda d: d.loc.__setitem__((2, "expected_shapes"), "c_attn=768 x 2304"), where + " 'expected_shapes'")
    refused(lambda d: d.loc.__setitem__((2, "hub_status"), "done"), where + " 'hub_status'")
    refused(lambda d: d.loc.__setitem__((2, "hub_status"), "unresolved"), where + " 'hub_note': .*must say why")
    refused(lambda d: d.pop("checksums"), "missing columns \\['checksums'\\]")
