"""Checks of one file against its pinned size, checksum and tensor shapes (uws_core.weights.file_checks)."""

import hashlib

import torch
from safetensors.torch import save_file

from uws_core.weights.file_checks import checksum_problem, file_sha256, git_blob_sha1, shape_problems
from uws_core.weights.manifests import FileChecksum


def test_hashes_match_hashlib_and_git(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"hello\n")
    assert file_sha256(p) == hashlib.sha256(b"hello\n").hexdigest()
    assert git_blob_sha1(p) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"


def test_checksum_problem_names_size_then_checksum(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"hello\n")
    good = FileChecksum("f.txt", "sha256", hashlib.sha256(b"hello\n").hexdigest(), 6)
    assert checksum_problem(p, good) is None
    assert checksum_problem(p, FileChecksum("f.txt", "sha256", good.hex, 7)) == "size 6 bytes, pinned 7"
    assert checksum_problem(p, FileChecksum("f.txt", "git-sha1", "0" * 40, 6)).startswith("git-sha1 ce0136")


def test_shape_problems_by_key_suffix(tmp_path):
    p = tmp_path / "w.safetensors"
    save_file({"model.layers.0.q.weight": torch.zeros(4, 3)}, str(p))
    assert shape_problems(p, {"q.weight": (4, 3)}) == []
    assert shape_problems(p, {"q.weight": (3, 4)}) == ["model.layers.0.q.weight has shape (4, 3), expected (3, 4)"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x01")
    assert len(shape_problems(tmp_path / "bad.safetensors", {"q.weight": (4, 3)})) == 1
