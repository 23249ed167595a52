"""The Lots-of-LoRAs task datasets: their manifest, the authors' IID / OOD task lists, and loading a split.

Every Mistral-7B adapter ``Lots-of-LoRAs/Mistral-7B-Instruct-v0.2-4b-r16-<task>`` was trained on one
Super-NaturalInstructions task, published as the dataset repository ``Lots-of-LoRAs/<task name>`` with the
fields ``input`` (the instruction, definition and examples, ending in ``Output:``), ``output`` (a list of
reference answers) and ``id``, and the splits ``train`` / ``valid`` / ``test``.

* :func:`task_manifest_from_loras`: the rows of ``data_manifests/lots_of_loras_tasks.csv`` (one dataset repository
  per adapter of ``mistral7b_loras.csv``, ``repo_type`` ``dataset``), pinned and fetched by ``uws manifest lock`` /
  ``uws download`` like the models. The dataset id is the adapter's ``eval_dataset_id`` where the authors name
  it (the 20 IID and OOD tasks: ``iid_dict`` / ``ood_dict`` of toshi2k2/unisub ``NLG/mistral_eval.py`` L25-49),
  else ``Lots-of-LoRAs/<task_name>`` with the task name the LoRA manifest records (and its source).
* :func:`task_list`: the authors' 10 IID tasks (inside the 492 training adapters) or 10 OOD tasks (held out),
  read from the LoRA manifest's ``split`` column (``iid_test`` / ``ood_test``, transcribed from the same dicts).
* :func:`load_task_split`: one split of a downloaded dataset directory, read by the ``datasets`` library from the
  local files exactly as the hub serves them (``README.md`` configs, ``data/*.parquet`` or json), its schema
  checked example by example (:class:`TaskDataError` names the directory, split, example and field).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from uws_core.weights.manifests import HUB_COLUMNS, lora_split

__all__ = ["TaskDataError", "TASK_FILES", "task_manifest_from_loras", "task_list", "task_data_dirs", "TaskExample",
           "load_task_split"]

#: What ``uws download`` fetches of a task dataset: the card (its YAML names the splits' files) and the data files
#: at the top level or under ``data/`` (``push_to_hub`` writes ``data/<split>-00000-of-00001.parquet``).
TASK_FILES = "README.md;*.parquet;*.json;*.jsonl;data/*.parquet;data/*.json;data/*.jsonl"
FIELDS = ("input", "output", "id")


class TaskDataError(ValueError):
    """A task dataset that does not have the Lots-of-LoRAs schema (the message names dir, split, example, field)."""


def task_manifest_from_loras(loras: pd.DataFrame) -> pd.DataFrame:
    """One dataset entry per adapter row of the Mistral LoRA manifest, in its order (all cells strings)."""
    rows = []
    for r in loras.itertuples(index=False):
        official = bool(r.eval_dataset_id)
        rows.append({
            "repo_id": r.eval_dataset_id if official else f"Lots-of-LoRAs/{r.task_name}",
            "repo_type": "dataset", "task_id": r.task_id, "task_name": r.task_name, "split": r.split,
            "adapter_repo_id": r.repo_id,
            "dataset_id_source": ("eval_dataset_id of the LoRA manifest (" + r.task_name_source + ")" if official
                                  else "Lots-of-LoRAs/<task_name>; task name from " + r.task_name_source),
            "revision": "", "files": TASK_FILES, "checksums": "", "expected_shapes": "", "hub_status": "unlocked",
            "hub_note": ""})
    out = pd.DataFrame(rows)
    assert tuple(out.columns[-len(HUB_COLUMNS):]) == HUB_COLUMNS
    return out


def task_list(manifest: pd.DataFrame, which: str) -> list[str]:
    """Task ids of the authors' ``"iid"`` (10 tasks inside train) or ``"ood"`` (10 held out) evaluation, in the
    manifest's order; works on the LoRA manifest and on the task manifest (both carry ``split``)."""
    if which not in ("iid", "ood"):
        raise ValueError(f"which must be 'iid' or 'ood', got {which!r}")
    return list(lora_split(manifest, f"{which}_test")["task_id"])


