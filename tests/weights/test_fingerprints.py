"""Population fingerprints (uws_core.weights.fingerprints) and the pinned numerical environment (uws_core.linalg.numerics):
the tiny populations built under other CPU settings have the committed fingerprints."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from uws_core.weights import fingerprints

from uws_core.linalg import numerics
from uws_core.weights.fingerprints import compare_with_committed, population_fingerprint, record_fingerprints

REPO = fingerprints.COMMITTED.parent.parent


def _write(root, files):
    for rel, tensors in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(root / rel))


def _pop(seed=0):
    rng = np.random.default_rng(seed)
    return {"a/model.safetensors": {"w": rng.standard_normal((3, 4)).astype(np.float32),
                                    "b": rng.standard_normal(4).astype(np.float32)},
            "b/adapter_model.safetensors": {"lora_A": rng.standard_normal((2, 4)).astype(np.float32)}}


def test_fingerprint_names_the_weights_only(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    files = _pop()
    _write(one, files)
    _write(two, dict(reversed(list(files.items()))))      # other write order
    (two / "records.csv").write_text("not a weight")       # other non-weight files
    assert population_fingerprint(one) == population_fingerprint(two)
    assert len(population_fingerprint(one)) == 64


def test_one_bit_one_dtype_or_one_name_changes_it(tmp_path):
    files = _pop()
    _write(tmp_path / "ref", files)
    ref = population_fingerprint(tmp_path / "ref")
    flipped = {k: dict(v) for k, v in files.items()}
    w = flipped["a/model.safetensors"]["w"].copy()
    w.view(np.uint32)[1, 2] ^= 1                           # the last bit of one weight
    flipped["a/model.safetensors"]["w"] = w
    as64 = {k: {n: t.astype(np.float64) for n, t in v.items()} for k, v in files.items()}
    renamed = {"c/model.safetensors": files["a/model.safetensors"], "b/adapter_model.safetensors":
               files["b/adapter_model.safetensors"]}
    for i, variant in enumerate((flipped, as64, renamed)):
        _write(tmp_path / str(i), variant)
        assert population_fingerprint(tmp_path / str(i)) != ref, i


def test_empty_or_damaged_population_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        population_fingerprint(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="model.safetensors"):
        population_fingerprint(tmp_path)


def test_record_and_compare(tmp_path):
    path = tmp_path / "fp.json"
    assert compare_with_committed("lora/seed0", "a" * 64, "pinned-avx2", path) == "not-committed"
    record_fingerprints({"lora/seed0": {"sha256": "a" * 64}}, "pinned-avx2", path)
    assert compare_with_committed("lora/seed0", "a" * 64, "pinned-avx2", path) == "match"
    assert compare_with_committed("lora/seed0", "b" * 64, "pinned-avx2", path) == "DIFFERS"
    assert compare_with_committed("lora/seed0", "b" * 64, "native-x86_64-avx512", path) == "other-profile"
    with pytest.raises(ValueError, match="profile 'pinned-avx2'"):
        record_fingerprints({"x": {"sha256": "c"}}, "native-arm64-default", path)


def test_committed_file_has_every_population():
    from uws_core.zoo.populations import population_names

    data = fingerprints.committed_fingerprints()
    assert data["profile"] == numerics.PINNED_PROFILE
    assert set(population_names()) | {"tiny/llama", "tiny/lora", "tiny/vit"} <= set(data["populations"])


def test_pinned_env_overrides_and_opts_out():
    env = numerics.pinned_env({"ATEN_CPU_CAPABILITY": "default", "PATH": "/bin"})
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["PATH"] == "/bin"
    assert numerics.pinned_env({"UWS_NATIVE_KERNELS": "1", "MKL_CBWR": "AUTO"})["MKL_CBWR"] == "AUTO"
    assert os.environ["MKL_CBWR"] == numerics.PINNED_ENV["MKL_CBWR"]   # uws_core was imported (conftest)


def _tiny_fingerprints(env_overrides: dict, kinds) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV}
    env.update(env_overrides)
    code = ("import json, uws_core; from uws_core.zoo.populations import fingerprint_tiny; "
            f"from uws_core.linalg.numerics import profile; print(json.dumps([profile(), fingerprint_tiny(kinds={kinds!r})]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_avx2 = pytest.mark.skipif(not numerics.cpu_has_avx2(), reason="the pin holds on x86-64 CPUs with AVX2")


@needs_avx2
def test_tiny_populations_are_bitwise_equal_under_other_cpu_settings():
    """What another x86-64 machine does differently (capability, MKL branch, oneDNN ISA), set from outside:
    the pin overrides it, and the weights equal the committed ones bit for bit."""
    kinds = ("llama", "lora", "vit")
    low = _tiny_fingerprints({"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                              "ONEDNN_MAX_CPU_ISA": "SSE41"}, kinds)
    high = _tiny_fingerprints({"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO",
                               "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, kinds)
    assert low[0] == high[0] == numerics.PINNED_PROFILE
    assert low[1] == high[1]
    committed = fingerprints.committed_fingerprints()["populations"]
    assert {k: committed[k]["sha256"] for k in low[1]} == low[1]


@needs_avx2
def test_without_the_pin_the_capability_changes_the_weights():
    """The negative control: the same tiny build with the pin switched off moves with the CPU capability
    (so the test above could fail)."""
    default = _tiny_fingerprints({"UWS_NATIVE_KERNELS": "1", "ATEN_CPU_CAPABILITY": "default"}, ("llama",))
    avx2 = _tiny_fingerprints({"UWS_NATIVE_KERNELS": "1", "ATEN_CPU_CAPABILITY": "avx2"}, ("llama",))
    assert default[0] != avx2[0] and default[1] != avx2[1]
