"""Reading the shards of a Nano model folder (a runtime file: no nanofmt import).

A shard is a safetensors file whose ``__metadata__["nanofmt"]`` holds the Nano records
(SPEC.md, "Records"). This reader checks what the runtime relies on: the format major version,
every record's scheme and shape, every component's dtype, shape and byte range, no stored
tensor outside a record. It is not the full validator (``nanofmt verify`` is); it makes sure no
byte is read from the wrong place and every problem names its file and tensor.

Tensor bytes go straight from the file into the destination tensor's memory with ``readinto``
(CPU), or through one bounded staging buffer (accelerators). There is no memory map: a mapped
file's pages, once read, count in the process's resident set next to the copies made from them
(twice the packed size at the end of a load); read this way, peak host memory stays near the
packed size, and the page cache holds the file for the next load all the same.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .nano_hadamard import HADAMARD_BLOCKS
from .nano_kernels import FORMAT_MAJOR, KINDS, TORCH_DTYPES, Scheme, component_layout

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own cap
STAGING_BYTES = 64 << 20  # host buffer for copies to an accelerator
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1}
TRANSFORM_SINCE = {"none": (1, 0), "hadamard": (1, 1)}  # the transforms this runtime implements, and their format version


class NanoLoadError(ValueError):
    """A Nano folder that cannot be loaded as it is; ``reason`` is a stable slug."""

    def __init__(self, reason: str, message: str, *, path: str | os.PathLike[str] | None = None, tensor: str | None = None) -> None:
        self.reason, self.path, self.tensor = reason, path, tensor
        where = ": ".join(w for w in (str(path) if path else "", f"tensor {tensor!r}" if tensor else "") if w)
        super().__init__(f"{where}: {message} [{reason}]" if where else f"{message} [{reason}]")


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int


@dataclass(frozen=True)
class Record:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scheme: Scheme | None = None
    tie: str | None = None
    checksum: str | None = None

    def components(self) -> dict[str | None, tuple[str, str, tuple[int, ...]]]:
        """Role -> (stored name, dtype, shape)."""
        assert self.scheme is not None
        layout = component_layout(self.scheme, self.shape)
        return {role: (self.name if role is None else f"{self.name}_{role}", d, s) for role, (d, s) in layout.items()}


def _version(value: Any) -> tuple[int, int] | None:
    """``"MAJOR.MINOR"`` -> (major, minor); None for anything else."""
    parts = value.split(".") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _params_fit(scheme: Scheme, shape: tuple[int, ...]) -> bool:
    """The parameters the decoder relies on: 2-D, code widths 1..8, positive group sizes."""
    if not scheme.quantized:
        return True

    def width(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8

    ok = len(shape) == 2 and min(shape) >= 1 and width(scheme.bits)
    if scheme.kind in ("affine", "affine_dq"):
        ok = ok and isinstance(scheme.group_size, int) and not isinstance(scheme.group_size, bool) and scheme.group_size >= 1
    return ok and (scheme.kind != "affine_dq" or width(scheme.meta_bits)) and (scheme.kind != "int8_row" or scheme.bits == 8)


def _record(name: str, raw: Any, path: Path, version: tuple[int, int]) -> Record:
    if not isinstance(raw, dict) or not _int_list(raw.get("shape")) or not isinstance(raw.get("dtype"), str):
        raise NanoLoadError("record_invalid", "a record needs an integer shape list and a dtype", path=path, tensor=name)
    shape = tuple(raw["shape"])
    if isinstance(raw.get("tie"), str):
        return Record(name, shape, raw["dtype"], tie=raw["tie"])
    scheme_name = raw.get("scheme")
    if scheme_name not in KINDS:
        raise NanoLoadError("scheme_unsupported", f"scheme {scheme_name!r} is not one this runtime implements; a newer nanofmt runtime may", path=path, tensor=name)
    transform, block = raw.get("transform", "none"), raw.get("transform_block")
    scheme = Scheme(scheme_name, raw.get("bits"), raw.get("group_size"), raw.get("meta_bits"), transform, block)
    _check_transform(scheme, shape, version, path, name)
    if not _params_fit(scheme, shape):
        raise NanoLoadError("record_invalid", f"{scheme_name} with bits={scheme.bits}, group_size={scheme.group_size}, meta_bits={scheme.meta_bits} cannot hold shape {list(shape)}", path=path, tensor=name)
    return Record(name, shape, raw["dtype"], scheme=scheme, checksum=raw.get("checksum"))


def _check_transform(scheme: Scheme, shape: tuple[int, ...], version: tuple[int, int], path: Path, name: str) -> None:
    """The transform fields (SPEC.md 6.2): a known name, no newer than the file, a block that tiles the rows."""
    transform, block = scheme.transform, scheme.transform_block
    if not isinstance(transform, str) or transform not in TRANSFORM_SINCE:
        raise NanoLoadError("transform_unsupported", f"field 'transform': {transform!r} is not a transform this runtime implements (it reads {', '.join(TRANSFORM_SINCE)}); a newer nanofmt runtime may", path=path, tensor=name)
    if version < TRANSFORM_SINCE[transform]:
        since = ".".join(map(str, TRANSFORM_SINCE[transform]))
        raise NanoLoadError("transform_unsupported", f"field 'transform': {transform!r} is a format {since} feature, the file declares {version[0]}.{version[1]}", path=path, tensor=name)
    if transform == "none":
        if block is not None:
            raise NanoLoadError("record_invalid", f"field 'transform_block': transform 'none' takes none, found {block!r}", path=path, tensor=name)
        return
    if not scheme.quantized or len(shape) != 2:
        raise NanoLoadError("record_invalid", f"field 'transform': {transform!r} applies to 2-D quantized records, not {scheme.name} of shape {list(shape)}", path=path, tensor=name)
    if type(block) is not int or block not in HADAMARD_BLOCKS or shape[1] % block:
        raise NanoLoadError("record_invalid", f"field 'transform_block': {transform!r} needs one of {list(HADAMARD_BLOCKS)} dividing the {shape[1]} columns, found {block!r}", path=path, tensor=name)


class Shard:
    """One Nano file: its records and stored entries, validated against each other."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                prefix = f.read(8)
                length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
                if not 0 <= length <= min(MAX_HEADER_BYTES, size - 8):
                    raise NanoLoadError("header_invalid", "not a safetensors file (bad header length)", path=self.path)
                header = json.loads(f.read(length))
        except OSError as exc:
            raise NanoLoadError("file_unreadable", str(exc.strerror or exc), path=self.path) from exc
        except ValueError as exc:
            if isinstance(exc, NanoLoadError):
                raise
            raise NanoLoadError("header_invalid", f"header is not JSON ({exc})", path=self.path) from exc
        self.entries = self._entries(header, 8 + length, size)
        self.records = self._records(header)
        self._check_components()

    def _entries(self, header: Any, start: int, size: int) -> dict[str, Entry]:
        if not isinstance(header, dict):
            raise NanoLoadError("header_invalid", "header is not a JSON object", path=self.path)
        entries = {}
        for name, raw in header.items():
            if name == "__metadata__":
                continue
            ok = isinstance(raw, dict) and raw.get("dtype") in SIZES and _int_list(raw.get("shape")) and _int_list(raw.get("data_offsets"))
            if not ok or len(raw["data_offsets"]) != 2:
                raise NanoLoadError("header_invalid", "entry needs a Nano dtype, a shape and two data offsets", path=self.path, tensor=name)
            begin, end = (start + o for o in raw["data_offsets"])
            if end - begin != math.prod(raw["shape"]) * SIZES[raw["dtype"]] or end > size:
                raise NanoLoadError("offsets_invalid", f"byte range [{begin}, {end}) does not fit its shape or the file ({size} bytes)", path=self.path, tensor=name)
            entries[name] = Entry(raw["dtype"], tuple(raw["shape"]), begin, end)
        return entries

    def _records(self, header: dict[str, Any]) -> dict[str, Record]:
        text = (header.get("__metadata__") or {}).get("nanofmt")
        if not isinstance(text, str):
            raise NanoLoadError("not_nano", "no nanofmt metadata: not a Nano file", path=self.path)
        meta = json.loads(text)
        version = _version(meta.get("format_version"))
        if version is None:
            raise NanoLoadError("version_invalid", f"format_version must be a \"MAJOR.MINOR\" string, found {meta.get('format_version')!r}", path=self.path)
        if version[0] != FORMAT_MAJOR:
            raise NanoLoadError("version_unsupported", f"format {meta.get('format_version')!r} is not readable by this runtime (reads {FORMAT_MAJOR}.x)", path=self.path)
        tensors = meta.get("tensors")
        if not isinstance(tensors, dict):
            raise NanoLoadError("record_invalid", "nanofmt metadata has no tensors object", path=self.path)
        return {name: _record(name, raw, self.path, version) for name, raw in tensors.items()}

    def _check_components(self) -> None:
        claimed: set[str] = set()
        for record in self.records.values():
            if record.tie is not None:
                target = self.records.get(record.tie)
                if target is None or target.tie is not None or target.shape != record.shape:
                    raise NanoLoadError("tie_invalid", f"tie target {record.tie!r} is not a stored tensor of the same shape in this shard", path=self.path, tensor=record.name)
                continue
            for stored, dtype, shape in record.components().values():
                entry = self.entries.get(stored)
                if entry is None:
                    raise NanoLoadError("component_missing", f"stored tensor {stored!r} is absent", path=self.path, tensor=record.name)
                if (entry.dtype, entry.shape) != (dtype, shape):
                    raise NanoLoadError("component_mismatch", f"{stored!r} should be {dtype} {list(shape)}, found {entry.dtype} {list(entry.shape)}", path=self.path, tensor=record.name)
                claimed.add(stored)
        orphans = sorted(set(self.entries) - claimed)
        if orphans:
            raise NanoLoadError("orphan_tensor", "stored tensor belongs to no record", path=self.path, tensor=orphans[0])

    def read(self, record: Record, device: torch.device, *, verify: bool = False, arena: Arena | None = None) -> dict[str | None, torch.Tensor]:
        """The components of ``record`` on ``device`` (stored dtypes), role -> tensor.

        New tensors, or views into ``arena`` when given (valid until the arena's next record).
        """
        crc = 0
        out: dict[str | None, torch.Tensor] = {}
        if arena is not None:
            arena.reset()
        with open(self.path, "rb", buffering=0) as f:
            for role, (stored, dtype, shape) in record.components().items():
                if arena is not None:
                    tensor = arena.take(shape, TORCH_DTYPES[dtype], device)
                else:
                    tensor = torch.empty(shape, dtype=TORCH_DTYPES[dtype], device=device)
                crc = _read_into(f, self.entries[stored], tensor, crc if verify else None)
                out[role] = tensor
        if verify and record.checksum != f"crc32:{crc & 0xFFFFFFFF:08x}":
            raise NanoLoadError("checksum_mismatch", f"recorded {record.checksum}, data hash to crc32:{crc & 0xFFFFFFFF:08x}", path=self.path, tensor=record.name)
        return out


