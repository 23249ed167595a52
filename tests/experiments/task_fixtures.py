"""Tiny task datasets in the Lots-of-LoRAs schema, as file bytes the way the hub serves a ``push_to_hub`` dataset.

``task_dataset_files`` returns ``{path in the repository: bytes}``: a ``README.md`` whose YAML header names the
features (``input`` string, ``output`` list of strings, ``id`` string) and maps the splits ``train`` / ``valid`` /
``test`` to ``data/<split>-00000-of-00001.parquet`` (or ``.jsonl``), and those files, written with pyarrow.
"""

from __future__ import annotations

import io
import json

SPLITS = ("train", "valid", "test")


def task_examples(task: str, n: int = 4, split: str = "test") -> list[dict]:
    """n examples of a toy task; answers are short words so that a tiny model's outputs can be scored."""
    words = ["yes", "no", "red fox", "blue sky", "green", "cat", "dog", "sun"]
    return [{"input": f"Definition: answer the {task} question. Now complete the following example - "
                      f"Input: q{i} {split}. Output:",
             "output": [words[(i + len(task)) % len(words)], words[(i + 3) % len(words)]],
             "id": f"{task}-{split}-{i}"} for i in range(n)]


def card(fmt: str, typed: bool = True) -> bytes:
    """The dataset card; ``typed=False`` leaves out the features (the files' own types then rule)."""
    ext = "parquet" if fmt == "parquet" else "jsonl"
    lines = ["---"] + (["dataset_info:", "  features:", "  - name: input", "    dtype: string", "  - name: output",
                        "    sequence: string", "  - name: id", "    dtype: string"] if typed else [])
    lines += ["configs:", "- config_name: default", "  data_files:"]
    for s in SPLITS:
        lines += [f"  - split: {s}", f"    path: data/{s}-*.{ext}"]
    return ("\n".join(lines + ["---", "", "A tiny task in the Lots-of-LoRAs schema (test fixture).", ""])).encode()


def task_dataset_files(task: str, n_test: int = 4, fmt: str = "parquet", rows: dict | None = None,
                       typed: bool = True) -> dict[str, bytes]:
    """The repository files of one tiny task dataset; ``rows`` overrides a split's examples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {"README.md": card(fmt, typed)}
    for s in SPLITS:
        ex = (rows or {}).get(s) or task_examples(task, n_test if s == "test" else 3, s)
        if fmt == "parquet":
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(ex), buf)
            files[f"data/{s}-00000-of-00001.parquet"] = buf.getvalue()
        else:
            files[f"data/{s}-00000-of-00001.jsonl"] = "".join(json.dumps(e) + "\n" for e in ex).encode()
    return files


def write_task_dataset(directory, task: str, **kw):
    """The same files written into a local directory (what ``uws download`` leaves)."""
    from pathlib import Path

    d = Path(directory)
    for name, data in task_dataset_files(task, **kw).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return d
