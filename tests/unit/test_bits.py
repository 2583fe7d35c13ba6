"""Bit packing: exact byte patterns (LSB-first), padding, row independence, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from nanofmt.bits import pack_columns, pack_rows, packed_row_bytes, padding_is_zero, unpack_rows


def _codes(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, np.uint8).reshape(len(rows), -1)


@pytest.mark.parametrize(
    ("bits", "codes", "expected"),
    [
        # code j sits at bits [j*b, (j+1)*b) of a little-endian stream, least significant bit first
        (4, [1, 2, 3], [0x21, 0x03, 0x00, 0x00]),
        (1, [1, 0, 0, 0, 0, 0, 0, 1], [0x81]),
        (1, [1, 1, 0, 1], [0x0B]),
        (2, [0, 1, 2, 3, 3, 2, 1, 0], [0xE4, 0x1B]),
        (3, [1, 0, 7, 0, 0, 0, 0, 0], [0xC1, 0x01, 0x00]),
        (3, [0, 0, 0, 0, 0, 0, 0, 7], [0x00, 0x00, 0xE0]),
        (5, [31, 1, 0, 0, 0, 0, 0, 0], [0x3F, 0x00, 0x00, 0x00, 0x00]),
        (6, [0, 0, 0, 0, 0, 0, 0, 63], [0, 0, 0, 0, 0, 0xFC]),
        (7, [127, 0, 0, 0, 0, 0, 0, 1], [0x7F, 0, 0, 0, 0, 0, 0x02]),
        (8, [0, 255, 7], [0, 255, 7, 0, 0, 0, 0, 0]),
    ],
)
def test_bits_pack_gives_known_lsb_first_bytes(bits: int, codes: list[int], expected: list[int]) -> None:
    packed = pack_rows(_codes([codes]), bits)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [expected]
    assert unpack_rows(packed, bits, len(codes)).tolist() == [codes]
    assert pack_columns(_codes([codes]).T.astype(np.float32), bits).tolist() == [expected]


def test_bits_row_is_padded_to_whole_units_of_eight_codes() -> None:
    for bits in range(1, 9):
        assert packed_row_bytes(0, bits) == 0
        assert packed_row_bytes(1, bits) == bits
        assert packed_row_bytes(8, bits) == bits
        assert packed_row_bytes(9, bits) == 2 * bits


def test_bits_each_row_starts_on_a_byte_boundary() -> None:
    codes = _codes([[1, 1, 1], [2, 2, 2]])
    packed = pack_rows(codes, 3)
    assert packed.shape == (2, 3)
    assert packed[0].tolist() == pack_rows(codes[:1], 3)[0].tolist()
    assert packed[1].tolist() == pack_rows(codes[1:], 3)[0].tolist()


def test_bits_unpack_of_a_row_range_reads_only_those_rows() -> None:
    codes = np.arange(5 * 20, dtype=np.uint8).reshape(5, 20) % 16
    packed = pack_rows(codes, 4)
    assert np.array_equal(unpack_rows(packed[2:4], 4, 20), codes[2:4])


def test_bits_unpack_accepts_a_reusable_buffer() -> None:
    codes = np.arange(3 * 11, dtype=np.uint8).reshape(3, 11) % 4
    buffer = np.full(100, 0xAA, np.uint8)
    out = unpack_rows(pack_rows(codes, 2), 2, 11, buffer=buffer)
    assert np.array_equal(out, codes) and np.shares_memory(out, buffer)
    with pytest.raises(ValueError, match="buffer"):
        unpack_rows(pack_rows(codes, 2), 2, 11, buffer=np.empty(5, np.uint8))


def test_bits_padding_codes_are_zero_and_detected_otherwise() -> None:
    packed = pack_rows(_codes([[3, 3, 3]]), 2)
    assert padding_is_zero(packed, 2, 3)
    dirty = packed.copy()
    dirty[0, -1] |= 0x80  # the last padding code
    assert not padding_is_zero(dirty, 2, 3)
    assert np.array_equal(unpack_rows(dirty, 2, 3), [[3, 3, 3]])  # real codes are unaffected


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_bits_width_outside_1_to_8_is_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_rows(_codes([[0]]), bits)
    with pytest.raises(ValueError, match="bits"):
        unpack_rows(np.zeros((1, 1), np.uint8), bits, 1)


def test_bits_code_too_wide_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows(_codes([[0, 16]]), 4)


def test_bits_non_2d_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pack_rows(np.zeros(8, np.uint8), 4)


def test_bits_unpack_refuses_a_wrong_row_width() -> None:
    with pytest.raises(ValueError, match="shape"):
        unpack_rows(np.zeros((2, 3), np.uint8), 4, 8)


def test_bits_pack_does_not_alias_its_input() -> None:
    codes = _codes([[1] * 8])
    packed = pack_rows(codes, 8)
    packed[0, 0] = 9
    assert codes[0, 0] == 1
