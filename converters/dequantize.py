"""Nano folder -> plain Hugging Face folder (fp16/bf16/fp32 safetensors) that loads without remote code.

Every tensor is decoded exactly as SPEC.md prescribes (``nanofmt.dequantize``), in row chunks,
shard by shard, keeping the shard layout and the logical (HF state-dict) names. A tie record
is dropped when config.json ties the embeddings (transformers re-ties on load) and written out
as a copy otherwise.

Example::

    nanofmt dequantize ./smollm2-nano ./smollm2-f16 --dtype f16
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import nanofmt
from nanofmt.container import SafetensorsWriter
from nanofmt.files import METADATA_FORMAT, NanoFile
from nanofmt.inspect import nano_files

from .atomic import check_destination, staging, terminate_as_interrupt
from .encode import CHUNK_ELEMENTS
from .errors import ConvertError
from .folder import side_files

__all__ = ["dequantize_folder", "decode_tensor"]

STORED = {"f16": "F16", "bf16": "BF16", "f32": "F32"}
TORCH_DTYPE_NAMES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}


def decode_tensor(f: NanoFile, name: str, dtype: str) -> np.ndarray:
    """Logical tensor ``name`` decoded to ``dtype`` (bf16 as uint16 bits), a row chunk at a time."""
    qt = f.tensor(name)
    if len(qt.shape) < 1 or qt.shape[0] == 0:
        return np.asarray(nanofmt.dequantize(qt, dtype))
    out = np.empty(qt.shape, nanofmt.dequantize(qt, dtype, rows=slice(0, 1)).dtype)
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(qt.shape[1:])))
    for r in range(0, qt.shape[0], step):
        out[r : r + step] = nanofmt.dequantize(qt, dtype, rows=slice(r, r + step))
    return out


def _plain_config(folder: Path, dtype: str) -> tuple[dict[str, Any], bool]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError("config_missing", f"{folder}: no config.json, so this is not a Nano model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConvertError("source_malformed", f"{path} is not valid JSON: {exc}") from exc
    config = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")}
    config["dtype"] = TORCH_DTYPE_NAMES[dtype]
    return config, bool(config.get("tie_word_embeddings", False))


def _write_shard(f: NanoFile, path: Path, dtype: str, tied: bool) -> list[str]:
    names = [n for n, r in f.records.items() if r.tie is None or not tied]
    entries = [(n, STORED[dtype], tuple(f.records[n].shape)) for n in names]
    writer = SafetensorsWriter(path, entries, dict(METADATA_FORMAT))
    try:
        for name in names:
            writer.write(name, decode_tensor(f, name, dtype))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return names


def dequantize_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, dtype: str = "f16", force: bool = False) -> dict[str, Any]:
    """Write a plain HF copy of the Nano folder ``src`` at ``dst`` with ``dtype`` weights.

    Returns:
        ``{"destination", "dtype", "files", "tensors", "bytes"}``.

    Raises:
        ConvertError: no config.json, destination exists (without ``force``) or cannot be written.
        NanoError: a shard is malformed.
    """
    if dtype not in STORED:
        raise ValueError(f"dtype must be one of {', '.join(STORED)}, got {dtype!r}")
    folder, out = Path(src), Path(dst)
    if not folder.is_dir():
        raise ConvertError("source_unreadable", f"{folder}: no such folder")
    config, tied = _plain_config(folder, dtype)
    shards = nano_files(folder)
    check_destination(out, force=force, protect=folder)
    weight_map: dict[str, str] = {}
    with terminate_as_interrupt(), staging(out, force=force) as tmp:
        try:
            for shard in shards:
                with nanofmt.open_file(shard) as f:
                    weight_map.update(dict.fromkeys(_write_shard(f, tmp / shard.name, dtype, tied), shard.name))
            (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
            if len(shards) > 1:
                total = sum((tmp / s.name).stat().st_size for s in shards)
                index = {"metadata": {"total_size": total}, "weight_map": weight_map}
                (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            for path in side_files(folder):
                shutil.copyfile(path, tmp / path.name)
        except OSError as exc:
            raise ConvertError("write_failed", f"writing {out} failed: {exc.strerror or exc}; nothing was written") from exc
        size = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    return {"destination": str(out), "dtype": dtype, "files": [s.name for s in shards], "tensors": len(weight_map), "bytes": size}
