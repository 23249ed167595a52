"""The numerical environment of every uws computation, pinned in one place so that a build gives the
same bits on any x86-64 CPU with AVX2, Intel or AMD.

Why: the laptop populations are trained by our own code, and training is chaotic: a difference in the
last bit of one matmul grows into other weights and other accuracies. On one machine two builds are
bitwise identical, but the kernels that torch picks depend on the CPU. Measured on an AVX-512 Xeon
(tiny Llama / LoRA / ViT builds, sha256 over the weights): each of ``ATEN_CPU_CAPABILITY`` (torch's own
vectorised kernels: avx512 / avx2 / default give three different populations), ``MKL_CBWR`` (MKL's
matmul code path) and oneDNN's ISA (the ViT's patch convolution) changes the weights on its own.

What is pinned (:data:`PINNED_ENV`, set by :func:`pin_environment` when ``uws_core`` is imported, before
torch reads it):

- ``ATEN_CPU_CAPABILITY=avx2``: torch's vectorised kernels at the AVX2 width on every x86-64 CPU that has
  AVX2 (an AVX-512 machine then runs the same code as an AVX2 one);
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility on its vendor-neutral code path
  (SSE2 without the rcpps / rsqrtps approximations). The AVX2 branch we pinned first (``AVX2,STRICT``) is
  "available only for Intel processors" (MKL developer reference, CNR named constants): on a non-Intel CPU
  MKL silently uses its AUTO branch instead. Measured on an AMD EPYC (tiny Llama / LoRA / ViT, 2026-12-07):
  ``AVX2,STRICT`` gave the same bits as ``AUTO`` there and other bits than the AVX2 builds on an Intel Xeon
  that the first fingerprints came from; ``COMPATIBLE`` is the one branch MKL documents for Intel and
  compatible CPUs alike;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN capped at AVX2; and, inside :func:`compute_settings`, oneDNN is not
  used at all (``torch.backends.mkldnn`` off: the convolutions fall back to ATen + MKL, which are pinned).

Inside :func:`compute_settings` the thread count is fixed (MKL's reproducibility holds for a fixed
number of threads) and torch's deterministic algorithms are on. The populations are built and the
notebooks compute under these settings; ``UWS_NATIVE_KERNELS=1`` opts out (faster on AVX-512, other
bits: the population caches are then keyed apart, see :func:`profile`).

Where the pin does not apply: at paper scale (``UWS_SCALE=paper``: the real checkpoints are read, nothing is
trained, and MKL's vendor-neutral branch made float64 Grams 4.5x and ``eigvalsh`` 2.8x slower) and in the ``uws``
command (:func:`release_pin`: it reads, analyses and evaluates checkpoints). Their numbers agree across machines to
round-off, not bit for bit; every checked output is rounded far above that.

Not covered: CPUs without AVX2 and non-x86 machines (Apple silicon, Graviton) run other kernels and get
other bits; the notebooks' checked outputs are written to hold there too (counts, shapes, verdicts;
numbers as asserts with tolerances).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys

__all__ = ["PINNED_ENV", "PINNED_PROFILE", "OPT_OUT", "pin_environment", "pinned_env", "native_requested",
           "paper_scale_requested", "unpinned_env", "release_pin",
           "cpu_has_avx2", "is_pinned", "profile", "kernel_report", "compute_settings", "transformers_quiet",
           "thread_settings",
           "progress_disabled", "PROGRESS_ENV", "KERNEL_THREADS", "single_thread_kernels",
           "stable_seed_32", "stable_seed_63", "stable_seed_63_masked"]

PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: name of the pinned environment (part of every population's cache key and of the committed fingerprints)
PINNED_PROFILE = "pinned-avx2-mklcompat"
OPT_OUT = "UWS_NATIVE_KERNELS"
#: The thread count of every laptop-scale notebook kernel (``make reproduce``, nbval), set through the
#: environment the kernels inherit (``UWS_KERNEL_THREADS`` overrides the 1). One thread: ATen splits its
#: parallel reductions by the thread count, so a kernel's low bits would otherwise follow the machine's core
#: count; and two kernels at a time on a 2-core machine, at 2 threads each, spent about twice their CPU
#: time as wall time (notebook 04: 94 s wall for 47 s CPU).
KERNEL_THREADS = "UWS_KERNEL_THREADS"
#: ``UWS_PROGRESS=0`` turns every progress bar off (:func:`progress_disabled`)
PROGRESS_ENV = "UWS_PROGRESS"


def native_requested(environ=None) -> bool:
    """Whether the user opted out of the pin (``UWS_NATIVE_KERNELS`` set to 1 / true / yes)."""
    environ = os.environ if environ is None else environ
    return environ.get(OPT_OUT, "").strip().lower() in {"1", "true", "yes"}


def pinned_env(environ=None) -> dict:
    """A copy of ``environ`` (default ``os.environ``) with :data:`PINNED_ENV` set, for subprocesses."""
    env = dict(os.environ if environ is None else environ)
    if not native_requested(env):
        env.update(PINNED_ENV)
    return env


#: each pinned variable's value before :func:`pin_environment` set it (None: unset), to undo the pin
_BEFORE_PIN: dict[str, str | None] = {}


def paper_scale_requested(environ=None) -> bool:
    """``UWS_SCALE=paper``, read exactly as :func:`uws_core.weights.scale.scale` reads it (that module sits above this
    layer; a value it refuses, such as ``Paper``, does not unpin either)."""
    environ = os.environ if environ is None else environ
    return environ.get("UWS_SCALE", "laptop") == "paper"


def pin_environment() -> bool:
    """Set :data:`PINNED_ENV` in ``os.environ`` (overriding what is there) unless opted out or at paper scale.

    Returns whether the pin can still take effect in this process: torch reads the CPU capability at its
    first vectorised operation and MKL its branch at its first call, so the pin must come before torch is
    imported (``import uws_core`` first; subprocesses and notebook kernels inherit ``os.environ``).

    Paper scale (``UWS_SCALE=paper``) trains nothing: it reads the real checkpoints, and MKL's vendor-neutral
    branch would only slow its Grams and eigensolvers (float64 Gram updates 4.5x, ``eigvalsh`` at d = 4096 2.8x
    on the 2-core AMD EPYC, 2026-12-07), so it runs MKL's own kernels. What the pin is for, bitwise-equal
    laptop populations and notebooks, is untouched (a kernel that inherits the pin from its parent keeps it).
    """
    if native_requested() or paper_scale_requested():
        return False
    for k in PINNED_ENV:
        _BEFORE_PIN.setdefault(k, os.environ.get(k))
    os.environ.update(PINNED_ENV)
    return "torch" not in sys.modules


def unpinned_env(environ=None) -> dict:
    """A copy of ``environ`` (default ``os.environ``) with this process's pin undone: each variable
    :func:`pin_environment` set back to its value before (removed if it was unset; a variable the pin did not
    set is left as it is) and ``UWS_NATIVE_KERNELS=1``, so that a ``uws_core`` child does not pin again. For
    processes that analyse real checkpoints or run a peer's code (``benchmarks/``): MKL at its own speed."""
    env = dict(os.environ if environ is None else environ)
    for k, before in _BEFORE_PIN.items():
        if before is None:
            env.pop(k, None)
        else:
            env[k] = before
    env[OPT_OUT] = "1"
    return env


