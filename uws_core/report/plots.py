"""Figures shared by the notebooks: EVR per component as the paper plots it, next to a null.

The paper draws, for one weight type, the explained-variance ratio of each principal component
as the mean over layers with a +- one standard deviation band, and cumulative curves. Every
figure here takes EVR arrays already computed (so the caller says which unfolding they come from)
and labels the unfolding in the title.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def stack_evr(evrs: Sequence[np.ndarray], n_components: int | None = None) -> np.ndarray:
    """Stack per-layer EVR vectors into (n_layers, n_components), padding short ones with 0.

    A layer with fewer components than ``n_components`` has no variance beyond its rank, so zero
    is its exact EVR there.
    """
    if not evrs:
        raise ValueError("no EVR arrays to stack")
    n = n_components or max(len(e) for e in evrs)
    out = np.zeros((len(evrs), n))
    for i, e in enumerate(evrs):
        e = np.asarray(e, dtype=float)[:n]
        out[i, : len(e)] = e
    return out


def evr_band(ax, evrs: Sequence[np.ndarray], label: str, color=None, n_components: int | None = None,
             cumulative: bool = False, linestyle: str = "-"):
    """Mean +- std over layers of the (cumulative) EVR per component index (1-based x axis)."""
    m = stack_evr(evrs, n_components)
    if cumulative:
        m = np.cumsum(m, axis=1)
    x = np.arange(1, m.shape[1] + 1)
    mean, std = m.mean(axis=0), m.std(axis=0)
    (line,) = ax.plot(x, mean, label=label, color=color, linestyle=linestyle, lw=1.5)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("principal component")
    ax.set_ylabel("cumulative EVR" if cumulative else "EVR")
    return line


def scree_with_null(ax, evrs, null_evrs, title: str, n_components: int | None = None,
                    cumulative: bool = False, log: bool = False, labels=("trained", "null")):
    """One panel: trained EVR band and its null band, for one weight type and unfolding."""
    evr_band(ax, evrs, labels[0], "C0", n_components, cumulative)
    evr_band(ax, null_evrs, labels[1], "0.5", n_components, cumulative, linestyle="--")
    if log and not cumulative:
        ax.set_yscale("log")
    if cumulative:
        ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return ax


def grid(n_rows: int, n_cols: int, width: float = 3.2, height: float = 2.6, **kw):
    """A figure with a grid of axes sized for the notebooks."""
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False, **kw)
    return fig, axes
