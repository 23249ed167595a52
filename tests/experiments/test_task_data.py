"""The task-dataset manifest, the authors' IID / OOD lists, and task datasets fetched through ``uws download`` from the
local hub emulator (dataset repositories, the real ``huggingface_hub`` client) and read with ``datasets``."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import sibling_test_module
from task_fixtures import SPLITS, task_dataset_files, write_task_dataset
from uws_core.experiments.task_data import TaskDataError, load_task_split, task_list, task_manifest_from_loras
from uws_core.weights.manifests import ManifestError, load_manifest

hub_client = sibling_test_module("weights", "test_hub_client")
HubEmulator = sibling_test_module("weights", "hub_emulator").HubEmulator

# toshi2k2/unisub NLG/mistral_eval.py L25-36 (iid_dict) and L38-49 (ood_dict), in their order
AUTHORS_IID = ["task076", "task627", "task664", "task819", "task1631", "task852", "task1657", "task879", "task1596",
               "task382"]
AUTHORS_OOD = ["task280", "task190", "task391", "task290", "task1391", "task1342", "task442", "task620", "task1598",
               "task039"]
OOD_IDS = ["Lots-of-LoRAs/task280_stereoset_classification_stereotype_type", "Lots-of-LoRAs/task190_snli_classification"]


def test_committed_task_manifest_is_derived_from_the_lora_manifest():
    tasks = load_manifest("lots_of_loras_tasks")
    derived = task_manifest_from_loras(load_manifest("mistral7b_loras"))
    hub_cols = ["revision", "checksums", "hub_status", "hub_note"]  # the lock may have filled these
    pd.testing.assert_frame_equal(tasks.drop(columns=hub_cols), derived.drop(columns=hub_cols))
    assert set(tasks["repo_type"]) == {"dataset"} and not tasks["repo_id"].duplicated().any()


def test_iid_and_ood_lists_are_the_authors():
    for m in (load_manifest("mistral7b_loras"), load_manifest("lots_of_loras_tasks")):
        assert sorted(task_list(m, "iid")) == sorted(AUTHORS_IID)
        assert sorted(task_list(m, "ood")) == sorted(AUTHORS_OOD)
    with pytest.raises(ValueError, match="'iid' or 'ood'"):
        task_list(load_manifest("lots_of_loras_tasks"), "test")


def test_bad_repo_type_is_refused_naming_row_and_column(tmp_path):
    import shutil

    from uws_core.weights.manifests import MANIFEST_DIR

    shutil.copytree(MANIFEST_DIR, tmp_path / "m")
    csv = tmp_path / "m" / "lots_of_loras_tasks.csv"
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[3, "repo_type"] = "space"
    df.to_csv(csv, index=False)
    with pytest.raises(ManifestError, match=r"row 4 .*column 'repo_type': 'space'"):
        load_manifest("lots_of_loras_tasks", tmp_path / "m")


@pytest.fixture
def setup(tmp_path):
    with HubEmulator() as hub:
        yield hub_client.Setup(tmp_path, hub)


def test_task_datasets_lock_download_and_load_through_the_real_client(setup):
    s, hub = setup, setup.hub
    shas = [hub.commit(OOD_IDS[0], task_dataset_files("task280", fmt="parquet"), repo_type="dataset"),
            hub.commit(OOD_IDS[1], task_dataset_files("task190", fmt="json"), repo_type="dataset")]
    hub.commit(OOD_IDS[0], {"README.md": b"a model of the same id: never fetched\n"})  # a model repo, same id
    csv = s.mdir / "lots_of_loras_tasks.csv"
    out = s.uws("manifest", "lock", csv, "--only", "task(280|190)_")
    assert "2 entries locked, 0 failed" in out, out
    df = s.manifest("lots_of_loras_tasks").set_index("repo_id")
    assert [df.at[i, "revision"] for i in OOD_IDS] == shas
    assert "data/test-00000-of-00001.parquet=sha256:" in df.at[OOD_IDS[0], "checksums"]
    assert "data/test-00000-of-00001.jsonl=git-sha1:" in df.at[OOD_IDS[1], "checksums"]
    out = s.uws("download", csv, "--only", "task(280|190)_", "--dest", s.dest)
    assert "8 downloaded" in out, out
    assert any("/datasets/" in p for _, p, _ in hub.requests) and not any(
        p.startswith(f"/{OOD_IDS[0]}/resolve") for _, p, _ in hub.requests)
    ex = load_task_split(s.dest / OOD_IDS[0], "test", cache_dir=s.tmp / "hfds")
    assert [e.id for e in ex] == [f"task280-test-{i}" for i in range(4)]
    assert ex[1].references == ("yes", "green") and ex[1].input.endswith("Output:")
    assert len(load_task_split(s.dest / OOD_IDS[1], "valid", cache_dir=s.tmp / "hfds")) == 3
    assert "8 present" in s.uws("download", csv, "--only", "task(280|190)_", "--dest", s.dest)  # a rerun: nothing
    s.victim_intact()


def test_dataset_without_data_files_fails_to_lock_with_the_reason(setup):
    s, hub = setup, setup.hub
    hub.commit(OOD_IDS[0], {"README.md": b"card only\n", "model.bin": b"x"}, repo_type="dataset")
    out = s.uws("manifest", "lock", s.mdir / "lots_of_loras_tasks.csv", "--only", "task280_")
    assert "0 entries locked, 1 failed" in out and "no data files" in out, out


@pytest.mark.parametrize("bad, match", [
    ({"output": "yes"}, r"example 0 \(id 't-test-0'\): field 'output' is a string"),
    ({"output": []}, r"field 'output' must be a non-empty list"),
    ({"id": ""}, r"field 'id' must be a non-empty string"),
])
def test_schema_refusals_name_dir_split_example_and_field(tmp_path, bad, match):
    row = {"input": "x Output:", "output": ["yes"], "id": "t-test-0"}
    write_task_dataset(tmp_path / "t", "t", rows=dict.fromkeys(SPLITS, [{**row, **bad}, {**row, **bad, "id": "t-test-1"}]),
                       fmt="json", typed=False)
    with pytest.raises(TaskDataError, match=rf"task dataset {tmp_path / 't'}, split 'test'.*" + match):
        load_task_split(tmp_path / "t", "test", cache_dir=tmp_path / "c")


def test_missing_field_duplicate_id_and_missing_split_are_refused(tmp_path):
    write_task_dataset(tmp_path / "s", "s", rows={"test": [{"input": "x", "output": "y", "id": "1"}]}, fmt="json")
    with pytest.raises(TaskDataError, match=r"split 'test': unreadable .*Couldn't cast"):  # the card says: a list
        load_task_split(tmp_path / "s", "test", cache_dir=tmp_path / "c")
    write_task_dataset(tmp_path / "a", "a", rows=dict.fromkeys(SPLITS, [{"input": "x", "id": "1"}]), fmt="json",
                       typed=False)
    with pytest.raises(TaskDataError, match=r"missing field\(s\) \['output'\]"):
        load_task_split(tmp_path / "a", "test", cache_dir=tmp_path / "c")
    row = {"input": "x", "output": ["y"], "id": "same"}
    write_task_dataset(tmp_path / "b", "b", rows={"test": [row, row]}, fmt="json")
    with pytest.raises(TaskDataError, match="id 'same' occurs twice"):
        load_task_split(tmp_path / "b", "test", cache_dir=tmp_path / "c")
    with pytest.raises(TaskDataError, match="split 'dev'"):
        load_task_split(tmp_path / "b", "dev", cache_dir=tmp_path / "c")
    with pytest.raises(TaskDataError, match="does not exist"):
        load_task_split(tmp_path / "nope", "test")
