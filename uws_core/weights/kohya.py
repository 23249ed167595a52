"""Kohya / diffusers-format LoRAs (SDXL style LoRAs) read lazily, and their spectra with ranks that differ.

A kohya LoRA is one ``*.safetensors`` file whose tensors are, per adapted module ("module key", e.g.
``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q``):

* ``<module>.lora_down.weight``: A, (r, d_in), or (r, in, kh, kw) for a convolution, flattened to
  (r, in*kh*kw) as the authors flatten convolutions;
* ``<module>.lora_up.weight``: B, (d_out, r), or (out, r, 1, 1) for a convolution, taken as (out, r);
* ``<module>.alpha``: a scalar; the update is ``(alpha / r) * B @ A``. Without ``alpha`` the scale is 1
  (logged, and listed in ``KohyaLoraSet.alpha_missing``).

The diffusers / PEFT naming ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` (also ``lora.down`` /
``lora.up``) is read the same way; module keys are kept as written (not translated between namings), so a
population must use one naming. Pickles (``*.ckpt``, ``*.pt``, ``*.bin``) are refused; a truncated or
corrupt file, NaN/Inf, a factor without its partner, inner ranks that differ and LoCon's ``lora_mid``
raise :class:`KohyaFormatError` naming the file and the key.

Spectra (:func:`kohya_key_spectra`) do not need one rank across adapters:

* factors, the authors' recipe: the rows of every A_i stacked, ``(sum_i r_i, d_in)``, centred by the mean
  row, and the columns of every B_i, ``(sum_i r_i, d_out)``, centred by the mean column; a plain SVD of each
  stack, computed from its float64 feature-space Gram (d_in x d_in, d_out x d_out) and running mean,
  accumulated one adapter at a time with Chan's pairwise update (:class:`StackedRowSpectrum`);
* model axis of the scaled products ``P_i = s_i B_i A_i`` flattened, centred by the mean product: the N x N
  Gram ``<P_i, P_j> = s_i s_j trace((B_i^T B_j)(A_j A_i^T))`` (:class:`FactoredProductGram`), which never forms
  a d_out x d_in matrix.

:func:`kohya_population_spectra` writes them per key like ``uws_core.weights.population_spectra`` (``out/keys/<key>.json``,
``out/spectra.json``, resumable).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from uws_core.linalg.device import pick_device
from uws_core.linalg.spectral import Spectrum
from uws_core.linalg.varying_rank import FactoredProductGram, StackedRowSpectrum
from uws_core.weights.checkpoints import (WeightFormatError, load_tensor, named_paths, natural_key,
                                          read_safetensors_header)
from uws_core.weights.memory_bounds import kohya_memory_bound_bytes
from uws_core.weights.run_dirs import FORMAT, FORMAT_VERSION, drive_keys, prepare_out, select_keys, summarize
from uws_core.weights import dtype_policy

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# "<module>.<factor>[.<adapter name>].weight" and "<module>.alpha"
_FACTOR_RE = re.compile(r"^(?P<module>.+?)\.(?P<which>lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up)"
                        r"(?:\.[^.]+)?\.weight$")
_ALPHA_RE = re.compile(r"^(?P<module>.+)\.alpha$")
_ROLE = {"lora_down": "A", "lora_A": "A", "lora.down": "A", "lora_up": "B", "lora_B": "B", "lora.up": "B"}


class KohyaFormatError(WeightFormatError):
    """A kohya / diffusers LoRA file that is missing, corrupt or inconsistent (a ValueError naming file and key)."""


# ------------------------------------------------------------------------------------------------ files

def lora_file(directory: Path | str) -> Path:
    """The one ``*.safetensors`` of a LoRA directory (or the path itself when it is a file); pickles refused."""
    p = Path(directory)
    if p.is_file():
        if p.suffix in PICKLE_SUFFIXES:
            raise KohyaFormatError(f"{p} is a pickle; pickles are not loaded (unpickling can run arbitrary code): "
                                   "convert it to safetensors first")
        return p
    if not p.is_dir():
        raise KohyaFormatError(f"LoRA {p} does not exist")
    files = sorted(p.glob("*.safetensors"))
    if not files:
        pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
        raise KohyaFormatError(f"LoRA {p}: no *.safetensors file" + (
            f"; only pickles ({', '.join(pickles)}); pickles are not loaded (unpickling can run arbitrary code)"
            if pickles else ""))
    if len(files) > 1:
        raise KohyaFormatError(f"LoRA {p}: {len(files)} *.safetensors files ({', '.join(f.name for f in files)}); "
                               "pass the file to use")
    return files[0]


def is_kohya_lora(path: Path | str) -> bool:
    """True if ``path`` (a file, or a directory with exactly one ``*.safetensors`` and no adapter_config.json)
    holds ``lora_down`` / ``lora_up`` tensors. Only the header is read."""
    p = Path(path)
    if p.is_dir():
        files = list(p.glob("*.safetensors"))
        if (p / "adapter_config.json").is_file() or len(files) != 1:
            return False
        p = files[0]
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        with safe_open(str(p), framework="pt") as f:
            return any(".lora_down." in k or ".lora_up." in k for k in f.keys())
    except (SafetensorError, OSError, ValueError):
        return False


def find_kohya_dirs(root: Path | str) -> list[Path]:
    """Directories strictly under ``root`` (any depth) that hold one kohya LoRA file, in natural path order."""
    root = Path(root)
    found = {p.parent for p in root.rglob("*.safetensors")} - {root}
    return sorted((d for d in found if is_kohya_lora(d)), key=lambda d: natural_key(d.relative_to(root).as_posix()))


def _read_modules(path: Path, owner: str) -> tuple[dict, dict]:
    """From one file's header: module -> {"A": (key, stored shape), "B": ...}, and module -> alpha (read)."""
    header = read_safetensors_header(path, KohyaFormatError, owner)
    modules: dict[str, dict] = {}
    alpha_keys, ignored = {}, []
    for tkey, (shape, dt) in header.items():
        m, ma = _FACTOR_RE.match(tkey), _ALPHA_RE.match(tkey)
        if m:
            role = _ROLE[m.group("which")]
            if len(shape) >= 2:  # A (r, ...) / B (out, r, ...): rank 0 named before the zero-size rule
                dtype_policy.check_rank(path, tkey, shape[0] if role == "A" else shape[1], owner, KohyaFormatError)
            dtype_policy.check_weight(path, tkey, shape, dt, owner, KohyaFormatError)
            slot = modules.setdefault(m.group("module"), {})
            role = _ROLE[m.group("which")]
            if role in slot:
                raise KohyaFormatError(f"{owner}: two {role} factors for module {m.group('module')!r} in {path} "
                                       f"({slot[role][0]!r}, {tkey!r})")
            slot[role] = (tkey, shape)
        elif ma:
            alpha_keys[ma.group("module")] = tkey
        elif ".lora_mid." in tkey:
            raise KohyaFormatError(f"{owner}: key {tkey!r} in {path} is a LoCon/Tucker middle factor; only plain "
                                   "LoRA (lora_down/lora_up) is read")
        else:
            ignored.append(tkey)
    if ignored:
        log.warning("%s: ignoring %d tensors that are not LoRA factors (e.g. %r)", owner, len(ignored), ignored[0])
    if not modules:
        raise KohyaFormatError(f"{owner}: no lora_down/lora_up (or lora_A/lora_B) weights in {path}")
    for mod, slot in modules.items():
        for role, other in (("A", "B"), ("B", "A")):
            if role in slot and other not in slot:
                partner = "lora_up" if other == "B" else "lora_down"
                raise KohyaFormatError(f"{owner}: key {slot[role][0]!r} in {path} has no matching {partner} "
                                       f"(B/A) factor")
        (ka, sa), (kb, sb) = slot["A"], slot["B"]
        if len(sa) not in (2, 4) or len(sb) not in (2, 4) or (len(sb) == 4 and tuple(sb[2:]) != (1, 1)):
            raise KohyaFormatError(f"{owner}: key {kb!r} {tuple(sb)} / {ka!r} {tuple(sa)} in {path}: expected 2-D "
                                   "factors, or conv factors down (r, in, kh, kw) and up (out, r, 1, 1)")
        if sa[0] != sb[1]:
            raise KohyaFormatError(f"{owner}: key {ka!r} has rank {sa[0]} but {kb!r} has rank {sb[1]} in {path}")
    alphas = {}
    if alpha_keys:
        with safe_open(str(path), framework="pt") as f:
            for mod, tkey in alpha_keys.items():
                if mod not in modules:
                    continue
                if header[tkey][1] not in dtype_policy.FLOAT_CODES | {"I8", "I16", "I32", "I64", "U8"} \
                        or header[tkey][0] not in ((), (1,)):
                    raise KohyaFormatError(f"{owner}: key {tkey!r} in {path} has dtype {header[tkey][1]} and shape "
                                           f"{header[tkey][0]}; alpha must be one number")
                a = f.get_tensor(tkey).to(torch.float64)
                if a.numel() != 1 or not bool(torch.isfinite(a).all()):
                    raise KohyaFormatError(f"{owner}: key {tkey!r} in {path} is not one finite number ({a.tolist()})")
                alphas[mod] = float(a.reshape(()))
    return modules, alphas


