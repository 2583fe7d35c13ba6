"""Reading a Hugging Face model folder one tensor (or row range) at a time.

Safetensors files are memory-mapped and read with numpy alone (no torch): a row range of a
tensor is a zero-copy view of the map, and :meth:`Source.release` tells the kernel to drop
those pages from this process once they are converted, so resident memory stays bounded by
the tensor at hand rather than growing with the model. bf16 travels as ``uint16`` bit patterns
(``nanofmt.floats``). A folder with only ``pytorch_model*.bin`` is read with
``torch.load(weights_only=True, mmap=True)``, and a hub id is fetched with huggingface_hub.

Example:
    >>> import numpy as np, tempfile
    >>> from safetensors.numpy import save_file
    >>> d = Path(tempfile.mkdtemp()); (d / "config.json").write_text("{}")
    2
    >>> save_file({"w": np.ones((3, 4), np.float32)}, d / "model.safetensors")
    >>> with open_source(d) as src:
    ...     src.tensors["w"].shape, src.read("w", slice(1, 3)).shape
    ((3, 4), (2, 4))
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConvertError

__all__ = ["SourceTensor", "Source", "open_source", "resolve_source", "read_rows", "RECORD_DTYPES"]

# safetensors dtype -> (numpy dtype of the raw bytes, Nano record dtype). F64 is narrowed to f32.
RECORD_DTYPES: dict[str, tuple[str, str]] = {"F32": ("<f4", "f32"), "F16": ("<f2", "f16"), "BF16": ("<u2", "bf16"), "F64": ("<f8", "f32")}
ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
TOKENIZER_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken", "chat_template.*", "generation_config.json", "preprocessor_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class SourceTensor:
    """One source tensor: where its bytes are and what they are."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string, e.g. "BF16"; torch sources are mapped to the same names
    file: Path
    begin: int = 0  # absolute byte offset in ``file`` (safetensors sources)

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("F", "BF"))

    @property
    def record_dtype(self) -> str:
        """The Nano record dtype (f32/f16/bf16); raises ``dtype_unsupported`` for float8 and the like."""
        if self.dtype not in RECORD_DTYPES:
            raise ConvertError("dtype_unsupported", f"source dtype {self.dtype} has no Nano record dtype (f32, f16, bf16)", tensor=self.name)
        return RECORD_DTYPES[self.dtype][1]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEM_SIZES.get(self.dtype, 1)


class _Mapped:
    """A read-only map of one file, shared by every tensor read from it."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self.map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def release(self, begin: int, end: int) -> None:
        # Pages of a clean, read-only file map can always be dropped; they are re-read on demand.
        if self.map is None or not hasattr(self.map, "madvise") or end <= begin:
            return
        start = begin - begin % mmap.PAGESIZE
        self.map.madvise(mmap.MADV_DONTNEED, start, min(end, len(self.map)) - start)

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:
                pass  # a view is still alive somewhere; the map goes with it
        self._file.close()


_MAPS: dict[Path, _Mapped] = {}  # per process: worker processes read through their own maps


def read_rows(t: SourceTensor, rows: slice | None = None) -> np.ndarray:
    """Rows ``rows`` of safetensors tensor ``t`` as a read-only view: float32/float16, or bf16 as uint16."""
    mapped = _MAPS.get(t.file)
    if mapped is None:
        mapped = _MAPS[t.file] = _Mapped(t.file)
    np_dtype = np.dtype(RECORD_DTYPES[t.dtype][0]) if t.dtype in RECORD_DTYPES else np.dtype("u1")
    r0, r1 = _row_range(t, rows)
    row_elems = math.prod(t.shape[1:]) if t.shape else 1
    shape = (r1 - r0, *t.shape[1:]) if t.shape else ()
    count = (r1 - r0) * row_elems
    if count == 0:
        return np.zeros(shape, np_dtype)
    assert mapped.map is not None
    view = np.frombuffer(mapped.map, dtype=np_dtype, count=count, offset=t.begin + r0 * row_elems * np_dtype.itemsize)
    return view.reshape(shape)


def release_rows(t: SourceTensor, rows: slice | None = None) -> None:
    """Drop the pages of ``t``'s rows from this process (they stay in the page cache)."""
    mapped = _MAPS.get(t.file)
    if mapped is not None and t.dtype in RECORD_DTYPES:
        r0, r1 = _row_range(t, rows)
        row_bytes = (math.prod(t.shape[1:]) if t.shape else 1) * np.dtype(RECORD_DTYPES[t.dtype][0]).itemsize
        mapped.release(t.begin + r0 * row_bytes, t.begin + r1 * row_bytes)


def _row_range(t: SourceTensor, rows: slice | None) -> tuple[int, int]:
    n = t.shape[0] if t.shape else 1
    r0, r1, _ = (rows or slice(None)).indices(n)
    return r0, max(r0, r1)


def close_maps() -> None:
    for mapped in _MAPS.values():
        mapped.close()
    _MAPS.clear()


