"""The safetensors container under every Nano file: strict header parsing and streaming writes.

This layer knows nothing of schemes. It checks what the safetensors format itself requires
(SPEC.md, "Container"): an 8-byte little-endian header length, a JSON object header, entries
whose byte ranges tile the data buffer exactly (no holes, no overlap, nothing after the end),
each range matching its shape and dtype. Every check runs before any tensor data is touched.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from ._spec import DTYPE_SIZES, LIMITS
from .errors import NanoError, error

__all__ = ["Entry", "Header", "parse_header", "read_header", "load_json", "SafetensorsWriter", "NUMPY_DTYPES"]

# How each stored dtype is viewed in numpy; bf16 travels as its uint16 bit pattern.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "U8": np.dtype("u1"), "I8": np.dtype("i1")}
assert set(NUMPY_DTYPES) == set(DTYPE_SIZES), "every dtype in format.json needs a numpy view"
HEADER_ALIGNMENT = 8  # safetensors pads the header with spaces so data starts 8-byte aligned
PREFIX = struct.Struct("<Q")


@dataclass(frozen=True)
class Entry:
    """One stored tensor: dtype, shape and its byte range relative to the start of the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    entries: dict[str, Entry]
    metadata: dict[str, str]
    data_start: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def preview(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a JSON value for messages (never the repr of a huge or deep value)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit integer>"
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)
    if isinstance(value, list) and len(value) <= 10 and not any(isinstance(v, (list, dict)) for v in value):
        return "[" + ", ".join(preview(v, 20) for v in value) + "]"
    return f"<JSON {'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else type(value).__name__}>"


def check_shape(shape: Any, *, tensor: str, field: str = "shape") -> tuple[int, ...]:
    """A list of non-negative ints within the rank, dimension and element limits.

    The element limit applies to the product of the non-zero dimensions, so that an empty
    tensor cannot declare dimensions whose partial products overflow 64 bits (numpy, and the
    kernels, compute them).
    """
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise error("shape_invalid", f"shape must be a list of integers, found {preview(shape)}", tensor=tensor, field=field)
    if len(shape) > LIMITS["max_rank"]:
        raise error("shape_invalid", f"rank {len(shape)} exceeds max_rank {LIMITS['max_rank']}", tensor=tensor, field=field)
    if any(d < 0 or d > LIMITS["max_dim"] for d in shape):
        bad = next(d for d in shape if d < 0 or d > LIMITS["max_dim"])
        raise error("shape_invalid", f"dimensions must be in 0..{LIMITS['max_dim']}, found {preview(bad)}", tensor=tensor, field=field)
    spanned = math.prod(d for d in shape if d)
    if spanned > LIMITS["max_elements"]:
        raise error("limit_exceeded", f"{spanned} elements (zero dimensions counted as 1) exceed max_elements {LIMITS['max_elements']}", tensor=tensor, field=field)
    return tuple(shape)


def check_name(name: str, *, field: str = "name") -> None:
    if not name or len(name.encode("utf-8", "surrogatepass")) > LIMITS["max_name_bytes"]:
        raise error("name_invalid", f"tensor names must be 1..{LIMITS['max_name_bytes']} bytes, found {len(name)} characters", tensor=name[:80], field=field)


# --- strict JSON ----------------------------------------------------------------------------
# Python's json module accepts more than RFC 8259 (NaN, Infinity, 1e999 -> inf, lone surrogate
# escapes, duplicate keys, unbounded nesting). The Rust safetensors reader (serde_json) refuses
# all of these, and so do we, so every reader agrees on which files are valid.


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise error("name_conflict", "a JSON object names this key twice", tensor=key[:200])
        out[key] = value
    return out