def task_data_dirs(data_root: Path | str, task_ids, manifest: pd.DataFrame | None = None) -> dict[str, Path]:
    """task id -> the directory where ``uws download lots_of_loras_tasks --dest data_root`` put its dataset."""
    from uws_core.weights.manifests import load_manifest, local_dir

    m = load_manifest("lots_of_loras_tasks") if manifest is None else manifest
    by_id = dict(zip(m["task_id"], m["repo_id"]))
    out = {}
    for t in task_ids:
        if t not in by_id:
            raise TaskDataError(f"task {t!r} is not in data_manifests/lots_of_loras_tasks.csv (e.g. {m['task_id'].iloc[0]!r})")
        d = local_dir(data_root, by_id[t], "dataset")
        if d is None:
            raise TaskDataError(f"task {t}: dataset {by_id[t]} is not under {data_root} (run `uws download "
                                f"lots_of_loras_tasks --dest {data_root} --only {by_id[t].split('/')[1]}`)")
        out[t] = d
    return out


@dataclass(frozen=True)
class TaskExample:
    id: str
    input: str
    references: tuple[str, ...]  # the dataset's ``output`` list, in order (the authors score the first)


def _check_example(ex: dict, where: str, i: int) -> TaskExample:
    ident = ex.get("id")
    at = f"{where}, example {i} (id {ident!r})"
    if not isinstance(ident, str) or not ident:
        raise TaskDataError(f"{at}: field 'id' must be a non-empty string, got {type(ident).__name__}")
    if not isinstance(ex.get("input"), str):
        raise TaskDataError(f"{at}: field 'input' must be a string, got {type(ex.get('input')).__name__}")
    refs = ex.get("output")
    if isinstance(refs, str):
        raise TaskDataError(f"{at}: field 'output' is a string; the Lots-of-LoRAs schema has a list of answers")
    if not isinstance(refs, (list, tuple)) or not refs or not all(isinstance(x, str) for x in refs):
        raise TaskDataError(f"{at}: field 'output' must be a non-empty list of strings, got {refs!r:.80}")
    return TaskExample(ident, ex["input"], tuple(refs))


def load_task_split(dataset_dir: Path | str, split: str = "test", cache_dir: Path | str | None = None,
                    limit: int | None = None) -> list[TaskExample]:
    """Examples of one split of a local task-dataset repository (``datasets.load_dataset(<dir>, split=...)``,
    no network: the directory holds the files ``uws download`` fetched). Ids must be unique. ``limit`` keeps
    the first examples (in file order)."""
    import datasets

    d = Path(dataset_dir)
    if not d.is_dir():
        raise TaskDataError(f"task dataset directory {d} does not exist (run `uws download lots_of_loras_tasks`)")
    where = f"task dataset {d}, split {split!r}"
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # uws shows one bar per task, not one per split conversion
    try:
        ds = datasets.load_dataset(str(d), split=split, cache_dir=str(cache_dir) if cache_dir else None)
    except ValueError as exc:  # an unknown split, no data files, an unreadable file
        raise TaskDataError(f"{where}: the datasets library cannot read it: {str(exc).splitlines()[0][:300]}") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow / datasets errors on damaged files name no file: we do
        cause = exc.__cause__ or exc.__context__
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" + (
            f"; {type(cause).__name__}: {str(cause).splitlines()[0][:200]}" if cause else "")
        raise TaskDataError(f"{where}: unreadable ({why})") from None
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    missing = [f for f in FIELDS if f not in ds.column_names]
    if missing:
        raise TaskDataError(f"{where}: missing field(s) {missing} (has {ds.column_names}); the Lots-of-LoRAs schema "
                            f"is {list(FIELDS)}")
    n = len(ds) if limit is None else min(int(limit), len(ds))
    out = [_check_example(ds[i], where, i) for i in range(n)]
    seen: set[str] = set()
    for i, ex in enumerate(out):
        if ex.id in seen:
            raise TaskDataError(f"{where}, example {i}: id {ex.id!r} occurs twice (results are keyed by id)")
        seen.add(ex.id)
    if not out:
        raise TaskDataError(f"{where}: no examples")
    return out
