"""Subspace adaptation at paper scale: only the coefficients of a frozen model-axis basis of the Mistral-7B LoRAs are
trained on a held-out task's train split, and the result is scored by ROUGE-L on its test split (notebook 05).

**Basis** (the replication's recipe: cahlen/universal-subspace-stress-test @ a3db073,
``experiments/phase4_subspace_training/run_train.py``, ``build_subspace`` / ``SubspaceAdapter``; here through
:class:`uws_core.experiments.lora_projection.ProductLeaveOneOut`, notebook 08's ``product`` recipe): per module, the
training adapters' updates ``P_i = s_i B_i A_i`` flattened (model axis), centred by their mean ``M``, top-k principal
directions (they use ``B_i A_i`` unscaled: the same directions when every ``s_i`` is 2, coefficients in other units;
they form ``V_k`` densely, on 8 q_proj modules; we keep every module factored,
:class:`uws_core.linalg.lora_model_basis.FactoredModelBasis`): ``basis_j = sum_i C_ij P_i`` with ``C`` (N, k),
columns summing to zero, ``C^T K C = I`` (K the Gram of the P_i). So the update for coefficients ``alpha`` (k per
module) is ``sum_i w_i s_i B_i A_i`` with ``w = C alpha`` (plus ``1/N`` for the mean start): a LoRA of rank N r with
one weight per training adapter; nothing d_out x d_in is formed per adapter. The **random control**
(:func:`random_model_axis_coefficients`) is a seeded random orthonormal basis of the same size inside the same
centred span (``C^T K C = I`` too).

**Training** (the laptop LoRA case of notebook 05 where its settings carry over: warm-up + cosine schedule
(:func:`uws_core.zoo.lr_schedule.warmup_cosine_factor`), 50 steps of 8 examples, learning rate 0.1, seeded
batches; theirs: 200 steps of 4, rate 5e-2, 64 train examples, their raw input as prompt): AdamW on alpha only
(weight decay 0 by default, i.e. Adam), the base model frozen and loaded as
:class:`uws_core.experiments.task_eval.Evaluator` loads it (bfloat16 on a GPU, float32 on a CPU); the loss is the
causal-LM negative log-likelihood of the answer tokens (first reference + EOS) after the authors' prompt
(``task_eval.build_prompt``), averaged per example then over the batch; sequences longer than ``max_length`` lose
their first tokens. The update enters through forward hooks on the adapted linear layers:
``y = W x + B_cat diag(w s) A_cat x``.

**Variants** per held-out task (the task's own adapter never enters the basis): ``subspace_{mean,nomean}_k<k>``,
``random_{mean,nomean}_k<k>`` (trained), ``mean_only`` (``w = 1/N``, not trained); evaluated with the base and,
when present, the task's own adapter by :func:`uws_core.experiments.task_study.evaluate_runs`. Each trained update is
written by :func:`uws_core.experiments.task_adapters.write_adapter_state` (a PEFT pair or a dense delta, by size)
with ``coefficients.json`` beside it (settings, alpha, losses, seconds); a rerun with the same settings skips the
training (resumable, as the per-example results are). Memory at Mistral-7B's shapes: ``docs/paper_scale.md``.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["CoefficientSettings", "VARIANTS", "CoefficientBasis", "random_model_axis_coefficients",
           "combination_weights", "CoefficientLayers", "answer_token_ids", "answer_nll", "train_coefficients",
           "write_combination", "coefficient_study", "coefficient_pairs", "coefficient_pairs_to_compare",
           "paper_adapters"]

VARIANTS = ("subspace_mean", "subspace_nomean", "random_mean", "random_nomean")
META = "coefficients.json"


@dataclass(frozen=True)
class CoefficientSettings:
    k: int = 16                  # basis vectors per module
    steps: int = 50              # the laptop LoRA case: 50 steps of 8 examples
    batch_size: int = 8
    lr: float = 0.1              # the middle of the laptop's subspace grid (3e-2, 1e-1, 3e-1)
    weight_decay: float = 0.0    # AdamW; 0 = the laptop case's Adam
    warmup_frac: float = 0.1
    max_length: int = 1024       # tokens per training sequence (prompt cut from the left)
    train_limit: int | None = None   # first N train examples of the task (None: all)
    seed: int = 0
    checkpointing: bool = False  # gradient checkpointing of the decoder layers (set on a GPU, see docs)


# ------------------------------------------------------------------------------------------ the basis
def random_model_axis_coefficients(gram: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``C`` (N, k') of a uniformly random k-dim orthonormal basis of the centred span of the N updates with Gram
    ``gram`` (N, N): ``C = V_r L_r^{-1/2} Q`` (``V_r, L_r`` the nonzero eigenpairs of ``H K H``, Q a seeded random
    orthonormal r x k'); ``k' = min(k, rank)``. Columns sum to zero and ``C^T K C = I``."""
    n = gram.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kc = h @ gram.to(torch.float64).cpu() @ h
    vals, vecs = torch.linalg.eigh(0.5 * (kc + kc.T))
    keep = vals > max(float(vals.max()), 1e-300) * n * np.finfo(np.float64).eps * 10
    vals, vecs = vals[keep], vecs[:, keep]
    kk = min(int(k), vals.numel())
    g = torch.randn(vals.numel(), kk, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    return vecs / vals.sqrt() @ torch.linalg.qr(g).Q


def combination_weights(coef: torch.Tensor, alpha: torch.Tensor, add_mean: bool) -> torch.Tensor:
    """``w = C alpha (+ 1/N)`` (N,): the weight of each training adapter's update in the adapted update."""
    w = coef.to(alpha.dtype) @ alpha
    return w + 1.0 / coef.shape[0] if add_mean else w


class CoefficientBasis:
    """The training adapters' factors and model-axis bases, per module: ``factors[m] = (B_cat (d_out, N r) with
    each block ``s_i B_i``, A_cat (N r, d_in))`` float32 on the CPU, ``coef[m]`` (N, k) fitted and ``random[m]``.

    Built once from a :class:`uws_core.experiments.lora_projection.LoraStack` (module by module); the fitted
    basis is ``ProductLeaveOneOut(...).fit(all, k).coef``."""

    def __init__(self, stack, k: int, seed: int = 0, device=None, dtype: torch.dtype = torch.float32):
        from uws_core.experiments.lora_projection import ProductLeaveOneOut

        self.names, self.n, self.k = list(stack.names), len(stack), int(k)
        self.factors, self.coef, self.random, self.r = {}, {}, {}, {}
        for m in stack.module_keys:
            B, A = stack.factors(m)  # (N, d_out, r), (N, r, d_in) float64
            s = torch.tensor(np.array(stack.scalings, dtype=np.float64))  # (N,) a writable copy
            fit = ProductLeaveOneOut(B, A, stack.scalings, device)
            self.coef[m] = fit.fit(np.arange(self.n), self.k).coef.cpu()  # (N, k')
            self.random[m] = random_model_axis_coefficients(fit.gram, self.k, seed + zlib.crc32(m.encode()))
            b_cat = (B * s[:, None, None]).permute(1, 0, 2).reshape(B.shape[1], -1)  # (d_out, N r): blocks s_i B_i
            self.factors[m] = (b_cat.to(dtype), A.reshape(-1, A.shape[2]).to(dtype))  # A_cat (N r, d_in)
            self.r[m] = B.shape[2]
        self.module_keys = list(stack.module_keys)
        self._on: dict = {}

    def factors_on(self, device, dtype: torch.dtype) -> dict[str, tuple]:
        """The factors on ``device`` in ``dtype``, copied once (the last copy kept for the next variant)."""
        key = (str(device), dtype)
        if key not in self._on:
            self._on = {key: {m: (b.to(device, dtype), a.to(device, dtype)) for m, (b, a) in self.factors.items()}}
        return self._on[key]

    def coefficients(self, basis: str) -> dict[str, torch.Tensor]:
        if basis not in ("subspace", "random"):
            raise ValueError(f"basis must be 'subspace' or 'random', got {basis!r}")
        return self.coef if basis == "subspace" else self.random

    def trainable_count(self, basis: str = "subspace") -> int:
        return int(sum(c.shape[1] for c in self.coefficients(basis).values()))


def coefficient_pairs(basis: CoefficientBasis, weights: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """``{module: (B_cat diag(w_rep), A_cat)}``: the update ``sum_i w_i s_i B_i A_i`` as an exact pair of rank N r."""
    out = {}
    for m, (b, a) in basis.factors.items():
        w = weights[m].detach().to(torch.float64).cpu().repeat_interleave(basis.r[m])  # (N r,)
        out[m] = ((b.to(torch.float64) * w).to(b.dtype), a)
    return out


class CoefficientLayers:
    """Trainable ``alpha`` (k' per module, float32, zero at the start) on frozen factors, attached to a model by
    forward hooks: ``y = W x + B_cat diag(w s) A_cat x`` with ``w = combination_weights(C, alpha, add_mean)``."""

    def __init__(self, basis: CoefficientBasis, which: str, add_mean: bool, device, dtype: torch.dtype):
        self.basis, self.add_mean = basis, add_mean
        self.coef = {m: c.to(device, torch.float32) for m, c in basis.coefficients(which).items()}
        self.alpha = {m: torch.zeros(c.shape[1], device=device, dtype=torch.float32, requires_grad=True)
                      for m, c in self.coef.items()}
        self.factors = basis.factors_on(device, dtype)
        self._handles: list = []

    def weights(self) -> dict[str, torch.Tensor]:
        return {m: combination_weights(self.coef[m], self.alpha[m], self.add_mean) for m in self.coef}

    def _hook(self, m: str):
        b, a = self.factors[m]
        r = self.basis.r[m]

        def hook(module, args, out):
            v = combination_weights(self.coef[m], self.alpha[m], self.add_mean).repeat_interleave(r)  # (N r,)
            return out + ((args[0] @ a.T) * v.to(out.dtype)) @ b.T  # (..., N r) -> (..., d_out)
        return hook

    def attach(self, model: torch.nn.Module) -> "CoefficientLayers":
        from uws_core.weights.peft_state import peft_weight_key

        for m in self.factors:
            name = peft_weight_key(m)[:-len(".weight")]
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise KeyError(f"training adapters' module {m!r}: the base model has no module {name!r}") from None
            self._handles.append(module.register_forward_hook(self._hook(m)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# ------------------------------------------------------------------------------------------ training
def answer_token_ids(tokenizer, examples, max_length: int) -> list[tuple[list[int], int]]:
    """Per example ``(ids, n_prompt)``: prompt + " " + first reference + EOS tokenized as one text; the answer
    starts where the prompt's own tokenization stops agreeing; at most the last ``max_length`` tokens are kept."""
    from uws_core.experiments.task_eval import build_prompt

    out = []
    for e in examples:
        prompt = build_prompt(e.input)
        p_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + " " + e.references[0])["input_ids"] + [tokenizer.eos_token_id]
        n = 0
        while n < min(len(p_ids), len(ids) - 1) and p_ids[n] == ids[n]:
            n += 1
        cut = max(0, len(ids) - max_length)
        out.append((ids[cut:], max(n - cut, 0)))
    return out


def answer_nll(logits: torch.Tensor, ids: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the answer tokens per sequence (B,): ``logits`` (B, T, V), ``ids`` (B, T), ``answer`` (B, T) bool
    marks the tokens predicted (each from the position before it)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    tok = logp.gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
    mask = answer[:, 1:].to(tok.dtype)
    return -(tok * mask).sum(1) / mask.sum(1).clamp(min=1)


def _batch(seqs, pad_id: int, device):
    t = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    att = torch.zeros(len(seqs), t, dtype=torch.long)
    ans = torch.zeros(len(seqs), t, dtype=torch.bool)
    for i, (x, n) in enumerate(seqs):
        ids[i, :len(x)], att[i, :len(x)], ans[i, n:len(x)] = torch.tensor(x), 1, True
    return ids.to(device), att.to(device), ans.to(device)


def _checkpointing(model, on: bool) -> None:
    """Gradient checkpointing of the decoder layers on / off (transformers 5 names it activation_*, 4.x gradient_*)."""
    new = hasattr(model, "activation_checkpointing_enable")
    if on and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()


def train_coefficients(model, tokenizer, layers: CoefficientLayers, examples, settings: CoefficientSettings,
                       seed: int) -> np.ndarray:
    """AdamW on ``layers.alpha`` only (the model's weights frozen), warm-up + cosine; batches of
    ``settings.batch_size`` examples drawn without replacement by ``np.random.default_rng(seed)`` at every step.
    Returns the loss per step."""
    from uws_core.zoo.lr_schedule import warmup_cosine_factor

    seqs = answer_token_ids(tokenizer, examples, settings.max_length)
    device = next(model.parameters()).device
    model.requires_grad_(False)
    params = list(layers.alpha.values())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_factor(s, settings.steps,
                                                                                   settings.warmup_frac))
    rng, losses = np.random.default_rng(seed), []
    was_training = model.training
    if settings.checkpointing:
        _checkpointing(model, True)
        model.train()  # transformers checkpoints only in training mode (Mistral has no dropout)
    layers.attach(model)
    try:
        with torch.enable_grad():
            for _ in range(settings.steps):
                pick = rng.choice(len(seqs), min(settings.batch_size, len(seqs)), replace=False)
                ids, att, ans = _batch([seqs[i] for i in pick], tokenizer.pad_token_id, device)
                loss = answer_nll(model(input_ids=ids, attention_mask=att, use_cache=False).logits, ids, ans).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
    finally:
        layers.detach()
        if settings.checkpointing:
            _checkpointing(model, False)
        model.train(was_training)
    return np.asarray(losses)


def write_combination(basis: CoefficientBasis, weights: dict[str, torch.Tensor], directory: Path, like: dict,
                      meta: dict, dense: str = "auto") -> Path:
    """Write ``sum_i w_i s_i B_i A_i`` per module (:func:`task_adapters.write_adapter_state`, scaling 1), then
    ``coefficients.json`` (``meta``) last, so that a directory with it holds a complete adapter."""
    from uws_core.experiments.task_adapters import write_adapter_state
    from uws_core.weights import safe_paths
    from uws_core.weights.peft_state import join_lora_state

    (directory / META).unlink(missing_ok=True)
    state = join_lora_state(coefficient_pairs(basis, weights), torch.float32)
    write_adapter_state(state, directory, like, 1.0, dense=dense, source=str(directory))
    safe_paths.write_text_atomic(directory / META, json.dumps(meta, indent=1))
    return directory


def _done(directory: Path, meta: dict) -> dict | None:
    """The stored record when ``directory`` holds an adapter trained with the same settings, else None."""
    try:
        old = json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None
    return old if old.get("settings") == meta["settings"] else None


# ------------------------------------------------------------------------------------------ the study
def paper_adapters(lora_dir: Path | str, max_adapters: int = 500, which: str = "ood"):
    """``(train dirs, train task ids, {task: its adapter dir or None})``: the first ``max_adapters`` of the authors'
    train list found under ``lora_dir`` (as notebook 08 reads them) and the authors' ``which`` test tasks."""
    from uws_core.weights.manifests import load_manifest, local_dir, lora_split

    manifest = load_manifest("mistral7b_loras")
    train = lora_split(manifest, "train")
    found = [(t, d) for t, r in zip(train["task_id"], train["repo_id"]) if (d := local_dir(lora_dir, r)) is not None]
    if len(found) < 3:
        raise FileNotFoundError(f"{lora_dir}: {len(found)} of the {len(train)} train adapters of "
                                "data_manifests/mistral7b_loras.csv found; the basis needs at least 3 (uws download "
                                "mistral7b_loras)")
    found = found[:max_adapters]
    test = lora_split(manifest, f"{which}_test")
    return ([d for _, d in found], [t for t, _ in found],
            {t: local_dir(lora_dir, r) for t, r in zip(test["task_id"], test["repo_id"])})


def coefficient_study(ev, setup, train_dirs, train_ids, heldout: dict, out: Path | str,
                      settings: CoefficientSettings = CoefficientSettings(), variants=VARIANTS,
                      progress: bool = True) -> dict:
    """Notebook 05 at paper scale. ``heldout``: task id -> its own adapter directory (None: absent; never in the
    basis); tasks without test data are reported missing. Trains every variant of every task first (then the
    evaluator's model is used for generation), writes them under ``out/adapters/<task>/<run>/``, evaluates them,
    the base, ``mean_only`` and ``own`` under ``out/eval/``. Returns the ROUGE-L table, paired differences,
    per-run training records and the evaluation timing (JSON-able)."""
    from uws_core.experiments.lora_projection import LoraStack
    from uws_core.experiments.task_data import load_task_split
    from uws_core.experiments.task_study import available_tasks, evaluate_runs, paired_table, rouge_table
    from uws_core.weights.adapters import AdapterSet, read_adapter_config

    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"variants must be among {VARIANTS}, got {bad}")
    if ev.adapter is not None or getattr(ev, "_peft", None) is not None:
        raise ValueError(f"evaluator of {ev.base}: coefficients are trained on the plain base; pass a fresh Evaluator")
    if ev.precision.startswith("4-bit"):
        raise ValueError(f"evaluator of {ev.base}: {ev.precision}; the trained updates are dense deltas, which "
                         "cannot be added to 4-bit weights: use quantize='none' (UWS_EVAL_QUANTIZE unset)")
    out, k = Path(out), settings.k
    task_dirs, missing = available_tasks(setup, list(heldout))  # data needed; the own adapter is optional
    result = {"tasks": list(task_dirs), "missing": missing, "precision": ev.precision, "device": ev.device,
              "setup": setup.describe(), "settings": asdict(settings), "variants": list(variants)}
    if not task_dirs:
        return result
    like = read_adapter_config(train_dirs[0]).raw
    basis, basis_of = None, None  # one basis at a time (OOD tasks share it; an IID task's excludes its own adapter)
    runs: dict[str, dict] = {"base": dict.fromkeys(task_dirs), "mean_only": {}}
    training = []
    for t in task_dirs:
        keep = [i for i, name in enumerate(train_ids) if name != t]  # the task's own adapter never in the basis
        if basis_of != keep:
            basis = None  # the previous basis's host and device copies go first
            stack = LoraStack.from_adapter_set(AdapterSet.from_dirs([train_dirs[i] for i in keep],
                                                                    [train_ids[i] for i in keep]))
            basis, basis_of = CoefficientBasis(stack, k, settings.seed, ev.device), keep
        examples = load_task_split(task_dirs[t], "train", cache_dir=out / ".datasets_cache", limit=settings.train_limit)
        common = {"task": t, "base": ev.base, "base_revision": ev.revision, "precision": ev.precision,
                  "training_adapters": basis.names, "data": str(task_dirs[t])}
        d = out / "adapters" / t / "mean_only"
        meta = {"settings": {**common, "run": "mean_only"}}
        if _done(d, meta) is None:
            ones = {m: torch.full((basis.n,), 1.0 / basis.n, dtype=torch.float64) for m in basis.module_keys}
            write_combination(basis, ones, d, like, meta)
        runs["mean_only"][t] = d
        for v in variants:
            which, mean = v.split("_")
            run = f"{v}_k{k}"
            d = out / "adapters" / t / run
            meta = {"settings": {**common, "run": run, **asdict(settings)}}
            rec = _done(d, meta)
            if rec is None:
                layers = CoefficientLayers(basis, which, mean == "mean", ev.device, ev.model.dtype)
                t0 = time.perf_counter()
                seed = settings.seed + zlib.crc32(f"{t}|{run}".encode())
                losses = train_coefficients(ev.model, ev.tokenizer, layers, examples, settings, seed)
                rec = {**meta, "seconds": round(time.perf_counter() - t0, 3), "losses": losses.round(6).tolist(),
                       "trainable": basis.trainable_count(which), "n_train_examples": len(examples),
                       "alpha": {m: a.detach().cpu().tolist() for m, a in layers.alpha.items()}}
                write_combination(basis, layers.weights(), d, like, rec)
                del layers
            runs.setdefault(run, {})[t] = d
            training.append({"task": t, "run": run, "seconds": rec["seconds"], "trainable": rec["trainable"],
                             "loss_first": rec["losses"][0], "loss_last": rec["losses"][-1],
                             "n_train_examples": rec["n_train_examples"]})
    basis._on.clear()  # the factors' device copy: not needed to evaluate
    own = {t: heldout[t] for t in task_dirs if heldout[t] is not None}
    if own:  # the task's own adapter (trained by the authors on the full train split): the LoRA reference
        runs = {"base": runs.pop("base"), "own": own, **runs}
    records, timing = evaluate_runs(ev, runs, task_dirs, out / "eval", setup, progress)
    table = rouge_table(records, setup.n_boot)
    paired = paired_table(records, coefficient_pairs_to_compare(k), n_boot=setup.n_boot)
    return {**result, "n_training_adapters": len(basis.names),
            "table": table.to_dict("records"), "paired": paired.to_dict("records"), "training": training,
            "timing": timing}


def coefficient_pairs_to_compare(k: int) -> dict[str, tuple[str, str]]:
    """The paired comparisons of the study (run a, run b); those with a missing run are left out."""
    return {"subspace + mean - mean only": (f"subspace_mean_k{k}", "mean_only"),
            "subspace - random basis (no mean)": (f"subspace_nomean_k{k}", f"random_nomean_k{k}"),
            "subspace + mean - random basis + mean": (f"subspace_mean_k{k}", f"random_mean_k{k}"),
            "subspace (no mean) - base": (f"subspace_nomean_k{k}", "base"),
            "mean only - base": ("mean_only", "base"),
            "own - subspace + mean": ("own", f"subspace_mean_k{k}")}