class KohyaLoraSet:
    """N kohya / diffusers LoRAs of one base model, read lazily one module at a time; ranks may differ.

    Parameters
    ----------
    paths : sequence of paths
        LoRA files, or directories holding one ``*.safetensors`` each.
    names : sequence of str, optional
        Labels (default: directory / file basenames, made unique).

    Attributes
    ----------
    names, paths, files : lists (``files`` are the safetensors files read)
    module_keys : list of str
        Modules present in every LoRA with the same (d_out, d_in), natural order (others dropped, logged).
    ranks : dict
        module key -> (N,) int array of per-adapter ranks r_i.
    scales : dict
        module key -> (N,) float64 array of ``alpha_i / r_i`` (1 where alpha is missing).
    alpha_missing : dict
        adapter name -> module keys without an ``alpha`` tensor (scale 1 used).
    """

    def __init__(self, paths: Sequence[Path | str], names: Sequence[str] | None = None):
        self.paths, self.names = named_paths(paths, names, KohyaFormatError, "LoRA files or directories", one="LoRA")
        self.files = [lora_file(p) for p in self.paths]
        self._modules, self._alphas, self.alpha_missing = [], [], {}
        for name, path in zip(self.names, self.files):
            mods, alphas = _read_modules(path, f"LoRA {name!r}")
            self._modules.append(mods)
            self._alphas.append(alphas)
            missing = sorted(set(mods) - set(alphas), key=natural_key)
            if missing:
                self.alpha_missing[name] = missing
                log.warning("LoRA %r (%s): %d modules have no alpha (e.g. %r): scale 1 used", name, path,
                            len(missing), missing[0])
        self.module_keys = self._common_modules()
        self.ranks = {k: np.array([m[k]["A"][1][0] for m in self._modules], dtype=np.int64) for k in self.module_keys}
        self.scales = {k: np.array([al.get(k, r) / r for al, r in zip(self._alphas, self.ranks[k])], dtype=np.float64)
                       for k in self.module_keys}

    @classmethod
    def from_dirs(cls, paths: Sequence[Path | str], names: Sequence[str] | None = None) -> "KohyaLoraSet":
        return cls(paths, names=names)

    @classmethod
    def from_root(cls, root: Path | str) -> "KohyaLoraSet":
        """Every directory under ``root`` (any depth) holding one kohya LoRA; names relative to ``root``."""
        root = Path(root)
        dirs = find_kohya_dirs(root) if root.is_dir() else []
        if not dirs:
            raise KohyaFormatError(f"no kohya LoRA (one *.safetensors with lora_down/lora_up) under {root}")
        return cls(dirs, names=[d.relative_to(root).as_posix() for d in dirs])

    @staticmethod
    def _shape(slot) -> tuple[int, int]:
        (_, sa), (_, sb) = slot["A"], slot["B"]
        return int(sb[0]), int(np.prod(sa[1:]))

    def _common_modules(self) -> list[str]:
        keys = set(self._modules[0]).intersection(*self._modules[1:])
        n_all = len(set().union(*self._modules))
        if len(keys) < n_all:
            log.warning("%d of %d LoRA modules are common to all %d LoRAs", len(keys), n_all, len(self))
        out = []
        for key in sorted(keys, key=natural_key):
            shapes = [self._shape(m[key]) for m in self._modules]
            bad = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
            if bad is not None:
                raise KohyaFormatError(f"LoRA {self.names[bad]!r} ({self.files[bad]}): module {key!r} updates a "
                                       f"{shapes[bad]} weight, but {shapes[0]} in LoRA {self.names[0]!r}")
            out.append(key)
        if not out:
            raise KohyaFormatError(f"no LoRA module common to all of {[str(f) for f in self.files]}")
        return out

    def __len__(self) -> int:
        return len(self.files)

    def shape(self, key: str) -> tuple[int, int]:
        """(d_out, d_in) of the weight a module key updates (convs: (out, in*kh*kw))."""
        if key not in self.ranks:
            raise KeyError(f"{key!r} is not a module common to all LoRAs of this set")
        return self._shape(self._modules[0][key])

    def load(self, i: int | str, key: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(B_i (d_out, r_i), A_i (r_i, d_in), s_i) float64 of one LoRA (index or name); update = s_i B_i @ A_i."""
        self.shape(key)
        i = self.names.index(i) if isinstance(i, str) else int(i)
        path, owner, slot = self.files[i], f"LoRA {self.names[i]!r}", self._modules[i][key]
        out = []
        for role in ("B", "A"):
            tkey, shape = slot[role]
            t = load_tensor(path, tkey, KohyaFormatError, owner=owner)
            if tuple(t.shape) != tuple(shape):  # the file changed since its header was read
                raise KohyaFormatError(f"{owner}: key {tkey!r} in {path} has shape {tuple(t.shape)}, header said "
                                       f"{tuple(shape)}")
            out.append(t.reshape(t.shape[0], -1))  # B (out, r[,1,1]) -> (out, r); A (r, in[,kh,kw]) -> (r, in*kh*kw)
        return out[0], out[1], float(self.scales[key][i])

    def __repr__(self) -> str:
        return f"KohyaLoraSet({len(self)} LoRAs, {len(self.module_keys)} common modules)"


# ---------------------------------------------------------------------------------------------- spectra

def kohya_key_spectra(lset: KohyaLoraSet, key: str, device=None, k: int | None = 0) -> dict[str, Spectrum]:
    """``{"lora_A", "lora_B", "product"}`` Spectra of one module key, reading one adapter at a time.

    lora_A: rows of all A_i (sum r_i, d_in), centred by the mean row; lora_B: columns of all B_i, centred by
    the mean column (both as stored, unscaled; ``k`` basis vectors kept); product: model axis of the scaled
    ``s_i B_i A_i``, centred by the mean product (no basis). Memory:
    :func:`uws_core.weights.memory_bounds.kohya_memory_bound_bytes`.
    """
    d_out, d_in = lset.shape(key)
    acc_a = StackedRowSpectrum(d_in, device, key + ".lora_A", "rows")
    acc_b = StackedRowSpectrum(d_out, device, key + ".lora_B", "cols")
    acc_p = FactoredProductGram((d_out, d_in), device, key, capacity=int(lset.ranks[key].sum()))
    for i in range(len(lset)):
        b, a, s = lset.load(i, key)
        acc_a.add(a)
        acc_b.add(b.T)
        acc_p.add(b, a, s)
    return {"lora_A": acc_a.finalize(k), "lora_B": acc_b.finalize(k), "product": acc_p.finalize()}


# ------------------------------------------------------------------------------------------------- runs

_MODULE_TAIL = re.compile(r"(to_q|to_k|to_v|to_out_0|proj_in|proj_out|ff_net_0_proj|ff_net_2|[qkv]_proj|out_proj|"
                          r"fc1|fc2|conv1|conv2|conv_shortcut|time_emb_proj|conv|op)$")


def _module_label(key: str) -> tuple[str | None, int | None, str]:
    """(stack, layer, module) of a module key, for grouping: ``lora_te1_text_model_encoder_layers_3_self_attn_q_proj``
    -> ``("te1", 3, "q_proj")``; UNet keys have no single layer index (None)."""
    flat = key.replace(".", "_")
    m = re.match(r"^(?:lora_)?(unet|te\d?|text_encoder(?:_2)?)_", flat)
    layer = re.search(r"layers_(\d+)", flat)
    tail = _MODULE_TAIL.search(flat)
    return (m.group(1) if m else None, int(layer.group(1)) if layer else None,
            tail.group(1) if tail else flat.rsplit("_", 1)[-1])


def kohya_population_spectra(dirs, out: Path | str, ks=(1, 4, 16, 32, 64), thresholds=(0.5, 0.8, 0.9, 0.95, 0.99),
                             resume: bool = False, keys: Sequence[str] | str | None = None, evr_head: int = 512,
                             device=None, max_key_bytes: float | None = None,
                             on_key_done: Callable[[str, dict], None] | None = None, progress: bool = True) -> dict:
    """Spectra of every module key of N kohya LoRAs, each written to ``out/keys/<key>.json`` when done.

    ``dirs``: a :class:`KohyaLoraSet`, a root directory (searched at any depth), or LoRA files/directories.
    Same layout and resume rules as ``uws_core.weights.population_spectra.population_spectra`` (``run.json`` with the
    settings, kind ``"kohya"``; a rerun with ``resume=True`` skips keys already written; ``spectra.json`` at
    the end); per key ``spectra`` holds lora_A, lora_B and product (:func:`kohya_key_spectra`) as
    ``uws_core.weights.run_dirs.summarize`` writes them, plus the per-adapter ``ranks`` and ``scales``.
    Keys whose memory bound exceeds ``max_key_bytes`` are skipped and reported under ``too_big``.
    """
    if isinstance(dirs, KohyaLoraSet):
        lset = dirs
    else:
        paths = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
        one_root = len(paths) == 1 and paths[0].is_dir() and not is_kohya_lora(paths[0])
        lset = KohyaLoraSet.from_root(paths[0]) if one_root else KohyaLoraSet.from_dirs(paths)
    keys = select_keys(lset.module_keys, keys, "these LoRAs")
    out = Path(out)
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "kohya", "unfolding": "model",
                "center": "models", "ks": list(ks), "thresholds": list(thresholds), "evr_head": evr_head,
                "basis_k": 0, "models": list(lset.names)}
    prepare_out(out, settings, resume, lset)
    dev = pick_device(device)

    def compute_key(key: str) -> dict:
        shape, ranks = lset.shape(key), lset.ranks[key]
        bound = kohya_memory_bound_bytes(shape, ranks)
        if max_key_bytes is not None and bound["total"] > max_key_bytes:
            return {"too_big": bound}
        t0 = time.perf_counter()
        specs = kohya_key_spectra(lset, key, device=dev)
        stack, layer, module = _module_label(key)
        spectra = {name: summarize(s, ks, thresholds, evr_head) for name, s in specs.items()}
        spectra["product"]["scaled"] = True
        return {"key": key, "layer": layer, "module": module, "stack": stack, "N": len(lset),
                "shape": [int(s) for s in shape], "ranks": [int(r) for r in ranks],
                "scales": [float(s) for s in lset.scales[key]],
                "alpha_missing": [n for n in lset.names if key in lset.alpha_missing.get(n, ())],
                "orientation": "B = lora_up (out, r[,1,1]) -> (out, r); A = lora_down (r, in[,kh,kw]) -> (r, in*kh*kw)",
                "spectra": spectra, "memory_bound_bytes": bound, "timing": {"total_s": time.perf_counter() - t0}}

    return drive_keys(out, settings, keys, compute_key, len(lset), dev, "kohya keys", on_key_done, progress)
