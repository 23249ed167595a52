"""Fixtures that write tiny PEFT adapters and transformers checkpoints with the real libraries."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # GQA: k/v are (16, 32)


def tiny_causal_lm(seed: int = 0, arch: str = "mistral", **overrides):
    """A seeded tiny MistralForCausalLM / LlamaForCausalLM (hidden 32, 2 layers, 4 heads, 2 kv heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    cfg_cls, model_cls = {"mistral": (MistralConfig, MistralForCausalLM),
                          "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    torch.manual_seed(seed)
    return model_cls(cfg_cls(**{**TINY, **overrides})).eval()


@dataclass
class WrittenAdapters:
    dirs: list[Path]
    # per adapter: module key -> (B (d_out, r), A (r, d_in), delta = PEFT's get_delta_weight) float64
    factors: list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = field(default_factory=list)


@dataclass
class WrittenCheckpoints:
    dirs: list[Path]
    # per model: key -> float64 tensor of every 2-D floating weight
    weights: list[dict[str, torch.Tensor]] = field(default_factory=list)


def write_adapters(root: Path, n: int = 3, r: int = 4, alpha: float = 8, seed: int = 0,
                   target_modules=("q_proj", "k_proj", "v_proj"), use_rslora: bool = False,
                   dtype: torch.dtype | None = None, prefix: str = "adapter", **model_overrides) -> WrittenAdapters:
    """Write n LoRA adapters of one tiny Mistral base with random, nonzero A and B."""
    out = WrittenAdapters(dirs=[])
    with warnings.catch_warnings():  # transformers' deprecation chatter inside peft and save_pretrained
        warnings.simplefilter("ignore", FutureWarning)
        for i in range(n):
            out.dirs.append(root / f"{prefix}_{i}")
            out.factors.append(_write_adapter(out.dirs[-1], r, alpha, 1000 * seed + i, target_modules,
                                              use_rslora, dtype, model_overrides))
    return out


def _write_adapter(d: Path, r, alpha, seed, target_modules, use_rslora, dtype, model_overrides) -> dict:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_causal_lm(seed=1234, **model_overrides),
                           LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                                      use_rslora=use_rslora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # lora_B is zero at init: randomise both factors
                p.copy_(torch.randn(p.shape, generator=gen))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(d)
    found = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            # name is e.g. base_model.model.model.layers.0.self_attn.q_proj, as saved
            b = mod.lora_B["default"].weight.detach().to(torch.float64)
            a = mod.lora_A["default"].weight.detach().to(torch.float64)
            found[name] = (b, a, mod.get_delta_weight("default").detach().to(torch.float64))
    return found


def adapters_under_manifest_ids(root: Path, n: int, split: str = "train", family: str = "mistral7b_loras",
                                **write_kw) -> WrittenAdapters:
    """Write n PEFT adapters (:func:`write_adapters`) under ``root/<hub id>`` of the first n entries of ``split``
    of the manifest ``family``: the layout the paper-scale branches read. ``dirs`` are the moved directories."""
    from uws_core.weights.manifests import load_manifest, lora_split

    ids = list(lora_split(load_manifest(family), split)["repo_id"][:n])
    written = write_adapters(root.with_name(root.name + "_written"), n=n, **write_kw)
    dirs = []
    for repo_id, d in zip(ids, written.dirs):
        (root / repo_id).parent.mkdir(parents=True, exist_ok=True)
        dirs.append(Path(shutil.move(str(d), root / repo_id)))
    return WrittenAdapters(dirs=dirs, factors=written.factors)


def run_notebook(name: str, tmp_path: Path, env: dict, parameters: dict | None = None) -> dict:
    """Execute ``notebooks/<name>.ipynb`` with papermill at UWS_SCALE=paper and return its saved ``results``.

    ``env``: variables set for the run (None: unset); UWS_RESULTS is ``tmp_path/results``. The executed
    notebook is written to ``tmp_path/out.ipynb``. Skips when papermill is not installed."""
    pm = pytest.importorskip("papermill")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"UWS_SCALE": "paper", "UWS_RESULTS": str(tmp_path / "results"), **env}.items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, str(value))
        pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(tmp_path / "out.ipynb"),
                            cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
                            parameters=parameters or {})
    payload = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert payload["scale"] == env.get("UWS_SCALE", "paper")
    return payload["results"]


