"""A tiny stand-in for the paper-scale functional world: a Mistral-architecture base with a real tokenizer file, PEFT
adapters of it under the LoRA manifest's hub ids and task datasets in the Lots-of-LoRAs schema under the task
manifest's dataset ids (``tests/experiments/task_fixtures.py`` writes each piece)."""
from pathlib import Path

from conftest import sibling_test_module
from uws_core.weights.manifests import load_manifest, lora_split

fx = sibling_test_module("experiments", "task_fixtures")


def write_task_world(root: Path, n_train: int, n_iid: int, n_ood: int, n_test: int = 3, n_data: int | None = None) -> dict:
    """A tiny base (:func:`train_tiny_base`), adapters under the LoRA manifest's ids and datasets under the task
    manifest's ids.
    The first ``n_data`` IID and OOD tasks (default all) get a dataset. Returns the base directory, the adapter
    and data roots and the task ids of each group."""
    loras, tasks = load_manifest("mistral7b_loras"), load_manifest("lots_of_loras_tasks").set_index("task_id")
    iid = list(lora_split(loras, "iid_test")["task_id"][:n_iid])
    ood = list(lora_split(loras, "ood_test")["task_id"][:n_ood])
    train = [t for t in lora_split(loras, "train")["task_id"] if t not in iid][:n_train]
    repo = dict(zip(loras["task_id"], loras["repo_id"]))
    base = fx.write_tiny_base(root / "base", tuple(iid + ood))
    if iid + ood:
        train_tiny_base(base, iid + ood, n_test)
    for i, t in enumerate(train):               # small random updates
        fx.write_tiny_adapter(base, root / "loras" / repo[t], seed=100 + i, r=4, scale=0.1)
    for i, t in enumerate(iid + ood):           # fitted to their tasks: the own adapter beats the base
        train_tiny_adapter(base, root / "loras" / repo[t], t, n_test, seed=i)
    for t in iid[:n_data] + ood[:n_data]:
        fx.write_task_dataset(root / "data" / tasks.at[t, "repo_id"], t, n_test=n_test)
    return {"base": base, "loras": root / "loras", "data": root / "data", "iid": iid, "ood": ood, "train": train}


def _answer_batch(tok, tasks, n_test: int, reference: int):
    """Prompt + the ``reference``-th answer + EOS of each toy test example; labels mask the padding."""
    from uws_core.experiments.task_eval import build_prompt

    texts = [build_prompt(e["input"]) + " " + e["output"][reference] + tok.eos_token
             for t in tasks for e in fx.task_examples(t, n_test, "test")]
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc, enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)


def _fit(model, params, enc, labels, steps: int, lr: float, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                           # a few tiny matrices: threads only cost here
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**enc, labels=labels).loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    model.eval()


def train_tiny_base(base_dir: Path, tasks, n_test: int = 3, steps: int = 60, lr: float = 1e-2, seed: int = 0) -> Path:
    """Fit the tiny base (all weights, seeded Adam, full batch) to answer the toy tasks' test inputs with their
    *second* reference after the authors' prompt: it learns the answer format, and ROUGE-L against the first
    reference (the authors' score) leaves room for an adapter to gain. A plumbing fixture, not a model of anything
    (it is fitted on the very examples it is then scored on)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    tok.pad_token = tok.convert_ids_to_tokens(0)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    enc, labels = _answer_batch(tok, tasks, n_test, reference=1)
    _fit(model, model.parameters(), enc, labels, steps, lr, seed)
    model.save_pretrained(str(base_dir))
    return base_dir


def train_tiny_adapter(base_dir: Path, directory: Path, task: str, n_test: int = 3, steps: int = 40, lr: float = 2e-2,
                       seed: int = 0) -> Path:
    """A LoRA adapter (q/k/v, r = 4, peft) fitted to answer ``task``'s test inputs with their first reference."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    tok.pad_token = tok.convert_ids_to_tokens(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
        enc, labels = _answer_batch(tok, [task], n_test, reference=0)
        _fit(model, [p for n, p in model.named_parameters() if "lora_" in n], enc, labels, steps, lr, seed)
        model.save_pretrained(str(directory))
    return directory


def publish_and_download(w: dict, hub, setup) -> dict:
    """Publish the world on the hub emulator (the base under Mistral-7B-Instruct-v0.2's id, the adapters and task
    datasets under the manifests' ids), pin them with ``uws manifest lock`` (copies of the real manifests, the real
    adapters' expected shapes cleared) and fetch them with ``uws download``. Returns the notebooks' environment:
    adapter and data roots as downloaded, the base as a hub id at its pinned commit, the emulator's endpoint."""
    import re

    import pandas as pd

    ids = {"mistral7b_loras": [], "lots_of_loras_tasks": []}
    for d in sorted(p for p in w["loras"].glob("*/*") if p.is_dir()):
        rid = f"{d.parent.name}/{d.name}"
        hub.commit(rid, {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()})
        ids["mistral7b_loras"].append(rid)
    for d in sorted(p for p in w["data"].glob("*/*") if p.is_dir()):
        rid = f"{d.parent.name}/{d.name}"
        hub.commit(rid, {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()},
                   repo_type="dataset")
        ids["lots_of_loras_tasks"].append(rid)
    sha = hub.commit("mistralai/Mistral-7B-Instruct-v0.2", {p.name: p.read_bytes() for p in w["base"].iterdir()})
    hub.commit("mistralai/Mistral-7B-Instruct-v0.2", {"config.json": b"{}"})   # main moves on: the pin matters
    roots = {"mistral7b_loras": setup.dest / "loras", "lots_of_loras_tasks": setup.dest / "data"}
    for family, chosen in ids.items():
        csv = setup.mdir / f"{family}.csv"
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        df.loc[df["repo_id"].isin(chosen), "expected_shapes"] = ""                  # tiny, not Mistral-7B's
        df.to_csv(csv, index=False, lineterminator="\n")
        only = "^(" + "|".join(re.escape(i) for i in chosen) + ")$"
        assert f"{len(chosen)} entries locked" in setup.uws("manifest", "lock", csv, "--only", only)
        setup.uws("download", csv, "--only", only, "--dest", roots[family])
    return {"UWS_MISTRAL_LORA_DIR": roots["mistral7b_loras"], "UWS_TASK_DATA_DIR": roots["lots_of_loras_tasks"],
            "UWS_MISTRAL_BASE": "mistralai/Mistral-7B-Instruct-v0.2", "UWS_MISTRAL_BASE_REVISION": sha,
            **{k: setup.env[k] for k in ("HF_ENDPOINT", "HF_HOME", "NO_PROXY", "no_proxy", "HF_HUB_ETAG_TIMEOUT",
                                         "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_DISABLE_TELEMETRY")},
            "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}
