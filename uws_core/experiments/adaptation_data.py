"""The data of notebook 05: the ViT case, one loader per scale (both return :class:`VitAdaptationData`), and
the LoRA case on the laptop LoRA population (:func:`lora_adaptation_laptop`).

* :func:`vit_adaptation_laptop`: the laptop ViT population of :mod:`uws_core.zoo.vit_zoo` (one population seed).
  The fit fine-tunes give the frozen bases; the held-out tasks are the ``unseen`` fine-tunes of the ``domain``
  and ``mixed`` families (never used to fit a basis), whose data the zoo generates.
* :func:`vit_adaptation_paper`: the real ViT fine-tunes of ``data_manifests/vit.csv`` under a local folder,
  streamed one model at a time (:class:`uws_core.linalg.spectral.StreamingSpectrum`, rows unfolding, centred
  by the cross-model mean). No held-out task: the manifest names no data set, so nothing can be trained and
  ``tasks`` is empty.

Both give, per adapted encoder matrix ``key`` (shape ``(d_out, d_in)``): ``basis[key]`` the top-k rows basis
``(d_in, k)`` of the centred task vectors and ``mean[key]`` their mean ``(d_out, d_in)`` (float32). Centring
makes ``W_i - W_base`` and ``W_i`` give the same basis; the mean task vector needs the base (None at paper
scale when the base is not found). The laptop loader also gives ``basis["model", key]``, the top-``k_model``
model-axis basis ``(d_out*d_in, k_model)`` (:func:`uws_core.experiments.adaptation.task_vector_basis`).

The LoRA case follows the replication (cahlen/universal-subspace-stress-test, phase 4): per held-out task, the
model-axis basis and mean of the *other* adapters' q_proj products ``s B_i A_i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from uws_core.experiments.adaptation import task_vector_basis
from uws_core.linalg.numerics import transformers_quiet
from uws_core.linalg.spectral import StreamingSpectrum
from uws_core.weights.checkpoints import CheckpointSet
from uws_core.weights.manifests import load_manifest, local_dir, local_dirs
from uws_core.weights.peft_state import lora_delta, peft_weight_key
from uws_core.zoo import populations
from uws_core.zoo.vit_model import load_state

__all__ = ["VIT_BASE_ID", "HELD_OUT_FAMILIES", "VitAdaptationData", "vit_task_vector_bases",
           "vit_adaptation_laptop", "vit_adaptation_paper", "LoraAdaptationData", "held_out_lora_tasks",
           "lora_adaptation_laptop"]

VIT_BASE_ID = "google/vit-base-patch16-224"  # the base of the manifest's fine-tunes
HELD_OUT_FAMILIES = ("domain", "mixed")      # laptop: unseen fine-tunes of these families are the held-out tasks


@dataclass
class VitAdaptationData:
    """What the method and results cells of notebook 05 read, at either scale."""

    keys: list[str]                          # the adapted encoder matrices
    shapes: dict[str, tuple[int, int]]       # key -> (d_out, d_in)
    basis: dict                              # key -> (d_in, k_max); ("model", key) -> (d_out*d_in, k_model) (laptop)
    mean: dict                               # key -> (d_out, d_in) mean task vector, or None (no base found)
    n_models: int                            # fine-tunes the bases were fitted on
    summary: str                             # one line: what was read, from where
    tasks: list[str] = field(default_factory=list)  # held-out tasks with data to train on (none at paper scale)
    config: object = None                    # laptop: the population's config (model and task settings)
    base: dict | None = None                 # laptop: the base's state dict
    fit: pd.DataFrame | None = None          # laptop: records of the fit fine-tunes
    held: pd.DataFrame | None = None         # laptop: records of the held-out fine-tunes (their tasks: ``tasks``)
    population: object = None                # laptop: the loaded population

    @property
    def has_mean(self) -> bool:
        return all(self.mean.get(key) is not None for key in self.keys)


def vit_task_vector_bases(base: dict, fit_states: list[dict], keys: list[str], k_max: int,
                          k_model: int) -> tuple[dict, dict]:
    """Per key: the top-``k_max`` rows basis and the mean of the fit fine-tunes' task vectors ``W_i - W_base``,
    and the top-``k_model`` model-axis basis under ``("model", key)``."""
    basis, mean = {}, {}
    for key in keys:
        updates = torch.stack([s[key] - base[key] for s in fit_states])            # (N_fit, d_out, d_in)
        basis[key], mean[key] = task_vector_basis(updates, k_max, "rows")           # (d_in, k_max), (d_out, d_in)
        basis["model", key] = task_vector_basis(updates, k_model, "model")[0]       # (d_out*d_in, k_model)
    return basis, mean


def vit_adaptation_laptop(seed: int = 0, k_max: int = 64, k_model: int = 16,
                          families=HELD_OUT_FAMILIES) -> VitAdaptationData:
    """The laptop ViT population of one population seed (cached; notebook 02 builds it): the 24 encoder
    matrices of the base, bases fitted on the ``fit`` fine-tunes, held-out tasks the ``unseen`` fine-tunes
    of ``families``."""
    pop = populations.load("vit", seed)
    ft = pop.records[pop.records["kind"] == "finetune"].reset_index(drop=True)
    fit = ft[ft["group"] == "fit"]
    held = ft[(ft["group"] == "unseen") & ft["family"].isin(list(families))]
    base = load_state(pop.base_dir)
    keys = [k for k in base if ".encoder.layer." in k and base[k].ndim == 2]
    fit_states = [load_state(pop.root / d) for d in fit["dir"]]
    basis, mean = vit_task_vector_bases(base, fit_states, keys, k_max, k_model)
    tasks = list(held["task"])
    return VitAdaptationData(keys=keys, shapes={key: tuple(base[key].shape) for key in keys}, basis=basis,
                             mean=mean, n_models=len(fit_states), tasks=tasks, config=pop.config, base=base,
                             fit=fit, held=held, population=pop,
                             summary=f"{len(fit_states)} fit fine-tunes from .../vit/{pop.root.name}; held out: {tasks}")


def vit_adaptation_paper(vit_dir: Path | str, k_max: int = 64, max_models: int | None = 500,
                         base_id: str = VIT_BASE_ID) -> VitAdaptationData:
    """The manifest's ViT fine-tunes found under ``vit_dir`` (the first ``max_models``), streamed key by key:
    rows bases of at most ``k_max`` columns (``d_in`` if smaller) and, if ``base_id`` lies under ``vit_dir``
    too, the mean task vector (mean weight minus the base's). No held-out tasks (no data sets)."""
    if not vit_dir:
        raise ValueError("notebook 05 at paper scale needs UWS_VIT_DIR: the folder holding the ViT fine-tunes of "
                         "data_manifests/vit.csv (uws download vit --dest DIR)")
    manifest = load_manifest("vit")
    dirs = local_dirs(manifest, vit_dir, allow_missing=True)[:max_models]
    cset = CheckpointSet.from_dirs(dirs, strict=False)
    keys = [k for k in cset.weight_keys if ".encoder.layer." in k]
    shapes = {key: cset.shape(key) for key in keys}
    base_dir = local_dir(vit_dir, base_id)
    base_cset = CheckpointSet.from_dirs([base_dir], strict=False) if base_dir else None
    basis, mean = {}, {}
    for key in keys:
        spec = StreamingSpectrum("rows", "models", shape=shapes[key], key=key)
        for name, W in cset.iter_key(key):
            spec.add(W.float(), name)
        s = spec.finalize(k=min(k_max, shapes[key][1]))
        basis[key] = s.basis.float()
        mean[key] = (s.mean - next(base_cset.iter_key(key))[1]).float() if base_cset else None
    return VitAdaptationData(keys=keys, shapes=shapes, basis=basis, mean=mean, n_models=len(dirs),
                             summary=f"{len(dirs)} of {len(manifest)} manifest ViTs found under {vit_dir}")


@dataclass
class LoraAdaptationData:
    """The LoRA case on one laptop LoRA population: held-out tasks, the frozen base and the per-task bases."""

    population: object                       # the LoRA population (uws_core.zoo.lora_zoo.LoraPopulation)
    tasks: list[str]                         # the held-out tasks (:func:`held_out_lora_tasks`)
    model: torch.nn.Module                   # the base, eager attention (vmap batches it), frozen
    weight_keys: list[str]                   # the base's weight keys of the adapted q_proj matrices
    base_weights: dict                       # key -> (d_out, d_in) base weight (a copy)
    states: list[dict]                       # every adapter's PEFT state, in record order
    basis: dict                              # (task, key) -> (d_out*d_in, k_max) model-axis basis of the others
    mean: dict                               # (task, key) -> (d_out, d_in) the others' mean product


def held_out_lora_tasks(records: pd.DataFrame, n_tasks: int) -> list[str]:
    """The ``n_tasks`` tasks with the lowest base accuracy among those whose base accuracy is between 10% and
    60% and whose own adapter reaches 90% (ties by name)."""
    cand = records[(records.base_acc > 0.1) & (records.base_acc < 0.6) & (records.adapter_acc >= 0.9)]
    return list(cand.sort_values(["base_acc", "task"])["task"][:n_tasks])


def lora_adaptation_laptop(seed: int = 0, n_tasks: int = 3, k_max: int = 16) -> LoraAdaptationData:
    """The laptop LoRA population of one population seed (cached; notebook 01 builds it): for each held-out
    task and q_proj matrix of every layer, the top-``k_max`` model-axis basis and the mean of the other
    adapters' products ``s B_i A_i`` (float32)."""
    pop = populations.load("lora", seed)
    rec = pop.records
    tasks = held_out_lora_tasks(rec, n_tasks)
    with transformers_quiet():              # no "Loading weights" bar, nothing else changed
        model = pop.load_base()
    model.set_attn_implementation("eager")   # vmap batches eager attention; sdpa would fall back to a loop
    model.requires_grad_(False)
    modules = [f"base_model.model.model.layers.{layer}.self_attn.q_proj" for layer in range(pop.config.num_layers)]
    keys = [peft_weight_key(m) for m in modules]
    base_weights = {k: p.detach().clone() for k, p in model.named_parameters() if k in keys}
    states = [pop.adapter_state(i) for i in range(len(rec))]
    products = {key: torch.stack([lora_delta(s, m, pop.scaling) for s in states]) for m, key in zip(modules, keys)}
    basis, mean = {}, {}
    for t in tasks:
        others = torch.tensor((rec["task"] != t).to_numpy())   # every adapter but the task's own
        for key in keys:
            basis[t, key], mean[t, key] = task_vector_basis(products[key][others], k_max, "model")
    return LoraAdaptationData(population=pop, tasks=tasks, model=model, weight_keys=keys, base_weights=base_weights,
                              states=states, basis=basis, mean=mean)
