"""The committed vectors are exactly what spec/make_vectors.py writes from their seeds."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType


def test_make_vectors_reproduces_the_committed_bytes(make_vectors: ModuleType, vectors: Path) -> None:
    assert make_vectors.check(vectors) == []


def test_make_vectors_check_notices_one_changed_byte(make_vectors: ModuleType, vectors: Path, tmp_path: Path) -> None:
    """Guard: the comparison above is not a thing compared with itself."""
    copy = tmp_path / "vectors"
    shutil.copytree(vectors, copy)
    victim = copy / "valid" / "affine_b4_g128_normal.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    (copy / "malformed" / "extra.safetensors").write_bytes(b"")
    assert make_vectors.check(copy) == ["malformed/extra.safetensors", "valid/affine_b4_g128_normal.safetensors"]
