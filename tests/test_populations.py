import os

import pytest

from uws_core import populations


def _fake(name):
    return lambda: f"/cache/{name}/{os.getpid()}"


@pytest.fixture()
def fake_builders(monkeypatch):
    monkeypatch.setattr(populations, "BUILDERS", {n: _fake(n) for n in ("vit", "lora", "llama")})


def test_build_all_runs_every_builder_in_order(fake_builders):
    out = populations.build_all(workers=1)
    assert [n for n, _, _ in out] == ["vit", "lora", "llama"]
    assert all(root.startswith(f"/cache/{n}/") and s >= 0 for n, root, s in out)


def test_parallel_build_uses_worker_processes(fake_builders):
    out = populations.build_all(["lora", "llama"], workers=2)     # forked workers see the patched builders
    assert [n for n, _, _ in out] == ["lora", "llama"]
    assert all(int(root.rsplit("/", 1)[1]) != os.getpid() for _, root, _ in out)


def test_bad_names_and_workers():
    with pytest.raises(KeyError, match="'resnet'"):
        populations.build_all(["resnet"])
    with pytest.raises(KeyError, match="'gpt2'"):
        populations.build("gpt2")
    with pytest.raises(ValueError, match="workers"):
        populations.build_all(["lora"], workers=0)


def test_nothing_built_at_paper_scale(monkeypatch):
    monkeypatch.setenv("UWS_SCALE", "paper")
    monkeypatch.setattr(populations, "BUILDERS", {"lora": lambda: pytest.fail("built at paper scale")})
    assert populations.main([]) == 0
