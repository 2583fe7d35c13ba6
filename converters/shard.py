"""Writing one output shard: a Nano file whose records also carry what was measured while streaming.

The core's ``NanoWriter`` plans the header up front and patches only fixed-width checksums at
the end. The converter also records each tensor's SQNR (``sqnr_db``), known only once the tensor
has been quantized, and a JSON number has no fixed width. So the planned header holds ``null``
for every measured value plus a run of spaces in the file-level ``reserved`` field, and at the
end the spaces shrink by exactly what the numbers grew: same header length, no data moved, and
the planned file size is the real one (which is what makes ``--dry-run`` sizes exact).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nanofmt import QuantizedTensor, TensorPlan
from nanofmt._spec import VERSION_WRITTEN
from nanofmt.container import SafetensorsWriter, encode_header
from nanofmt.files import METADATA_FORMAT, checksum_of
from nanofmt.records import render_records
from nanofmt.schemes import component_layout

__all__ = ["ShardWriter", "shard_size", "sqnr_value", "RESERVED_KEY"]

RESERVED_KEY = "reserved"
SQNR_KEY = "sqnr_db"
_GROWTH = 2  # "null" (4 characters) -> at most 6 ("-99.99", "999.99"): see sqnr_value


def sqnr_value(signal: float, noise: float) -> float | None:
    """SQNR in dB rounded to 2 decimals and clamped to [-99.99, 999.99]; None when undefined or lossless."""
    if signal <= 0 or noise <= 0 or not math.isfinite(signal) or not math.isfinite(noise):
        return None
    return round(min(999.99, max(-99.99, 10 * math.log10(signal / noise))), 2)


def _entries(tensors: list[TensorPlan]) -> list[tuple[str, str, tuple[int, ...]]]:
    entries = []
    for t in tensors:
        if t.tie is None:
            assert t.scheme is not None
            t.scheme.check(t.shape, tensor=t.name)
            entries += [(c.name, c.dtype, c.shape) for c in component_layout(t.scheme, t.shape, t.name).values()]
    return entries


def _metadata(tensors: list[TensorPlan], measured: Mapping[str, float | None], checksums: Mapping[str, str], extra: Mapping[str, Any], reserved: int) -> dict[str, str]:
    records = []
    for t in tensors:
        if t.name in measured:
            t = replace(t, extra={**t.extra, SQNR_KEY: measured[t.name]})
        records.append(t.record(checksums.get(t.name)))
    return {**METADATA_FORMAT, "nanofmt": render_records(VERSION_WRITTEN, records, {**extra, RESERVED_KEY: " " * reserved})}


def shard_size(tensors: list[TensorPlan], measured: frozenset[str], extra: Mapping[str, Any]) -> int:
    """The exact size in bytes of the shard :class:`ShardWriter` writes for this plan."""
    entries = _entries(tensors)
    header, placed = encode_header(entries, _metadata(tensors, dict.fromkeys(measured), {}, extra, _GROWTH * len(measured)))
    return len(header) + (placed[-1].end if placed else 0)


class ShardWriter:
    """Streams the planned tensors of one shard; ``measured`` names the records that get ``sqnr_db``.

    Example:
        >>> import tempfile, nanofmt
        >>> w = np.ones((2, 32), np.float32)
        >>> qt = nanofmt.quantize(w, nanofmt.Scheme("int8_row", bits=8))
        >>> plan = [TensorPlan("w", (2, 32), "f32", qt.scheme)]
        >>> path = os.path.join(tempfile.mkdtemp(), "s.safetensors")
        >>> writer = ShardWriter(path, plan, frozenset({"w"}), {})
        >>> writer.add("w", qt, 41.5); writer.close()
        >>> os.path.getsize(path) == shard_size(plan, frozenset({"w"}), {})
        True
        >>> nanofmt.open_file(path).records["w"].extra["sqnr_db"]
        41.5
    """

    def __init__(self, path: str | os.PathLike[str], tensors: list[TensorPlan], measured: frozenset[str], extra: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self._tensors = list(tensors)
        self._extra = dict(extra)
        self._measured: dict[str, float | None] = dict.fromkeys(measured)
        self._checksums: dict[str, str] = {}
        self._pending = [t for t in self._tensors if t.tie is None]
        self._reserved = _GROWTH * len(self._measured)
        planned = _metadata(self._tensors, self._measured, {}, self._extra, self._reserved)
        self._planned_length = len(planned["nanofmt"])
        self._writer = SafetensorsWriter(self.path, _entries(self._tensors), planned)

    def add(self, name: str, qt: QuantizedTensor, sqnr_db: float | None = None) -> None:
        """Write the next planned tensor's components (and its measured SQNR, if it is measured)."""
        index = len(self._checksums)
        planned = self._pending[index] if index < len(self._pending) else None
        if planned is None or planned.name != name:
            raise ValueError(f"expected {planned.name if planned else 'no more tensors'!r} next, got {name!r}")
        if (qt.scheme, tuple(qt.shape)) != (planned.scheme, tuple(planned.shape)):
            raise ValueError(f"{name}: planned {planned.scheme} {planned.shape}, got {qt.scheme} {qt.shape}")
        for role, component in component_layout(qt.scheme, qt.shape, name).items():
            self._writer.write(component.name, np.asarray(qt.parts[role]))
        self._checksums[name] = checksum_of(qt)
        if name in self._measured:
            self._measured[name] = sqnr_db

    def close(self) -> None:
        unpadded = _metadata(self._tensors, self._measured, self._checksums, self._extra, 0)
        reserved = self._planned_length - len(unpadded["nanofmt"])
        assert reserved >= 0, "measured values grew past the reserved width"
        self._writer.rewrite_metadata(_metadata(self._tensors, self._measured, self._checksums, self._extra, reserved))
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()
        self.path.unlink(missing_ok=True)
