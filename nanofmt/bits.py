"""Bit packing of unsigned codes, one row at a time (SPEC.md, "Bit packing").

Each row of ``n`` codes of ``bits`` bits becomes its own byte string: code ``j`` occupies bits
``[j*bits, (j+1)*bits)`` of a little-endian bit stream (bit ``k`` of the stream is bit ``k % 8``,
least significant first, of byte ``k // 8``). The row is padded with zero codes to a multiple of
8 codes, so a packed row is exactly ``ceil(n / 8) * bits`` bytes and every row starts on a byte
boundary: any row range decodes without touching other rows.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["packed_row_bytes", "pack_rows", "unpack_rows", "padding_is_zero"]

CODES_PER_UNIT = 8  # 8 codes of b bits are exactly b bytes, for every b


def packed_row_bytes(n_codes: int, bits: int) -> int:
    """Bytes one packed row of ``n_codes`` codes takes."""
    return -(-n_codes // CODES_PER_UNIT) * bits


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def pack_rows(codes: NDArray[np.uint8], bits: int) -> NDArray[np.uint8]:
    """Pack a ``(rows, n)`` array of codes (each ``< 2**bits``) into ``(rows, packed_row_bytes)``.

    Example:
        >>> pack_rows(np.array([[1, 2, 3]], np.uint8), 4).tolist()
        [[33, 3, 0, 0]]
    """
    _check_bits(bits)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (rows, n), got shape {codes.shape}")
    if codes.size and int(codes.max()) >> bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    rows, n = codes.shape
    units = -(-n // CODES_PER_UNIT)
    padded = np.zeros((rows, units * CODES_PER_UNIT), np.uint8)
    padded[:, :n] = codes
    if bits == 8:
        return padded
    if bits == 4:  # the common case, without the 64-bit detour
        return padded[:, 0::2] | (padded[:, 1::2] << 4)
    grouped = padded.reshape(rows, units, CODES_PER_UNIT).astype(np.uint64)
    word = np.zeros((rows, units), np.uint64)
    for j in range(CODES_PER_UNIT):
        word |= grouped[:, :, j] << np.uint64(j * bits)
    as_bytes = word.astype("<u8").view(np.uint8).reshape(rows, units, 8)
    return np.ascontiguousarray(as_bytes[:, :, :bits]).reshape(rows, units * bits)


def _lut(bits: int) -> NDArray[np.uint8]:
    """For bits dividing 8: table[byte] = the 8 // bits codes that byte holds, in order."""
    per_byte = 8 // bits
    values = np.arange(256, dtype=np.uint16)
    shifts = np.arange(per_byte, dtype=np.uint16) * bits
    return ((values[:, None] >> shifts) & ((1 << bits) - 1)).astype(np.uint8)


_LUTS = {b: _lut(b) for b in (1, 2, 4)}


def unpack_rows(packed: NDArray[np.uint8], bits: int, n: int) -> NDArray[np.uint8]:
    """Inverse of :func:`pack_rows`: ``(rows, packed_row_bytes(n, bits))`` bytes -> ``(rows, n)`` codes."""
    _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    rows = packed.shape[0]
    width = packed_row_bytes(n, bits)
    if packed.ndim != 2 or packed.shape[1] != width:
        raise ValueError(f"packed rows must have shape ({rows}, {width}) for n={n}, bits={bits}, got {packed.shape}")
    if bits == 8:
        return packed[:, :n]
    if bits in _LUTS:
        return _LUTS[bits][packed].reshape(rows, -1)[:, :n]
    units = width // bits
    word_bytes = np.zeros((rows, units, 8), np.uint8)
    word_bytes[:, :, :bits] = packed.reshape(rows, units, bits)
    word = word_bytes.view("<u8").reshape(rows, units)
    out = np.empty((rows, units, CODES_PER_UNIT), np.uint8)
    mask = np.uint64((1 << bits) - 1)
    for j in range(CODES_PER_UNIT):
        out[:, :, j] = (word >> np.uint64(j * bits)) & mask
    return out.reshape(rows, units * CODES_PER_UNIT)[:, :n]


def padding_is_zero(packed: NDArray[np.uint8], bits: int, n: int) -> bool:
    """True when the padding codes after the ``n`` real codes of every row are all zero."""
    pad = -n % CODES_PER_UNIT
    if pad == 0 or packed.shape[0] == 0:
        return True
    tail_units = packed[:, -bits:]  # the last unit holds every padding code
    codes = unpack_rows(tail_units, bits, CODES_PER_UNIT)
    return not codes[:, CODES_PER_UNIT - pad :].any()
