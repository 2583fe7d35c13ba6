"""Device maps: which device each tensor goes to, and the maps a packed model refuses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from nanofmt.loaders.modeling_nano import device_lookup, resolve_device_map, resolve_dtype  # noqa: E402


def test_loaders_device_map_longest_prefix_wins() -> None:
    with pytest.raises(ValueError, match="do not offload to the CPU"):
        resolve_device_map(torch.nn.Module(), {"": "cpu", "model.layers.1": 0}, None)  # packed weights are not offloaded
    mapping = resolve_device_map(torch.nn.Module(), {"model": 0, "model.layers.1": 1, "lm_head": "cuda:1"}, None)
    of = device_lookup(mapping)
    assert of("model.layers.1.mlp.up_proj.weight_codes") == torch.device("cuda", 1)
    assert of("model.layers.10.mlp.up_proj.weight_codes") == torch.device("cuda", 0)  # "layers.1" is not a prefix of "layers.10"
    assert of("lm_head.weight") == torch.device("cuda", 1)


def test_loaders_device_map_single_devices() -> None:
    assert resolve_device_map(torch.nn.Module(), None, None) == {"": torch.device("cpu")}
    assert resolve_device_map(torch.nn.Module(), "cuda:0", None) == {"": torch.device("cuda", 0)}
    assert resolve_device_map(torch.nn.Module(), 1, None) == {"": torch.device("cuda", 1)}
    with pytest.raises(ValueError, match="disk"):
        resolve_device_map(torch.nn.Module(), {"": "disk"}, None)
    with pytest.raises(ValueError, match="places no module"):
        device_lookup({"model": torch.device("cpu")})("lm_head.weight")


def test_loaders_dtype_resolution() -> None:
    class Config:
        dtype = torch.bfloat16

    assert resolve_dtype("auto", Config()) == torch.bfloat16
    assert resolve_dtype("float16", Config()) == torch.float16
    assert resolve_dtype(torch.float32, Config()) == torch.float32
    assert resolve_dtype(None, object()) == torch.float32
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        resolve_dtype(torch.int8, Config())
