import pandas as pd
import pytest

from uws_core.manifests import (FAMILIES, ManifestError, load_manifest, local_dir, local_dirs,
                                lora_split)


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
