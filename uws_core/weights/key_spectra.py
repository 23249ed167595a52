"""The per-key spectra of ``uws spectrum``: every key of a population computed in memory, one key at a time.

Checkpoints: the chosen unfolding and centring of the stack (N, d_out, d_in), streamed one model at a time
(:class:`uws_core.linalg.spectral.StreamingSpectrum`). Adapters: ``lora_A`` (rows) and ``lora_B`` (cols) of the
authors-subspace recipe (toshi2k2/unisub ``NLG/get_subspaceadapter.py``; :mod:`uws_core.linalg.recipes`) and the
product ``s_i B_i A_i``, all three from the factors (:func:`uws_core.linalg.factored_spectra.factored_lora_spectra`:
(N r) x (N r) Grams when the stack's rank N r is below the dimension, else d x d Grams built from the factors;
equal to the dense routes to round-off), as in ``uws spectra``. ``uws spectra``
(:mod:`uws_core.weights.population_spectra`) writes the same per key to a resumable run directory instead.
"""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from uws_core.linalg import recipes
from uws_core.linalg.factored_spectra import factored_lora_spectra
from uws_core.linalg.numerics import progress_disabled
from uws_core.linalg.spectral import StreamingSpectrum
from uws_core.weights.adapters import AdapterSet, parse_module_key
from uws_core.weights.checkpoints import CheckpointSet

__all__ = ["THRESHOLDS", "spectrum_summary", "checkpoint_spectra", "adapter_spectra"]

log = logging.getLogger(__name__)

#: the variance fractions at which ``uws spectrum`` reports k
THRESHOLDS = (0.5, 0.9, 0.99)


def spectrum_summary(spec, k: int) -> dict:
    """JSON-able summary of one Spectrum: shape, N, unfolding, centring, full EVR, k at 50/90/99%, top-k EVR."""
    evr = spec.evr()
    if not spec.total_variance > 0:  # e.g. untrained adapters (B = 0), or one model centred on itself
        log.warning("zero total variance (%s, %s, %s): EVR reported as zeros", spec.unfolding, spec.center,
                    list(spec.matrix_shape))
    return {
        "shape": [int(s) for s in spec.matrix_shape], "N": int(spec.n_models),
        "unfolding": spec.unfolding, "center": spec.center,
        "n_components": int(len(evr)), "total_variance": float(spec.total_variance),
        "evr": [float(v) for v in evr],
        "k_at": {str(t): int(spec.k_at(t)) for t in THRESHOLDS},
        "top_k": int(k), "top_k_evr": float(spec.top_evr(k)),
    }


def checkpoint_spectra(cs: CheckpointSet, keys: list[str], unfolding: str, center: str, k: int,
                       device=None) -> dict:
    """Per weight key, the spectrum of the chosen unfolding, streamed one model at a time."""
    out = {}
    for key in tqdm(keys, desc="weight keys", disable=progress_disabled()):
        acc = StreamingSpectrum(unfolding, center, shape=cs.shape(key), device=device, key=key)
        for name, w in cs.iter_key(key):
            acc.add(w, name=name)
        layer, module = parse_module_key(key)
        out[key] = {"layer": layer, "module": module, **spectrum_summary(acc.finalize(k=0), k)}
    return out


def adapter_spectra(aset: AdapterSet, keys: list[str], unfolding: str, center: str, k: int,
                    device=None, scaling: str = "alpha-over-r") -> dict:
    """Per module key: lora_A and lora_B spectra (the authors-subspace recipe) and the factored B@A spectrum."""
    out = {}
    for key in tqdm(keys, desc="module keys", disable=progress_disabled()):
        b, a = aset.factors(key)  # (N, d_out, r), (N, r, d_in), as stored
        d_out, r, d_in = aset.shape(key)
        # P_i = s_i B_i @ A_i, the weight update itself (s_i = alpha_i / r)
        s = recipes.product_scaling(scaling, aset.scalings)
        # (N r)^2 Grams when N r < d, else d x d Grams from the factors, as uws spectra
        views = factored_lora_spectra(b, a, unfolding, center, scaling=s, device=device)
        spec_a, spec_b, spec_p = views["lora_A"], views["lora_B"], views["product"]
        layer, module = parse_module_key(key)
        out[key] = {"layer": layer, "module": module, "shape": [d_out, d_in], "rank": r, "N": len(aset),
                    "lora_A": {**spectrum_summary(spec_a, k), "recipe": "authors-subspace"},
                    "lora_B": {**spectrum_summary(spec_b, k), "recipe": "authors-subspace"},
                    "product": {**spectrum_summary(spec_p, k), "scaled": s is not None, "recipe": None}}
    return out
