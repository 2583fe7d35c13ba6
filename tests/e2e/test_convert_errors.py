"""Failure paths of a conversion: every one ends with a clear ConvertError and no DST (or the old DST untouched)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from nanofmt.converters import ConvertError, convert, dequantize_folder
from nanofmt.converters import shard as shard_module

pytest.importorskip("transformers")


def leftovers(parent: Path) -> list[str]:
    """Temporary siblings a conversion may have left next to its destination."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("when", [1, 5])
def test_convert_interrupt_leaves_no_destination(tiny_model, tmp_path, when):
    def interrupt(event):
        if event.tensors_done == when:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(tiny_model("llama"), tmp_path / "nano", progress=interrupt, max_shard_size="20KB")
    assert not (tmp_path / "nano").exists() and leftovers(tmp_path) == []


def test_convert_interrupt_stops_worker_processes_promptly(tiny_model, tmp_path):
    import time

    def interrupt(event):
        if event.tensors_done == 2:
            raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_model("mistral"), tmp_path / "nano", progress=interrupt, workers=2)
    assert time.monotonic() - start < 8
    assert not (tmp_path / "nano").exists() and leftovers(tmp_path) == []


def test_convert_sigterm_cleans_up_like_ctrl_c(tiny_model, tmp_path):
    def terminate(event):
        if event.tensors_done == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="terminated"):
        convert(tiny_model("llama"), tmp_path / "nano", progress=terminate)
    assert not (tmp_path / "nano").exists() and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_convert_interrupt_keeps_existing_destination(tiny_model, tmp_path):
    convert(tiny_model("llama"), tmp_path / "nano", policy="int8")
    before = (tmp_path / "nano" / "model.safetensors").read_bytes()

    def interrupt(event):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(tiny_model("llama"), tmp_path / "nano", policy="tiedq", force=True, progress=interrupt)
    assert (tmp_path / "nano" / "model.safetensors").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_convert_full_disk_is_a_clear_error(tiny_model, tmp_path, monkeypatch):
    def no_space(self, name, qt, sqnr_db=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shard_module.ShardWriter, "add", no_space)
    with pytest.raises(ConvertError, match="No space left on device") as info:
        convert(tiny_model("llama"), tmp_path / "nano")
    assert info.value.reason == "write_failed"
    assert not (tmp_path / "nano").exists() and leftovers(tmp_path) == []


def test_convert_refuses_non_empty_destination(tiny_model, tmp_path):
    (tmp_path / "nano").mkdir()
    (tmp_path / "nano" / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError) as info:
        convert(tiny_model("llama"), tmp_path / "nano")
    assert info.value.reason == "dst_exists" and (tmp_path / "nano" / "keep.txt").read_text() == "mine"
    convert(tiny_model("llama"), tmp_path / "nano", force=True)
    assert not (tmp_path / "nano" / "keep.txt").exists() and (tmp_path / "nano" / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []


def test_convert_accepts_empty_destination_folder(tiny_model, tmp_path):
    (tmp_path / "nano").mkdir()
    convert(tiny_model("llama"), tmp_path / "nano")
    assert (tmp_path / "nano" / "config.json").is_file()


def test_convert_refuses_to_write_over_its_source(tiny_model, tmp_path):
    src = copy_model(tiny_model("llama"), tmp_path / "src")
    for dst in (src, src / "nano"):
        with pytest.raises(ConvertError) as info:
            convert(src, dst, force=True)
        assert info.value.reason == "dst_is_source"
    assert (src / "model.safetensors").is_file()


def test_convert_unwritable_destination(tiny_model, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConvertError) as info:
        convert(tiny_model("llama"), tmp_path / "a-file" / "nano")
    assert info.value.reason == "dst_unwritable"


def test_convert_missing_config(tiny_model, tmp_path):
    src = copy_model(tiny_model("llama"), tmp_path / "src")
    (src / "config.json").unlink()
    with pytest.raises(ConvertError, match="no config.json") as info:
        convert(src, tmp_path / "nano")
    assert info.value.reason == "config_missing"


def test_convert_missing_weights(tiny_model, tmp_path):
    src = copy_model(tiny_model("llama"), tmp_path / "src")
    (src / "model.safetensors").unlink()
    with pytest.raises(ConvertError) as info:
        convert(src, tmp_path / "nano")
    assert info.value.reason == "weights_missing"


def test_convert_unknown_architecture(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "not-a-model", "architectures": ["NotAModel"]}))
    save_file({"w.weight": np.ones((4, 32), np.float32)}, src / "model.safetensors")
    with pytest.raises(ConvertError) as info:
        convert(src, tmp_path / "nano")
    assert info.value.reason == "architecture_unknown" and "not-a-model" in str(info.value)


def test_convert_model_without_linear_weights(tiny_model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(tiny_model("llama") / "config.json", src / "config.json")
    save_file({"model.norm.weight": np.ones(64, np.float32), "extra.table": np.ones((8, 64), np.float32)}, src / "model.safetensors")
    with pytest.raises(ConvertError) as info:
        convert(src, tmp_path / "nano")
    assert info.value.reason == "no_linear_weights"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("tensor", ["model.layers.1.mlp.up_proj.weight", "model.norm.weight"])
def test_convert_nonfinite_weights(tiny_model, tmp_path, bad, tensor):
    from safetensors.torch import load_file
    from safetensors.torch import save_file as save_torch

    src = copy_model(tiny_model("llama"), tmp_path / "src")
    weights = load_file(src / "model.safetensors")
    weights[tensor].view(-1)[7] = float(bad)
    save_torch(weights, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConvertError, match="NaN or infinity") as info:
        convert(src, tmp_path / "nano")
    assert info.value.reason == "nonfinite_weights" and info.value.tensor == tensor
    assert not (tmp_path / "nano").exists() and leftovers(tmp_path) == []


def test_convert_fp16_overflow_names_the_tensor(tiny_model, tmp_path):
    from safetensors.torch import load_file
    from safetensors.torch import save_file as save_torch

    src = copy_model(tiny_model("llama"), tmp_path / "src")  # bf16 source: 1e6 is a fine bf16 value
    weights = load_file(src / "model.safetensors")
    weights["model.layers.0.self_attn.k_proj.weight"][0, 0] = 1e6
    save_torch(weights, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConvertError, match="--keep") as info:
        convert(src, tmp_path / "nano", policy="qkvfp16")
    assert info.value.reason == "value_out_of_range"
    convert(src, tmp_path / "nano", policy="qkvfp16", keep=["*.k_proj.weight"])  # the suggested way out


def test_convert_offline_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConvertError) as info:
        convert("someone/some-model", tmp_path / "nano")
    assert info.value.reason == "hub_unavailable" and "someone/some-model" in str(info.value)


def test_dequantize_refuses_non_empty_destination(tiny_model, tmp_path):
    convert(tiny_model("llama"), tmp_path / "nano")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x").write_text("")
    with pytest.raises(ConvertError) as info:
        dequantize_folder(tmp_path / "nano", tmp_path / "plain")
    assert info.value.reason == "dst_exists"
    with pytest.raises(ValueError, match="dtype"):
        dequantize_folder(tmp_path / "nano", tmp_path / "other", dtype="int4")
