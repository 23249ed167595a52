"""Lazy loader of a population of PEFT LoRA adapters (safetensors only).

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` as written by
``PeftModel.save_pretrained``. For every adapted linear layer ("module key", e.g.
``base_model.model.model.layers.0.self_attn.q_proj``) the file stores
``<module key>.lora_A.weight`` of shape (r, d_in) and ``<module key>.lora_B.weight`` of shape
(d_out, r); the weight update is ``scaling * B @ A`` with ``scaling = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with rsLoRA).

``AdapterSet`` reads the configs and the safetensors headers when it is built and refuses, with an
``AdapterFormatError`` naming the adapter directory and the key: missing or pickle-only files, a
truncated or corrupt safetensors file, per-module rank patterns, an A without its B (or the
reverse), a rank that differs from the config or across adapters, differing module key sets or
shapes. Tensors are then read one at a time, upcast to float64 and checked for NaN/Inf.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from uws_core.weights import dtype_policy
from uws_core.weights.checkpoints import (WeightFormatError, load_tensor, model_dirs_under, named_paths, natural_key,
                                          read_safetensors_header)

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
# "<module>.lora_A.weight"; older or hand-made files may keep the adapter name: "<module>.lora_A.default.weight"
_FACTOR_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_LAYER_CONTAINERS = ("layers", "layer", "h", "blocks", "block")


class AdapterFormatError(WeightFormatError):
    """A LoRA adapter that is missing, corrupt or inconsistent with the others (a ValueError)."""


class MissingAdapterFileError(AdapterFormatError, FileNotFoundError):
    """An adapter directory, config or weight file that does not exist."""


@dataclass(frozen=True)
class LoraAdapterConfig:
    """The fields of ``adapter_config.json`` that the analysis uses.

    ``raw`` keeps the whole JSON object. ``scaling`` is the factor of the update ``scaling * B @ A``.
    """

    path: Path
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str | None
    use_rslora: bool = False
    base_model_name_or_path: str | None = None
    fan_in_fan_out: bool = False
    use_dora: bool = False
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def scaling(self) -> float:
        """lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (as in PEFT's LoraLayer)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def read_adapter_config(adapter_dir: Path | str) -> LoraAdapterConfig:
    """Read and validate ``adapter_config.json`` of one PEFT LoRA adapter.

    Refuses a non-LoRA ``peft_type``, a missing or non-positive ``r``, a missing ``lora_alpha`` and
    non-empty ``rank_pattern`` / ``alpha_pattern`` (per-module ranks or scalings are not supported:
    the stacks and the per-adapter scalings assume one rank and one alpha per adapter).
    """
    d = Path(adapter_dir)
    path = d / CONFIG_FILE
    if not d.is_dir():
        raise MissingAdapterFileError(f"adapter directory {d} does not exist")
    if not path.is_file():
        raise MissingAdapterFileError(f"adapter {d}: {CONFIG_FILE} is missing")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"adapter {d}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"adapter {d}: {path} is not a JSON object")
    peft_type = raw.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterFormatError(f"adapter {d}: peft_type {peft_type!r} in {path}; only LORA adapters are read")
    r, alpha = raw.get("r"), raw.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise AdapterFormatError(f"adapter {d}: key 'r' in {path} must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise AdapterFormatError(f"adapter {d}: key 'lora_alpha' in {path} must be a number, got {alpha!r}")
    dtype_policy.check_alpha(path, "lora_alpha", alpha, f"adapter {d}", AdapterFormatError)
    for key in ("rank_pattern", "alpha_pattern"):
        if raw.get(key):
            raise AdapterFormatError(f"adapter {d}: non-empty {key!r} in {path} ({raw[key]}); per-module "
                                     "ranks/alphas are not supported")
    if raw.get("use_dora"):
        log.warning("adapter %s uses DoRA: its update is not scaling * B @ A (magnitude vector ignored)", d)
    targets = raw.get("target_modules")
    return LoraAdapterConfig(
        path=d, r=r, lora_alpha=float(alpha),
        target_modules=tuple(targets) if isinstance(targets, list) else targets,
        use_rslora=bool(raw.get("use_rslora", False)),
        base_model_name_or_path=raw.get("base_model_name_or_path"),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        use_dora=bool(raw.get("use_dora", False)), raw=raw)


def parse_module_key(key: str) -> tuple[int | None, str]:
    """(layer index, module name) of a module or weight key, for grouping in plots.

    ``"base_model.model.model.layers.3.self_attn.q_proj"`` -> ``(3, "q_proj")``;
    ``"model.layers.0.mlp.down_proj.weight"`` -> ``(0, "down_proj")``;
    ``"transformer.h.7.attn.c_attn.weight"`` -> ``(7, "c_attn")``; ``"lm_head.weight"`` -> ``(None, "lm_head")``.
    """
    m = _FACTOR_RE.match(key)
    parts = (m.group("module") if m else key).split(".")
    if parts and parts[-1] in ("weight", "bias") and len(parts) > 1:
        parts = parts[:-1]
    layer = None
    for prev, part in zip(parts, parts[1:]):
        if part.isdigit() and prev in _LAYER_CONTAINERS:
            layer = int(part)
            break
    if layer is None:
        layer = next((int(p) for p in parts if p.isdigit()), None)
    module = next((p for p in reversed(parts) if not p.isdigit()), key)
    return layer, module


def is_adapter_dir(directory: Path | str) -> bool:
    """True if ``directory`` holds ``adapter_config.json``."""
    return (Path(directory) / CONFIG_FILE).is_file()


def find_adapter_dirs(root: Path | str) -> list[Path]:
    """Directories strictly under ``root`` (any depth) that hold ``adapter_config.json``, natural order."""
    root = Path(root)
    found = {p.parent for p in root.rglob(CONFIG_FILE)} - {root}
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def _adapter_factors(d: Path, config: LoraAdapterConfig) -> dict[str, dict[str, tuple]]:
    """module key -> {"A": (tensor key, shape), "B": (...)} from one adapter's safetensors header."""
    path = d / WEIGHTS_FILE
    if not path.is_file():
        if (d / PICKLE_FILE).is_file():
            raise AdapterFormatError(f"adapter {d}: only {PICKLE_FILE} found; pickles are not loaded (unpickling "
                                     f"can run arbitrary code): convert it to {WEIGHTS_FILE}")
        raise MissingAdapterFileError(f"adapter {d}: {WEIGHTS_FILE} is missing")
    header = read_safetensors_header(path, AdapterFormatError, owner=f"adapter {d}")
    modules: dict[str, dict[str, tuple]] = {}
    ignored = []
    for tkey, (shape, dt) in header.items():
        m = _FACTOR_RE.match(tkey)
        if not m:
            ignored.append(tkey)
            continue
        dtype_policy.check_weight(path, tkey, shape, dt, f"adapter {d}", AdapterFormatError)
        which = m.group("which")
        slot = modules.setdefault(m.group("module"), {})
        if which in slot:
            raise AdapterFormatError(f"adapter {d}: two lora_{which} tensors for module {m.group('module')!r} "
                                     f"in {path} ({slot[which][0]!r}, {tkey!r})")
        if len(shape) != 2:
            raise AdapterFormatError(f"adapter {d}: key {tkey!r} in {path} has shape {shape}, expected 2-D")
        slot[which] = (tkey, shape)
    if ignored:
        log.warning("adapter %s: ignoring %d non-LoRA-factor tensors (e.g. %r)", d, len(ignored), ignored[0])
    if not modules:
        raise AdapterFormatError(f"adapter {d}: no lora_A/lora_B weights in {path}")
    for mod, slot in modules.items():
        for which, other in (("A", "B"), ("B", "A")):
            if which in slot and other not in slot:
                raise AdapterFormatError(f"adapter {d}: key {slot[which][0]!r} has no matching lora_{other} "
                                         f"in {path}")
        (_, a_shape), (_, b_shape) = slot["A"], slot["B"]
        if a_shape[0] != b_shape[1]:
            raise AdapterFormatError(f"adapter {d}: module {mod!r} has lora_A {a_shape} and lora_B {b_shape}: "
                                     "inner ranks differ")
        if a_shape[0] != config.r:
            raise AdapterFormatError(f"adapter {d}: module {mod!r} has rank {a_shape[0]} in {path} but "
                                     f"r={config.r} in {CONFIG_FILE}")
    return modules


class AdapterSet:
    """N PEFT LoRA adapters of one base model, read lazily one factor at a time.

    Parameters
    ----------
    dirs : sequence of paths
        Adapter directories (``adapter_config.json`` + ``adapter_model.safetensors``).
    names : sequence of str, optional
        Labels of the adapters; default: directory basenames (made unique).

    Attributes
    ----------
    names : list of str
    dirs : list of Path
    configs : list of LoraAdapterConfig
    module_keys : list of str
        Adapted modules common to all adapters, natural order (layer 2 before layer 10).
    scalings : numpy.ndarray
        (N,) float64, per adapter ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA).
    """

    def __init__(self, dirs: Sequence[Path | str], names: Sequence[str] | None = None):
        self.dirs, self.names = named_paths(dirs, names, AdapterFormatError, "adapter directories")
        self.configs = [read_adapter_config(d) for d in self.dirs]
        self._modules = [_adapter_factors(d, c) for d, c in zip(self.dirs, self.configs)]
        self._check_consistent()
        self.module_keys = sorted(self._modules[0], key=natural_key)
        self.scalings = np.array([c.scaling for c in self.configs], dtype=np.float64)
        bases = {c.base_model_name_or_path for c in self.configs} - {None}
        if len(bases) > 1:
            log.warning("adapters name %d different base models: %s", len(bases), sorted(bases))

    @classmethod
    def from_dirs(cls, dirs: Sequence[Path | str], names: Sequence[str] | None = None) -> "AdapterSet":
        """Adapters in the given directories (order kept)."""
        return cls(dirs, names=names)

    @classmethod
    def from_root(cls, root: Path | str) -> "AdapterSet":
        """Every directory under ``root`` (any depth, e.g. ``root/owner/name``) holding ``adapter_config.json``.

        Names are the paths relative to ``root``, in natural order.
        """
        dirs, names = model_dirs_under(root, find_adapter_dirs, MissingAdapterFileError, "adapter", CONFIG_FILE)
        return cls(dirs, names=names)

    def _check_consistent(self) -> None:
        ref_dir, ref = self.dirs[0], self._modules[0]
        for d, mods in zip(self.dirs[1:], self._modules[1:]):
            missing = sorted(set(ref) - set(mods), key=natural_key)
            extra = sorted(set(mods) - set(ref), key=natural_key)
            if missing or extra:
                what = (f"lacks module {missing[0]!r} that adapter {ref_dir} holds" if missing
                        else f"holds module {extra[0]!r} that adapter {ref_dir} lacks")
                raise AdapterFormatError(f"adapter {d} {what} ({len(missing)} missing, {len(extra)} extra)")
            for mod in sorted(ref, key=natural_key):
                (_, a0), (_, b0) = ref[mod]["A"], ref[mod]["B"]
                (ka, a), (_, b) = mods[mod]["A"], mods[mod]["B"]
                if a[0] != a0[0]:
                    raise AdapterFormatError(f"adapter {d}: key {ka!r} has rank {a[0]}, but rank {a0[0]} in "
                                             f"adapter {ref_dir}; stacks need one rank per module")
                if a != a0 or b != b0:
                    raise AdapterFormatError(f"adapter {d}: module {mod!r} has lora_B {b} / lora_A {a}, but "
                                             f"{b0} / {a0} in adapter {ref_dir}")

    def __len__(self) -> int:
        return len(self.dirs)

    def _slot(self, i: int, module_key: str) -> dict[str, tuple]:
        if module_key not in self._modules[0]:
            raise KeyError(f"{module_key!r} is not a module key of this AdapterSet "
                           f"(e.g. {self.module_keys[0]!r})")
        return self._modules[i][module_key]

    def shape(self, module_key: str) -> tuple[int, int, int]:
        """(d_out, r, d_in) of one module key: B is (d_out, r), A is (r, d_in)."""
        slot = self._slot(0, module_key)
        (d_out, r), d_in = slot["B"][1], slot["A"][1][1]
        return d_out, r, d_in

    def load(self, adapter: int | str, module_key: str, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_i (d_out, r), A_i (r, d_in)) float64 of one adapter (index or name); B times scaling if ``scaled``."""
        if isinstance(adapter, str) and adapter not in self.names:
            raise KeyError(f"no adapter named {adapter!r} in this AdapterSet")
        i = self.names.index(adapter) if isinstance(adapter, str) else int(adapter)
        slot = self._slot(i, module_key)
        path, owner = self.dirs[i] / WEIGHTS_FILE, f"adapter {self.dirs[i]}"
        out = []
        for which in ("B", "A"):
            tkey, shape = slot[which]
            t = load_tensor(path, tkey, AdapterFormatError, owner=owner)
            if tuple(t.shape) != shape:  # the file changed since the header was read
                raise AdapterFormatError(f"{owner}: key {tkey!r} has shape {tuple(t.shape)}, header said {shape}")
            out.append(t)
        b, a = out
        if scaled:
            b = b * self.scalings[i]
        return b, a

    def iter_factors(self, module_key: str, scaled: bool = False) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """Yield (adapter_name, B_i (d_out, r), A_i (r, d_in)) float64, one adapter at a time."""
        self._slot(0, module_key)
        for i, name in enumerate(self.names):
            b, a = self.load(i, module_key, scaled=scaled)
            yield name, b, a

    def factors(self, module_key: str, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked factors (B (N, d_out, r), A (N, r, d_in)) float64 on CPU.

        With ``scaled=True`` each B_i is multiplied by its adapter's scaling, so that B_i @ A_i is
        the weight update itself; the default returns the stored factors (the authors' recipe).
        """
        d_out, r, d_in = self.shape(module_key)
        bs = torch.empty((len(self), d_out, r), dtype=torch.float64)  # (N, d_out, r)
        as_ = torch.empty((len(self), r, d_in), dtype=torch.float64)  # (N, r, d_in)
        for i, (_, b, a) in enumerate(self.iter_factors(module_key, scaled=scaled)):
            bs[i], as_[i] = b, a
        return bs, as_

    def __repr__(self) -> str:
        return f"AdapterSet({len(self)} adapters, {len(self.module_keys)} modules)"