class Source:
    """An open HF model folder: its config and its tensors, in storage order."""

    def __init__(self, folder: Path, config: dict[str, Any], tensors: dict[str, SourceTensor], files: list[Path], torch_state: dict[str, Any] | None) -> None:
        self.folder = folder
        self.config = config
        self.tensors = tensors
        self.files = files
        self._torch = torch_state  # name -> torch tensor, for .bin sources

    @property
    def format(self) -> str:
        return "bin" if self._torch is not None else "safetensors"

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Rows of tensor ``name``: float32/float16 arrays, bf16 as uint16 bits (float64 narrowed to float32)."""
        t = self.tensors[name]
        if self._torch is not None:
            return _torch_rows(self._torch[name], rows)
        values = read_rows(t, rows)
        return values.astype(np.float32) if t.dtype == "F64" else values

    def release(self, name: str, rows: slice | None = None) -> None:
        if self._torch is None:
            release_rows(self.tensors[name], rows)

    def close(self) -> None:
        if self._torch is None:
            for f in self.files:
                mapped = _MAPS.pop(f, None)
                if mapped is not None:
                    mapped.close()
        self._torch = None if self._torch is None else {}

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _torch_rows(tensor: Any, rows: slice | None) -> np.ndarray:
    import torch

    part = tensor if rows is None or tensor.dim() == 0 else tensor[rows]
    part = part.contiguous()
    if part.dtype == torch.bfloat16:
        return part.view(torch.int16).numpy().view(np.uint16)
    if part.dtype == torch.float64:
        return part.to(torch.float32).numpy()
    return part.numpy()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConvertError("source_unreadable", f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConvertError("source_malformed", f"{path} is not valid JSON: {exc}") from exc


def safetensors_index(path: Path) -> Iterator[SourceTensor]:
    """The tensors of one safetensors file, in data order, from its header alone."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            (length,) = struct.unpack("<Q", head) if len(head) == 8 else (size,)
            if length > min(_MAX_HEADER, size - 8):
                raise ConvertError("source_malformed", f"{path}: not a safetensors file (header length {length})")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise ConvertError("source_unreadable", f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConvertError("source_malformed", f"{path}: safetensors header is not JSON ({exc})") from exc
    header.pop("__metadata__", None)
    data_start = 8 + length
    entries = []
    for name, e in header.items():
        try:
            begin, end = (int(o) for o in e["data_offsets"])
            shape = tuple(int(d) for d in e["shape"])
            dtype = str(e["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvertError("source_malformed", f"{path}: bad header entry for {name!r}") from exc
        wrong_size = dtype in ITEM_SIZES and end - begin != math.prod(shape) * ITEM_SIZES[dtype]
        if data_start + end > size or not 0 <= begin <= end or wrong_size:
            raise ConvertError("source_malformed", f"{path}: entry {name!r} does not fit the file")
        entries.append(SourceTensor(name, shape, dtype, path, data_start + begin))
    return iter(sorted(entries, key=lambda t: t.begin))


def _weight_files(folder: Path) -> tuple[list[Path], str]:
    for index_name, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        index = folder / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConvertError("source_malformed", f"{index} has no weight_map")
            files = sorted({folder / str(f) for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ConvertError("weights_missing", f"{index} lists {missing[0]}, which is not in {folder}")
            return files, kind
    for pattern, kind in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if (folder / pattern).is_file():
            return [folder / pattern], kind
    raise ConvertError("weights_missing", f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model*.bin")


_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _torch_index(files: list[Path]) -> tuple[dict[str, SourceTensor], dict[str, Any]]:
    import torch

    tensors: dict[str, SourceTensor] = {}
    state: dict[str, Any] = {}
    for path in files:
        try:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (pre-zip) pickles cannot be memory-mapped
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError...)
            raise ConvertError("source_unreadable", f"cannot load {path} with torch.load(weights_only=True): {exc}".splitlines()[0]) from exc
        for name, t in loaded.items():
            if not isinstance(t, torch.Tensor):
                continue
            dtype = _TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."), str(t.dtype).removeprefix("torch.").upper())
            tensors[name] = SourceTensor(name, tuple(t.shape), dtype, path)
            state[name] = t
    return tensors, state


def open_source(folder: str | os.PathLike[str]) -> Source:
    """Open a local HF model folder: config.json plus safetensors (single or sharded) or .bin weights."""
    path = Path(folder)
    if not path.is_dir():
        raise ConvertError("source_unreadable", f"{path}: no such folder")
    if not (path / "config.json").is_file():
        raise ConvertError("config_missing", f"{path}: no config.json, so this is not a Hugging Face model folder")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise ConvertError("source_malformed", f"{path / 'config.json'} is not a JSON object")
    files, kind = _weight_files(path)
    if kind == "bin":
        tensors, state = _torch_index(files)
        return Source(path, config, tensors, files, state)
    tensors = {}
    for f in files:
        for t in safetensors_index(f):
            if t.name in tensors:
                raise ConvertError("source_malformed", f"tensor {t.name!r} is in both {tensors[t.name].file.name} and {f.name}")
            tensors[t.name] = t
    return Source(path, config, tensors, files, None)


def resolve_source(spec: str | os.PathLike[str]) -> Path:
    """A local folder as is; otherwise a hub id (``owner/name``) downloaded with huggingface_hub."""
    path = Path(spec)
    if path.exists() or not _HUB_ID.match(str(spec)) or path.parent.is_dir() and str(path.parent) not in ("", "."):
        return path  # "models/missing" next to an existing "models/" folder is a typo, not a repo
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError as exc:
        raise ConvertError("hub_unavailable", f"{spec} is not a local folder, and huggingface_hub is not installed to fetch it") from exc
    try:
        if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
            return Path(snapshot_download(str(spec), local_files_only=True))  # from the local cache, if it is there
        names = list_repo_files(str(spec))
        weights = ["*.safetensors", "*.safetensors.index.json"] if any(n.endswith(".safetensors") for n in names) else ["*.bin", "*.bin.index.json"]
        return Path(snapshot_download(str(spec), allow_patterns=["config.json", *weights, *TOKENIZER_PATTERNS]))
    except Exception as exc:  # offline, unknown repo, gated, network: all one story for the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConvertError("hub_unavailable", f"{spec} is not a local folder and could not be fetched from the Hugging Face hub ({first})") from exc