class Arena:
    """One reusable buffer for tensors that live only until the next record is read.

    The loader reads a weight that it will repack into a kernel layout here: the repacked copy
    is the only allocation that stays, so freed packed buffers never leave holes in the heap
    (with glibc, such holes stay resident: they would add up to the packed size again).
    """

    ALIGN = 64

    def __init__(self, nbytes: int = 0) -> None:
        self._buf: torch.Tensor | None = None
        self._size, self._used = nbytes, 0

    def reset(self) -> None:
        self._used = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        end = self._used + nbytes
        if self._buf is None or self._buf.device != device or self._buf.numel() < end:
            # grow (views taken earlier for this record keep the old buffer alive until dropped)
            self._size = max(self._size, 2 * end)
            self._buf, self._used, end = torch.empty(self._size, dtype=torch.uint8, device=device), 0, nbytes
        view = self._buf[self._used : end].view(dtype).view(shape)
        self._used = -(-end // self.ALIGN) * self.ALIGN
        return view


_STAGING: dict[str, torch.Tensor] = {}


def _staging(nbytes: int) -> torch.Tensor:
    buf = _STAGING.get("host")
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=torch.cuda.is_available())
        _STAGING["host"] = buf
    return buf


def release_staging() -> None:
    _STAGING.clear()


