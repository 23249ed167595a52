"""Loaded by pytest before any test module or notebook kernel: importing uws_core first pins the CPU
kernels (uws_core.linalg.numerics) in this process and in every notebook kernel it starts (they inherit the
environment), before torch is imported anywhere; at laptop scale the kernels (and the test workers) also
run one thread each, as under ``make reproduce`` (uws_core.linalg.numerics.single_thread_kernels)."""

import uws_core  # noqa: F401  (side effect: uws_core.linalg.numerics.pin_environment)
from uws_core.linalg.numerics import single_thread_kernels
from uws_core.report.results import scale

if scale() == "laptop":
    single_thread_kernels()


def pytest_configure(config):
    """nbval: run the notebooks in this environment's python (``--nbval-current-env``) unless a kernel is named
    on the command line, so the kernel the notebooks name ("uws", installed by ``make lab``) need not exist."""
    opt = config.option
    if hasattr(opt, "nbval_current_env") and not (opt.nbval_current_env or opt.nbval_kernel_name
                                                  or getattr(opt, "current_env", False)):
        opt.nbval_current_env = True
