"""experiments.views.lora_view_spectra (notebook 01's views) equals the dense LoRA routes of linalg.lora.

Tiny seeded factors with N r < d (the (N r)^2 Gram route) and N r >= d (the d x d Gram from the factors);
every view's EVR within 1e-10 absolute, total variance within 1e-10 relative, same component counts.
"""

import numpy as np
import pytest
import torch

from uws_core.experiments.views import AUTHORS_FACTOR_VIEWS, lora_view_spectra
from uws_core.linalg.lora import lora_factor_spectra, lora_product_spectrum

VIEWS = {"A (rows, authors)": None, "B (cols, authors)": None,
         "B@A (model axis, replication)": ("model", "models"), "B@A (rows)": ("rows", "models"),
         "B@A (cols, samples)": ("cols", "samples")}


@pytest.mark.parametrize("n", [4, 25])  # N r = 12 < d = 24 / 40, and 75 >= d
def test_views_equal_the_dense_lora_routes(n):
    g = torch.Generator().manual_seed(n)
    b = torch.randn(n, 24, 3, generator=g, dtype=torch.float64)
    a = torch.randn(n, 3, 40, generator=g, dtype=torch.float64) * 0.3 + torch.randn(1, 3, 40, generator=g,
                                                                                     dtype=torch.float64)
    s = np.linspace(1.0, 3.0, n)
    got = lora_view_spectra(b, a, s, VIEWS)
    sa, sb = lora_factor_spectra(b, a, center="samples", k=0)
    ref = {AUTHORS_FACTOR_VIEWS[0]: sa, AUTHORS_FACTOR_VIEWS[1]: sb,
           **{v: lora_product_spectrum(b, a, unfolding=h[0], center=h[1], k=0, scaling=s)
              for v, h in VIEWS.items() if h is not None}}
    assert set(got) == set(ref)
    for view, r in ref.items():
        assert got[view].n_components == r.n_components, view
        assert got[view].unfolding == r.unfolding and got[view].center == r.center, view
        np.testing.assert_allclose(got[view].total_variance, r.total_variance, rtol=1e-10)
        np.testing.assert_allclose(got[view].evr(), r.evr(), rtol=0, atol=1e-10)