def _is_text(s: str) -> bool:
    """False for a string holding a lone surrogate (a \\uD800-style escape), which UTF-8 cannot carry."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_tree(root: Any, reason: str) -> None:
    """Nesting depth and string validity of a parsed JSON value, walked without recursion."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not _is_text(node):
                raise error(reason, "a string holds a lone surrogate escape, which is not Unicode text")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > LIMITS["max_json_depth"]:
            raise error("limit_exceeded", f"JSON nesting is deeper than max_json_depth {LIMITS['max_json_depth']}")
        if isinstance(node, dict):
            stack.extend((key, depth) for key in node)
            stack.extend((value, depth + 1) for value in node.values())
        else:
            stack.extend((value, depth + 1) for value in node)


def load_json(text: bytes | str, reason: str) -> Any:
    """Parse strict JSON text; any departure raises ``reason`` (or name_conflict, limit_exceeded)."""

    def refuse_constant(literal: str) -> Any:
        raise error(reason, f"{literal} is not a JSON number")

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise error(reason, f"the number {literal[:40]} overflows to infinity")
        return value

    def integer(literal: str) -> int | float:
        if literal == "-0":
            return -0.0  # serde_json reads "-0" as a float; so do we, and integer fields refuse it
        if len(literal) > sys.int_info.default_max_str_digits:
            # int() takes quadratic time on long digit strings; Python's own guard against
            # that may have been lifted (sys.set_int_max_str_digits(0)), so keep ours.
            raise error(reason, f"an integer of {len(literal)} digits")
        return int(literal)

    try:
        decoded = text.decode("utf-8") if isinstance(text, bytes) else text
        value = json.loads(decoded, object_pairs_hook=_unique_object, parse_constant=refuse_constant, parse_float=finite, parse_int=integer)
    except NanoError:
        raise
    except RecursionError as exc:
        raise error("limit_exceeded", f"JSON nesting is deeper than max_json_depth {LIMITS['max_json_depth']}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int() past its digit limit
        raise error(reason, f"not UTF-8 JSON text ({type(exc).__name__}: {str(exc)[:80]})") from exc
    _check_tree(value, reason)
    return value


def _parse_entry(name: str, raw: Any) -> Entry:
    check_name(name)
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise error("header_entry_invalid", "an entry must be an object with exactly dtype, shape and data_offsets", tensor=name)
    dtype = raw["dtype"]
    if not isinstance(dtype, str):
        raise error("header_entry_invalid", f"dtype must be a string, found {preview(dtype)}", tensor=name, field="dtype")
    if dtype not in DTYPE_SIZES:
        raise error("dtype_unknown", f"dtype {preview(dtype)} is not one Nano uses ({', '.join(DTYPE_SIZES)})", tensor=name, field="dtype")
    shape = check_shape(raw["shape"], tensor=name)
    offsets = raw["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        raise error("header_entry_invalid", f"data_offsets must be two non-negative integers, found {preview(offsets)}", tensor=name, field="data_offsets")
    begin, end = offsets
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise error("data_offsets_invalid", f"byte range holds {end - begin} bytes, shape {list(shape)} of {dtype} needs {expected}", tensor=name, field="data_offsets")
    return Entry(name, dtype, shape, begin, end)


def parse_header(header_bytes: bytes, data_size: int) -> Header:
    """Validate a safetensors JSON header against a data buffer of ``data_size`` bytes.

    Raises:
        NanoError: for any bytes that are not a valid header (never another exception).
    """
    raw = load_json(bytes(header_bytes), "header_not_json")
    if not isinstance(raw, dict):
        raise error("header_not_json", f"header must be a JSON object, found {type(raw).__name__}")
    metadata = raw.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise error("header_entry_invalid", "__metadata__ must map strings to strings", field="__metadata__")
    if len(raw) > LIMITS["max_tensors"] * 8:
        raise error("limit_exceeded", f"{len(raw)} stored tensors is beyond the limit")
    entries = {name: _parse_entry(name, value) for name, value in raw.items()}
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            what = "leaves a hole before" if entry.begin > position else "overlaps"
            raise error("data_offsets_invalid", f"byte range [{entry.begin}, {entry.end}) {what} the previous tensor (expected begin {position})", tensor=entry.name, field="data_offsets")
        position = entry.end
    if position > data_size:
        raise error("file_too_short", f"tensors need {position} data bytes, the file holds {data_size}")
    if position < data_size:
        raise error("trailing_bytes", f"{data_size - position} bytes follow the last tensor")
    return Header(entries, metadata, 0)


def read_header(stream: IO[bytes], file_size: int) -> Header:
    """Read and validate the header of a safetensors stream positioned at its start."""
    prefix = stream.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise error("file_too_short", f"{file_size} bytes is shorter than the 8-byte header length")
    (length,) = PREFIX.unpack(prefix)
    if length > LIMITS["max_header_bytes"]:
        raise error("header_too_large", f"header length {length} exceeds max_header_bytes {LIMITS['max_header_bytes']}")
    if PREFIX.size + length > file_size:
        raise error("file_too_short", f"header length {length} runs past the end of the {file_size}-byte file")
    header_bytes = stream.read(length)
    if len(header_bytes) != length:
        raise error("file_too_short", "file ended inside the header")
    data_start = PREFIX.size + length
    header = parse_header(header_bytes, file_size - data_start)
    return Header(header.entries, header.metadata, data_start)


def encode_header(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> tuple[bytes, list[Entry]]:
    """Header bytes (length prefix included, space-padded to 8-byte alignment) for tensors in this order."""
    body: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    placed: list[Entry] = []
    position = 0
    for name, dtype, shape in entries:
        size = math.prod(shape) * DTYPE_SIZES[dtype]
        body[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, position + size]}
        placed.append(Entry(name, dtype, tuple(shape), position, position + size))
        position += size
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(PREFIX.size + len(text)) % HEADER_ALIGNMENT)
    return PREFIX.pack(len(text)) + text, placed


class SafetensorsWriter:
    """Streams tensors into a safetensors file whose header is planned up front.

    The caller lists every tensor (name, dtype, shape) first; :meth:`write` then takes their
    data in that order. :meth:`rewrite_metadata` replaces the metadata afterwards, provided
    the new header has the same length (Nano uses fixed-width checksum fields for this).
    """

    def __init__(self, path: str | os.PathLike[str], entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> None:
        self.path = os.fspath(path)
        self._plan = entries
        header, self._placed = encode_header(entries, metadata)
        self._header_size = len(header)
        self._next = 0
        self._file = open(self.path, "wb")
        self._file.write(header)

    def write(self, name: str, data: np.ndarray) -> None:
        entry = self._placed[self._next] if self._next < len(self._placed) else None
        if entry is None or entry.name != name:
            raise ValueError(f"expected tensor {entry.name if entry else None!r} next, got {name!r}")
        if np.dtype(data.dtype).newbyteorder("<") != NUMPY_DTYPES[entry.dtype].newbyteorder("<"):
            raise ValueError(f"{name}: planned dtype {entry.dtype} ({NUMPY_DTYPES[entry.dtype]}), got {data.dtype}")
        raw = np.asarray(data, dtype=NUMPY_DTYPES[entry.dtype], order="C")  # ascontiguousarray would make a 0-d array 1-d
        if raw.shape != entry.shape:
            raise ValueError(f"{name}: planned shape {entry.shape}, got {raw.shape}")
        self._file.write(raw.data)
        self._next += 1

    def rewrite_metadata(self, metadata: dict[str, str]) -> None:
        header, _ = encode_header(self._plan, metadata)
        if len(header) != self._header_size:
            raise ValueError(f"new header is {len(header)} bytes, the planned one {self._header_size}")
        self._file.seek(0)
        self._file.write(header)
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        if self._next != len(self._placed):
            self._file.close()
            raise ValueError(f"{len(self._placed) - self._next} planned tensors were never written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()
