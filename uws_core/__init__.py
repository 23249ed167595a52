"""uws_core: the small shared library under the uws notebooks.

An open reproduction of "The Universal Weight Subspace Hypothesis" (arXiv 2512.05117).
Modules are flat and named after what they do: ``spectral`` (unfoldings and spectra of weight
stacks), ``lora`` (LoRA products in factored form), ``subspace`` (EVR, projection, angles),
``nulls`` (Gaussian and Marchenko-Pastur nulls), ``adapters`` / ``checkpoints`` (lazy loaders of
PEFT adapters and transformers checkpoints), ``tasks`` / ``tinylm`` / ``lora_zoo`` (the laptop-scale
LoRA population), ``manifests`` (paper-scale model lists), ``plots``, ``results`` and ``cli``.
"""

__version__ = "0.1.0"

# Pin torch's / MKL's / oneDNN's CPU kernels before anything imports torch (uws_core.numerics): the same
# bits on every x86-64 CPU with AVX2. UWS_NATIVE_KERNELS=1 opts out.
from uws_core.numerics import pin_environment as _pin_environment

_pin_environment()
