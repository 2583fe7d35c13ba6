"""The Nano records in ``__metadata__["nanofmt"]``: strict JSON, every field, every cross-check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nanofmt
from nanofmt._spec import LIMITS
from nanofmt.container import Header, read_header
from nanofmt.errors import NanoError
from nanofmt.records import parse_records

AFFINE = nanofmt.Scheme("affine", bits=4, group_size=32)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Header, dict[str, Any]]:
    """A header with an affine tensor ``w``, a passthrough ``b`` and a tie ``t -> w``, and its records."""
    path = tmp_path_factory.mktemp("records") / "m.safetensors"
    w = np.random.default_rng(0).standard_normal((2, 40)).astype(np.float32)
    nanofmt.write_file(
        path, {"w": nanofmt.quantize(w, AFFINE), "b": nanofmt.quantize(w[0], nanofmt.Scheme("f16")), "t": "w"}, extra={"note": "x"}
    )
    with open(path, "rb") as f:
        header = read_header(f, path.stat().st_size)
    return header, json.loads(header.metadata["nanofmt"])


def _with(header: Header, text: str) -> Header:
    return Header(header.entries, {**header.metadata, "nanofmt": text}, header.data_start)


def _reason(header: Header, edit: Callable[[dict[str, Any]], Any] | str) -> str | None:
    if isinstance(edit, str):
        text = edit
    else:
        records = json.loads(header.metadata["nanofmt"])
        edit(records)
        text = json.dumps(records)
    try:
        parse_records(_with(header, text))
    except NanoError as exc:
        return exc.reason
    return None


def test_records_parse_a_written_file(base: tuple[Header, dict[str, Any]]) -> None:
    header, _ = base
    parsed = parse_records(header)
    assert parsed.version == (1, 0) and parsed.extra == {"note": "x"}
    assert parsed.records["w"].scheme == AFFINE and parsed.records["t"].tie == "w"


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(records: dict[str, Any]) -> None:
        node = records
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _drop(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(records: dict[str, Any]) -> None:
        node = records
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


W = ("tensors", "w")


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set(("format_version",), "1"), "version_invalid"),
        (_set(("format_version",), "1.0\n"), "version_invalid"),
        (_set(("format_version",), "01.0"), "version_invalid"),
        (_set(("format_version",), "\uff11.0"), "version_invalid"),
        (_set(("format_version",), 1.0), "version_invalid"),
        (_set(("format_version",), "2.0"), "version_unsupported"),
        (_set(("format_version",), "1.7"), None),  # a newer minor version reads
        (_drop(("format_version",)), "version_invalid"),
        (_drop(("tensors",)), "record_field_missing"),
        (_set(("tensors",), []), "record_field_invalid"),
        (_set(W, [1]), "record_field_invalid"),
        (_drop((*W, "shape")), "record_field_missing"),
        (_drop((*W, "dtype")), "record_field_missing"),
        (_drop((*W, "scheme")), "record_field_missing"),
        (_drop((*W, "transform")), "record_field_missing"),
        (_drop((*W, "checksum")), "record_field_missing"),
        (_set((*W, "shape"), "2x40"), "record_field_invalid"),
        (_set((*W, "shape"), [2, True]), "shape_invalid"),
        (_set((*W, "dtype"), "f64"), "record_field_invalid"),
        (_set((*W, "bits"), True), "record_field_invalid"),
        (_set((*W, "bits"), 4.0), "record_field_invalid"),
        (_set((*W, "bits"), None), "record_field_invalid"),
        (_set((*W, "bits"), 7), "scheme_params_invalid"),
        (_set((*W, "group_size"), 16), "scheme_params_invalid"),
        (_set((*W, "meta_bits"), 6), "scheme_params_invalid"),
        (_set((*W, "shape"), [80]), "scheme_params_invalid"),
        (_set((*W, "scheme"), "affine_nf4"), "scheme_unknown"),
        (_set((*W, "transform"), "hadamard"), "transform_unknown"),
        (_set((*W, "checksum"), "crc32:ABCDEF01"), "checksum_invalid"),
        (_set((*W, "checksum"), "crc32:abcdef01\n"), "checksum_invalid"),
        (_set((*W, "checksum"), "md5:abcdef01"), "checksum_invalid"),
        (_set((*W, "shape"), [2, 41]), "component_mismatch"),
        (_set((*W, "bits"), 2), "component_mismatch"),
        (
            _set(
                ("tensors", "w_codes"),
                {"shape": [2, 20], "dtype": "f32", "scheme": "f32", "transform": "none", "checksum": "crc32:00000000"},
            ),
            "name_conflict",
        ),
        (_drop(("tensors", "b")), "orphan_tensor"),
        (
            _set(("tensors", "x"), {"shape": [1], "dtype": "f32", "scheme": "f32", "transform": "none", "checksum": "crc32:00000000"}),
            "component_missing",
        ),
        (_set(("tensors", "t", "tie"), "nothing"), "tie_invalid"),
        (_set(("tensors", "t", "tie"), "t"), "tie_invalid"),
        (_set(("tensors", "t", "shape"), [40, 2]), "tie_invalid"),
        (_set(("tensors", "t", "bits"), 4), "record_field_invalid"),
        (_set(("tensors", "b", "tie"), "w"), "record_field_invalid"),
        (_set(("tensors", ""), {"shape": [1], "dtype": "f32", "tie": "w"}), "name_invalid"),
        (_set(("deep",), json.loads("[" * 64 + "]" * 64)), "limit_exceeded"),
        (_set(("deep",), json.loads("[" * 62 + "]" * 62)), None),
    ],
)
def test_records_check_every_field(base: tuple[Header, dict[str, Any]], edit: Callable[[dict[str, Any]], Any], reason: str | None) -> None:
    assert _reason(base[0], edit) == reason


def test_records_tie_named_like_a_stored_tensor_is_a_conflict(base: tuple[Header, dict[str, Any]]) -> None:
    def edit(records: dict[str, Any]) -> None:
        records["tensors"]["b"] = {"shape": [2, 40], "dtype": "f32", "tie": "w"}

    assert _reason(base[0], edit) == "name_conflict"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "metadata_not_json"),
        ("[]", "metadata_not_json"),
        ('{"format_version": "1.0", "tensors": {}, "x": NaN}', "metadata_not_json"),
        ('{"format_version": "1.0", "tensors": {}, "x": -Infinity}', "metadata_not_json"),
        ('{"format_version": "1.0", "tensors": {}, "x": 1e400}', "metadata_not_json"),
        ('{"format_version": "1.0", "tensors": {}, "x": "\\ud800"}', "metadata_not_json"),
        ('{"format_version": "1.0", "format_version": "1.0", "tensors": {}}', "name_conflict"),
        ('{"format_version": "1.0", "tensors": {"a": {}, "a": {}}}', "name_conflict"),
        ('{"format_version": "1.0", "tensors": ' + "[" * 3000 + "]" * 3000 + "}", "limit_exceeded"),
    ],
)
def test_records_json_is_strict(base: tuple[Header, dict[str, Any]], text: str, reason: str) -> None:
    assert _reason(base[0], text) == reason


def test_records_duplicate_record_names_in_a_file_conflict(base: tuple[Header, dict[str, Any]]) -> None:
    header, records = base
    text = json.dumps(records)
    duplicated = text.replace('"tensors": {', '"tensors": {"b": ' + json.dumps(records["tensors"]["b"]) + ", ", 1)
    assert _reason(header, duplicated) == "name_conflict"


def test_records_without_nanofmt_metadata_are_not_nano(base: tuple[Header, dict[str, Any]]) -> None:
    header = base[0]
    with pytest.raises(NanoError) as caught:
        parse_records(Header(header.entries, {"format": "pt"}, header.data_start))
    assert caught.value.reason == "metadata_missing"


def test_records_metadata_size_is_bounded(base: tuple[Header, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LIMITS, "max_metadata_bytes", 100)
    with pytest.raises(NanoError) as caught:
        parse_records(base[0])
    assert caught.value.reason == "metadata_too_large"


def test_records_errors_name_the_field(base: tuple[Header, dict[str, Any]]) -> None:
    with pytest.raises(NanoError) as caught:
        parse_records(_with(base[0], '{"format_version": "1.0", "tensors": {}, "x": NaN}'))
    assert caught.value.field == "nanofmt"
    with pytest.raises(NanoError) as caught:
        parse_records(_with(base[0], json.dumps({**base[1], "format_version": "x" * 10_000})))
    assert len(str(caught.value)) < 200


def test_records_plain_safetensors_file_is_not_a_nano_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    path.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(NanoError) as caught:
        nanofmt.open_file(path)
    assert caught.value.reason == "metadata_missing"
