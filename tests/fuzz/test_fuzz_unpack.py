"""Structured fuzzing of the unpacker: arbitrary bytes of a valid shape unpack to codes that fit."""

from __future__ import annotations

import nanofmt_fuzz_oracle as oracle
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nanofmt.bits import pack_rows, packed_row_bytes, unpack_rows


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=3, max_size=2000))
def test_unpack_arbitrary_bytes_keep_the_contract(data: bytes) -> None:
    oracle.check_unpack(data)


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 70), rows=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_unpack_inverts_pack_for_every_width(bits: int, n: int, rows: int, seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (rows, n), dtype=np.uint8)
    packed = pack_rows(codes, bits)
    assert packed.shape == (rows, packed_row_bytes(n, bits))
    assert np.array_equal(unpack_rows(packed, bits, n), codes)
