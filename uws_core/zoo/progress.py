"""Progress bars for the long steps (population training, ``reproduce``): tqdm on stderr, only for a person.

A bar is shown when stderr is a terminal and ``UWS_PROGRESS`` is not ``0``; in a pipe, a log file, CI or a
notebook kernel it is disabled (no output at all), and ``UWS_PROGRESS=0`` turns every bar off (the rule of
:func:`uws_core.linalg.numerics.progress_disabled`, which the CLI's and the weight loops' bars follow too). Bars never
touch a random number generator or a tensor: they only count, so a build with bars gives the same bits as
one without (``python -m uws_core.zoo.populations --tiny`` compares the fingerprints).

Several builds may run at once, one per worker process (:func:`uws_core.zoo.populations.build_all`): each
worker gets a slot (:func:`set_slot`), and its bars take the terminal lines ``1 + 2 * slot`` (models) and
``2 + 2 * slot`` (steps) below the parent's line 0, each labelled with the population it trains
(:func:`labelled`), so two workers' bars do not overwrite each other.
"""

from __future__ import annotations

import contextlib
import sys

from uws_core.linalg.numerics import progress_disabled

__all__ = ["enabled", "bar", "set_slot", "labelled"]

_state = {"slot": None, "label": ""}


def enabled() -> bool:
    """True when bars should be drawn: ``UWS_PROGRESS`` is not ``0`` and stderr is a terminal
    (:func:`uws_core.linalg.numerics.progress_disabled`, the rule of every uws bar)."""
    if progress_disabled():
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def set_slot(slot: int | None) -> None:
    """This process's worker slot (0, 1, ...; None: the main process): where its bars sit on the terminal."""
    _state["slot"] = slot


@contextlib.contextmanager
def labelled(label: str):
    """Prefix every bar opened inside with ``label`` (the population's name, e.g. ``lora/seed1``)."""
    old = _state["label"]
    _state["label"] = label
    try:
        yield
    finally:
        _state["label"] = old


def bar(total: int | None = None, desc: str = "", level: int = 0, show: bool = True, **kwargs):
    """A tqdm bar on stderr (disabled unless :func:`enabled` and ``show``); ``level`` 0 counts models or
    notebooks, 1 the steps inside one. Use as a context manager; ``update(n)`` is all the trainers call."""
    from tqdm import tqdm  # plain: a notebook kernel's stderr is no terminal, so no widget is wanted

    label = _state["label"]
    slot = _state["slot"]
    position = level if slot is None else 1 + 2 * slot + level
    return tqdm(total=total, desc=f"{label} {desc}".strip(), file=sys.stderr, disable=not (show and enabled()),
                position=position, leave=slot is None and level == 0, mininterval=1.0, dynamic_ncols=True,
                **kwargs)