def release_pin() -> bool:
    """Undo :func:`pin_environment` in this process while torch is not imported yet (then MKL, at its first call,
    and torch read the environment as it was); returns whether it did. Called by the ``uws`` command, whose
    commands read, analyse and evaluate checkpoints and train nothing. Once torch is imported (a test calling
    :func:`uws_core.cli.main` in-process) it changes nothing: kernels already chosen cannot change."""
    if "torch" in sys.modules or not _BEFORE_PIN:
        return False
    env = unpinned_env()
    for k in (*_BEFORE_PIN, OPT_OUT):
        if k in env:
            os.environ[k] = env[k]
        else:
            os.environ.pop(k, None)
    _BEFORE_PIN.clear()
    return True


def single_thread_kernels(environ=None) -> dict:
    """Set ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` in ``environ`` (default ``os.environ``) to
    ``$UWS_KERNEL_THREADS`` (default 1) for the notebook kernels started after this call; returns what it set.
    Called by :mod:`uws_core.report.reproduce` and the root ``conftest.py`` at laptop scale (paper-scale kernels keep
    every core: their eigensolvers are what the threads are for)."""
    environ = os.environ if environ is None else environ
    n = environ.get(KERNEL_THREADS, "").strip() or "1"
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"{KERNEL_THREADS} must be a positive integer, got {n!r}")
    threads = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    environ.update(threads)
    return threads


