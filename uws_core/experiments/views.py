"""The views of one weight key that the notebooks compare, computed the same way in every notebook.

* :func:`lora_view_spectra` (notebook 01): the authors' factor recipe (A rows, B cols, centred by the mean
  sample; ``Mistral_LoRAs`` / ``NLG/get_subspaceadapter.py`` of toshi2k2/unisub) plus the scaled products
  ``s_i B_i A_i`` in each requested unfolding, all from the factors
  (:func:`uws_core.linalg.factored_spectra.factored_lora_spectra`).
* :func:`checkpoint_key_spectra_with_null` (notebook 02): the trained stack of one checkpoint key and a Gaussian
  null of the same shape and per-model standard deviation, streamed one model at a time, in each unfolding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from uws_core.linalg.factored_spectra import factored_lora_spectra
from uws_core.linalg.spectral import Spectrum, StreamingSpectrum

__all__ = ["AUTHORS_FACTOR_VIEWS", "lora_view_spectra", "checkpoint_key_spectra_with_null"]

#: the factor views of the authors' recipe, in the order notebook 01 draws them
AUTHORS_FACTOR_VIEWS = ("A (rows, authors)", "B (cols, authors)")


def lora_view_spectra(B: torch.Tensor, A: torch.Tensor, scaling,
                      views: Mapping[str, tuple[str, str] | None]) -> dict[str, Spectrum]:
    """Spectra of a LoRA stack ``B: (N, d_out, r)``, ``A: (N, r, d_in)`` in every view of ``views``.

    ``views`` maps a label to ``(unfolding, center)`` of the scaled product ``s_i B_i A_i``, or to ``None`` for
    the two factor views of the authors' recipe (labels :data:`AUTHORS_FACTOR_VIEWS`, always computed).
    All from the factors, sharing two factor Grams (``uws_core.linalg.factored_spectra.factored_lora_spectra``:
    (N r)^2 Grams when N r < d, else d x d Grams; the same numbers as ``lora_factor_spectra`` /
    ``lora_product_spectrum`` to round-off, tests/experiments/test_views.py). Eigenvalues only, no basis.
    """
    products = {view: how for view, how in views.items() if how is not None}
    got = factored_lora_spectra(B, A, scaling=scaling, factor_center="samples", products=products)
    return {AUTHORS_FACTOR_VIEWS[0]: got["lora_A"], AUTHORS_FACTOR_VIEWS[1]: got["lora_B"],
            **{view: got[view] for view in products}}


def checkpoint_key_spectra_with_null(cset, key: str, views: Sequence[str], k_basis: Mapping[str, int | None],
                                     seed: int) -> dict[tuple[str, bool], Spectrum]:
    """Trained and Gaussian-null spectra of one key of a checkpoint population, in each unfolding of ``views``.

    Models are read one at a time (``cset.iter_key``: W (d_out, d_in) float64). The null of model i is
    ``randn(W.shape) * W.std()`` from one generator seeded with ``seed`` (drawn in model order), centred by
    the mean model like the trained stack. Returns ``{(view, is_null): Spectrum}``; trained spectra keep
    ``k_basis[view]`` basis vectors (None: all), nulls none.
    """
    acc = {(v, null): StreamingSpectrum(v, "models", shape=cset.shape(key), key=key)
           for v in views for null in (False, True)}
    gen = torch.Generator().manual_seed(seed)
    for name, W in cset.iter_key(key):                   # W: (d_out, d_in) float64 (stored float32: exact)
        Z = torch.randn(W.shape, generator=gen, dtype=torch.float64) * W.std()
        for (v, null), s in acc.items():
            s.add((Z if null else W).float(), name)
    return {(v, null): s.finalize(k=0 if null else k_basis[v]) for (v, null), s in acc.items()}
