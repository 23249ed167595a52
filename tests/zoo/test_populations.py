import os

import pytest

from uws_core.zoo import populations


def _fake_load(kind, seed, cache_dir=None, tiny=False):
    class P:
        root = f"/cache/{kind}/{seed}/{os.getpid()}"
    return P


@pytest.fixture()
def fake_builders(monkeypatch):
    monkeypatch.setattr(populations, "load", _fake_load)
    monkeypatch.setattr("uws_core.weights.fingerprints.population_fingerprint", lambda root: "f" * 64)


def test_names_cover_every_seed_longest_first():
    names = populations.population_names()
    assert names[:3] == ["vit/seed0", "lora/seed0", "llama/seed0"]
    assert sorted(names) == sorted(f"{k}/seed{s}" for k, seeds in populations.SEEDS.items() for s in seeds)
    assert len(populations.SEEDS["lora"]) >= 3 and all(len(s) >= 2 for s in populations.SEEDS.values())


def test_build_all_runs_every_builder_in_order(fake_builders):
    out = populations.build_all(["vit/seed0", "lora/seed2"], workers=1)
    assert [n for n, *_ in out] == ["vit/seed0", "lora/seed2"]
    assert out[1][1].startswith("/cache/lora/2/") and all(r[2] >= 0 and r[3] == "f" * 64 for r in out)


def test_parallel_build_uses_worker_processes(fake_builders):
    out = populations.build_all(["lora/seed0", "llama/seed1"], workers=2)  # forked workers see the patches
    assert [n for n, *_ in out] == ["lora/seed0", "llama/seed1"]
    assert all(int(root.rsplit("/", 1)[1]) != os.getpid() for _, root, *_ in out)


def test_seed_changes_every_training_seed_but_not_the_tasks():
    for kind in populations.SEEDS:
        a, b = populations.config_for(kind, 0), populations.config_for(kind, 1)
        diff = {f for f in a.__dataclass_fields__ if getattr(a, f) != getattr(b, f)}
        assert diff and not any("task" in f or "split" in f for f in diff), (kind, diff)
    assert populations.config_for("lora", 2).seed == 2 and populations.config_for("lora", 2).base_seed == 0
    assert populations.config_for("llama", 1).base_seed == 1 and populations.config_for("vit", 1).seed == 1
    assert populations.config_for("vit", 1).n_scratch == 0 and populations.config_for("vit", 0).n_scratch > 0


def test_bad_names_and_workers():
    with pytest.raises(KeyError, match="'resnet/seed0'"):
        populations.build_all(["resnet/seed0"])
    with pytest.raises(KeyError, match="'lora'"):
        populations.build("lora")
    with pytest.raises(KeyError, match="'gpt2'"):
        populations.config_for("gpt2")
    with pytest.raises(ValueError, match="workers"):
        populations.build_all(["lora/seed0"], workers=0)


def test_nothing_built_at_paper_scale(monkeypatch):
    monkeypatch.setenv("UWS_SCALE", "paper")
    monkeypatch.setattr(populations, "load", lambda *a, **k: pytest.fail("built at paper scale"))
    assert populations.main([]) == 0
