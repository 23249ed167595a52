import json

import pytest

from uws_core.weights.cache import (CacheError, build_cached, config_digest, read_info, verify_cache_dir,
                            write_manifest)


def _builder(calls, payload=b"weights"):
    def build(tmp):
        calls.append(tmp)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "model.safetensors").write_bytes(payload)
        (tmp / "records.csv").write_text("name\na\n")
        return {"seconds": 1.5}
    return build


def test_build_once_then_reuse(tmp_path):
    calls = []
    final = tmp_path / "pop" / "abc"
    assert build_cached(final, _builder(calls), 1) == final
    assert build_cached(final, _builder(calls), 1) == final
    assert len(calls) == 1
    assert read_info(final) == {"seconds": 1.5}
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    manifest = json.loads((final / "complete.json").read_text())
    assert set(manifest["files"]) == {"sub/model.safetensors", "records.csv"}


@pytest.mark.parametrize("damage", ["delete_manifest", "change_file", "delete_file", "garble_manifest"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    calls = []
    final = build_cached(tmp_path / "abc", _builder(calls), 1)
    if damage == "delete_manifest":
        (final / "complete.json").unlink()
    elif damage == "change_file":
        (final / "sub" / "model.safetensors").write_bytes(b"weightz")
    elif damage == "delete_file":
        (final / "records.csv").unlink()
    else:
        (final / "complete.json").write_text("{not json")
    with pytest.raises(CacheError):
        verify_cache_dir(final)
    build_cached(final, _builder(calls), 1)
    assert len(calls) == 2
    verify_cache_dir(final, 1)
    assert (final / "sub" / "model.safetensors").read_bytes() == b"weights"


def test_other_format_version_is_rebuilt(tmp_path):
    calls = []
    final = build_cached(tmp_path / "abc", _builder(calls), 1)
    with pytest.raises(CacheError, match="format 1"):
        verify_cache_dir(final, 2)
    build_cached(final, _builder(calls), 2)
    assert len(calls) == 2


def test_failed_build_leaves_nothing(tmp_path):
    def build(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        build_cached(tmp_path / "abc", build, 1)
    assert list(tmp_path.iterdir()) == []


def test_manifest_names_missing_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"1")
    write_manifest(tmp_path, 3)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(CacheError, match="a.bin"):
        verify_cache_dir(tmp_path, 3)


def test_config_digest_depends_on_config_and_version():
    d = config_digest({"hidden": 64, "seed": 0}, 1)
    assert len(d) == 12 and d == config_digest({"seed": 0, "hidden": 64}, 1)
    assert d != config_digest({"hidden": 64, "seed": 1}, 1)
    assert d != config_digest({"hidden": 64, "seed": 0}, 2)


def test_relative_cache_dir_is_taken_from_the_repository_root(tmp_path, monkeypatch):
    """A notebook kernel runs in notebooks/: a relative UWS_CACHE must find the populations make populations built."""
    from pathlib import Path

    from uws_core.weights.cache import default_cache_dir

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UWS_CACHE", "some/cache")
    assert default_cache_dir() == repo / "some" / "cache"
    monkeypatch.setenv("UWS_CACHE", str(tmp_path / "abs"))
    assert default_cache_dir() == tmp_path / "abs"
    monkeypatch.delenv("UWS_CACHE")
    assert default_cache_dir() == repo / ".cache" / "uws"


def test_copy_entry_copies_the_files_but_not_the_manifest(tmp_path):
    from uws_core.weights.cache import MANIFEST, copy_entry, write_manifest

    src = tmp_path / "entry"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"w")
    (src / "sub" / "config.json").write_text("{}")
    write_manifest(src, 1, {"seconds": 1.0})
    dst = tmp_path / "build"
    dst.mkdir()                                         # an existing, empty build directory
    assert copy_entry(src, dst) == dst
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == ["model.safetensors",
                                                                                          "sub/config.json"]
    assert (src / MANIFEST).is_file() and not (dst / MANIFEST).exists()
