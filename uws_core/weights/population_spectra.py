"""Per-key spectra of a whole population, streamed one tensor at a time, written per key so a run resumes.

For each weight key of N checkpoints (``uws_core.weights.checkpoints.CheckpointSet``, lazy safetensors) or each
module key of N LoRA adapters (``uws_core.weights.adapters.AdapterSet``), the key's N matrices are read one at a
time and accumulated on the compute device (``uws_core.linalg.device.pick_device``: the GPU when present) into

* checkpoints: ``StreamingSpectrum`` of the chosen unfolding of the stack (N, d_out, d_in) (a plain
  truncated SVD of that unfolding, via its float64 Gram);
* adapters: the authors' recipe, A stack "rows" and B stack "cols" centred by the mean sample, plus the
  scaled product ``s_i B_i @ A_i`` in the chosen unfolding (``StreamingLoraSpectrum``, factored). When
  ``N r < max(d_out, d_in)`` the key's N factor pairs are read at once and the three spectra come from
  (N r) x (N r) Grams instead (``uws_core.linalg.factored_spectra``, solver ``"factored_gram"`` in the key's JSON;
  same numbers to round-off; timings in ``benchmarks/paper_shapes_results.md``).

Each finished key is written atomically to ``OUT/keys/<key>.json`` (EVR head, k at thresholds, top-k EVR,
the memory bound of the key, timings) and optionally its top-k basis to ``OUT/basis/<key>.safetensors``;
a rerun with ``resume=True`` skips keys already written with the same settings, so an interrupted run
(or a killed job) continues where it stopped. ``OUT/spectra.json`` collects all keys at the end.

Orientation (every matrix is analysed as ``(d_out, d_in)``, so "rows" is always the input-side basis):

* ``nn.Linear`` weights (Llama, Mistral, ViT, T5 encoder and decoder): as stored, (out, in);
* GPT-2 ``Conv1D`` weights (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``q_attn``) are
  stored (in, out): they are transposed to (out, in); detected from ``config.json``'s ``model_type``;
* 4-D convolution weights (ResNet-50) (out, in, kh, kw) are flattened to (out, in*kh*kw), as the authors do.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from uws_core.weights import recipe_runs, safe_paths
from uws_core.weights.adapters import AdapterSet, parse_module_key
from uws_core.weights.checkpoints import (FLOAT_DTYPES, CheckpointFormatError, CheckpointSet, check_weight_tensors,
                                          checkpoint_tensor_files, load_tensor, natural_key)
from uws_core.linalg.device import pick_device
from uws_core.linalg.factored_spectra import factored_lora_spectra, uses_small_gram
from uws_core.linalg.lora import StreamingLoraSpectrum
from uws_core.linalg.spectral import StreamingSpectrum
from uws_core.weights.memory_bounds import (STORED_BYTES, factored_memory_bound_bytes, memory_bound_bytes,
                                           model_axis_chunk)
from uws_core.weights.run_dirs import (FORMAT, FORMAT_VERSION, ResumeError, drive_keys, key_filename,  # noqa: F401
                                       prepare_out, select_keys, summarize, write_json_atomic)

log = logging.getLogger(__name__)

CONV1D_MODEL_TYPES = ("gpt2", "imagegpt", "decision_transformer")  # transformers models built on Conv1D
CONV1D_MODULES = ("c_attn", "c_proj", "c_fc", "q_attn")
STORED_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------- sources

class MatrixPopulation:
    """N checkpoints' floating weights as (d_out, d_in) matrices: 2-D via CheckpointSet, 4-D convs flattened.

    ``orientation[key]`` says what was done: ``"as stored (out, in)"``, ``"Conv1D (in, out) transposed"``
    or ``"conv (out, in, kh, kw) flattened to (out, in*kh*kw)"``.
    """

    def __init__(self, dirs: Sequence[Path | str], names: Sequence[str] | None = None, strict: bool = True,
                 conv1d: bool | None = None):
        self.cs = CheckpointSet.from_dirs(dirs, names=names, strict=strict)
        self.names, self.dirs = self.cs.names, self.cs.dirs
        self.conv1d = self._detect_conv1d() if conv1d is None else conv1d
        # per model: key -> (file, stored shape, dtype) of every tensor (headers only, read once)
        self._tensors = [checkpoint_tensor_files(d, owner=f"model {n!r} ({d})") for n, d in zip(self.names, self.dirs)]
        for n, d, files in zip(self.names, self.dirs, self._tensors):
            check_weight_tensors(files, f"model {n!r} ({d})")
        self._conv = self._common_conv_keys(strict)  # key -> [(file, stored shape, dtype) per model]
        self.keys = sorted([*self.cs.weight_keys, *self._conv], key=natural_key)
        self.orientation, self.shapes, self.stored_shapes = {}, {}, {}
        for key in self.cs.weight_keys:
            d0, d1 = self.cs.shape(key)
            flip = self.conv1d and key.rsplit(".", 2)[-2] in CONV1D_MODULES
            self.orientation[key] = "Conv1D (in, out) transposed" if flip else "as stored (out, in)"
            self.shapes[key], self.stored_shapes[key] = ((d1, d0) if flip else (d0, d1)), (d0, d1)
        for key, per_model in self._conv.items():
            shape = per_model[0][1]
            self.orientation[key] = "conv (out, in, kh, kw) flattened to (out, in*kh*kw)"
            self.shapes[key], self.stored_shapes[key] = (shape[0], int(np.prod(shape[1:]))), shape

    def _detect_conv1d(self) -> bool:
        types, first = set(), {}
        for name, d in zip(self.names, self.dirs):
            try:
                cfg = json.loads((d / "config.json").read_text())
            except (OSError, ValueError):
                types.add(None)
                first.setdefault(None, name)
                continue
            mt = cfg.get("model_type") if isinstance(cfg, dict) else None
            if not isinstance(cfg, dict) or not isinstance(mt, (str, type(None))):
                raise CheckpointFormatError(f"model {name!r}: {d / 'config.json'} has key 'model_type' "
                                            f"{mt if isinstance(cfg, dict) else cfg!r:.80}, not a name")
            types.add(mt)
            first.setdefault(mt, name)
        if len(types) > 1:
            raise CheckpointFormatError("checkpoints declare different model_type values in config.json: "
                                        + ", ".join(f"{t!r} (model {n!r}, {self.dirs[self.names.index(n)]})"
                                                    for t, n in first.items()))
        return types.pop() in CONV1D_MODEL_TYPES

    def _common_conv_keys(self, strict: bool) -> dict:
        per_model = [{k: v for k, v in files.items() if len(v[1]) == 4 and v[2] in FLOAT_DTYPES}
                     for files in self._tensors]
        keys = set(per_model[0])
        out = {}
        for key in sorted(keys, key=natural_key):
            entries = [m.get(key) for m in per_model]
            bad = next((i for i, e in enumerate(entries) if e is None or e[1] != entries[0][1]), None)
            if bad is not None:
                msg = (f"model {self.names[bad]!r}: conv weight {key!r} is "
                       + ("missing" if entries[bad] is None else f"{entries[bad][1]}, not {entries[0][1]}"))
                if strict:
                    raise CheckpointFormatError(msg)
                log.warning("dropping key: %s", msg)
                continue
            out[key] = entries
        return out

    def __len__(self) -> int:
        return len(self.dirs)

    def stored_dtype(self, key: str) -> str:
        return self._conv[key][0][2] if key in self._conv else self.cs.dtype(key)

    def load(self, i: int, key: str) -> torch.Tensor:
        """Model i's weight ``key`` as a (d_out, d_in) float64 matrix in the orientation above (NaN/Inf refused)."""
        path = self._tensors[i][key][0]
        w = load_tensor(path, key, CheckpointFormatError, owner=f"model {self.names[i]!r}")
        return self._orient(key, w)

    def load_stored(self, i: int, key: str) -> torch.Tensor:
        """Model i's weight ``key`` in its stored dtype, oriented as (d_out, d_in); only the bytes are read.

        The streaming path uses this: finiteness is checked and the upcast to float64 done by the
        accumulator, on the compute device (a GPU when present), so the CPU only copies bytes."""
        if key not in self.shapes:
            raise KeyError(f"{key!r} is not a weight key of this population")
        path, shape, _ = self._tensors[i][key]
        try:
            with safe_open(str(path), framework="pt") as f:
                w = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise CheckpointFormatError(f"model {self.names[i]!r}: cannot read key {key!r} from {path}: {exc}") from exc
        if tuple(w.shape) != tuple(shape):
            raise CheckpointFormatError(f"model {self.names[i]!r}: key {key!r} in {path} has shape {tuple(w.shape)}, "
                                        f"header said {tuple(shape)}")
        return self._orient(key, w)

    def _orient(self, key: str, w: torch.Tensor) -> torch.Tensor:
        if w.ndim == 4:
            return w.reshape(w.shape[0], -1)  # (out, in, kh, kw) -> (out, in*kh*kw)
        return w.T if self.orientation[key].startswith("Conv1D") else w  # Conv1D (in, out) -> (out, in)


