"""Loaded by pytest before any test module or notebook kernel: importing uws_core first pins the CPU
kernels (uws_core.numerics) in this process and in every notebook kernel it starts (they inherit the
environment), before torch is imported anywhere."""

import uws_core  # noqa: F401  (side effect: uws_core.numerics.pin_environment)
