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


def test_panel_title_names_recipe_unfolding_and_scale():
    assert plots.panel_title("vit", "mean matrix subtracted", "rows", "laptop") == \
        "vit\nmean matrix subtracted, rows unfolding, laptop scale"
    assert plots.panel_title("lora") == "lora"


def test_integer_log_ticks_label_only_the_given_values():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([4, 8, 16, 32], [0.6, 0.7, 0.8, 0.9])
    plots.integer_log_ticks(ax, (4, 8, 16, 32))
    fig.canvas.draw()
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8", "16", "32"]
    assert [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()] == []
    fig.clf()


def test_annotate_points_keeps_labels_apart_and_off_the_markers():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    # two series whose points nearly coincide (the 06 figure: "k=32" and "80% EV" at one spot)
    xs1, ys1 = [1.0, 1.1, 1.6, 2.8], [1.0, 0.99, 0.94, 0.70]
    xs2, ys2 = [1.2, 1.3, 1.62], [0.995, 0.99, 0.945]
    ax.plot(xs1, ys1, "o-")
    ax.plot(xs2, ys2, "s--")
    ax.set_xscale("log")
    texts = plots.annotate_points(ax, xs1, ys1, ["k=64", "k=32", "k=16", "k=4"])
    texts += plots.annotate_points(ax, xs2, ys2, ["95% EV", "90% EV", "80% EV"])
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in texts]
    overlaps = sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert overlaps == 0
    fig.clf()


def test_evr_band_stops_at_the_last_component_with_variance():
    fig, axes = plots.grid(1, 1)
    evrs = [np.array([0.7, 0.3, 0.0, 0.0]), np.array([0.6, 0.3, 0.1, 1e-18])]  # rank 2 and 3 (+ round-off) of 4
    line = plots.evr_band(axes[0, 0], evrs, "x", n_components=4)
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])                     # component 4 has no variance
    np.testing.assert_allclose(line.get_ydata(), [0.65, 0.3, 0.05], atol=1e-12)
    cum = plots.evr_band(axes[0, 0], evrs, "c", n_components=4, cumulative=True)
    assert len(cum.get_xdata()) == 4                                             # cumulative curves keep every component
    fig.clf()
