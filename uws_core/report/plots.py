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


#: an EVR at or below this is taken as beyond the matrix's rank (float64 round-off of a zero eigenvalue is ~1e-16 of
#: the total), for drawing only: every number computed keeps its value
RANK_EVR_FLOOR = 1e-12


def evr_band(ax, evrs: Sequence[np.ndarray], label: str, color=None, n_components: int | None = None,
             cumulative: bool = False, linestyle: str = "-"):
    """Mean +- std over layers of the (cumulative) EVR per component index (1-based x axis).

    Per-component curves stop at the last component with an EVR above :data:`RANK_EVR_FLOOR` in some layer: beyond
    every layer's rank the EVR is 0 or round-off (about 1e-18 for the last component of a centred model axis, whose
    rank is N - 1), which a log axis draws as a cliff off the panel."""
    m = stack_evr(evrs, n_components)
    if cumulative:
        m = np.cumsum(m, axis=1)
    else:
        ranked = np.flatnonzero((m > RANK_EVR_FLOOR).any(axis=0))  # components with variance in some layer
        m = m[:, : ranked[-1] + 1 if ranked.size else 1]
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


def panel_title(what: str, recipe: str | None = None, unfolding: str | None = None, scale: str | None = None) -> str:
    """A panel title that says what is drawn and, on a second line, the recipe, the unfolding and the scale
    ("laptop" populations or "paper" checkpoints) it comes from: ``what\\nrecipe, unfolding, scale``."""
    details = [d for d in (recipe, unfolding and f"{unfolding} unfolding", scale and f"{scale} scale") if d]
    return what + ("\n" + ", ".join(details) if details else "")


def integer_log_ticks(ax, values, axis: str = "x") -> None:
    """Log scale on ``axis`` with major ticks exactly at ``values``, labelled as plain integers, and no minor
    tick labels (matplotlib's default labels the minor ticks of a short log axis as 6x10^0, 2x10^1, ..., which
    collide with the major ones)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

    values = [v for v in values]
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(FixedLocator(values))
    target.set_major_formatter(FixedFormatter([f"{v:g}" for v in values]))
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


# label offsets tried in turn (points): right-above, right-below, left-above, left-below, above, below, far right
_OFFSETS = ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"), (-4, -3, "right", "top"),
            (0, 6, "center", "bottom"), (0, -6, "center", "top"), (10, 0, "left", "center"), (-10, 0, "right", "center"))


def annotate_points(ax, xs, ys, labels, fontsize: float = 6, color=None) -> list:
    """Label points without writing labels over each other, over the markers and lines of the axes' data, over
    other labels already placed by this function on ``ax``, or outside the axes: each label takes the first offset of :data:`_OFFSETS` whose box is free,
    else the one overlapping least. Call it after the axes' limits and scales are final. Returns the texts."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed = getattr(ax, "_uws_label_boxes", None)
    if placed is None:  # first call on this axes: the markers and segments of every data line are taken too
        placed = []
        for line in ax.lines:
            if line.get_transform() != ax.transData or len(line.get_xydata()) == 0:
                continue
            pts = ax.transData.transform(np.asarray(line.get_xydata(), float))  # (n, 2) display pixels
            placed += [Bbox.from_extents(px - 3, py - 3, px + 3, py + 3) for px, py in pts]
            for p, q in zip(pts[:-1], pts[1:]):  # points every 3 px along each segment
                n = int(np.hypot(*(q - p)) // 3)
                placed += [Bbox.from_extents(*(p + (q - p) * f - 1.5), *(p + (q - p) * f + 1.5))
                           for f in np.linspace(0, 1, n + 2)[1:-1]]
    inside = ax.get_window_extent(renderer)
    texts = []
    for x, y, label in zip(xs, ys, labels):
        best = None
        for dx, dy, ha, va in _OFFSETS:
            t = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, color=color)
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            overlap = sum(max(0.0, min(box.x1, b.x1) - max(box.x0, b.x0)) * max(0.0, min(box.y1, b.y1) - max(box.y0, b.y0))
                          for b in placed)
            outside = box.width * box.height - max(0.0, min(box.x1, inside.x1) - max(box.x0, inside.x0)) * \
                max(0.0, min(box.y1, inside.y1) - max(box.y0, inside.y0))
            cost = overlap + outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box)
            else:
                t.remove()
            if cost == 0:
                break
        placed.append(best[2])
        texts.append(best[1])
    ax._uws_label_boxes = placed
    return texts
