"""The Nano metadata: per-tensor records in ``__metadata__["nanofmt"]`` (SPEC.md, "Records").

:func:`parse_records` validates the JSON and checks every record against the container's
stored tensors; :func:`render_records` writes it. Checks run in a fixed order (file-level
fields, then records in the order the JSON lists them, then stored tensors nobody claimed), so
a malformed file always reports the same reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ._spec import LIMITS, METADATA_KEY, SOURCE_DTYPES, TRANSFORM_SPECS, VERSIONS_READABLE
from .container import Entry, Header, _is_int, check_name, check_shape, load_json, preview
from .errors import NanoError, error
from .schemes import Scheme, component_layout

__all__ = ["Record", "FileRecords", "parse_records", "render_records", "lowest_version", "CHECKSUM_PLACEHOLDER", "format_checksum"]

# fullmatch, never "$": "$" also matches before a trailing newline, so "1.0\n" would pass.
VERSION_PATTERN = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")
CHECKSUM_PATTERN = re.compile(r"crc32:[0-9a-f]{8}")
CHECKSUM_PLACEHOLDER = "crc32:00000000"  # same width as any real value, so the header can be patched in place
SCHEME_FIELDS = ("scheme", "bits", "group_size", "meta_bits", "transform", "transform_block")
KNOWN_FIELDS = {"shape", "dtype", "tie", "checksum", *SCHEME_FIELDS}
# Record fields a minor version added. In a file declaring an older version they are fields its
# readers do not know, so they are ignored there, as such a reader would (SPEC.md 5).
FIELD_SINCE = {"transform_block": tuple(int(p) for p in TRANSFORM_SPECS["hadamard"]["since"].split("."))}


def format_checksum(crc: int) -> str:
    return f"crc32:{crc & 0xFFFFFFFF:08x}"


@dataclass(frozen=True)
class Record:
    """One logical tensor: its shape and source dtype, and either a scheme or a tie."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scheme: Scheme | None = None
    tie: str | None = None
    checksum: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.tie is not None:
            out["tie"] = self.tie
        else:
            assert self.scheme is not None
            out.update(self.scheme.to_json())
            out["checksum"] = self.checksum or CHECKSUM_PLACEHOLDER
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class FileRecords:
    version: tuple[int, int]
    records: dict[str, Record]
    extra: dict[str, Any]


def _field(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], name: str, *, required: bool = True) -> Any:
    if key not in raw:
        if required:
            raise error("record_field_missing", f"record has no {key!r}", tensor=name, field=key)
        return None
    value = raw[key]
    bad_int = kind is int and not _is_int(value)
    if bad_int or not isinstance(value, kind):
        raise error("record_field_invalid", f"{key} has the wrong type: {type(value).__name__}", tensor=name, field=key)
    return value


def _parse_record(name: str, raw: Any, version: tuple[int, int]) -> Record:
    known = {f for f in KNOWN_FIELDS if FIELD_SINCE.get(f, (1, 0)) <= version}
    check_name(name)
    if not isinstance(raw, dict):
        raise error("record_field_invalid", "a record must be a JSON object", tensor=name)
    shape = check_shape(_field(raw, "shape", list, name), tensor=name)
    dtype = _field(raw, "dtype", str, name)
    if dtype not in SOURCE_DTYPES:
        raise error("record_field_invalid", f"dtype must be one of {SOURCE_DTYPES}, found {preview(dtype)}", tensor=name, field="dtype")
    extra = {k: v for k, v in raw.items() if k not in known}
    tie = _field(raw, "tie", str, name, required=False)
    if tie is not None:
        stray = [k for k in (*SCHEME_FIELDS, "checksum") if k in raw and k in known]
        if stray:
            raise error("record_field_invalid", f"a tie carries no {stray[0]}", tensor=name, field=stray[0])
        return Record(name, shape, dtype, tie=tie, extra=extra)
    scheme = Scheme(
        name=_field(raw, "scheme", str, name),
        bits=_field(raw, "bits", int, name, required=False),
        group_size=_field(raw, "group_size", int, name, required=False),
        meta_bits=_field(raw, "meta_bits", int, name, required=False),
        transform=_field(raw, "transform", str, name),
        transform_block=_field(raw, "transform_block", int, name, required=False) if "transform_block" in known else None,
    )
    scheme.check(shape, tensor=name, version=version)
    checksum = _field(raw, "checksum", str, name)
    if not CHECKSUM_PATTERN.fullmatch(checksum):
        raise error("checksum_invalid", f"checksum must look like crc32:0123abcd, found {preview(checksum, 40)}", tensor=name, field="checksum")
    return Record(name, shape, dtype, scheme=scheme, checksum=checksum, extra=extra)


