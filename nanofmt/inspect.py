"""Summaries and full verification of Nano files and folders (what ``nanofmt inspect/verify`` show)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NanoError, error
from .files import NanoFile, open_file

__all__ = ["nano_files", "inspect_path", "verify_path", "Problem"]


def nano_files(path: str | os.PathLike[str]) -> list[Path]:
    """The Nano safetensors files of ``path``: the file itself, or every ``*.safetensors`` in a folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise error("file_unreadable", "folder holds no .safetensors file", path=str(p))
        return files
    if not p.exists():
        raise error("file_unreadable", "no such file or folder", path=str(p))
    return [p]


def _tensor_row(f: NanoFile, name: str) -> dict[str, Any]:
    record = f.records[name]
    stored = f.stored_record(name)
    n = math.prod(record.shape)
    nbytes = 0 if record.tie else sum(f.entries[c].end - f.entries[c].begin for c in _components(f, name))
    row: dict[str, Any] = {
        "name": name,
        "shape": list(record.shape),
        "dtype": record.dtype,
        "scheme": stored.scheme.label() if stored.scheme else None,
        "bytes": nbytes,
        "bits_per_weight": round(8 * nbytes / n, 4) if n and not record.tie else None,
        "tie": record.tie,
    }
    for key in ("sqnr_db",):
        if key in record.extra:
            row[key] = record.extra[key]
    return row


def _components(f: NanoFile, name: str) -> Iterator[str]:
    from .schemes import component_layout

    record = f.records[name]
    assert record.scheme is not None
    return (c.name for c in component_layout(record.scheme, record.shape, name).values())


def inspect_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready summary: format version, per-tensor rows, totals, and the folder's policy if any."""
    files = nano_files(path)
    tensors: list[dict[str, Any]] = []
    versions = set()
    for file in files:
        with open_file(file) as f:
            versions.add(f"{f.version[0]}.{f.version[1]}")
            tensors += [{**_tensor_row(f, name), "file": file.name} for name in f]
    stored = [t for t in tensors if not t["tie"]]
    weights = sum(math.prod(t["shape"]) for t in stored)
    total = sum(t["bytes"] for t in stored)
    by_scheme: dict[str, int] = {}
    for t in stored:
        by_scheme[t["scheme"]] = by_scheme.get(t["scheme"], 0) + 1
    summary: dict[str, Any] = {
        "path": str(path),
        "format_versions": sorted(versions),
        "files": [f.name for f in files],
        "tensors": tensors,
        "totals": {
            "tensors": len(tensors),
            "stored_tensors": len(stored),
            "parameters": weights,
            "bytes": total,
            "bits_per_weight": round(8 * total / weights, 4) if weights else None,
            "schemes": by_scheme,
        },
    }
    config = Path(path) / "config.json"
    if config.is_file():
        try:
            summary["quantization_config"] = json.loads(config.read_text()).get("quantization_config")
        except (OSError, ValueError):
            summary["quantization_config"] = None
    return summary


@dataclass(frozen=True)
class Problem:
    """One thing verification found wrong."""

    path: str
    reason: str
    message: str


def _runtime_problems(folder: Path) -> Iterator[Problem]:
    """The shipped runtime files must hash as the converter recorded them (they run as trusted code)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return
    try:
        quant = json.loads(config_path.read_text()).get("quantization_config") or {}
    except (OSError, ValueError) as exc:
        yield Problem(str(config_path), "file_unreadable", f"config.json is not readable JSON: {exc}")
        return
    for filename, digest in (quant.get("runtime_sha256") or {}).items():
        target = folder / filename
        try:
            found = hashlib.sha256(target.read_bytes()).hexdigest()
        except OSError:
            yield Problem(str(target), "component_missing", "shipped runtime file is missing")
            continue
        if found != digest:
            yield Problem(str(target), "checksum_mismatch", f"runtime file was modified: sha256 {found[:16]}..., recorded {digest[:16]}...")


def verify_path(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem in a Nano file or folder: structure, checksums, padding, decodability, runtime files."""
    problems: list[Problem] = []
    try:
        files = nano_files(path)
    except NanoError as exc:
        return [Problem(str(path), exc.reason, str(exc))]
    for file in files:
        try:
            with open_file(file) as f:
                problems += [Problem(str(file), p.reason, str(p)) for p in f.problems()]
        except NanoError as exc:
            problems.append(Problem(str(file), exc.reason, str(exc)))
    if Path(path).is_dir():
        problems += list(_runtime_problems(Path(path)))
    return problems
