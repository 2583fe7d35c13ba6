"""The hadamard transform through the core: scheme checks, layout, codec, records, files, versions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nanofmt
from nanofmt import Scheme, dequantize, quantize
from nanofmt.codec import QuantizedTensor
from nanofmt.container import read_header
from nanofmt.errors import NanoError
from nanofmt.records import Record, parse_records, render_records
from nanofmt.schemes import component_layout
from nanofmt.transforms import default_signs, hadamard_unrotate, pack_signs

DQ = Scheme("affine_dq", bits=4, group_size=32, meta_bits=6)
HDQ = replace(DQ, transform="hadamard", transform_block=64)
HAFFINE = Scheme("affine", bits=3, group_size=32, transform="hadamard", transform_block=16)
HINT8 = Scheme("int8_row", bits=8, transform="hadamard", transform_block=16)


def _heavy_tailed(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_t(2.5, shape).astype(np.float32)


def _sqnr(w: np.ndarray, approx: np.ndarray) -> float:
    return float(10 * np.log10((w.astype(np.float64) ** 2).sum() / ((approx - w.astype(np.float64)) ** 2).sum()))


def test_hadamard_scheme_label_json_and_version() -> None:
    assert HDQ.label() == "affine_dq:4b/g32/m6+h64" and HINT8.label() == "int8_row+h16"
    assert HDQ.to_json() == {
        "scheme": "affine_dq",
        "bits": 4,
        "group_size": 32,
        "meta_bits": 6,
        "transform": "hadamard",
        "transform_block": 64,
    }
    assert "transform_block" not in DQ.to_json()
    assert (HDQ.min_version, DQ.min_version) == ((1, 1), (1, 0))


@pytest.mark.parametrize(
    ("scheme", "shape"),
    [
        (replace(HDQ, transform_block=None), (2, 128)),
        (replace(HDQ, transform_block=32), (2, 128)),
        (replace(DQ, transform_block=64), (2, 128)),
        (Scheme("f16", transform="hadamard", transform_block=16), (2, 16)),
        (HDQ, (2, 96)),
    ],
    ids=["missing", "not_a_power_of_four", "on_none", "passthrough", "cols"],
)
def test_hadamard_check_refuses_bad_parameters(scheme: Scheme, shape: tuple[int, int]) -> None:
    with pytest.raises(NanoError) as raised:
        scheme.check(shape)
    assert raised.value.reason == "transform_params_invalid"


def test_hadamard_check_refuses_it_in_a_file_of_version_1_0() -> None:
    HDQ.check((2, 128), version=(1, 1))
    HDQ.check((2, 128), version=(1, 7))
    with pytest.raises(NanoError) as raised:
        HDQ.check((2, 128), version=(1, 0))
    assert raised.value.reason == "transform_unknown"


def test_hadamard_layout_appends_signs_and_counts_them() -> None:
    layout = component_layout(HDQ, (4, 128), "w")
    assert list(layout)[-1] == "signs" and list(layout)[:-1] == list(component_layout(DQ, (4, 128), "w"))
    signs = layout["signs"]
    assert (signs.name, signs.dtype, signs.shape) == ("w_signs", "U8", (16,))
    assert HDQ.bits_per_weight((4096, 4096)) == pytest.approx(4.5 + 1 / 4096)


def test_hadamard_quantize_stores_signs_and_rotated_values() -> None:
    w = _heavy_tailed((4, 128))
    qt = quantize(w, HDQ, seed=5)
    assert list(qt.parts) == list(component_layout(HDQ, (4, 128), "w"))
    assert np.array_equal(qt.parts["signs"], pack_signs(default_signs(128, 5)))
    u = dequantize(QuantizedTensor(qt.shape, qt.dtype, DQ, {k: v for k, v in qt.parts.items() if k != "signs"}), "f32")
    assert np.array_equal(dequantize(qt, "f32"), hadamard_unrotate(u, 64, default_signs(128, 5)))
    assert np.array_equal(quantize(w, HDQ, seed=5).parts["codes"], qt.parts["codes"])  # deterministic
    assert not np.array_equal(quantize(w, HDQ, seed=6).parts["signs"], qt.parts["signs"])


def test_hadamard_quantize_takes_explicit_signs() -> None:
    w = _heavy_tailed((2, 64))
    signs = np.zeros(64, bool)
    signs[::3] = True
    assert np.array_equal(quantize(w, HDQ, signs=signs).parts["signs"], pack_signs(signs))
    with pytest.raises(ValueError):
        quantize(w, HDQ, signs=np.zeros(32, bool))
    with pytest.raises(ValueError):
        quantize(w, DQ, signs=signs)


def test_hadamard_improves_sqnr_on_heavy_tailed_rows() -> None:
    w = _heavy_tailed((16, 256), seed=3)
    plain, rotated = (dequantize(quantize(w, s), "f32") for s in (DQ, HDQ))
    assert _sqnr(w, rotated) > _sqnr(w, plain) + 1.0


@pytest.mark.parametrize("scheme", [HDQ, HAFFINE, HINT8], ids=lambda s: s.label())
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_hadamard_rows_and_out_decode_like_the_whole(scheme: Scheme, dtype: str) -> None:
    qt = quantize(_heavy_tailed((5, 128), seed=1), scheme)
    whole = dequantize(qt, dtype)
    assert np.array_equal(dequantize(qt, dtype, rows=slice(1, 4)), whole[1:4])
    out = np.empty_like(whole)
    assert dequantize(qt, dtype, out=out) is out and out.tobytes() == whole.tobytes()


def test_hadamard_writer_declares_the_lowest_version(tmp_path: Path) -> None:
    w = _heavy_tailed((2, 64))
    nanofmt.write_file(tmp_path / "a.safetensors", {"w": quantize(w, DQ)})
    nanofmt.write_file(tmp_path / "b.safetensors", {"w": quantize(w, HDQ), "head": "w", "p": quantize(w, DQ)})
    with nanofmt.open_file(tmp_path / "a.safetensors") as a, nanofmt.open_file(tmp_path / "b.safetensors") as b:
        assert a.version == (1, 0) and b.version == (1, 1)
        assert "p_signs" not in b.entries and "w_signs" in b.entries
        assert list(b.problems()) == []
        assert np.array_equal(dequantize(b.tensor("head")), dequantize(quantize(w, HDQ)))
    with pytest.raises(ValueError):
        render_records((1, 0), [Record("w", (2, 64), "f32", HDQ)], {})


def _header(path: Path) -> Any:
    with open(path, "rb") as f:
        return read_header(f, path.stat().st_size)


def test_hadamard_field_of_1_1_is_ignored_in_a_1_0_file(tmp_path: Path) -> None:
    """transform_block is a field 1.0 does not know: a 1.0 file carrying it reads as a 1.0 reader reads it."""
    nanofmt.write_file(tmp_path / "a.safetensors", {"w": quantize(_heavy_tailed((2, 64)), DQ)})
    header = _header(tmp_path / "a.safetensors")
    meta = json.loads(header.metadata["nanofmt"])
    meta["tensors"]["w"]["transform_block"] = 64
    edited = replace(header, metadata={**header.metadata, "nanofmt": json.dumps(meta)})
    assert parse_records(edited).records["w"].extra == {"transform_block": 64}
    meta["format_version"] = "1.1"
    with pytest.raises(NanoError) as raised:
        parse_records(replace(header, metadata={**header.metadata, "nanofmt": json.dumps(meta)}))
    assert raised.value.reason == "transform_params_invalid"
