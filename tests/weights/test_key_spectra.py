"""uws spectrum's per-key adapter spectra: the (N r)^2 Gram route equals the d x d route where both apply."""
import numpy as np
import pytest

from conftest import write_adapters
from uws_core.linalg.lora import lora_factor_spectra, lora_product_spectrum
from uws_core.weights.adapters import AdapterSet
from uws_core.weights.key_spectra import adapter_spectra

TOL = 1e-10  # float64 on both routes: round-off only


@pytest.mark.parametrize("unfolding,center", [("model", "models"), ("rows", "models"), ("cols", "none")])
def test_adapter_spectra_small_gram_route_equals_dense_route(tmp_path, unfolding, center):
    written = write_adapters(tmp_path, n=3, r=2, alpha=8, seed=3)  # N r = 6 < d: the small-Gram route
    aset = AdapterSet.from_dirs(written.dirs)
    keys = aset.module_keys[:3]
    got = adapter_spectra(aset, keys, unfolding, center, k=4)
    for key in keys:
        b, a = aset.factors(key)
        assert len(aset) * aset.shape(key)[1] < max(aset.shape(key)[0], aset.shape(key)[2])
        sa, sb = lora_factor_spectra(b, a, center="samples", k=0)
        sp = lora_product_spectrum(b, a, unfolding=unfolding, center=center, k=0,
                                   scaling=np.asarray(aset.scalings, dtype=np.float64), key=key)
        for name, ref in (("lora_A", sa), ("lora_B", sb), ("product", sp)):
            evr = np.asarray(got[key][name]["evr"])
            ref_evr = ref.evr()[:len(evr)]
            np.testing.assert_allclose(evr[:len(ref_evr)], ref_evr, rtol=0, atol=TOL, err_msg=f"{key} {name}")
            assert got[key][name]["total_variance"] == pytest.approx(ref.total_variance, rel=1e-12)
