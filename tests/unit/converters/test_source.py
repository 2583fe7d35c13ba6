"""Reading HF folders: memory-mapped safetensors (bf16 as bits), shards, .bin, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from nanofmt.converters import ConvertError
from nanofmt.converters.source import open_source, resolve_source


def folder(tmp_path: Path, tensors: dict[str, np.ndarray], config: dict | None = None) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def test_source_reads_rows_and_releases_pages(tmp_path, rng):
    w = rng.standard_normal((50, 33)).astype(np.float32)
    with open_source(folder(tmp_path, {"w": w, "b": w[0].astype(np.float16), "d": w.astype(np.float64)})) as src:
        assert set(src.tensors) == {"w", "b", "d"}
        assert np.array_equal(src.read("w", slice(10, 20)), w[10:20])
        src.release("w")
        assert np.array_equal(src.read("w"), w)  # released pages come back from the file
        assert src.read("b").dtype == np.float16 and src.tensors["b"].record_dtype == "f16"
        assert src.read("d").dtype == np.float32 and src.tensors["d"].record_dtype == "f32"
        assert src.format == "safetensors" and src.nbytes == (tmp_path / "model.safetensors").stat().st_size


def test_source_bf16_arrives_as_bits(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    t = torch.randn(6, 40).to(torch.bfloat16)
    (tmp_path / "config.json").write_text("{}")
    save_torch({"w": t}, tmp_path / "model.safetensors")
    with open_source(tmp_path) as src:
        bits = src.read("w", slice(2, 5))
        assert bits.dtype == np.uint16 and np.array_equal(bits, t[2:5].view(torch.int16).numpy().view(np.uint16))
        assert src.tensors["w"].record_dtype == "bf16"


def test_source_sharded_index(tmp_path, rng):
    a, b = rng.standard_normal((4, 32)).astype(np.float32), rng.standard_normal((8,)).astype(np.float32)
    (tmp_path / "config.json").write_text("{}")
    save_file({"a": a}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": b}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with open_source(tmp_path) as src:
        assert list(src.tensors) == ["a", "b"] and len(src.files) == 2
        assert np.array_equal(src.read("b"), b)
    save_file({"a": a}, tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(ConvertError, match="in both") as info:
        open_source(tmp_path)
    assert info.value.reason == "source_malformed"
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConvertError) as info:
        open_source(tmp_path)
    assert info.value.reason == "weights_missing"


def test_source_bin_weights(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"w": torch.randn(5, 32).to(torch.bfloat16), "n": torch.ones(32), "ids": torch.arange(4)}
    (tmp_path / "config.json").write_text("{}")
    torch.save(state, tmp_path / "pytorch_model.bin")
    with open_source(tmp_path) as src:
        assert src.format == "bin"
        assert {n: t.dtype for n, t in src.tensors.items()} == {"w": "BF16", "n": "F32", "ids": "I64"}
        assert np.array_equal(src.read("w", slice(1, 3)), state["w"][1:3].view(torch.int16).numpy().view(np.uint16))
        assert not src.tensors["ids"].is_float


def test_source_sharded_bin_weights(tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "config.json").write_text("{}")
    torch.save({"a": torch.ones(2, 32)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.zeros(3)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = {"weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with open_source(tmp_path) as src:
        assert src.format == "bin" and list(src.tensors) == ["a", "b"]
        assert src.read("a").sum() == 64


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x05\x00", "source_malformed"),
        ((10**9).to_bytes(8, "little") + b"{}", "source_malformed"),
        ((4).to_bytes(8, "little") + b"nope", "source_malformed"),
        ((60).to_bytes(8, "little") + json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode().ljust(60), "source_malformed"),
    ],
)
def test_source_malformed_safetensors(tmp_path, content, reason):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ConvertError) as info:
        open_source(tmp_path)
    assert info.value.reason == reason


def test_source_float8_is_unsupported(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with open_source(tmp_path) as src, pytest.raises(ConvertError) as info:
        _ = src.tensors["w"].record_dtype
    assert info.value.reason == "dtype_unsupported"


def test_source_missing_folder_and_config(tmp_path):
    with pytest.raises(ConvertError, match="no such folder"):
        open_source(tmp_path / "missing")
    with pytest.raises(ConvertError) as info:
        open_source(tmp_path)
    assert info.value.reason == "config_missing"
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ConvertError, match="not a JSON object"):
        open_source(tmp_path)


def test_source_hub_ids_and_local_typos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert resolve_source("models/missing") == Path("models/missing")  # a typo next to a real folder, not a repo
    assert resolve_source(str(tmp_path)) == tmp_path
