"""Every valid vector opens, verifies and decodes to exactly the bytes its manifest records."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors

import nanofmt
from nanofmt.schemes import component_layout

OUTPUTS = ("f32", "f16", "bf16")


def test_valid_vector_file_matches_manifest_sha256(valid_vector: dict[str, Any], vectors: Path) -> None:
    assert hashlib.sha256((vectors / valid_vector["file"]).read_bytes()).hexdigest() == valid_vector["sha256"]


def test_valid_vector_opens_and_passes_full_verification(valid_vector: dict[str, Any], vectors: Path) -> None:
    with nanofmt.open_file(vectors / valid_vector["file"]) as f:
        assert list(f.records) == list(valid_vector["tensors"])
        for name, expected in valid_vector["tensors"].items():
            record = f.records[name]
            assert (list(record.shape), record.dtype, record.tie) == (expected["shape"], expected["dtype"], expected.get("tie"))
            assert f.stored_record(name).scheme is not None and f.stored_record(name).scheme.label() == expected["scheme"]
        assert [p.reason for p in f.problems()] == []


def test_valid_vector_decodes_bit_exactly(valid_vector: dict[str, Any], vectors: Path, decoded_sha256: Callable[..., str]) -> None:
    with nanofmt.open_file(vectors / valid_vector["file"]) as f:
        for name, expected in valid_vector["tensors"].items():
            if not expected["shape"]:
                continue  # rank 0: test_valid_vector_decodes_rank0 below
            found = {o: decoded_sha256(f, name, o) for o in OUTPUTS}
            assert found == expected["decoded_sha256"], name
            assert decoded_sha256(f, name, None) == expected["decoded_sha256"][expected["dtype"]], f"{name}: default output is the record's dtype"


@pytest.mark.parametrize("stem", ["f32_empty", "f16_empty", "bf16_empty"])
def test_valid_vector_decodes_rank0(stem: str, manifest: dict[str, Any], vectors: Path, decoded_sha256: Callable[..., str]) -> None:
    entry = next(v for v in manifest["valid"] if Path(v["file"]).stem == stem)
    with nanofmt.open_file(vectors / entry["file"]) as f:
        assert {o: decoded_sha256(f, "scalar", o) for o in OUTPUTS} == entry["tensors"]["scalar"]["decoded_sha256"]


def test_valid_vector_row_ranges_decode_like_the_whole(valid_vector: dict[str, Any], vectors: Path) -> None:
    with nanofmt.open_file(vectors / valid_vector["file"]) as f:
        for name, expected in valid_vector["tensors"].items():
            rows = expected["shape"][0] if expected["shape"] else 0
            if rows == 0 or len(expected["shape"]) < 2:
                continue
            qt = f.tensor(name)
            whole = nanofmt.dequantize(qt, "bf16")
            for r in range(rows):
                assert np.array_equal(nanofmt.dequantize(qt, "bf16", rows=slice(r, r + 1)), whole[r : r + 1]), (name, r)
            assert np.array_equal(nanofmt.dequantize(qt, "bf16", rows=slice(1, rows)), whole[1:]), name


def test_valid_vector_is_a_plain_safetensors_file(valid_vector: dict[str, Any], vectors: Path) -> None:
    """The safetensors library itself reads every stored tensor with the bytes nanofmt sees."""
    data = (vectors / valid_vector["file"]).read_bytes()
    loaded = dict(safetensors.deserialize(data))
    with nanofmt.open_file(vectors / valid_vector["file"]) as f:
        assert set(loaded) == set(f.entries)
        for name, entry in f.entries.items():
            assert (loaded[name]["dtype"], tuple(loaded[name]["shape"])) == (entry.dtype, entry.shape)
            assert bytes(loaded[name]["data"]) == f.component(name).tobytes()


def _first_live_component(f: nanofmt.NanoFile) -> tuple[str, str] | None:
    """(logical name, stored name of its first component) of the first tensor of rank >= 1 that holds data."""
    for name, record in f.records.items():
        if record.scheme is not None and record.shape and 0 not in record.shape:
            return name, next(iter(component_layout(record.scheme, record.shape, name).values())).name
    return None


def test_golden_check_fails_on_a_flipped_byte(valid_vector: dict[str, Any], vectors: Path, tmp_path: Path, decoded_sha256: Callable[..., str]) -> None:
    """Guard: the decode comparison above can fail. One flipped data byte must change a decoded digest."""
    copy = tmp_path / "flipped.safetensors"
    shutil.copy(vectors / valid_vector["file"], copy)
    with nanofmt.open_file(copy) as f:
        target = _first_live_component(f)
        if target is None:
            pytest.skip("no tensor of rank >= 1 with data")
        name, stored = target
        offset = f.header.data_start + f.entries[stored].begin
    data = bytearray(copy.read_bytes())
    data[offset] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert hashlib.sha256(bytes(data)).hexdigest() != valid_vector["sha256"]
    with nanofmt.open_file(copy) as f:
        assert decoded_sha256(f, name, "f32") != valid_vector["tensors"][name]["decoded_sha256"]["f32"]
        assert "checksum_mismatch" in [p.reason for p in f.problems()]
