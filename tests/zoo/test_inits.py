import json

import pytest
import torch
from safetensors.torch import load_file

from uws_core.weights.checkpoints import CheckpointSet
from uws_core.zoo.inits import architecture_class, random_init_model, write_random_inits


@pytest.fixture()
def vit_config_dir(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    image_size=8, patch_size=4, num_channels=1, num_labels=3)
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_random_inits_are_seeded_cached_and_readable(vit_config_dir, tmp_path):
    dirs = write_random_inits(vit_config_dir, 3, seed=5, cache_dir=tmp_path / "cache")
    assert [d.name for d in dirs] == ["seed_5", "seed_6", "seed_7"]
    again = write_random_inits(vit_config_dir, 3, seed=5, cache_dir=tmp_path / "cache")
    assert again == dirs
    key = "vit.encoder.layer.0.attention.attention.query.weight"
    a, b = load_file(str(dirs[0] / "model.safetensors")), load_file(str(dirs[1] / "model.safetensors"))
    assert not torch.equal(a[key], b[key])                      # different seeds, different weights
    random_init_model(architecture_class_config(vit_config_dir), 5).save_pretrained(tmp_path / "again")
    c = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert set(c) == set(a) and all(torch.equal(a[k], c[k]) for k in a)   # the same seed, the same model
    cset = CheckpointSet.from_dirs(dirs)
    assert len(cset) == 3 and key in cset.weight_keys
    # transformers' ViT init is truncated normal with std initializer_range (0.02)
    assert abs(float(a[key].std()) - 0.02) < 0.006


def architecture_class_config(d):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(d))


def test_global_rng_untouched(vit_config_dir):
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    random_init_model(architecture_class_config(vit_config_dir), 0)
    assert torch.equal(torch.rand(3), expected)


def test_missing_config_and_unknown_architecture(tmp_path, vit_config_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_random_inits(tmp_path / "nowhere", 2)
    raw = json.loads((vit_config_dir / "config.json").read_text())
    raw["architectures"] = ["NoSuchModelForThings"]
    (vit_config_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="NoSuchModelForThings"):
        architecture_class(architecture_class_config(vit_config_dir))
