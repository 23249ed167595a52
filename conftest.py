"""Loaded by pytest before any test module or notebook kernel: importing uws_core first pins the CPU
kernels (uws_core.linalg.numerics) in this process and in every notebook kernel it starts (they inherit the
environment), before torch is imported anywhere; at laptop scale the kernels (and the test workers) also
run one thread each, as under ``make reproduce`` (uws_core.linalg.numerics.single_thread_kernels)."""

import uws_core  # noqa: F401  (side effect: uws_core.linalg.numerics.pin_environment)
from uws_core.linalg.numerics import single_thread_kernels
from uws_core.report.results import scale

if scale() == "laptop":
    single_thread_kernels()
