"""Integrity: one flipped bit anywhere in a tensor's stored bytes is caught by verification.

CRC-32 detects every single-bit error, so ``NanoFile.verify()`` must report
``checksum_mismatch`` for a flip in codes, scales, offsets, super-scales and in the padding
bits at the end of each packed row alike (the checksum runs before the padding check).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanofmt import Scheme, open_file, quantize, write_file
from nanofmt._spec import SCHEMES as SPEC_SCHEMES  # the allowed parameters, never retyped
from nanofmt.errors import NanoError

schemes = st.one_of(
    st.just(Scheme("int8_row", bits=8)),
    st.builds(lambda b, g: Scheme("affine", bits=b, group_size=g), st.sampled_from(SPEC_SCHEMES["affine"]["bits"]), st.sampled_from(SPEC_SCHEMES["affine"]["group_sizes"])),
    st.builds(
        lambda b, g, m: Scheme("affine_dq", bits=b, group_size=g, meta_bits=m),
        st.sampled_from(SPEC_SCHEMES["affine_dq"]["bits"]),
        st.sampled_from(SPEC_SCHEMES["affine_dq"]["group_sizes"]),
        st.sampled_from(SPEC_SCHEMES["affine_dq"]["meta_bits"]),
    ),
)


def _data_start(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _verify_reason(data: bytes, workdir: Path) -> str | None:
    path = workdir / "flipped.safetensors"
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    with open_file(path) as f:
        try:
            f.verify()
        except NanoError as exc:
            return exc.reason
    return None


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(scheme=schemes, rows=st.integers(1, 3), cols=st.integers(1, 300), seed=st.integers(0, 2**32), pick=st.integers(0, 2**40))
def test_integrity_any_single_bit_flip_in_data_is_a_checksum_mismatch(
    workdir: Path, scheme: Scheme, rows: int, cols: int, seed: int, pick: int
) -> None:
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    path = workdir / "valid.safetensors"
    write_file(path, {"w": quantize(values, scheme)})
    data = path.read_bytes()
    start = _data_start(data)
    assert _verify_reason(data, workdir) is None
    bit = 8 * start + pick % (8 * (len(data) - start))
    assert _verify_reason(_flip(data, bit), workdir) == "checksum_mismatch"


@pytest.mark.parametrize(
    "scheme",
    [Scheme("int8_row", bits=8), Scheme("affine", bits=3, group_size=32), Scheme("affine_dq", bits=5, group_size=32, meta_bits=6)],
    ids=lambda s: s.label(),
)
def test_integrity_every_single_bit_flip_is_a_checksum_mismatch(scheme: Scheme) -> None:
    """Exhaustive over every data bit of a small file per scheme kind, padding bits included."""
    values = np.random.default_rng(3).standard_normal((2, 41)).astype(np.float32)  # 41: padding in every packed row
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "valid.safetensors"
        write_file(path, {"w": quantize(values, scheme)})
        data = path.read_bytes()
        start = _data_start(data)
        missed = [bit for bit in range(8 * start, 8 * len(data)) if _verify_reason(_flip(data, bit), Path(tmp)) != "checksum_mismatch"]
    assert not missed, f"{len(missed)} flipped bits went undetected, first at data bit {missed[0] - 8 * start}"
