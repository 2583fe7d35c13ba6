"""SPEC.md, "Fused multiply-add": where a decoder that fuses q*s + m may differ, and by how much.

A fused multiply-add rounds q*s + m once; the spec rounds q*s first. The results differ only if
q*s is not exactly representable in binary32, which for Nano 1.0 happens only in affine_dq with
bits + meta_bits >= 14, and then by at most 2^-22 * (|q*s| + |m|). The emulation needs an exact
q*s + m before one rounding to binary32: x87 extended precision (64-bit significand) holds every
such sum (a multiple of 2^-24 below 2^33), so the test runs only where numpy's longdouble is that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nanofmt
from nanofmt.bits import unpack_rows

pytestmark = pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63, reason="needs an x87 extended-precision longdouble")


def _codes_scales_offsets(qt: nanofmt.QuantizedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each element's code, and its scale and offset in binary32 as the spec computes them."""
    scheme, cols = qt.scheme, qt.shape[1]
    assert scheme.bits is not None and scheme.group_size is not None
    groups = -(-cols // scheme.group_size)
    if scheme.kind == "affine":
        s, m = qt.parts["scales"].astype(np.float32), qt.parts["offsets"].astype(np.float32)
    else:
        assert scheme.meta_bits is not None
        block = np.arange(groups) // 8
        s = qt.parts["super_scales"].astype(np.float32)[:, block] * unpack_rows(qt.parts["qscales"], scheme.meta_bits, groups).astype(np.float32)
        m = qt.parts["super_offsets"].astype(np.float32)[:, block] * unpack_rows(qt.parts["qoffsets"], scheme.meta_bits, groups).astype(np.float32)
    column = np.arange(cols) // scheme.group_size
    return unpack_rows(qt.parts["codes"], scheme.bits, cols), s[:, column], m[:, column]


def _fused(q: np.ndarray, s: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (q.astype(np.longdouble) * s.astype(np.longdouble) + m.astype(np.longdouble)).astype(np.float32)


def _affine_tensors(manifest: dict[str, Any], vectors: Path) -> list[tuple[str, nanofmt.QuantizedTensor, np.ndarray]]:
    out = []
    for entry in manifest["valid"]:
        with nanofmt.open_file(vectors / entry["file"]) as f:
            for name, record in f.records.items():
                # the permission to fuse covers the scheme step only, not a transform after it (SPEC.md 10.5)
                if record.scheme is not None and record.scheme.kind in ("affine", "affine_dq") and record.scheme.transform == "none":
                    qt = f.tensor(name)
                    out.append((f"{entry['file']}:{name}", qt, nanofmt.dequantize(qt, "f32")))
    return out


def test_fused_decoding_is_exact_where_products_are_exact(manifest: dict[str, Any], vectors: Path) -> None:
    for label, qt, reference in _affine_tensors(manifest, vectors):
        s = qt.scheme
        if s.kind == "affine" or (s.bits or 0) + (s.meta_bits or 0) <= 13:
            assert np.array_equal(_fused(*_codes_scales_offsets(qt)).view(np.uint32), reference.view(np.uint32)), label


def test_fused_decoding_stays_within_the_bound_and_the_bound_is_reached(manifest: dict[str, Any], vectors: Path) -> None:
    differing = 0
    for label, qt, reference in _affine_tensors(manifest, vectors):
        q, s, m = _codes_scales_offsets(qt)
        fused = _fused(q, s, m)
        bound = 2.0**-22 * (np.abs(q * s.astype(np.float64)) + np.abs(m.astype(np.float64)))
        assert (np.abs(fused.astype(np.float64) - reference) <= bound).all(), label
        differing += int((fused.view(np.uint32) != reference.view(np.uint32)).sum())
    # affine_dq_b8_g128_m8_extreme holds w[0, 0] = fl(fl(255 * 16703520) + 136), where fusing changes the result
    assert differing > 0
