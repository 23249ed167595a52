"""Task evaluation of a base causal LM with a PEFT LoRA adapter: generation on a task's test split, scored per example.

The recipe is the authors' (toshi2k2/unisub ``NLG/mistral_eval.py``, commit 0d39d03):

* prompt (L175-187): ``"Below is an instruction that describes a task with clear examples. Write a response that
  appropriately completes the task to the best of your ability.\\n### Instruction :\\n" + input``;
* tokenizer padded on the left, pad id 0 when the tokenizer has none (L234, L241: Mistral's ``<unk>``);
* base model in bfloat16 on a GPU (L228-232); this module uses float32 on a CPU, and 4-bit NF4 (bitsandbytes) only
  when asked *and* bitsandbytes and a GPU are present; every result names its ``precision`` and ``device``;
* decoding ``"authors"``: the defaults of L96-131 as ``GenerationConfig`` gets them (L272-279): ``do_sample`` is
  never set, so temperature 0.1 / top_p 0.75 / top_k 40 are inert and the search is deterministic beam search with
  ``num_beams=4``, ``max_new_tokens=32``; the prediction is the decoded prompt + continuation split at the last
  ``"Output:"`` (L291-293; Lots-of-LoRAs inputs end in ``Output:``). Decoding ``"greedy"`` (the default here):
  ``num_beams=1``, ``max_new_tokens=32``, the prediction is the decoded continuation. Batches are formed from
  prompts sorted by length (the authors ran batch size 1, L126-131); an attention mask is passed (they pass none,
  harmless at batch size 1 only);
* scores: :mod:`uws_core.experiments.task_scores` (ROUGE-L vs the first reference as the authors, vs the best
  reference, exact match), on the ``test`` split (L325).

A high-rank variant written as a dense delta (:mod:`uws_core.weights.dense_delta`) is added to the base weights in
place instead of through peft, and the exact original weights are copied back before the next variant.

Results are written as they come: ``<out>/<run>/<task>.jsonl`` (one line per example: id, prediction, references,
scores; rewritten atomically after every batch, :mod:`uws_core.weights.safe_paths`), with ``<task>.meta.json`` holding
what the results depend on (base, adapter bytes, data, decoding, precision). A rerun skips examples already scored
and refuses to mix results of different settings, naming the file and the key. :func:`evaluate_tasks` adds
``summary.csv`` (per task and overall, bootstrap CIs) and ``run.json`` (time and peak memory per task).
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from uws_core.experiments.task_data import TaskExample, load_task_split
from uws_core.experiments.task_scores import score_prediction, summarize
from uws_core.weights import safe_paths
from uws_core.weights.dense_delta import (DELTA_FILE, add_dense_delta, is_dense_delta, read_dense_delta,
                                          restore_weights)
from uws_core.weights.safetensors_header import WeightFormatError

__all__ = ["PROMPT", "Decoding", "DECODINGS", "TaskEvalError", "Evaluator", "build_prompt", "evaluate_task",
           "evaluate_tasks", "read_results", "load_summaries", "MISTRAL_7B", "generation_memory_bytes"]

#: Mistral-7B-Instruct-v0.2's sizes (its config.json): parameters, layers, KV heads, head dim
MISTRAL_7B = {"params": 7_241_732_096, "layers": 32, "kv_heads": 8, "head_dim": 128}

PROMPT = ("Below is an instruction that describes a task with clear examples. Write a response that appropriately "
          "completes the task to the best of your ability.\n### Instruction :\n{input}")


@dataclass(frozen=True)
class Decoding:
    name: str
    num_beams: int
    max_new_tokens: int
    split_on_output: bool  # keep the text after the last "Output:" of prompt + continuation (the authors)


DECODINGS = {"greedy": Decoding("greedy", 1, 32, False), "authors": Decoding("authors", 4, 32, True)}


class TaskEvalError(ValueError):
    """An evaluation that cannot run or resume as asked (the message names the file, model or key)."""


def build_prompt(input_text: str) -> str:
    return PROMPT.format(input=input_text)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def generation_memory_bytes(batch: int, prompt_tokens: int, beams: int = 1, new_tokens: int = 32,
                            weight_bytes: float = 2.0, model: dict = MISTRAL_7B) -> dict[str, float]:
    """GPU memory of generation from the model's size: ``weights = params x weight_bytes``; the key/value cache
    ``2 x layers x kv_heads x head_dim x 2 B`` (bfloat16) per token and sequence, for ``batch x beams`` sequences
    of ``prompt_tokens + new_tokens``. Activations and the allocator's slack are not included."""
    per_token = 2 * model["layers"] * model["kv_heads"] * model["head_dim"] * 2
    kv = batch * beams * (prompt_tokens + new_tokens) * per_token
    return {"weights": model["params"] * weight_bytes, "kv_cache": float(kv), "kv_per_token": float(per_token)}


