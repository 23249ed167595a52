"""uws_core: the small shared library under the uws notebooks.

An open reproduction of "The Universal Weight Subspace Hypothesis" (arXiv 2512.05117). One folder per layer,
imports flowing one way (report -> experiments -> zoo -> weights -> linalg; ``tests/test_layout.py`` checks it):

* ``linalg``: the SVD module: unfoldings and centring, in-memory / streaming / factored LoRA spectra, the
  eigen-solvers, subspaces (EVR, projection, angles, random bases), nulls, device and numerics policy;
* ``weights``: PEFT adapters, transformers checkpoints, kohya LoRAs, manifests, the verified hub download,
  the cache, fingerprints and the per-key population spectra driver;
* ``zoo``: the laptop populations our code trains (tasks, tiny Mistral / ViT / Llama, their builds);
* ``experiments``: merging, adaptation, leave-one-out projection, compression, the shared-init study;
* ``report``: results files, figures, published numbers, the claims ledger, ``make reproduce``;
* ``cli``: the ``uws`` command.
"""

__version__ = "0.1.0"


def lazy_exports(package: str, api: dict[str, tuple[str, ...]]):
    """``(__getattr__, __dir__)`` for a layer's ``__init__``: ``api`` maps each module of the package to the public
    names it defines; each name is imported from its module on first use, so ``import uws_core.<layer>`` stays
    cheap (``tests/test_layout.py`` checks that the table equals the modules' ``__all__``)."""
    import importlib

    api = {name: module for module, names in api.items() for name in names}

    def __getattr__(name: str):
        if name in api:
            return getattr(importlib.import_module(f"{package}.{api[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(api) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__


# Pin torch's / MKL's / oneDNN's CPU kernels before anything imports torch (uws_core.linalg.numerics): the same
# bits on every x86-64 CPU with AVX2. UWS_NATIVE_KERNELS=1 opts out.
from uws_core.linalg.numerics import pin_environment as _pin_environment

_pin_environment()

