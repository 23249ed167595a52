import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from uws_core.report import plots


def test_stack_evr_pads_with_zero():
    m = plots.stack_evr([np.array([0.5, 0.3, 0.2]), np.array([0.9, 0.1])])
    np.testing.assert_allclose(m, [[0.5, 0.3, 0.2], [0.9, 0.1, 0.0]])
    assert plots.stack_evr([np.ones(5) / 5], 3).shape == (1, 3)
    with pytest.raises(ValueError):
        plots.stack_evr([])


def test_evr_band_plots_mean_over_layers():
    fig, axes = plots.grid(1, 1)
    line = plots.evr_band(axes[0, 0], [np.array([0.6, 0.4]), np.array([0.8, 0.2])], "x", cumulative=False)
    np.testing.assert_allclose(line.get_ydata(), [0.7, 0.3], atol=1e-12)
    line = plots.evr_band(axes[0, 0], [np.array([0.6, 0.4]), np.array([0.8, 0.2])], "c", cumulative=True)
    np.testing.assert_allclose(line.get_ydata(), [0.7, 1.0], atol=1e-12)
    plots.scree_with_null(axes[0, 0], [np.array([0.6, 0.4])], [np.array([0.5, 0.5])], "t", log=True)
    assert axes[0, 0].get_yscale() == "log"
