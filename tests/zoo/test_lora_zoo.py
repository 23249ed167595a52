"""The tiny population: builds, records, PEFT files, cache reuse and rebuild of a partial or corrupt cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uws_core.zoo import lora_zoo
from uws_core.weights.cache import CacheError, verify_cache_dir
from uws_core.zoo.lora_zoo import LoraPopulationConfig, build_lora_population, default_cache_dir

CONTRACT_COLUMNS = ["adapter", "task", "family", "seed", "init_seed", "shared_init", "steps",
                    "final_train_loss", "base_acc", "adapter_acc", "n_test"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # tiny matrices: one thread is as fast, and immune to a busy machine
    from uws_core.linalg.numerics import compute_settings

    with compute_settings(1, deterministic=None, quiet=False, onednn=None):  # threads only, restored after
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("uws_cache")
    return build_lora_population(LoraPopulationConfig.tiny(), cache_dir=cache, progress=False), cache


def test_tiny_builds_with_records(tiny):
    pop, cache = tiny
    cfg = LoraPopulationConfig.tiny()
    r = pop.records
    assert list(r.columns[:3]) == ["adapter", "task", "family"] and set(CONTRACT_COLUMNS) <= set(r.columns)
    assert len(r) == len(pop.adapter_dirs) == cfg.n_tasks and r["task"].is_unique
    assert r["shared_init"].dtype == bool and r["shared_init"].sum() == round(cfg.shared_init_fraction * cfg.n_tasks)
    assert r.loc[r["shared_init"], "init_seed"].nunique() == 1
    assert r.loc[~r["shared_init"], "init_seed"].nunique() == (~r["shared_init"]).sum()
    assert (r["n_test"] == cfg.n_test).all() and (r["steps"] == cfg.lora_steps).all()
    assert r["base_acc"].between(0, 1).all() and r["adapter_acc"].between(0, 1).all()
    assert pop.root.parent == cache and (pop.base_dir / "model.safetensors").is_file()
    assert (pop.base_dir / "config.json").is_file() and set(pop.tasks) == set(r["task"])
    info = json.loads((pop.root / "population.json").read_text())
    assert info["config"] == cfg.to_dict() and info["model"]["num_key_value_heads"] == 1
    assert {"base_train_s", "lora_train_s", "total_s"} <= set(info["timings_s"])


def test_adapters_are_peft_files(tiny):
    pop, _ = tiny
    cfg = pop.config
    d, h = cfg.hidden_size, cfg.hidden_size // cfg.num_heads * cfg.num_kv_heads  # q: (d, d); k, v: (h, d)
    for a in pop.adapter_dirs:
        conf = json.loads((a / "adapter_config.json").read_text())
        assert conf["r"] == cfg.lora_r and conf["lora_alpha"] == cfg.lora_alpha and conf["peft_type"] == "LORA"
        assert sorted(conf["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
        state = load_file(a / "adapter_model.safetensors")
        assert len(state) == cfg.num_layers * 3 * 2
        for layer in range(cfg.num_layers):
            for m, out in (("q_proj", d), ("k_proj", h), ("v_proj", h)):
                key = f"base_model.model.model.layers.{layer}.self_attn.{m}.lora_"
                assert state[key + "A.weight"].shape == (cfg.lora_r, d)
                assert state[key + "B.weight"].shape == (out, cfg.lora_r)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # a transformers deprecation that peft triggers
def test_evaluate_reproduces_records_and_peft_loading(tiny):
    from peft import PeftModel

    from uws_core.zoo.tinylm import accuracy

    pop, _ = tiny
    for i, row in pop.records.iterrows():
        assert pop.evaluate(row["task"]) == pytest.approx(row["base_acc"], abs=1.5 / row["n_test"])
        acc = pop.evaluate(row["task"], lora_state=pop.adapter_state(i))
        assert acc == pytest.approx(row["adapter_acc"], abs=1.5 / row["n_test"])
    peft_model = PeftModel.from_pretrained(pop.load_base(), pop.adapter_dirs[0]).eval()
    task = pop.get_task(pop.records.loc[0, "task"])
    assert accuracy(peft_model, pop.tokenizer, task.test).mean() == pytest.approx(pop.records.loc[0, "adapter_acc"],
                                                                                  abs=1.5 / len(task.test))
    with pytest.raises(KeyError, match="no task"):
        pop.evaluate("no_such_task")
    with pytest.raises(KeyError, match="lora_A"):
        pop.evaluate(task.name, {"model.layers.0.self_attn.q_proj.weight": torch.zeros(1)})


def test_shared_init_adapters_stay_close(tiny):
    pop, _ = tiny
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    a = {i: pop.adapter_state(i)[key].flatten() for i in range(len(pop.records))}
    shared = pop.records.index[pop.records["shared_init"]].tolist()
    cos = torch.nn.functional.cosine_similarity
    assert cos(a[shared[0]], a[shared[1]], dim=0) > 0.9
    others = pop.records.index[~pop.records["shared_init"]].tolist()
    assert abs(cos(a[others[0]], a[others[1]], dim=0)) < 0.5


def test_cache_reused_without_training(tiny, monkeypatch):
    pop, cache = tiny
    monkeypatch.setattr(lora_zoo, "_build", lambda *a, **k: pytest.fail("retrained a cached population"))
    again = build_lora_population(LoraPopulationConfig.tiny(), cache_dir=cache, progress=False)
    assert again.root == pop.root and again.records.equals(pop.records)
    monkeypatch.setenv("UWS_CACHE", str(cache))
    assert build_lora_population(LoraPopulationConfig.tiny(), progress=False).root == pop.root


@pytest.mark.parametrize("damage", ["marker", "truncate"])
def test_partial_or_corrupt_cache_is_rebuilt(tmp_path, damage):
    cfg = LoraPopulationConfig.tiny(n_tasks=2, lora_steps=4)
    pop = build_lora_population(cfg, cache_dir=tmp_path, progress=False)
    target = pop.adapter_dirs[1] / "adapter_model.safetensors"
    before = target.read_bytes()
    if damage == "marker":
        (pop.root / "complete.json").unlink()
    else:
        target.write_bytes(before[: len(before) // 2])
    with pytest.raises(CacheError):
        verify_cache_dir(pop.root)
    rebuilt = build_lora_population(cfg, cache_dir=tmp_path, progress=False)
    verify_cache_dir(rebuilt.root, lora_zoo.FORMAT_VERSION)
    assert target.read_bytes() == before  # deterministic: the same bytes again
    assert rebuilt.records.equals(pop.records)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_config_block():
    cfg = LoraPopulationConfig()
    assert cfg.n_tasks >= 64 and cfg.lora_alpha / cfg.lora_r == 2.0  # Lots-of-LoRAs: alpha 32 / r 16
    assert cfg.num_heads // cfg.num_kv_heads == 4
    assert LoraPopulationConfig.from_dict(cfg.to_dict()) == cfg and cfg.key() != cfg.tiny().key()
    with pytest.raises(KeyError, match="lora_rank"):
        LoraPopulationConfig.from_dict({"lora_rank": 4})
    with pytest.raises(ValueError, match="shared_init_fraction"):
        LoraPopulationConfig(shared_init_fraction=1.5)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("UWS_CACHE", raising=False)
    assert default_cache_dir() == Path(lora_zoo.__file__).resolve().parents[2] / ".cache" / "uws"
    monkeypatch.setenv("UWS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
