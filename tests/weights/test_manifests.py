import pandas as pd
import pytest

from uws_core.weights.manifests import (FAMILIES, MANIFEST_DIR, ManifestError, format_checksums, is_forbidden_file,
                                load_manifest, local_dir, local_dirs, locked_bytes, lora_split, match_files,
                                parse_checksums, parse_expected_shapes, resolve_manifest)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_manifest_loads_with_expected_count(family):
    df = load_manifest(family)
    assert len(df) == FAMILIES[family][1]


def test_mistral_splits_match_public_lists():
    df = load_manifest("mistral7b_loras")
    assert len(lora_split(df, "train")) == 492
    assert len(lora_split(df, "iid_test")) == 10
    ood = lora_split(df, "ood_test")
    assert len(ood) == 10
    assert set(ood["task_id"]).isdisjoint(lora_split(df, "train")["task_id"])
    assert (df["lora_rank"] == "16").all()


def test_wrong_manifest_is_refused(tmp_path):
    df = load_manifest("gpt2")
    df.iloc[:10].to_csv(tmp_path / "gpt2.csv", index=False)
    with pytest.raises(ManifestError, match="10 rows, expected 200"):
        load_manifest("gpt2", tmp_path)
    pd.concat([df.iloc[:199], df.iloc[:1]]).to_csv(tmp_path / "gpt2.csv", index=False)
    with pytest.raises(ManifestError, match="duplicate repo_id 'openai-community/gpt2'"):
        load_manifest("gpt2", tmp_path)
    df.drop(columns=["repo_id"]).to_csv(tmp_path / "gpt2.csv", index=False)
    with pytest.raises(ManifestError, match="missing columns"):
        load_manifest("gpt2", tmp_path)
    with pytest.raises(ManifestError, match="unknown model family"):
        load_manifest("bert")


def test_local_dirs_layouts_and_missing(tmp_path):
    df = load_manifest("mistral7b_loras").iloc[:3]
    a, b, c = df["repo_id"]
    (tmp_path / a).mkdir(parents=True)
    (tmp_path / b.replace("/", "__")).mkdir()
    with pytest.raises(ManifestError, match=r"1 of 3 .*" + c.split("/")[1]):
        local_dirs(df, tmp_path)
    assert len(local_dirs(df, tmp_path, allow_missing=True)) == 2
    snap = tmp_path / ("models--" + c.replace("/", "--")) / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    assert local_dir(tmp_path, c) == snap
    assert local_dirs(df, tmp_path) == [tmp_path / a, tmp_path / b.replace("/", "__"), snap]


def test_local_dir_of_a_dataset_in_the_hub_cache_layout(tmp_path):
    snap = tmp_path / "datasets--Lots-of-LoRAs--task280_x" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    assert local_dir(tmp_path, "Lots-of-LoRAs/task280_x", "dataset") == snap
    assert local_dir(tmp_path, "Lots-of-LoRAs/task280_x") is None  # a model of that id is not there


def test_hub_columns_state_what_is_pinned_and_what_is_unresolved():
    status = {f: load_manifest(f)["hub_status"].value_counts().to_dict() for f in FAMILIES}
    assert status["vit"] == {"unresolved": 470}  # the authors' list has no owners: never guessed
    assert status["resnet50_datasets"] == {"no_hub_checkpoint": 6, "unresolved": 9}
    for f in ("mistral7b_loras", "llama8b", "gpt2", "flan_t5", "sdxl_style_loras", "lots_of_loras_tasks"):
        assert status[f] == {"unlocked": FAMILIES[f][1]}  # nothing locked on a machine without network
        assert (load_manifest(f)["revision"] == "").all()
    assert locked_bytes(load_manifest("gpt2")) == (0, 0)
    shapes = parse_expected_shapes(load_manifest("llama8b")["expected_shapes"][0])
    assert shapes["mlp.down_proj.weight"] == (4096, 14336) and len(shapes) == 7
    assert parse_expected_shapes(load_manifest("gpt2")["expected_shapes"][0])["attn.c_attn.weight"] == (768, 2304)


def test_file_patterns_never_take_pickles_or_original():
    names = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "pytorch_model.bin",
             "original/consolidated.00.pth", "original/params.json", "sub/model.safetensors", "adapter_model.bin"]
    pats = load_manifest("llama8b")["files"][0]
    assert match_files(names, pats) == ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    assert match_files(names, "*.json") == ["config.json", "model.safetensors.index.json"]  # * stays at the top level
    assert match_files(names, "*/*.json") == []  # original/params.json is refused even when a pattern names it
    assert is_forbidden_file("weights.PT") and is_forbidden_file("original/x.json") and not is_forbidden_file("a.json")


def test_checksums_parse_and_refuse_malformed_entries():
    cell = "adapter_config.json=git-sha1:" + "a" * 40 + "@712;adapter_model.safetensors=sha256:" + "b" * 64 + "@27280152"
    sums = parse_checksums(cell)
    assert [c.name for c in sums] == ["adapter_config.json", "adapter_model.safetensors"]
    assert sums[1].size == 27280152 and format_checksums(sums) == cell
    for bad in ("x=sha256:" + "b" * 63 + "@1", "x=md5:" + "b" * 32 + "@1", "x=sha256:" + "b" * 64, cell + ";" + cell):
        with pytest.raises(ValueError):
            parse_checksums(bad)


def test_resolve_manifest_by_family_or_path(tmp_path):
    assert resolve_manifest("gpt2") == ("gpt2", MANIFEST_DIR)
    assert resolve_manifest(tmp_path / "vit.csv") == ("vit", tmp_path)
    with pytest.raises(ManifestError, match="neither a model family"):
        resolve_manifest("gpt3")


def test_entries_without_hub_id_are_never_found_locally(tmp_path):
    df = load_manifest("resnet50_datasets")
    assert (df["repo_id"] == "").all()
    assert local_dirs(df, tmp_path, allow_missing=True) == []
