"""Summaries and full verification of Nano files and folders (what ``nanofmt inspect/verify`` show)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .container import _check_tree, _is_text, preview
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
    if Path(path).is_dir():
        try:
            config = _read_config(Path(path))
        except NanoError:
            config = None  # inspect summarises what it can; verify reports the broken config
        if config is not None:
            summary["quantization_config"] = config.get("quantization_config")
    return summary


@dataclass(frozen=True)
class Problem:
    """One thing verification found wrong."""

    path: str
    reason: str
    message: str


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _read_config(folder: Path) -> dict[str, Any] | None:
    """The folder's config.json as an object, None when there is none; NanoError when it is unreadable."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_bytes())
        _check_tree(raw, "file_unreadable")  # bounded nesting: callers re-serialise it
    except (OSError, ValueError, RecursionError) as exc:
        raise error("file_unreadable", f"config.json is not readable JSON ({type(exc).__name__})", path=str(path)) from exc
    except NanoError as exc:
        raise exc.with_context(path=str(path)) from None
    if not isinstance(raw, dict):
        raise error("file_unreadable", "config.json is not a JSON object", path=str(path))
    return raw


def _is_plain_name(name: Any) -> bool:
    """A file name directly inside the folder: no separators, no parent references."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and _is_text(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _runtime_problems(folder: Path) -> Iterator[Problem]:
    """The shipped runtime files must hash as the converter recorded them (they run as trusted code).

    Every ``*.py`` file of a Nano folder must be recorded: transformers' dynamic module loader
    would run an unrecorded one as readily as a recorded one.
    """
    config_path = folder / "config.json"
    try:
        config = _read_config(folder)
    except NanoError as exc:
        yield Problem(str(config_path), exc.reason, str(exc))
        return
    quant = config.get("quantization_config") if config else None
    if not isinstance(quant, dict) or (quant.get("quant_method") != "nano" and "runtime_sha256" not in quant):
        return  # not the config of a Nano folder
    recorded = quant.get("runtime_sha256", {})
    if not isinstance(recorded, dict):
        yield Problem(str(config_path), "checksum_invalid", "quantization_config.runtime_sha256 must map file names to sha256 digests")
        return
    for filename, digest in recorded.items():
        if not _is_plain_name(filename):
            yield Problem(str(config_path), "name_invalid", f"runtime file name {preview(filename)} is not a plain file name in the folder")
            continue
        target = folder / filename
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            yield Problem(str(target), "checksum_invalid", f"recorded sha256 {preview(digest)} is not 64 lowercase hex digits")
            continue
        if not target.is_file():  # also keeps a FIFO from blocking the read
            yield Problem(str(target), "component_missing", "shipped runtime file is missing")
            continue
        try:
            found = _sha256(target)
        except OSError as exc:
            yield Problem(str(target), "file_unreadable", f"cannot read runtime file: {exc.strerror or exc}")
            continue
        if found != digest:
            yield Problem(str(target), "checksum_mismatch", f"runtime file was modified: sha256 {found[:16]}..., recorded {digest[:16]}...")
    for extra in sorted(folder.glob("*.py")):
        if extra.name not in recorded:
            yield Problem(str(extra), "checksum_mismatch", "python file not recorded in quantization_config.runtime_sha256")


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
