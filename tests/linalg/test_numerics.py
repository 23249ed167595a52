"""The pinned numerical environment (uws_core.linalg.numerics)."""

import os
import subprocess
import sys

import pytest
import torch

from uws_core.linalg import numerics


def test_compute_settings_sets_and_restores():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.enabled)
    with numerics.compute_settings(1):
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.mkldnn.enabled
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.enabled) == before


def test_compute_settings_none_leaves_a_setting_alone_and_quiet_restores_the_bars():
    from transformers.utils import logging as hf_logging

    det, bars = torch.are_deterministic_algorithms_enabled(), hf_logging.is_progress_bar_enabled()
    torch.use_deterministic_algorithms(False)
    hf_logging.enable_progress_bar()
    try:
        state = lambda: (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),  # noqa: E731
                         torch.backends.mkldnn.enabled, hf_logging.is_progress_bar_enabled())
        before = state()
        with numerics.compute_settings(1, deterministic=None, quiet=False, onednn=None):
            assert state() == (1,) + before[1:]
        with numerics.transformers_quiet():
            assert state() == before[:3] + (False,)
        assert state() == before
        hf_logging.disable_progress_bar()  # bars already off: left off after the block
        with numerics.compute_settings(1):
            assert state() == (1, True, False, False)
        assert state() == before[:3] + (False,)
    finally:
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        torch.use_deterministic_algorithms(det)


def test_thread_settings_sets_threads_and_onednn_only_and_none_changes_nothing():
    state = lambda: (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),  # noqa: E731
                     torch.backends.mkldnn.enabled)
    before = state()
    with numerics.thread_settings(1):
        assert state() == (1, before[1], False)
    assert state() == before
    with numerics.thread_settings(None):
        assert state() == before
    assert state() == before


def test_progress_disabled_follows_show_and_the_environment(monkeypatch):
    monkeypatch.delenv("UWS_PROGRESS", raising=False)
    assert numerics.progress_disabled() is None and numerics.progress_disabled(False) is True
    monkeypatch.setenv("UWS_PROGRESS", "0")
    assert numerics.progress_disabled() is True
    monkeypatch.setenv("UWS_PROGRESS", "1")
    assert numerics.progress_disabled() is None


def test_compute_settings_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with numerics.compute_settings(1):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not numerics.cpu_has_avx2(), reason="the pin holds on x86-64 CPUs with AVX2")
def test_this_test_process_is_pinned():
    """conftest.py imports uws_core before torch: the pin reached torch in this process."""
    assert numerics.is_pinned() and numerics.profile() == numerics.PINNED_PROFILE
    report = numerics.kernel_report()
    assert report["torch_cpu_capability"] == "AVX2" and report["env"] == numerics.PINNED_ENV


def _probe(code, env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV and k != numerics.OPT_OUT}
    env.update(env_overrides)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not numerics.cpu_has_avx2(), reason="the pin holds on x86-64 CPUs with AVX2")
def test_pin_applies_only_when_uws_core_comes_first():
    first = "import uws_core, torch; from uws_core.linalg.numerics import profile; print(profile())"
    late = "import torch; torch.ones(3).sum(); import uws_core; from uws_core.linalg.numerics import profile; print(profile())"
    assert _probe(first, {"ATEN_CPU_CAPABILITY": "default"}) == numerics.PINNED_PROFILE
    assert _probe(late, {"ATEN_CPU_CAPABILITY": "default"}).startswith("native-")   # too late: keyed apart
    assert _probe(first, {numerics.OPT_OUT: "1", "ATEN_CPU_CAPABILITY": "default"}) == "native-x86_64-default"


def test_single_thread_kernels_sets_one_thread_or_the_override():
    from uws_core.linalg.numerics import single_thread_kernels

    env = {}
    assert single_thread_kernels(env) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} and env["OMP_NUM_THREADS"] == "1"
    env = {"UWS_KERNEL_THREADS": "4"}
    single_thread_kernels(env)
    assert env["MKL_NUM_THREADS"] == "4"
    with pytest.raises(ValueError, match="UWS_KERNEL_THREADS"):
        single_thread_kernels({"UWS_KERNEL_THREADS": "two"})


def test_paper_scale_runs_mkls_own_kernels_and_a_kernel_that_inherits_the_pin_keeps_it():
    env_of = "import os, uws_core; print(os.environ.get('MKL_CBWR'), os.environ.get('ATEN_CPU_CAPABILITY'))"
    assert _probe(env_of, {"UWS_SCALE": "paper"}) == "None None"                   # nothing pinned at paper scale
    assert _probe(env_of, {"UWS_SCALE": "laptop"}) == "COMPATIBLE avx2"
    assert _probe(env_of, {"UWS_SCALE": "paper", **numerics.PINNED_ENV}) == "COMPATIBLE avx2"  # inherited: kept


def test_release_pin_restores_the_environment_before_torch_and_not_after():
    code = ("import os, uws_core; from uws_core.linalg import numerics as n; ok = n.release_pin(); "
            "print(ok, os.environ.get('MKL_CBWR'), os.environ.get('ATEN_CPU_CAPABILITY'), os.environ.get(n.OPT_OUT))")
    assert _probe(code, {"ATEN_CPU_CAPABILITY": "default"}) == "True None default 1"   # the user's own value is back
    late = ("import os, uws_core, torch; from uws_core.linalg import numerics as n; "
            "print(n.release_pin(), os.environ.get('MKL_CBWR'))")
    assert _probe(late, {}) == "False COMPATIBLE"                                    # torch is in: nothing changes
    cli = ("import os, uws_core.cli as c\ntry:\n    c.main(['manifest', '--help'])\nexcept SystemExit:\n    pass\n"
           "import sys; print('torch' in sys.modules, os.environ.get('MKL_CBWR'), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV and k != numerics.OPT_OUT}
    out = subprocess.run([sys.executable, "-c", cli], env=env, capture_output=True, text=True, timeout=120)
    assert out.stderr.strip().splitlines()[-1] == "False None"                      # the uws command runs unpinned


def test_unpinned_env_undoes_only_what_the_pin_set(monkeypatch):
    monkeypatch.setattr(numerics, "_BEFORE_PIN", {"MKL_CBWR": None, "ATEN_CPU_CAPABILITY": "avx512"})
    env = numerics.unpinned_env({"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert env == {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX2", numerics.OPT_OUT: "1"}
