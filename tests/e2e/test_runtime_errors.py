"""A Nano folder that does not fit its model is a hard error naming the tensor, never a
silently random-initialised weight."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import nanofmt

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
import nano_fixtures as nf  # noqa: E402

from nanofmt.loaders import NanoLoadError, load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source() -> tuple[object, dict]:
    model = nf.tiny_model("llama")
    return model, nf.quantize_all(model)


def write(tmp: Path, source: tuple[object, dict], tensors: dict | None = None) -> Path:
    model, stored = source
    return nf.write_nano_folder(model, tmp / "nano", stored if tensors is None else tensors)


def load_error(folder: Path) -> NanoLoadError:
    with pytest.raises(NanoLoadError) as caught:
        load_model(folder, dtype=torch.float32)
    return caught.value


def test_runtime_missing_tensor_is_named(tmp_path: Path, source: tuple) -> None:
    tensors = {k: v for k, v in source[1].items() if k != "model.layers.1.self_attn.o_proj.weight"}
    error = load_error(write(tmp_path, source, tensors))
    assert error.reason == "missing_tensor" and error.tensor == "model.layers.1.self_attn.o_proj.weight"


def test_runtime_unexpected_tensor_is_named(tmp_path: Path, source: tuple) -> None:
    extra = nanofmt.quantize(np.ones((64, 64), np.float32), nf.Q4)
    error = load_error(write(tmp_path, source, {**source[1], "model.layers.0.mlp.extra.weight": extra}))
    assert error.reason == "unexpected_tensor" and error.tensor == "model.layers.0.mlp.extra.weight"


def test_runtime_misshaped_tensor_is_named(tmp_path: Path, source: tuple) -> None:
    folder = write(tmp_path, source)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 128  # the stored MLP weights are 96 wide
    (folder / "config.json").write_text(json.dumps(config))
    error = load_error(folder)
    assert error.reason == "shape_mismatch" and "mlp" in str(error.tensor) and "[96, 64]" in str(error)


def test_runtime_refuses_a_folder_that_is_not_nano(tmp_path: Path, source: tuple) -> None:
    folder = write(tmp_path, source)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["format_version"] = "2.0"
    (folder / "config.json").write_text(json.dumps(config))
    assert load_error(folder).reason == "version_unsupported"
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_error(folder).reason == "not_nano"


def test_runtime_refuses_a_damaged_component(tmp_path: Path, source: tuple) -> None:
    """A component whose shape does not follow from its record (written past the core writer's checks)."""
    from safetensors.numpy import save_file

    folder = write(tmp_path, source)
    path = folder / "model.safetensors"
    with nanofmt.open_file(path) as f:
        metadata = dict(f.header.metadata)
        arrays = {name: np.array(f.component(name)) for name in f.entries}
    arrays["model.norm.weight"] = np.ones(65, np.float32)
    save_file(arrays, str(path), metadata=metadata)
    error = load_error(folder)
    assert error.reason == "component_mismatch" and error.tensor == "model.norm.weight"


def edit_record(folder: Path, tensor: str, field: str, value: object) -> None:
    """Rewrite one field of one record in the folder's file, keeping every stored array."""
    from safetensors.numpy import save_file

    path = folder / "model.safetensors"
    with nanofmt.open_file(path) as f:
        records = json.loads(f.header.metadata["nanofmt"])
        arrays = {name: np.array(f.component(name)) for name in f.entries}
    records["tensors"][tensor][field] = value
    save_file(arrays, str(path), metadata={"format": "pt", "nanofmt": json.dumps(records)})


def test_runtime_refuses_an_unknown_scheme(tmp_path: Path, source: tuple) -> None:
    folder = write(tmp_path, source)
    edit_record(folder, "model.norm.weight", "scheme", "nf4")
    error = load_error(folder)
    assert error.reason == "scheme_unsupported" and error.tensor == "model.norm.weight"


def test_runtime_refuses_another_quantizer(tmp_path: Path, source: tuple) -> None:
    with pytest.raises(ValueError, match="already quantized"):
        from nanofmt.loaders.modeling_nano import load_pretrained

        load_pretrained(write(tmp_path, source), quantization_config={"quant_method": "bitsandbytes"})


def test_runtime_refuses_impossible_scheme_parameters(tmp_path: Path, source: tuple) -> None:
    folder = write(tmp_path, source)
    edit_record(folder, "model.layers.0.mlp.up_proj.weight", "group_size", 0)
    error = load_error(folder)
    assert error.reason == "record_invalid" and error.tensor == "model.layers.0.mlp.up_proj.weight"
