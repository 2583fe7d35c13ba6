"""The hadamard vectors cover the transform, and their digests tell a conforming decoder from near misses."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import nanofmt
from nanofmt._spec import SCHEMES, TRANSFORM_SPECS
from nanofmt.codec import QuantizedTensor
from nanofmt.transforms import unpack_signs


def _hadamard_records(manifest: dict[str, Any], vectors: Path) -> list[tuple[str, str, nanofmt.QuantizedTensor]]:
    out = []
    for entry in manifest["valid"]:
        with nanofmt.open_file(vectors / entry["file"]) as f:
            for name, record in f.records.items():
                if record.tie is None and record.scheme is not None and record.scheme.transform == "hadamard":
                    out.append((entry["file"], name, f.tensor(name)))
    return out


def test_hadamard_vectors_cover_every_block_and_quantized_scheme(manifest: dict[str, Any], vectors: Path) -> None:
    found = _hadamard_records(manifest, vectors)
    assert {qt.scheme.transform_block for _, _, qt in found} == set(TRANSFORM_SPECS["hadamard"]["transform_blocks"])
    assert {qt.scheme.kind for _, _, qt in found} == {s["kind"] for s in SCHEMES.values() if s["kind"] != "passthrough"}
    assert any(qt.shape[1] > (qt.scheme.transform_block or 0) for _, _, qt in found)  # a row of several blocks
    assert {e["file"] for e in manifest["malformed"] if e["reason"] == "transform_params_invalid"}


def _binary64_decoding(qt: nanofmt.QuantizedTensor) -> np.ndarray:
    """A near miss: the scheme's values, then the rotation as one binary64 matrix product, rounded once."""
    scheme = qt.scheme
    block = scheme.transform_block
    assert block is not None
    plain = QuantizedTensor(
        qt.shape, qt.dtype, replace(scheme, transform="none", transform_block=None), {k: v for k, v in qt.parts.items() if k != "signs"}
    )
    u = nanofmt.dequantize(plain, "f32").astype(np.float64)
    i = np.arange(block)
    parity = np.array([[bin(a & b).count("1") & 1 for b in i] for a in i])
    h = np.where(parity, -1.0, 1.0) / np.sqrt(block)
    signs = np.where(unpack_signs(qt.parts["signs"], qt.shape[1]), -1.0, 1.0)
    return ((u.reshape(-1, block) @ h).reshape(u.shape) * signs).astype(np.float32)


def test_hadamard_vectors_refuse_a_binary64_decoder(manifest: dict[str, Any], vectors: Path) -> None:
    """Guard: a decoder that sums in binary64 gets another digest for some vector (the sums of 10.6 round)."""
    digests = {(e["file"], n): t["decoded_sha256"]["f32"] for e in manifest["valid"] for n, t in e["tensors"].items()}
    wrong = 0
    for file, name, qt in _hadamard_records(manifest, vectors):
        if qt.scheme.transform_block == 4096:
            continue  # a 4096 x 4096 product: the other blocks make the point
        near = hashlib.sha256(_binary64_decoding(qt).astype("<f4").tobytes()).hexdigest()
        wrong += near != digests[(file, name)]
    assert wrong >= 3