def write_checkpoints(root: Path, n: int = 3, arch: str = "mistral", seed: int = 0,
                      max_shard_size: str | None = None, dtype: torch.dtype | None = None,
                      prefix: str = "model", **overrides) -> WrittenCheckpoints:
    """Write n tiny seeded causal LMs with save_pretrained (sharded when max_shard_size is given)."""
    out = WrittenCheckpoints(dirs=[])
    for i in range(n):
        model = tiny_causal_lm(seed=100 * seed + i, arch=arch, **overrides)
        if dtype is not None:
            model = model.to(dtype)
        d = root / f"{prefix}_{i}"
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.save_pretrained(d, **kwargs)
        out.dirs.append(d)
        out.weights.append({k: v.detach().to(torch.float64) for k, v in model.state_dict().items()
                            if v.ndim == 2 and v.is_floating_point()})
    return out


@pytest.fixture
def make_adapters(tmp_path):
    """Factory fixture: ``make_adapters(n=3, r=4, ...)`` -> WrittenAdapters under tmp_path/adapters."""
    return lambda **kw: write_adapters(kw.pop("root", tmp_path / "adapters"), **kw)


@pytest.fixture
def make_checkpoints(tmp_path):
    """Factory fixture: ``make_checkpoints(n=3, ...)`` -> WrittenCheckpoints under tmp_path/checkpoints."""
    return lambda **kw: write_checkpoints(kw.pop("root", tmp_path / "checkpoints"), **kw)


@pytest.fixture(scope="session")
def adapter_population(tmp_path_factory):
    """4 LoRA adapters (r=4, alpha=8; one with alpha=16 so scalings differ); treat as read-only."""
    root = tmp_path_factory.mktemp("adapter_population")
    w = write_adapters(root, n=3, r=4, alpha=8, seed=7)
    extra = write_adapters(root, n=1, r=4, alpha=16, seed=8, prefix="alpha16")
    return WrittenAdapters(dirs=w.dirs + extra.dirs, factors=w.factors + extra.factors)


@pytest.fixture(scope="session")
def checkpoint_population(tmp_path_factory):
    """4 tiny Mistral checkpoints, two single-file and two sharded; treat as read-only."""
    root = tmp_path_factory.mktemp("checkpoint_population")
    single = write_checkpoints(root, n=2, seed=3, prefix="single")
    sharded = write_checkpoints(root, n=2, seed=4, prefix="sharded", max_shard_size="20KB")
    return WrittenCheckpoints(dirs=single.dirs + sharded.dirs, weights=single.weights + sharded.weights)


def numpy_spectrum_reference(stack, unfolding, center):
    """Independent float64 numpy reference for a spectrum: centre, unfold, SVD.

    Returns (squared singular values, squared Frobenius norm of the centred unfolding, right singular vectors).
    """
    x = np.asarray(stack, dtype=np.float64)
    if center == "models" or (center == "samples" and unfolding == "model"):
        x = x - x.mean(axis=0)
    n, d_out, d_in = x.shape
    mat = {"rows": x.reshape(n * d_out, d_in), "cols": x.transpose(0, 2, 1).reshape(n * d_in, d_out),
           "model": x.reshape(n, -1)}[unfolding]
    if center == "samples" and unfolding != "model":
        mat = mat - mat.mean(axis=0)
    _, s, vt = np.linalg.svd(mat, full_matrices=False)
    return s ** 2, float((mat ** 2).sum()), vt.T
