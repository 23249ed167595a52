"""A tiny stand-in for the paper-scale functional world: a Mistral-architecture base with a real tokenizer file, PEFT
adapters of it under the LoRA manifest's hub ids and task datasets in the Lots-of-LoRAs schema under the task
manifest's dataset ids (``tests/experiments/task_fixtures.py`` writes each piece)."""
from pathlib import Path

from conftest import sibling_test_module
from uws_core.weights.manifests import load_manifest, lora_split

fx = sibling_test_module("experiments", "task_fixtures")


def write_task_world(root: Path, n_train: int, n_iid: int, n_ood: int, n_test: int = 3, n_data: int | None = None) -> dict:
    """A tiny base, adapters under the LoRA manifest's ids and datasets under the task manifest's ids.
    The first ``n_data`` IID and OOD tasks (default all) get a dataset. Returns the base directory, the adapter
    and data roots and the task ids of each group."""
    loras, tasks = load_manifest("mistral7b_loras"), load_manifest("lots_of_loras_tasks").set_index("task_id")
    iid = list(lora_split(loras, "iid_test")["task_id"][:n_iid])
    ood = list(lora_split(loras, "ood_test")["task_id"][:n_ood])
    train = [t for t in lora_split(loras, "train")["task_id"] if t not in iid][:n_train]
    repo = dict(zip(loras["task_id"], loras["repo_id"]))
    base = fx.write_tiny_base(root / "base", tuple(iid + ood))
    for i, t in enumerate(train + iid + ood):
        fx.write_tiny_adapter(base, root / "loras" / repo[t], seed=100 + i, r=4, scale=0.3)
    for t in iid[:n_data] + ood[:n_data]:
        fx.write_task_dataset(root / "data" / tasks.at[t, "repo_id"], t, n_test=n_test)
    return {"base": base, "loras": root / "loras", "data": root / "data", "iid": iid, "ood": ood, "train": train}