def _fill(f: Any, view: memoryview) -> None:
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise NanoLoadError("file_too_short", f"file ended after {done} of {len(view)} bytes", path=getattr(f, "name", None))
        done += got


def _read_into(f: Any, entry: Entry, tensor: torch.Tensor, crc: int | None) -> int:
    nbytes = entry.end - entry.begin
    if nbytes == 0:
        return crc or 0
    flat = tensor.reshape(-1).view(torch.uint8)
    f.seek(entry.begin)
    if tensor.device.type == "cpu":
        view = memoryview(flat.numpy())
        _fill(f, view)
        return zlib.crc32(view, crc) if crc is not None else 0
    staging = _staging(min(nbytes, STAGING_BYTES))
    for start in range(0, nbytes, staging.numel()):
        n = min(staging.numel(), nbytes - start)
        view = memoryview(staging[:n].numpy())
        _fill(f, view)
        crc = zlib.crc32(view, crc) if crc is not None else None
        flat[start : start + n].copy_(staging[:n])
    return crc or 0


def shard_paths(folder: Path) -> list[Path]:
    """The shard files of a model folder, from the index when there is one."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise NanoLoadError("index_invalid", "weight_map must be a non-empty object", path=index)
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise NanoLoadError("no_weights", f"neither {SINGLE_FILE} nor {INDEX_FILE} is here", path=folder)
