"""The safetensors container layer: strict header parsing, bounded errors, streaming writes."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nanofmt.container import HEADER_ALIGNMENT, SafetensorsWriter, load_json, parse_header, read_header
from nanofmt.errors import MalformedError, NanoError, UnsupportedError

F32_ENTRY = '{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'


def _reason(header: str | bytes, data_size: int = 8) -> str | None:
    try:
        parse_header(header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header, data_size)
    except NanoError as exc:
        return exc.reason
    return None


def _entry(**fields: Any) -> str:
    entry: dict[str, Any] = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **fields}
    return json.dumps({"t": entry})


def test_container_parses_a_minimal_header() -> None:
    header = parse_header(b'{"t": ' + F32_ENTRY.encode() + b"}", 8)
    assert header.entries["t"].shape == (2,) and header.entries["t"].end == 8 and header.metadata == {}


def test_container_accepts_surrounding_whitespace_and_an_empty_header() -> None:
    assert _reason("  {}  ", 0) is None  # safetensors pads headers with spaces
    assert _reason('{"__metadata__": {"k": "v"}}', 0) is None


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("[]", "header_not_json"),
        ("{", "header_not_json"),
        (b"\xff{}", "header_not_json"),
        ("\ufeff{}", "header_not_json"),  # a byte order mark is not JSON
        ('{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', "header_not_json"),
        ('{"t": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 8]}}', "header_not_json"),
        ('{"t": {"dtype": "F32", "shape": [-Infinity], "data_offsets": [0, 8]}}', "header_not_json"),
        ('{"t": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 8]}}', "header_not_json"),
        ('{"t": {"dtype": "F32", "shape": [' + "1" * 5000 + '], "data_offsets": [0, 8]}}', "header_not_json"),
        ('{"\\ud800": ' + F32_ENTRY + "}", "header_not_json"),
        ('{"__metadata__": {"k": "\\udfff"}}', "header_not_json"),
        ('{"t": ' + F32_ENTRY + ', "t": ' + F32_ENTRY + "}", "name_conflict"),
        ('{"t": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "name_conflict"),
        ('{"t": {"dtype": "F32", "shape": [2], "data_offsets": [-0, 8]}}', "header_entry_invalid"),  # serde_json: -0 is a float
        ('{"t": {"dtype": "F32", "shape": [-0, 2], "data_offsets": [0, 8]}}', "shape_invalid"),
    ],
)
def test_container_refuses_what_strict_json_refuses(header: str | bytes, reason: str) -> None:
    assert _reason(header) == reason


def test_container_accepts_a_surrogate_pair() -> None:
    assert _reason('{"\\ud83d\\ude00": ' + F32_ENTRY + "}") is None


@pytest.mark.parametrize("depth", [65, 400, 5000])
def test_container_bounds_json_nesting(depth: int) -> None:
    header = '{"t": {"dtype": "F32", "shape": ' + "[" * depth + "]" * depth + ', "data_offsets": [0, 8]}}'
    assert _reason(header) == "limit_exceeded"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"shape": [True]}, "shape_invalid"),
        ({"shape": [2.0]}, "shape_invalid"),
        ({"shape": [-2]}, "shape_invalid"),
        ({"shape": "2"}, "shape_invalid"),
        ({"shape": [2**31]}, "shape_invalid"),
        ({"shape": [1] * 9}, "shape_invalid"),
        ({"shape": [2**21, 2**20]}, "limit_exceeded"),
        ({"shape": [0, 2**31 - 1, 2**31 - 1, 2**31 - 1], "data_offsets": [0, 0]}, "limit_exceeded"),
        ({"data_offsets": [False, 8]}, "header_entry_invalid"),
        ({"data_offsets": [0.0, 8]}, "header_entry_invalid"),
        ({"data_offsets": [0, 8, 8]}, "header_entry_invalid"),
        ({"data_offsets": [-8, 0]}, "header_entry_invalid"),
        ({"data_offsets": [0, 4]}, "data_offsets_invalid"),
        ({"data_offsets": [4, 12]}, "data_offsets_invalid"),
        ({"data_offsets": [2**64, 2**64 + 8]}, "data_offsets_invalid"),
        ({"dtype": "F64"}, "dtype_unknown"),
        ({"dtype": 5}, "header_entry_invalid"),
        ({"extra": 1}, "header_entry_invalid"),
    ],
)
def test_container_checks_every_entry_field(fields: dict[str, Any], reason: str) -> None:
    assert _reason(_entry(**fields)) == reason


def test_container_limits_count_nonzero_dimensions_of_empty_tensors() -> None:
    assert _reason(_entry(shape=[0, 2**20, 2**20], data_offsets=[0, 0]), 0) is None  # 2^40 spanned: the limit itself


@pytest.mark.parametrize(
    ("header", "data_size", "reason"),
    [
        (_entry(), 4, "file_too_short"),
        (_entry(), 9, "trailing_bytes"),
        (
            json.dumps(
                {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
            ),
            12,
            "data_offsets_invalid",
        ),
        (
            json.dumps(
                {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
            ),
            8,
            "data_offsets_invalid",
        ),
        ('{"__metadata__": {"k": 1}}', 0, "header_entry_invalid"),
        ('{"__metadata__": null}', 0, "header_entry_invalid"),
        ('{"": ' + F32_ENTRY + "}", 8, "name_invalid"),
        (json.dumps({"n" * 1025: json.loads(F32_ENTRY)}), 8, "name_invalid"),
    ],
)
def test_container_checks_the_layout(header: str, data_size: int, reason: str) -> None:
    assert _reason(header, data_size) == reason


def test_container_error_messages_stay_short() -> None:
    for fields in ({"shape": [2, 10**4000]}, {"dtype": "X" * 100_000}, {"data_offsets": [0] * 100_000}, {"shape": [[0] * 100_000]}):
        with pytest.raises(NanoError) as caught:
            parse_header(_entry(**fields).encode(), 8)
        assert len(str(caught.value)) < 300


def test_container_errors_are_the_right_leaf() -> None:
    with pytest.raises(UnsupportedError):
        parse_header(_entry(dtype="F64").encode(), 8)
    with pytest.raises(MalformedError):
        parse_header(b"[]", 0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "file_too_short"),
        (b"\x02\x00\x00\x00\x00\x00\x00", "file_too_short"),
        (struct.pack("<Q", 100) + b"{}", "file_too_short"),
        (struct.pack("<Q", 2**64 - 1) + b"{}", "header_too_large"),
        (struct.pack("<Q", 100 * 2**20 + 1) + b"{}", "header_too_large"),
        (struct.pack("<Q", 2) + b"{}" + b"\x00", "trailing_bytes"),
    ],
)
def test_container_read_header_checks_the_prefix(data: bytes, reason: str) -> None:
    with pytest.raises(NanoError) as caught:
        read_header(io.BytesIO(data), len(data))
    assert caught.value.reason == reason


def test_container_every_truncation_of_a_header_is_a_nano_error() -> None:
    text = json.dumps({"__metadata__": {"k": "v\u00e9"}, "t": json.loads(F32_ENTRY)}).encode()
    for cut in range(len(text)):
        with pytest.raises(NanoError):
            parse_header(text[:cut], 8)


def test_container_load_json_reports_the_given_reason() -> None:
    with pytest.raises(NanoError) as caught:
        load_json('{"a": NaN}', "metadata_not_json")
    assert caught.value.reason == "metadata_not_json"
    assert load_json('{"a": -0.0, "b": [1, "x"]}', "metadata_not_json") == {"a": -0.0, "b": [1, "x"]}


def test_container_writer_round_trips_rank0_and_aligns_the_header(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    writer = SafetensorsWriter(path, [("s", "F16", ()), ("v", "U8", (3,))], {"k": "v"})
    writer.write("s", np.array(1.5, np.float16))
    writer.write("v", np.arange(3, dtype=np.uint8))
    writer.close()
    data = path.read_bytes()
    with open(path, "rb") as f:
        header = read_header(f, len(data))
    assert header.data_start % HEADER_ALIGNMENT == 0
    assert header.entries["s"].shape == () and data[header.data_start :] == np.float16(1.5).tobytes() + b"\x00\x01\x02"


def test_container_writer_refuses_out_of_plan_tensors(tmp_path: Path) -> None:
    writer = SafetensorsWriter(tmp_path / "x.safetensors", [("a", "F32", (2,))], {})
    with pytest.raises(ValueError):
        writer.write("b", np.zeros(2, np.float32))
    with pytest.raises(ValueError):
        writer.write("a", np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        writer.rewrite_metadata({"much": "longer metadata than before"})
    with pytest.raises(ValueError):
        writer.close()