# ------------------------------------------------------------------------------------------------- runs

def _settings(pop, kind, unfolding, center, ks, thresholds, evr_head, basis_k) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "unfolding": unfolding,
            "center": center, "ks": list(ks), "thresholds": list(thresholds), "evr_head": evr_head,
            "basis_k": basis_k, "models": list(pop.names)}




def population_spectra(population, out: Path | str, unfolding: str = "rows", center: str = "models",
                       keys: Sequence[str] | str | None = None, ks=(1, 4, 16, 32, 64),
                       thresholds=(0.5, 0.8, 0.9, 0.95, 0.99), evr_head: int = 512, basis_k: int = 0,
                       resume: bool = False, device=None, max_key_bytes: float | None = None,
                       on_key_done: Callable[[str, dict], None] | None = None, progress: bool = True,
                       recipe: str | None = None, scaling: str = "alpha-over-r") -> dict:
    """Spectra of every key of a population, one key at a time, each written to ``out/keys/`` when done.

    Parameters
    ----------
    population : MatrixPopulation, CheckpointSet or AdapterSet
    out : path
        Output directory (``run.json``, ``keys/*.json``, ``basis/*.safetensors``, ``spectra.json``).
    unfolding, center : str
        Checkpoints: the unfolding of the stack (N, d_out, d_in) and its centring (see
        ``uws_core.linalg.spectral``). Adapters: those of the product ``s_i B_i @ A_i``; A and B always use the
        authors' recipe (A rows, B cols, centred by the mean sample).
    keys : list of keys or a regex, optional
        Only these keys (default: all).
    basis_k : int
        Also save the top ``basis_k`` basis vectors (float32, (d_feature, k)) and the mean of each key
        (checkpoints, rows/cols unfoldings only).
    resume : bool
        Continue a run in ``out``: keys already written are skipped. Without it, an existing run is refused.
    max_key_bytes : float, optional
        Skip (and report) keys whose memory bound (:func:`memory_bound_bytes`) exceeds this.
    on_key_done : callable, optional
        Called as ``on_key_done(key, result)`` after each key is written (progress hooks, tests).
    recipe : {"authors-pca", "authors-subspace", "replication"}, optional
        A peer's recipe by name (:mod:`uws_core.linalg.recipes`; ``unfolding`` / ``center`` are then ignored);
        checkpoints have authors-pca only. Each key's file and ``spectra.json`` carry ``"recipe"``.
    scaling : {"alpha-over-r", "none"}
        Adapters: the product is ``s_i B_i @ A_i`` (s_i = alpha_i / r) or ``B_i @ A_i`` as stored.

    Returns
    -------
    dict: the contents of ``out/spectra.json`` (settings, per-key results, computed / skipped keys).
    """
    from uws_core.weights.kohya import KohyaLoraSet, kohya_population_spectra

    if isinstance(population, KohyaLoraSet):  # ranks differ per adapter: its own factored path
        if recipe is not None or scaling != "alpha-over-r":
            raise ValueError("kohya LoRAs (ranks differ per adapter) have no named recipe or --scaling option")
        if basis_k:
            raise ValueError("basis_k is available for checkpoints with the rows or cols unfolding only")
        return kohya_population_spectra(population, out, ks=ks, thresholds=thresholds, resume=resume, keys=keys,
                                        evr_head=evr_head, device=device, max_key_bytes=max_key_bytes,
                                        on_key_done=on_key_done, progress=progress)
    if isinstance(population, CheckpointSet):  # its keys are already common to all models: nothing to refuse
        population = MatrixPopulation(population.dirs, names=population.names, strict=False)
    kind = "adapters" if isinstance(population, AdapterSet) else "checkpoints"
    all_keys = population.module_keys if kind == "adapters" else population.keys
    keys = select_keys(all_keys, keys, "this population")
    if basis_k and (kind == "adapters" or unfolding == "model"):
        raise ValueError("basis_k is available for checkpoints with the rows or cols unfolding only")
    out = Path(out)
    settings = {**_settings(population, kind, unfolding, center, ks, thresholds, evr_head, basis_k),
                **recipe_runs.run_settings(recipe, scaling)}
    if recipe is not None:
        recipe_runs.check_kind(recipe, kind)
        if basis_k:
            raise ValueError("basis_k is not available with a named recipe")
    prepare_out(out, settings, resume, population)
    dev = pick_device(device)
    fn = (functools.partial(recipe_runs.population_key, recipe, scaling, summarize=summarize, key_header=_key_header,
                            memory_bound_bytes=memory_bound_bytes, model_axis_chunk=model_axis_chunk)
          if recipe is not None
          else functools.partial(_adapter_key, scaled=scaling == "alpha-over-r") if kind == "adapters"
          else _checkpoint_key)
    return drive_keys(out, settings, keys,
                      lambda key: fn(population, key, unfolding, center, ks, thresholds, evr_head, basis_k, dev,
                                     max_key_bytes, out),
                      len(population), dev, f"{kind} keys", on_key_done, progress, finish=recipe_runs.finish_summary)


