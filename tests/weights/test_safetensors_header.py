"""weights/safetensors_header: shapes and dtype codes from the header (bf16 included), damaged files refused by name."""

import pytest
import torch
from safetensors.torch import save_file

from uws_core.weights.safetensors_header import CheckpointFormatError, WeightFormatError, read_safetensors_header


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.zeros(2, 3, dtype=torch.bfloat16), "b.bias": torch.ones(4)}, str(path))
    return path


def test_header_gives_shapes_and_dtype_codes(weights_file):
    assert read_safetensors_header(weights_file) == {"a.weight": ((2, 3), "BF16"), "b.bias": ((4,), "F32")}


@pytest.mark.parametrize("damage", ["truncate", "append", "garbage"])
def test_damaged_files_are_refused_naming_the_file_and_owner(weights_file, damage):
    data = weights_file.read_bytes()
    weights_file.write_bytes({"truncate": data[:-3], "append": data + b"\0\0", "garbage": b"\xff" * 16}[damage])
    with pytest.raises(CheckpointFormatError, match=r"org/model: .*model\.safetensors is not a readable safetensors"):
        read_safetensors_header(weights_file, owner="org/model")


def test_missing_file_raises_the_callers_error(tmp_path):
    class MyError(WeightFormatError):
        pass

    with pytest.raises(MyError, match="nothing.safetensors does not exist"):
        read_safetensors_header(tmp_path / "nothing.safetensors", error=MyError)
