"""Reading and writing Nano files: memory-mapped, validated reads; streaming, atomic writes.

Example:
    >>> import numpy as np, tempfile, os
    >>> w = np.ones((4, 64), np.float32)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> write_file(path, {"w": quantize(w, Scheme("affine", bits=4, group_size=64))})
    >>> with open_file(path) as f:
    ...     float(dequantize(f.tensor("w")).sum())
    256.0
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._spec import DTYPE_SIZES, VERSION_WRITTEN
from .bits import padding_is_zero
from .codec import QuantizedTensor, dequantize, quantize  # noqa: F401  (quantize: doctest)
from .container import NUMPY_DTYPES, Entry, SafetensorsWriter, encode_header, parse_header, read_header
from .errors import NanoError, error
from .records import FileRecords, Record, format_checksum, parse_records, render_records
from .schemes import Scheme, component_layout

__all__ = ["NanoFile", "open_file", "write_file", "NanoWriter", "TensorPlan", "checksum_of"]

METADATA_FORMAT = {"format": "pt"}  # what transformers expects of a safetensors file's metadata


def checksum_of(qt: QuantizedTensor) -> str:
    """CRC-32 over the components' bytes in the scheme's component order (SPEC.md, "Checksums")."""
    crc = 0
    for role in component_layout(qt.scheme, qt.shape, "x"):
        crc = zlib.crc32(np.ascontiguousarray(qt.parts[role]).data, crc)
    return format_checksum(crc)


class NanoFile:
    """An open, validated Nano file. Tensor data are zero-copy views of a read-only memory map.

    Use :func:`open_file`; close it (or use ``with``) when done.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._map: mmap.mmap | None = None
        try:
            # Only regular files are read: a FIFO or a device would block or never end. Opening
            # without blocking, then checking the opened file, leaves no window to swap one in.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
            with open(fd, "rb") as file:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise error("file_unreadable", "not a regular file", path=self.path)
                size = info.st_size
                self.header = read_header(file, size)
                parsed: FileRecords = parse_records(self.header)
                # read_header guarantees size >= 8; the map keeps its own handle, so the file closes here.
                self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except NanoError as exc:
            raise exc.with_context(path=self.path) from None
        except OSError as exc:
            raise error("file_unreadable", f"cannot read: {exc.strerror or exc}", path=self.path) from exc
        self.version = parsed.version
        self.records: dict[str, Record] = parsed.records
        self.extra: dict[str, Any] = parsed.extra

    # -- access --------------------------------------------------------------------------------
    def __enter__(self) -> NanoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __contains__(self, name: object) -> bool:
        return name in self.records

    def __len__(self) -> int:
        return len(self.records)

    @property
    def entries(self) -> dict[str, Entry]:
        return self.header.entries

    def component(self, stored: str) -> np.ndarray:
        """The stored tensor ``stored`` as a read-only array view (bf16 as uint16 bits)."""
        entry = self.header.entries[stored]
        dtype = NUMPY_DTYPES[entry.dtype]
        count = entry.end - entry.begin
        assert self._map is not None
        flat = np.frombuffer(self._map, dtype=dtype, count=count // dtype.itemsize, offset=self.header.data_start + entry.begin)
        return flat.reshape(entry.shape)

    def stored_record(self, name: str) -> Record:
        """The record holding ``name``'s data: itself, or its tie target."""
        record = self.records[name]
        return self.records[record.tie] if record.tie is not None else record

    def tensor(self, name: str) -> QuantizedTensor:
        """The logical tensor ``name`` (a tie resolves to its target's components)."""
        if name not in self.records:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        record = self.stored_record(name)
        assert record.scheme is not None
        layout = component_layout(record.scheme, record.shape, record.name)
        parts = {role: self.component(c.name) for role, c in layout.items()}
        return QuantizedTensor(record.shape, self.records[name].dtype, record.scheme, parts)

    # -- integrity ---------------------------------------------------------------------------
    def check_checksum(self, name: str) -> None:
        """Raise ``checksum_mismatch`` unless ``name``'s stored bytes hash to its recorded checksum."""
        record = self.stored_record(name)
        found = checksum_of(self.tensor(record.name))
        if found != record.checksum:
            raise error("checksum_mismatch", f"recorded {record.checksum}, data hash to {found}", path=self.path, tensor=record.name, field="checksum")

    def problems(self) -> Iterator[NanoError]:
        """Every problem full verification finds: checksums, padding bits, decodability.

        Decoding runs a bounded number of rows at a time, so verification allocates about
        ``DECODE_CHUNK_BYTES`` (or one row's float32 values, if larger) whatever the tensor's size.
        """
        for name, record in self.records.items():
            if record.tie is not None:
                continue
            try:
                self.check_checksum(name)
                qt = self.tensor(name)
                if not qt.scheme.is_passthrough:  # passthrough values decode whatever their bits
                    for rows in _row_chunks(qt.shape):
                        self._check_padding(name, qt, rows)
                        dequantize(qt, "f32", rows=rows)
            except NanoError as exc:
                yield exc.with_context(path=self.path, tensor=name)

    def verify(self) -> None:
        """Raise the first problem :meth:`problems` finds."""
        for problem in self.problems():
            raise problem

    def _check_padding(self, name: str, qt: QuantizedTensor, rows: slice) -> None:
        scheme = qt.scheme
        packed: list[tuple[str, int, int]] = []
        if scheme.kind in ("affine", "affine_dq"):
            assert scheme.bits is not None and scheme.group_size is not None
            packed.append(("codes", scheme.bits, qt.shape[1]))
            if scheme.meta_bits is not None:
                groups = -(-qt.shape[1] // scheme.group_size)
                packed += [("qscales", scheme.meta_bits, groups), ("qoffsets", scheme.meta_bits, groups)]
        for role, bits, n in packed:
            if not padding_is_zero(qt.parts[role][rows], bits, n):  # type: ignore[arg-type]
                raise error("padding_nonzero", "padding bits after the last code of a row are not zero", path=self.path, tensor=name, field=role)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # arrays still view the map; it closes when the last of them goes


DECODE_CHUNK_BYTES = 16 << 20  # float32 output per decoding step of verification


def _row_chunks(shape: tuple[int, ...]) -> Iterator[slice]:
    """Row ranges of a 2-D tensor whose float32 values take about DECODE_CHUNK_BYTES each."""
    rows, cols = shape
    step = max(1, DECODE_CHUNK_BYTES // (4 * cols))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def open_file(path: str | os.PathLike[str]) -> NanoFile:
    """Open and validate a Nano file (header, records, component layout; not yet the data).

    Raises:
        MalformedError / UnsupportedError: with a reason code, naming the file, tensor and field.
    """
    return NanoFile(path)


@dataclass(frozen=True)
class TensorPlan:
    """What one logical tensor will be, known before its data: enough to lay out the header."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scheme: Scheme | None = None
    tie: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, checksum: str | None = None) -> Record:
        return Record(self.name, tuple(self.shape), self.dtype, self.scheme, self.tie, checksum, dict(self.extra))


class NanoWriter:
    """Writes a Nano file whose every tensor is planned up front, then streamed in plan order.

    Ties are written as records only. Checksums are patched into the header at :meth:`close`
    (they are fixed-width, so the header keeps its planned length and no data moves).
    """

    def __init__(self, path: str | os.PathLike[str], plan: list[TensorPlan], extra: Mapping[str, Any] | None = None) -> None:
        self.path = os.fspath(path)
        self._plan = list(plan)
        self._extra = dict(extra or {})
        self._checksums: dict[str, str] = {}
        self._pending = [p for p in self._plan if p.tie is None]
        entries: list[tuple[str, str, tuple[int, ...]]] = []
        for p in self._pending:
            assert p.scheme is not None, f"{p.name}: a stored tensor needs a scheme"
            p.scheme.check(p.shape, tensor=p.name)
            entries += [(c.name, c.dtype, c.shape) for c in component_layout(p.scheme, p.shape, p.name).values()]
        _check_readable(entries, self._metadata())
        self._writer = SafetensorsWriter(self.path, entries, self._metadata())

    def _metadata(self) -> dict[str, str]:
        records = [p.record(self._checksums.get(p.name)) for p in self._plan]
        return {**METADATA_FORMAT, "nanofmt": render_records(VERSION_WRITTEN, records, self._extra)}

    def add(self, name: str, qt: QuantizedTensor) -> None:
        """Write the next planned tensor's data."""
        index = len(self._checksums)
        planned = self._pending[index] if index < len(self._pending) else None
        if planned is None or planned.name != name:
            raise ValueError(f"expected {planned.name if planned else 'no more tensors'!r} next, got {name!r}")
        if (qt.scheme, qt.shape) != (planned.scheme, planned.shape):
            raise ValueError(f"{name}: planned {planned.scheme} {planned.shape}, got {qt.scheme} {qt.shape}")
        for role, component in component_layout(qt.scheme, qt.shape, name).items():
            self._writer.write(component.name, qt.parts[role])
        self._checksums[name] = checksum_of(qt)

    def close(self) -> None:
        self._writer.rewrite_metadata(self._metadata())
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()
        Path(self.path).unlink(missing_ok=True)


def _check_readable(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> None:
    """Refuse, before writing anything, a plan whose file the reader would refuse (names, extra metadata)."""
    try:
        header, _ = encode_header(entries, metadata)
        size = sum(math.prod(shape) * DTYPE_SIZES[dtype] for _, dtype, shape in entries)
        parse_records(parse_header(header[8:], size))
    except (NanoError, UnicodeEncodeError) as exc:
        raise ValueError(f"the planned file would not be readable: {exc}") from exc


def write_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, QuantizedTensor | str],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``tensors`` (a value or, for a tie, the target's name) to ``path`` atomically.

    The file appears complete or not at all: it is written to a temporary sibling and renamed.
    """
    plan: list[TensorPlan] = []
    for name, value in tensors.items():
        if isinstance(value, str):
            target = tensors.get(value)
            if not isinstance(target, QuantizedTensor):
                raise ValueError(f"{name}: tie target {value!r} is not a tensor being written")
            plan.append(TensorPlan(name, target.shape, target.dtype, tie=value))
        else:
            plan.append(TensorPlan(name, value.shape, value.dtype, value.scheme))
    final = Path(path)
    temporary = final.with_name(f".{final.name}.partial")
    writer = NanoWriter(temporary, plan, extra)
    try:
        for p in plan:
            if p.tie is None:
                value = tensors[p.name]
                assert isinstance(value, QuantizedTensor)
                writer.add(p.name, value)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    os.replace(temporary, final)