def _parse_version(value: Any) -> tuple[int, int]:
    if not isinstance(value, str) or not VERSION_PATTERN.fullmatch(value):
        raise error("version_invalid", f"format_version must be MAJOR.MINOR, found {preview(value, 40)}", field="format_version")
    major, minor = (int(p) for p in value.split("."))
    if major not in {v[0] for v in VERSIONS_READABLE}:
        readable = ", ".join(f"{a}.{b}" for a, b in VERSIONS_READABLE)
        raise error("version_unsupported", f"format {value} is not readable here (reads {readable}; a newer nanofmt may)", field="format_version")
    return major, minor


def _check_components(record: Record, entries: dict[str, Entry], owner: dict[str, str]) -> None:
    assert record.scheme is not None
    for component in component_layout(record.scheme, record.shape, record.name).values():
        entry = entries.get(component.name)
        if entry is None:
            raise error("component_missing", f"stored tensor {component.name!r} ({component.role or 'data'}) is absent", tensor=record.name)
        if component.name in owner:
            raise error("name_conflict", f"stored tensor {component.name!r} also belongs to {owner[component.name]!r}", tensor=record.name)
        owner[component.name] = record.name
        if (entry.dtype, entry.shape) != (component.dtype, component.shape):
            raise error(
                "component_mismatch",
                f"{component.name!r} should be {component.dtype} {list(component.shape)}, found {entry.dtype} {list(entry.shape)}",
                tensor=record.name,
                field=component.role,
            )


def _check_tie(record: Record, records: dict[str, Record], entries: dict[str, Entry]) -> None:
    target = records.get(record.tie or "")
    if target is None or target.tie is not None:
        raise error("tie_invalid", f"tie target {record.tie!r} is not a stored tensor of this file", tensor=record.name, field="tie")
    if target.shape != record.shape:
        raise error("tie_invalid", f"shape {list(record.shape)} differs from its target's {list(target.shape)}", tensor=record.name, field="shape")
    if record.name in entries:
        raise error("name_conflict", "a tie's name is also a stored tensor", tensor=record.name)


def parse_records(header: Header) -> FileRecords:
    """Validate the Nano metadata of a parsed container header and return its records."""
    text = header.metadata.get(METADATA_KEY)
    if text is None:
        raise error("metadata_missing", f"__metadata__ has no {METADATA_KEY!r} key: not a Nano file", field=METADATA_KEY)
    if len(text.encode("utf-8", "surrogatepass")) > LIMITS["max_metadata_bytes"]:
        raise error("metadata_too_large", f"{METADATA_KEY} metadata exceeds {LIMITS['max_metadata_bytes']} bytes", field=METADATA_KEY)
    try:
        raw = load_json(text, "metadata_not_json")
    except NanoError as exc:
        raise exc.with_context(field=METADATA_KEY) from None
    if not isinstance(raw, dict):
        raise error("metadata_not_json", f"{METADATA_KEY} metadata must be a JSON object", field=METADATA_KEY)
    version = _parse_version(raw.get("format_version"))
    tensors = raw.get("tensors")
    if not isinstance(tensors, dict):
        raise error("record_field_missing" if tensors is None else "record_field_invalid", "tensors must be an object of records", field="tensors")
    if len(tensors) > LIMITS["max_tensors"]:
        raise error("limit_exceeded", f"{len(tensors)} records exceed max_tensors {LIMITS['max_tensors']}", field="tensors")
    records: dict[str, Record] = {}
    for name, value in tensors.items():
        try:
            records[name] = _parse_record(name, value, version)
        except NanoError as exc:
            raise exc.with_context(tensor=name) from None
    owner: dict[str, str] = {}
    for record in records.values():
        if record.tie is None:
            _check_components(record, header.entries, owner)
    for record in records.values():
        if record.tie is not None:
            _check_tie(record, records, header.entries)
    orphans = [name for name in header.entries if name not in owner]
    if orphans:
        raise error("orphan_tensor", f"stored tensor {orphans[0]!r} belongs to no record", tensor=orphans[0])
    extra = {k: v for k, v in raw.items() if k not in ("format_version", "tensors")}
    return FileRecords(version, records, extra)


def lowest_version(records: list[Record]) -> tuple[int, int]:
    """The lowest format version that expresses these records (SPEC.md 5): 1.1 if any uses ``hadamard``, else 1.0."""
    return max((r.scheme.min_version for r in records if r.scheme is not None), default=(1, 0))


def render_records(newest: tuple[int, int], records: list[Record], extra: dict[str, Any]) -> str:
    """The metadata JSON text, declaring the lowest version that expresses ``records``.

    ``newest`` is the newest version the caller writes (normally ``VERSION_WRITTEN``); writers
    MUST declare the lowest one that expresses the file, so a file without 1.1 features stays
    1.0 and readers of 1.0 keep reading it.

    Raises:
        ValueError: the records need a version newer than ``newest``.
    """
    version = lowest_version(records)
    if version > newest:
        raise ValueError(f"these records need format {version[0]}.{version[1]}, newer than {newest[0]}.{newest[1]}")
    body = {"format_version": f"{version[0]}.{version[1]}", **extra, "tensors": {r.name: r.to_json() for r in records}}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