def _key_header(key, pop, shape, stored_shape, orientation) -> dict:
    layer, module = parse_module_key(key)
    stack = "encoder" if key.startswith("encoder.") else "decoder" if key.startswith("decoder.") else None
    return {"key": key, "layer": layer, "module": module, "stack": stack, "N": len(pop),
            "shape": [int(s) for s in shape], "stored_shape": [int(s) for s in stored_shape],
            "orientation": orientation}


def _checkpoint_key(pop: MatrixPopulation, key, unfolding, center, ks, thresholds, evr_head, basis_k, dev,
                    max_key_bytes, out) -> dict:
    shape, dtype = pop.shapes[key], pop.stored_dtype(key)
    chunk = model_axis_chunk(shape[0] * shape[1])
    bound = memory_bound_bytes(shape, len(pop), unfolding, center, STORED_BYTES.get(dtype, 8), chunk=chunk)
    if max_key_bytes is not None and bound["total"] > max_key_bytes:
        return {"too_big": bound}
    acc = StreamingSpectrum(unfolding, center, shape=shape, device=dev, key=key, chunk=chunk)
    t_load = t_comp = 0.0
    for i, name in enumerate(pop.names):
        t0 = time.perf_counter()
        w = pop.load_stored(i, key)  # (d_out, d_in) in the stored dtype (bf16 / f16 / f32)
        t1 = time.perf_counter()
        # finiteness check and float64 upcast happen in add(), on the device; the model axis keeps the
        # stored dtype (bf16 -> f64 is exact, and it halves or quarters what is held)
        acc.add(w if w.dtype in STORED_TORCH.values() else w.to(torch.float64), name=name)
        del w  # the next model's tensor is read only once this one is freed
        t_load, t_comp = t_load + t1 - t0, t_comp + time.perf_counter() - t1
    t0 = time.perf_counter()
    spec = acc.finalize(k=basis_k)
    t_comp += time.perf_counter() - t0
    res = {**_key_header(key, pop, shape, pop.stored_shapes[key], pop.orientation[key]), "stored_dtype": dtype,
           "spectra": {"weight": summarize(spec, ks, thresholds, evr_head)}, "memory_bound_bytes": bound,
           "timing": {"load_s": t_load, "compute_s": t_comp}}
    if basis_k:
        from safetensors.torch import save

        tensors = {"basis": spec.basis.to(torch.float32).contiguous()}  # (d_feature, k)
        if spec.mean is not None:
            tensors["mean"] = spec.mean.to(torch.float32).contiguous()
        safe_paths.write_bytes_atomic(out / "basis" / (key_filename(key) + ".safetensors"),
                                      save(tensors, metadata={"key": key}))
    return res


