"""The names of the unfoldings, centrings, peer recipes and scalings, in one torch-free place.

The solvers (:mod:`uws_core.linalg.spectral`, :mod:`uws_core.linalg.recipes`) re-export them; the command
line reads them from here so that ``uws --help``, ``uws manifest lock`` and ``uws download`` start without
importing torch (about 2 s of CPU per call on the project's machine).
"""

from __future__ import annotations

__all__ = ["UNFOLDINGS", "CENTERS", "RECIPES", "SCALINGS", "DEFAULT_SCALING"]

#: how an (N, d_out, d_in) stack is flattened: rows stacked (N d_out, d_in), columns stacked (N d_in, d_out),
#: or one flattened model per row (N, d_out d_in) (:func:`uws_core.linalg.spectral.unfold`)
UNFOLDINGS = ("rows", "cols", "model")
#: what is subtracted before the SVD: nothing, the mean matrix over models, or the mean sample (row)
CENTERS = ("none", "models", "samples")
#: the peers' recipes (:data:`uws_core.linalg.recipes.SOURCES` names the file each follows)
RECIPES = ("authors-pca", "authors-subspace", "replication")
#: LoRA factor scaling applied before a recipe: alpha / r (PEFT's) or none
SCALINGS = ("alpha-over-r", "none")
#: each recipe's scaling as its source code applies it (None: uws's own unfoldings)
DEFAULT_SCALING = {"authors-pca": "none", "authors-subspace": "none", "replication": "none", None: "alpha-over-r"}
