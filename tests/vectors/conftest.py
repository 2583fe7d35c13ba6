"""The conformance vectors of spec/vectors/, parametrized from their manifest.

A test that takes ``valid_vector`` or ``malformed_vector`` runs once per manifest entry, with the
vector's file name as the test id; ``schema_vector``: once per malformed entry whose nanofmt
metadata parses, so that metadata.schema.json has something to judge.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import nanofmt

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_text())


def _stem(entry: dict[str, Any]) -> str:
    return Path(entry["file"]).stem


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    with_schema = [e for e in MANIFEST["malformed"] if e["schema_valid"] is not None]
    for name, entries in (("valid_vector", MANIFEST["valid"]), ("malformed_vector", MANIFEST["malformed"]), ("schema_vector", with_schema)):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, entries, ids=[_stem(e) for e in entries])


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    return MANIFEST


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The folder of the committed vectors."""
    return VECTORS


@pytest.fixture(scope="session")
def make_vectors() -> ModuleType:
    """spec/make_vectors.py, imported from its path (spec/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "spec" / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _decoded_sha256(f: nanofmt.NanoFile, name: str, dtype: str | None = None) -> str:
    values = np.ascontiguousarray(nanofmt.dequantize(f.tensor(name), dtype))
    return hashlib.sha256(values.astype(values.dtype.newbyteorder("<")).tobytes()).hexdigest()


@pytest.fixture(scope="session")
def decoded_sha256() -> Callable[..., str]:
    """``decoded_sha256(nano_file, name, dtype)``: SHA-256 of the reference's decoding, as the manifest records it."""
    return _decoded_sha256
