"""The shipped pretrained bases (uws_core.zoo.pretrained): a population built from a shipped base has the bits of one
built from a trained base; a damaged shipped base is refused by name; the shipped set matches the default configs."""

from __future__ import annotations

import json
import shutil

import pytest

from uws_core.weights.cache import MANIFEST, CacheError, read_info
from uws_core.weights.fingerprints import population_fingerprint
from uws_core.zoo import llama_zoo, lora_zoo, pretrained, vit_zoo
from uws_core.zoo.populations import SEEDS, config_for


ZOOS = {"llama": llama_zoo, "lora": lora_zoo, "vit": vit_zoo}


def _build(kind, cfg, cache):
    if kind == "llama":
        return llama_zoo.build_llama_population(cfg, cache_dir=cache).root
    if kind == "vit":
        return vit_zoo.build_vit_populations(cfg, cache_dir=cache).root
    return lora_zoo.build_lora_population(cfg, cache_dir=cache).root


def _forbid_base_training(kind, monkeypatch):
    """Make training a base fail (the LoRA and Llama bases train through tinylm.train_base, the ViT base through
    vit_zoo._train_jobs with what="base"); everything else trains as usual."""
    def no_training(*args, **kwargs):
        raise AssertionError("the base was trained although it is shipped")

    if kind == "vit":
        real = vit_zoo._train_jobs

        def guarded(jobs, config, init, what="models"):
            return no_training() if what == "base" else real(jobs, config, init, what)

        monkeypatch.setattr(vit_zoo, "_train_jobs", guarded)
    else:
        from uws_core.zoo import tinylm

        monkeypatch.setattr(tinylm, "train_base", no_training)


@pytest.mark.parametrize("kind", ["llama", "lora", "vit"])
def test_population_from_shipped_base_equals_trained(kind, tmp_path, monkeypatch):
    """Train the tiny preset (its base is trained and cached), ship that base, rebuild in a fresh cache: the base is
    copied, not trained, and every tensor of the population is the same (content fingerprint)."""
    monkeypatch.delenv(pretrained.TRAIN_ENV, raising=False)
    shipped_root = tmp_path / "pretrained"
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", shipped_root)
    cfg = config_for(kind, 0, tiny=True)
    key = ZOOS[kind].base_key(cfg)
    name = f"{kind}_base_{key}"
    trained = _build(kind, cfg, tmp_path / "a")
    assert "shipped" not in read_info(tmp_path / "a" / name)
    shipped_root.mkdir()
    shutil.copytree(tmp_path / "a" / name, shipped_root / name)
    assert pretrained.shipped_names() == [name]

    _forbid_base_training(kind, monkeypatch)
    copied = _build(kind, cfg, tmp_path / "b")
    assert read_info(tmp_path / "b" / name)["shipped"] == name
    assert population_fingerprint(copied) == population_fingerprint(trained)


def test_train_env_skips_shipped(tmp_path, monkeypatch):
    (tmp_path / "lora_base_abc").mkdir()
    (tmp_path / "lora_base_abc" / "model.safetensors").write_bytes(b"x")
    from uws_core.weights.cache import write_manifest

    write_manifest(tmp_path / "lora_base_abc", 1, {"base_final_loss": 0.5})
    monkeypatch.delenv(pretrained.TRAIN_ENV, raising=False)
    assert pretrained.shipped_base("lora_base_abc", 1, tmp_path) == tmp_path / "lora_base_abc"
    assert pretrained.shipped_base("lora_base_other", 1, tmp_path) is None
    for value in ("1", "true", "YES"):
        monkeypatch.setenv(pretrained.TRAIN_ENV, value)
        assert pretrained.train_requested() and pretrained.shipped_base("lora_base_abc", 1, tmp_path) is None
    monkeypatch.setenv(pretrained.TRAIN_ENV, "0")
    assert not pretrained.train_requested()


@pytest.mark.parametrize("damage", ["edit", "extra", "missing", "format", "escape"])
def test_damaged_shipped_base_is_refused_by_name(damage, tmp_path, monkeypatch):
    monkeypatch.delenv(pretrained.TRAIN_ENV, raising=False)
    base = tmp_path / "llama_base_abc"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")
    (base / "config.json").write_text("{}")
    from uws_core.weights.cache import write_manifest

    write_manifest(base, 1, {})
    if damage == "edit":
        (base / "model.safetensors").write_bytes(b"weightz")
        match = "model.safetensors does not match"
    elif damage == "extra":
        (base / "notes.txt").write_text("hi")
        match = "notes.txt is not listed"
    elif damage == "missing":
        (base / "config.json").unlink()
        match = "missing file config.json"
    elif damage == "format":
        match = "format 1"
    else:
        manifest = json.loads((base / MANIFEST).read_text())
        manifest["files"]["../outside.txt"] = manifest["files"].pop("config.json")
        (base / MANIFEST).write_text(json.dumps(manifest))
        (base / "config.json").unlink()
        match = "unsafe path"
    with pytest.raises(CacheError, match=match) as err:
        pretrained.shipped_base("llama_base_abc", 2 if damage == "format" else 1, tmp_path)
    assert "llama_base_abc" in str(err.value)


def test_copy_stays_inside_destination(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "model.safetensors").write_bytes(b"w")
    from uws_core.weights.cache import write_manifest

    write_manifest(src, 1, {"base_train_s": 3.0})
    dst.mkdir()
    info = pretrained.copy_shipped_base(src, dst)
    assert (dst / "sub" / "model.safetensors").read_bytes() == b"w" and info == {"base_train_s": 3.0, "shipped": "src"}
    assert not (dst / MANIFEST).exists()  # the cache writes its own manifest


def test_repository_ships_exactly_the_default_bases(monkeypatch):
    """Every shipped base verifies against its manifest, and the shipped names are the ones the default populations
    look up: a config change that orphans a shipped base (or leaves a population without one) fails here."""
    monkeypatch.delenv(pretrained.TRAIN_ENV, raising=False)
    from uws_core.linalg.numerics import is_pinned

    if not is_pinned():  # the keys hold the numerics profile: elsewhere every base is trained, by design
        pytest.skip("the shipped bases are keyed to the pinned numerics profile, which this process does not run")
    expected = {f"lora_base_{lora_zoo.base_key(config_for('lora', 0))}"}
    expected |= {f"{kind}_base_{ZOOS[kind].base_key(config_for(kind, s))}" for kind in ("llama", "vit") for s in SEEDS[kind]}
    assert set(pretrained.shipped_names()) == expected
    for name in expected:
        fmt = ZOOS[name.split("_")[0]].FORMAT_VERSION
        root = pretrained.shipped_base(name, fmt)
        assert root is not None and (root / "model.safetensors").is_file()
        assert {"base_train_s"} <= set(read_info(root))
