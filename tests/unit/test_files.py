"""Reading Nano files: what is refused before any data is touched, zero-copy views, full verification."""

from __future__ import annotations

import json
import os
import struct
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import nanofmt
from nanofmt import files
from nanofmt.codec import QuantizedTensor
from nanofmt.errors import NanoError

AFFINE2 = nanofmt.Scheme("affine", bits=2, group_size=32)
DQ = nanofmt.Scheme("affine_dq", bits=3, group_size=32, meta_bits=6)


def _open_reason(path: Path) -> str | None:
    try:
        nanofmt.open_file(path).close()
    except NanoError as exc:
        return exc.reason
    return None


def _verify_reason(path: Path) -> str | None:
    with nanofmt.open_file(path) as f:
        problems = list(f.problems())
    return problems[0].reason if problems else None


def _raw_file(path: Path, header: dict, body: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return path


def _records(tensors: dict) -> dict:
    return {"__metadata__": {"nanofmt": json.dumps({"format_version": "1.0", "tensors": tensors})}}


def test_files_refuse_what_is_not_a_regular_file(tmp_path: Path) -> None:
    assert _open_reason(tmp_path) == "file_unreadable"
    assert _open_reason(tmp_path / "missing.safetensors") == "file_unreadable"
    assert _open_reason(Path("/dev/null")) == "file_unreadable"


def test_files_refuse_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    found: list[str | None] = []
    reader = threading.Thread(target=lambda: found.append(_open_reason(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert found == ["file_unreadable"], "opening a FIFO must not wait for a writer"


@pytest.mark.parametrize(
    ("data", "reason"), [(b"", "file_too_short"), (b"\x00" * 7, "file_too_short"), (struct.pack("<Q", 64) + b"{}", "file_too_short")]
)
def test_files_refuse_short_files(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(data)
    assert _open_reason(path) == reason


def test_files_huge_declared_shapes_allocate_nothing(tmp_path: Path) -> None:
    """Shapes are checked against the file's bytes before any array exists."""
    w = {
        "shape": [2**20, 2**20],
        "dtype": "f16",
        "scheme": "affine",
        "bits": 2,
        "group_size": 32,
        "transform": "none",
        "checksum": "crc32:00000000",
    }
    header = {
        **_records({"w": w}),
        "w_codes": {"dtype": "U8", "shape": [2**20, 2**18], "data_offsets": [0, 2**38]},
        "w_scales": {"dtype": "F16", "shape": [2**20, 2**15], "data_offsets": [2**38, 2**38 + 2**36]},
        "w_offsets": {"dtype": "F16", "shape": [2**20, 2**15], "data_offsets": [2**38 + 2**36, 2**38 + 2**37]},
    }
    path = _raw_file(tmp_path / "huge.safetensors", header, b"\x00" * 64)
    tracemalloc.start()
    try:
        assert _open_reason(path) == "file_too_short"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_files_open_a_file_whose_data_buffer_is_empty(tmp_path: Path) -> None:
    empty = nanofmt.quantize(np.zeros((0, 3), np.float32), nanofmt.Scheme("f16"))
    path = tmp_path / "empty.safetensors"
    nanofmt.write_file(path, {"e": empty})
    with nanofmt.open_file(path) as f:
        assert f.tensor("e").parts[None].shape == (0, 3)
        assert nanofmt.dequantize(f.tensor("e")).shape == (0, 3)
        f.verify()
    path = _raw_file(tmp_path / "none.safetensors", _records({}))
    with nanofmt.open_file(path) as f:
        assert len(f) == 0
        f.verify()


def test_files_views_are_read_only_and_zero_copy(tmp_path: Path) -> None:
    w = np.random.default_rng(1).standard_normal((3, 40)).astype(np.float32)
    path = tmp_path / "m.safetensors"
    nanofmt.write_file(path, {"w": nanofmt.quantize(w, DQ), "head": "w"})
    f = nanofmt.open_file(path)
    codes = f.tensor("head").parts["codes"]
    assert not codes.flags.writeable and not codes.flags.owndata
    f.check_checksum("head")
    f.close()  # a live view keeps the map open; closing must not fail
    assert codes.shape == (3, 15) and int(codes.sum()) >= 0


def test_files_failed_opens_leak_no_descriptors(tmp_path: Path) -> None:
    path = _raw_file(tmp_path / "bad.safetensors", {"__metadata__": {"nanofmt": "[]"}})
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        assert _open_reason(path) == "metadata_not_json"
    assert len(os.listdir("/proc/self/fd")) == before


def _write_parts(path: Path, qt: QuantizedTensor, role: str, edit: object) -> Path:
    """Write ``qt`` with one component changed *before* the checksum is taken (so the checksum matches)."""
    parts = {r: np.array(p) for r, p in qt.parts.items()}
    edit(parts[role])  # type: ignore[operator]
    nanofmt.write_file(path, {"w": QuantizedTensor(qt.shape, qt.dtype, qt.scheme, parts)})
    return path


@pytest.mark.parametrize("chunk", [files.DECODE_CHUNK_BYTES, 1])
def test_files_verify_finds_problems_in_any_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(files, "DECODE_CHUNK_BYTES", chunk)  # 1: one row per decoding step
    w = np.random.default_rng(2).standard_normal((5, 41)).astype(np.float32)
    qt = nanofmt.quantize(w, AFFINE2)

    def nan_last_scale(a: np.ndarray) -> None:
        a[-1, -1] = np.nan

    def padding_bit_last_row(a: np.ndarray) -> None:
        a[-1, -1] |= 0x80

    assert _verify_reason(_write_parts(tmp_path / "nan.safetensors", qt, "scales", nan_last_scale)) == "metadata_nonfinite"
    assert _verify_reason(_write_parts(tmp_path / "pad.safetensors", qt, "codes", padding_bit_last_row)) == "padding_nonzero"
    dq = nanofmt.quantize(w, DQ)
    assert _verify_reason(_write_parts(tmp_path / "dq.safetensors", dq, "qscales", padding_bit_last_row)) == "padding_nonzero"
    assert _verify_reason(_write_parts(tmp_path / "sup.safetensors", dq, "super_offsets", nan_last_scale)) == "metadata_nonfinite"


def test_files_verify_allocates_a_bounded_amount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "DECODE_CHUNK_BYTES", 64 << 10)
    w = np.random.default_rng(3).standard_normal((512, 2048)).astype(np.float32)  # 4 MiB as float32, 320 KiB stored
    path = tmp_path / "big.safetensors"
    nanofmt.write_file(path, {"w": nanofmt.quantize(w, AFFINE2)})
    with nanofmt.open_file(path) as f:
        tracemalloc.start()
        try:
            f.verify()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < path.stat().st_size, f"verification peaked at {peak} bytes"


def test_files_problems_names_file_and_tensor(tmp_path: Path) -> None:
    w = np.ones((2, 32), np.float32)
    path = tmp_path / "m.safetensors"
    nanofmt.write_file(path, {"w": nanofmt.quantize(w, AFFINE2)})
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with nanofmt.open_file(path) as f:
        (problem,) = f.problems()
        with pytest.raises(NanoError) as caught:
            f.verify()
    assert problem.reason == caught.value.reason == "checksum_mismatch"
    assert problem.path == str(path) and problem.tensor == "w"


@pytest.mark.parametrize(
    ("tensors", "extra"),
    [
        ({"": "f32"}, {}),
        ({"n" * 1025: "f32"}, {}),
        ({"w": "f32"}, {"deep": json.loads("[" * 70 + "]" * 70)}),
        ({"w": "f32"}, {"bad": "\ud800"}),
        ({"w": "f32"}, {"nan": float("nan")}),
    ],
)
def test_files_writer_refuses_what_the_reader_would_refuse(tmp_path: Path, tensors: dict, extra: dict) -> None:
    values = {name: nanofmt.quantize(np.ones(2, np.float32), nanofmt.Scheme(scheme)) for name, scheme in tensors.items()}
    with pytest.raises(ValueError):
        nanofmt.write_file(tmp_path / "x.safetensors", values, extra=extra)
    assert not list(tmp_path.iterdir()), "nothing is left behind"
