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


# ---------------------------------------------------------------------------------------------- a tiny base model
PROMPT_WORDS = ("Below is an instruction that describes a task with clear examples . Write a response that "
                "appropriately completes the task to the best of your ability ### Instruction : Definition answer "
                "question Now complete following example - Input Output").split()
ANSWER_WORDS = ["yes", "no", "red", "fox", "blue", "sky", "green", "cat", "dog", "sun", "q0", "q1", "q2", "q3", "q4",
                "q5", "test", "train", "valid"]


def write_tiny_base(directory, tasks=("task280_toy", "task190_toy"), seed: int = 0, hidden: int = 32):
    """A seeded tiny MistralForCausalLM with a real ``tokenizer.json``: a byte-pair model trained with ``tokenizers``
    on the prompt and the toy tasks, with Mistral's ``▁`` word marks (Metaspace) and ids 0/1/2 = ``<unk>``/``<s>``/
    ``</s>``, so decoding gives the text back (``... Output: yes``); saved as ``save_pretrained`` writes it."""
    import string
    from pathlib import Path

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    corpus = [" ".join(PROMPT_WORDS), " ".join(ANSWER_WORDS)] + [
        e["input"] + " " + " ".join(e["output"]) for t in tasks for sp in SPLITS for e in task_examples(t, 6, sp)]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=list(string.ascii_letters + string.digits
                                                                             + string.punctuation)))
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    d = Path(directory)
    fast.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=tk.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        bos_token_id=1, eos_token_id=2)
    MistralForCausalLM(cfg).save_pretrained(d)
    return d


def write_tiny_adapter(base_dir, directory, seed: int, r: int = 4, scale: float = 0.5):
    """A PEFT LoRA adapter (q/k/v, rank r, random nonzero factors) of the tiny base, saved by peft."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(scale * torch.randn(p.shape, generator=gen))
        model.save_pretrained(str(directory))
    return directory