class Evaluator:
    """A base model and its tokenizer (a local directory, or a hub id at a pinned ``revision``), loaded once;
    adapters are swapped in and out (``peft``; a dense delta is added to the weights and taken out exactly).

    ``quantize``: ``"none"`` (bfloat16 on a GPU, float32 on a CPU), ``"4bit"`` (NF4 via bitsandbytes; refused
    without bitsandbytes and a GPU) or ``"auto"`` (4-bit when both exist, else ``"none"``)."""

    def __init__(self, base: str | Path, quantize: str = "none", device: str | None = None,
                 revision: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if quantize not in ("none", "4bit", "auto"):
            raise TaskEvalError(f"quantize must be none, 4bit or auto, got {quantize!r}")
        self.base = str(base)
        if Path(self.base).exists() and not (Path(self.base) / "config.json").is_file():
            raise TaskEvalError(f"base model {self.base}: no config.json (not a transformers checkpoint directory)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        has_bnb = _has_bitsandbytes()
        if quantize == "4bit" and not (has_bnb and self.device == "cuda"):
            raise TaskEvalError(f"base model {self.base}: 4-bit needs bitsandbytes and a GPU (bitsandbytes "
                                f"{'present' if has_bnb else 'missing'}, device {self.device})")
        kw: dict = {}
        if quantize == "4bit" or (quantize == "auto" and has_bnb and self.device == "cuda"):
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
            kw["device_map"] = {"": 0}
            self.precision = "4-bit nf4 (bitsandbytes), bfloat16 compute"
        else:
            kw["dtype"] = torch.bfloat16 if self.device == "cuda" else torch.float32
            self.precision = "bfloat16" if self.device == "cuda" else "float32"
        kw["use_safetensors"] = True  # never a pickle
        self.revision = revision  # a hub id's pinned commit (ignored for a local directory)
        if revision and not Path(self.base).exists():
            kw["revision"] = revision
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.base, **({"revision": revision} if "revision" in kw
                                                                         else {}))
            self.model = AutoModelForCausalLM.from_pretrained(self.base, **kw)
        except (OSError, ValueError) as exc:
            raise TaskEvalError(f"base model {self.base}: cannot load ({str(exc).splitlines()[0][:300]})") from None
        if "device_map" not in kw:
            self.model.to(self.device)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:  # the authors: pad id 0 (Mistral's <unk>)
            self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(0)
        self.adapter: str | None = None
        self.adapter_sha256: str | None = None
        self._peft = None
        self._originals: dict[str, torch.Tensor] = {}  # exact base weights under a dense delta

    # ------------------------------------------------------------------ adapters
    def check_adapter(self, adapter_dir: Path) -> None:
        """Refuse an adapter whose keys name no module of the base, or whose factor shapes do not fit it."""
        from uws_core.weights.adapters import CONFIG_FILE, WEIGHTS_FILE
        from uws_core.weights.checkpoints import WeightFormatError, read_safetensors_header

        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (adapter_dir / name).is_file():
                raise TaskEvalError(f"adapter {adapter_dir}: {name} is missing")
        try:
            header = read_safetensors_header(adapter_dir / WEIGHTS_FILE)
        except WeightFormatError as exc:
            raise TaskEvalError(f"adapter {adapter_dir / WEIGHTS_FILE}: {exc}") from None
        modules = dict(self.model.named_modules())
        for key, (shape, _) in header.items():
            stem = key.removeprefix("base_model.model.")
            module, _, which = stem.rpartition(".lora_")
            mod = modules.get(module)
            if mod is None or which not in ("A.weight", "B.weight"):
                raise TaskEvalError(f"adapter {adapter_dir / WEIGHTS_FILE}: key {key!r} names no module of base model "
                                    f"{self.base}")
            want = (None, mod.in_features) if which == "A.weight" else (mod.out_features, None)
            if len(shape) != 2 or any(w is not None and w != s for w, s in zip(want, shape)):
                raise TaskEvalError(f"adapter {adapter_dir / WEIGHTS_FILE}: key {key!r} has shape {tuple(shape)}, "
                                    f"but {module} of base model {self.base} is {mod.out_features}x{mod.in_features}")

    def use_adapter(self, adapter_dir: str | Path | None) -> None:
        """Make ``adapter_dir`` the active adapter (None: the base alone): a PEFT adapter, or a dense delta
        (:mod:`uws_core.weights.dense_delta`) added to the base's weights, which are restored exactly (bitwise)
        before any other variant is used."""
        from peft import PeftModel

        if adapter_dir is not None and is_dense_delta(adapter_dir):
            return self._use_dense_delta(Path(adapter_dir))
        self._restore_base()
        if adapter_dir is None:
            self.adapter = self.adapter_sha256 = None
            return
        d = Path(adapter_dir)
        self.check_adapter(d)
        self.adapter_sha256 = _sha256(d / "adapter_model.safetensors")
        name = "a" + hashlib.sha256((self.adapter_sha256 + (d / "adapter_config.json").read_text()).encode()
                                    ).hexdigest()[:16]  # by content: a file changed on disk is loaded anew
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.model, str(d), adapter_name=name)
        elif name not in self._peft.peft_config:
            self._peft.load_adapter(str(d), adapter_name=name)
        self._peft.set_adapter(name)
        for old in [n for n in self._peft.peft_config if n != name]:
            self._peft.delete_adapter(old)
        self._peft.eval()
        self.adapter = str(d)

    def _restore_base(self) -> None:
        restore_weights(self.model, self._originals)
        self._originals = {}

    def _use_dense_delta(self, d: Path) -> None:
        """Add the deltas of ``d`` to the base weights in place (peft's layers removed first, none merged)."""
        sha = _sha256(d / DELTA_FILE) if (d / DELTA_FILE).is_file() else None
        if self._originals and self.adapter == str(d) and self.adapter_sha256 == sha:
            return  # already applied: the same file
        if self.precision.startswith("4-bit"):
            raise TaskEvalError(f"dense delta {d}: cannot be added to the 4-bit weights of base model {self.base}; "
                                "evaluate it with quantize='none'")
        self._restore_base()
        self.adapter = self.adapter_sha256 = None
        if self._peft is not None:  # back to the plain base model (unload removes the LoRA layers, merges nothing)
            self.model, self._peft = self._peft.unload(), None
        try:
            _, deltas = read_dense_delta(d, self.model, self.base)
        except WeightFormatError as exc:
            raise TaskEvalError(str(exc)) from None
        self._originals = add_dense_delta(self.model, deltas)
        self.adapter, self.adapter_sha256 = str(d), sha

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, inputs: list[str], decoding: Decoding) -> tuple[list[str], int]:
        """Predictions for a batch of task inputs, and the number of new tokens generated."""
        from transformers import GenerationConfig

        tok = self.tokenizer
        enc = tok([build_prompt(x) for x in inputs], return_tensors="pt", padding=True).to(self.device)
        cfg = GenerationConfig(do_sample=False, num_beams=decoding.num_beams, max_new_tokens=decoding.max_new_tokens,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        model = self._peft if self.adapter is not None and self._peft is not None else self.model
        ctx = self._peft.disable_adapter() if (self.adapter is None and self._peft is not None) else _null()
        with ctx:
            out = model.generate(**enc, generation_config=cfg)
        new = out[:, enc["input_ids"].shape[1]:]
        n_new = int((new != tok.pad_token_id).sum())
        if decoding.split_on_output:
            texts = [t.split("Output:")[-1] for t in tok.batch_decode(out, skip_special_tokens=True)]
        else:
            texts = tok.batch_decode(new, skip_special_tokens=True)
        return [t.strip() for t in texts], n_new


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


# ---------------------------------------------------------------------------------------------- results on disk
def read_results(path: Path) -> list[dict]:
    """The per-example records of a results file (refused, naming file and line, if a line is not a record)."""
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise ValueError("not a record with an 'id'")
        except ValueError as exc:
            raise TaskEvalError(f"results file {path}, line {i}: {exc}; delete the file to start over") from None
        out.append(rec)
    return out


def _check_meta(meta_path: Path, meta: dict) -> None:
    if not meta_path.is_file():
        safe_paths.write_text_atomic(meta_path, json.dumps(meta, indent=1))
        return
    try:
        old = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise TaskEvalError(f"{meta_path}: not JSON ({exc}); delete it and the results beside it") from None
    for k in sorted(set(meta) | set(old)):
        if old.get(k) != meta.get(k):
            raise TaskEvalError(f"{meta_path}: key {k!r} was {old.get(k)!r}, now {meta.get(k)!r}: the results beside "
                                "it belong to other settings; use another --run name or delete them")


def evaluate_task(ev: Evaluator, examples: list[TaskExample], out_dir: Path | str, run: str, task: str,
                  decoding: Decoding, batch_size: int = 8, meta: dict | None = None,
                  progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Generate and score every example of one task not scored yet; returns (records, timing).

    ``timing``: examples generated now, seconds, examples and new tokens per second, peak memory (``cuda`` bytes
    allocated on a GPU; the process's peak resident set on a CPU, which never decreases)."""
    from tqdm.auto import tqdm

    path = safe_paths.contained(out_dir, f"{run}/{task}.jsonl", f"results of {task}")
    meta_path = safe_paths.contained(out_dir, f"{run}/{task}.meta.json", f"results of {task}")
    _check_meta(meta_path, {**(meta or {}), "task": task, "decoding": asdict(decoding), "prompt": PROMPT,
                            "precision": ev.precision})
    done = read_results(path)
    by_id = {e.id: e for e in examples}
    for r in done:  # a larger --limit extends a run; changed data does not
        if r["id"] not in by_id or tuple(r.get("references", ())) != by_id[r["id"]].references:
            raise TaskEvalError(f"results file {path}: example id {r['id']!r} is "
                                + ("not in the task's data" if r["id"] not in by_id else "scored against other "
                                   "references than the task's data now holds") + "; use another run name")
    seen = {r["id"] for r in done}
    todo = sorted((e for e in examples if e.id not in seen), key=lambda e: -len(e.input))  # similar lengths batched
    if ev.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, n_tokens = time.perf_counter(), 0
    bar = tqdm(total=len(examples), initial=len(seen), desc=f"{run}/{task}", disable=not progress or None)
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        preds, n_new = ev.generate([e.input for e in batch], decoding)
        n_tokens += n_new
        for e, p in zip(batch, preds):
            done.append({"id": e.id, "task": task, "prediction": p, "references": list(e.references),
                         **score_prediction(p, e.references), "precision": ev.precision})
        safe_paths.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in done))
        bar.update(len(batch))
    bar.close()
    secs = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if ev.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    timing = {"task": task, "generated_now": len(todo), "seconds": round(secs, 3),
              "examples_per_s": round(len(todo) / secs, 3) if todo and secs > 0 else None,
              "new_tokens_per_s": round(n_tokens / secs, 1) if todo and secs > 0 else None,
              "peak_memory_bytes": int(peak), "memory_kind": "cuda_max_allocated" if ev.device == "cuda"
              else "process_peak_rss"}
    order = {e.id: i for i, e in enumerate(examples)}
    return pd.DataFrame(sorted(done, key=lambda r: order[r["id"]])), timing


def evaluate_tasks(ev: Evaluator, task_dirs: dict[str, Path], out_dir: Path | str, run: str,
                   adapter: str | Path | dict | None = None, decoding: str = "greedy", batch_size: int = 8,
                   limit: int | None = None, split: str = "test", n_boot: int = 2000, progress: bool = True) -> dict:
    """Evaluate an adapter (or the base, ``adapter=None``) on several tasks; writes ``summary.csv``, ``run.json``.

    ``task_dirs``: task name -> local dataset directory; ``adapter``: one directory for every task, or task name ->
    directory (e.g. each held-out task's own reconstruction). Returns ``{"summary", "records", "timing",
    "run_dir"}``."""
    if decoding not in DECODINGS:
        raise TaskEvalError(f"decoding must be one of {sorted(DECODINGS)}, got {decoding!r}")
    safe_paths.check_relative_name(run, "run name")
    adapters = adapter if isinstance(adapter, dict) else dict.fromkeys(task_dirs, adapter)
    missing = [t for t in task_dirs if t not in adapters]
    if missing:
        raise TaskEvalError(f"run {run!r}: no adapter for task(s) {missing}")
    out_dir = Path(out_dir)
    cache = safe_paths.contained(out_dir, ".datasets_cache")
    records, timing, meta = [], [], {}
    for task, d in task_dirs.items():
        a = adapters[task]
        ev.use_adapter(a)
        meta = {"base": ev.base, "base_revision": ev.revision, "adapter": str(a) if a else None, "split": split,
                "adapter_sha256": ev.adapter_sha256}
        examples = load_task_split(d, split, cache_dir=cache, limit=limit)
        rec, t = evaluate_task(ev, examples, out_dir, run, task, DECODINGS[decoding], batch_size,
                               {**meta, "data": str(d)}, progress)
        records.append(rec)
        timing.append(t)
    records = pd.concat(records, ignore_index=True)
    summary = summarize(records, n_boot=n_boot)
    summary.insert(1, "run", run)
    summary["precision"], summary["device"], summary["decoding"] = ev.precision, ev.device, decoding
    run_dir = safe_paths.contained(out_dir, run)
    safe_paths.write_text_atomic(run_dir / "summary.csv", summary.to_csv(index=False))
    safe_paths.write_text_atomic(run_dir / "run.json", json.dumps(
        {"base": ev.base, "split": split, "limit": limit, "adapters": {t: str(a) if a else None for t, a in
                                                                       adapters.items()}, "precision": ev.precision, "device": ev.device, "decoding": asdict(DECODINGS[decoding]),
         "timing": timing}, indent=1))
    return {"summary": summary, "records": records, "timing": timing, "run_dir": run_dir}


def load_summaries(out_dir: Path | str) -> pd.DataFrame:
    """Every run's ``summary.csv`` under ``out_dir`` in one table (a run per ``<out_dir>/<run>/``), runs sorted."""
    files = sorted(Path(out_dir).glob("*/summary.csv"))
    if not files:
        raise TaskEvalError(f"no <run>/summary.csv under {out_dir} (run `uws evaluate --out {out_dir}` first)")
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