def _adapter_key(aset: AdapterSet, key, unfolding, center, ks, thresholds, evr_head, basis_k, dev,
                 max_key_bytes, out, scaled: bool = True) -> dict:
    d_out, r, d_in = aset.shape(key)
    if FACTORED_ADAPTER_KEYS:  # all N factor pairs in memory: (N r)^2 Grams when N r < d, else d x d from factors
        return _adapter_key_factored(aset, key, unfolding, center, ks, thresholds, evr_head, dev, max_key_bytes,
                                     scaled)
    bound = memory_bound_bytes((d_out, d_in), len(aset), unfolding, center, lora_rank=r, chunk=max(1, 1024 // r))
    if max_key_bytes is not None and bound["total"] > max_key_bytes:
        return {"too_big": bound}
    acc_a = StreamingSpectrum("rows", "samples", shape=(r, d_in), device=dev, key=key + ".lora_A")
    acc_b = StreamingSpectrum("cols", "samples", shape=(d_out, r), device=dev, key=key + ".lora_B")
    acc_p = StreamingLoraSpectrum(unfolding, center, shape=(d_out, d_in), device=dev, key=key)
    t_load = t_comp = 0.0
    for i, name in enumerate(aset.names):
        t0 = time.perf_counter()
        b, a = aset.load(i, key)  # (d_out, r), (r, d_in) float64, as stored
        t1 = time.perf_counter()
        acc_a.add(a, name=name)
        acc_b.add(b, name=name)
        acc_p.add(b, a, name=name, scaling=float(aset.scalings[i]) if scaled else 1.0)  # s_i B_i @ A_i or B_i @ A_i
        t_load, t_comp = t_load + t1 - t0, t_comp + time.perf_counter() - t1
    t0 = time.perf_counter()
    spectra = {"lora_A": {**summarize(acc_a.finalize(k=0), ks, thresholds, evr_head), "recipe": "authors-subspace"},
               "lora_B": {**summarize(acc_b.finalize(k=0), ks, thresholds, evr_head), "recipe": "authors-subspace"},
               "product": {**summarize(acc_p.finalize(k=0), ks, thresholds, evr_head), "scaled": scaled,
                           "recipe": None}}
    t_comp += time.perf_counter() - t0
    return {**_key_header(key, aset, (d_out, d_in), (d_out, d_in), "as stored: B (out, r), A (r, in)"), "rank": r,
            "spectra": spectra, "memory_bound_bytes": bound, "timing": {"load_s": t_load, "compute_s": t_comp}}


#: adapters take :func:`_adapter_key_factored` (False: the d x d streaming route of before, for benchmarks)
FACTORED_ADAPTER_KEYS = True


def _adapter_key_factored(aset: AdapterSet, key, unfolding, center, ks, thresholds, evr_head, dev,
                          max_key_bytes, scaled: bool = True) -> dict:
    """One adapter key by :func:`uws_core.linalg.factored_spectra.factored_lora_spectra` (the "factored_gram" solver).

    The N factor pairs are read (float64, ``16 N r (d_out + d_in)`` bytes at most with the centred copies)
    and each view takes the smaller of its (N r)^2 and d x d Grams (solver "factored_gram" when N r < d for
    every view, else "factor_feature_gram": the product's d x d Gram from the factors,
    ``uws_core.linalg.factored_spectra.product_feature_gram``); the numbers equal the streaming path's to
    round-off (tests/linalg/test_factored_spectra.py, test_population_spectra.py)."""
    d_out, r, d_in = aset.shape(key)
    n = len(aset)
    bound = factored_memory_bound_bytes((d_out, d_in), n, r)
    if max_key_bytes is not None and bound["total"] > max_key_bytes:
        return {"too_big": bound}
    t0 = time.perf_counter()
    b = torch.empty(n, d_out, r, dtype=torch.float64)  # (N, d_out, r)
    a = torch.empty(n, r, d_in, dtype=torch.float64)  # (N, r, d_in)
    for i in range(n):
        b[i], a[i] = aset.load(i, key)  # float64, finiteness checked with the adapter and key named
    t1 = time.perf_counter()
    views = factored_lora_spectra(b, a, unfolding, center, scaling=aset.scalings if scaled else None, device=dev,
                                  check=False)
    spectra = {"lora_A": {**summarize(views["lora_A"], ks, thresholds, evr_head), "recipe": "authors-subspace"},
               "lora_B": {**summarize(views["lora_B"], ks, thresholds, evr_head), "recipe": "authors-subspace"},
               "product": {**summarize(views["product"], ks, thresholds, evr_head), "scaled": scaled,
                           "recipe": None}}
    t2 = time.perf_counter()
    return {**_key_header(key, aset, (d_out, d_in), (d_out, d_in), "as stored: B (out, r), A (r, in)"), "rank": r,
            "spectra": spectra, "memory_bound_bytes": bound,
            "solver": "factored_gram" if uses_small_gram(n * r, max(d_out, d_in)) else "factor_feature_gram",
            "timing": {"load_s": t1 - t0, "compute_s": t2 - t1}}


def open_population(dirs: Sequence[Path | str], names=None, strict: bool = True):
    """An AdapterSet when the directories are PEFT adapters, else a MatrixPopulation of checkpoints."""
    from uws_core.weights.adapters import is_adapter_dir
    from uws_core.weights.kohya import KohyaLoraSet, is_kohya_lora

    dirs = [Path(d) for d in dirs]
    if all(is_adapter_dir(d) for d in dirs):
        return AdapterSet.from_dirs(dirs, names=names)
    if all(is_kohya_lora(d) for d in dirs):
        return KohyaLoraSet.from_dirs(dirs, names=names)
    return MatrixPopulation(dirs, names=names, strict=strict)