def cpu_has_avx2() -> bool:
    """x86-64 with AVX2 (read from /proc/cpuinfo on Linux; torch's own probe elsewhere)."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        import torch

        return torch.backends.cpu.get_cpu_capability() in {"AVX2", "AVX512"}


def is_pinned() -> bool:
    """Whether this process runs the pinned kernels: the pin is in ``os.environ`` and torch reports the
    AVX2 capability (on an x86-64 CPU with AVX2; elsewhere the pin cannot hold and this is False)."""
    import torch

    if native_requested() or not cpu_has_avx2():
        return False
    env_ok = all(os.environ.get(k) == v for k, v in PINNED_ENV.items())
    return env_ok and torch.backends.cpu.get_cpu_capability() == "AVX2"


def profile() -> str:
    """The name of the numerical environment, part of every population's cache key: :data:`PINNED_PROFILE` when
    :func:`is_pinned`, else ``native-<machine>-<torch capability>`` (other bits, another cache entry)."""
    import torch

    if is_pinned():
        return PINNED_PROFILE
    return f"native-{platform.machine().lower()}-{torch.backends.cpu.get_cpu_capability().lower()}"


def kernel_report() -> dict:
    """What this process computes with: profile, torch capability, the pin variables, threads."""
    import torch

    return {"profile": profile(), "machine": platform.machine(), "cpu_has_avx2": cpu_has_avx2(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "env": {k: os.environ.get(k) for k in PINNED_ENV}, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


@contextlib.contextmanager
def compute_settings(num_threads: int | None = 1, deterministic: bool | None = True, quiet: bool = True,
                     onednn: bool | None = False):
    """Inside the block: ``num_threads`` torch threads, deterministic algorithms, oneDNN off (its kernels are
    chosen by the CPU), and no transformers progress bars (``quiet``); the caller's settings are restored
    after, also on an error. ``None`` leaves that setting as the caller has it. The one context for the
    thread count, determinism, oneDNN and transformers' bars: training, evaluation, checkpoint writing and
    the notebooks' heavy cells all enter it (:func:`transformers_quiet` is its bars-only form)."""
    import torch

    with contextlib.ExitStack() as restore:
        if num_threads is not None:
            threads = torch.get_num_threads()
            restore.callback(torch.set_num_threads, threads)
            torch.set_num_threads(int(num_threads))
        if deterministic is not None:
            det = torch.are_deterministic_algorithms_enabled()
            restore.callback(torch.use_deterministic_algorithms, det)
            torch.use_deterministic_algorithms(bool(deterministic))
        if onednn is not None:
            restore.callback(setattr, torch.backends.mkldnn, "enabled", torch.backends.mkldnn.enabled)
            torch.backends.mkldnn.enabled = bool(onednn)
        if quiet:
            from transformers.utils import logging as hf_logging

            if hf_logging.is_progress_bar_enabled():
                restore.callback(hf_logging.enable_progress_bar)
            hf_logging.disable_progress_bar()
        yield


def progress_disabled(show: bool = True) -> bool | None:
    """tqdm's ``disable`` argument for every uws progress bar: True when ``show`` is false or ``UWS_PROGRESS=0``
    (every bar off), else None: tqdm's own rule, a bar only when its stream is a terminal (none in a pipe, a
    log, CI or a notebook kernel). Bars only count: they never touch a generator or a tensor."""
    if not show or os.environ.get(PROGRESS_ENV, "1").strip() == "0":
        return True
    return None


def thread_settings(num_threads: int | None):
    """:func:`compute_settings` on ``num_threads`` torch threads with oneDNN off (``None``: nothing changed),
    determinism and transformers' bars as the caller has them: for small linear algebra (the laptop leave-one-out
    matrices are tiny; one thread avoids OpenMP hand-offs that cost ~50x on a shared 2-core machine)."""
    return compute_settings(num_threads, deterministic=None, quiet=False,
                            onednn=None if num_threads is None else False)


def transformers_quiet():
    """:func:`compute_settings` that only turns transformers' progress bars off (threads, determinism and
    oneDNN as the caller has them): for writing or initialising models outside a computation."""
    return compute_settings(num_threads=None, deterministic=None, quiet=True, onednn=None)


# ------------------------------------------------------------------------------------------------ seeds
# Seeds from printable parts, stable across processes (Python's hash() is salted): sha256 of repr(parts).
# Three widths exist because three parts of the code drew their streams from them before they met here; each
# keeps its own so that every population and result keeps its bits.

def _digest(parts) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def stable_seed_32(*parts) -> int:
    """First 4 bytes of the digest, little-endian: a 32-bit seed (the task and LoRA / Llama populations)."""
    return int.from_bytes(_digest(parts)[:4], "little")


def stable_seed_63(*parts) -> int:
    """First 8 bytes, little-endian, shifted right by one: a 63-bit seed (the ViT tasks and adaptation splits)."""
    return int.from_bytes(_digest(parts)[:8], "little") >> 1


def stable_seed_63_masked(*parts) -> int:
    """First 8 bytes, little-endian, top bit cleared: a 63-bit seed (merging's validation subsets, DARE masks)."""
    return int.from_bytes(_digest(parts)[:8], "little") & (2**63 - 1)
