"""Bit packing of unsigned codes, one row at a time (SPEC.md, "Bit packing").

Each row of ``n`` codes of ``bits`` bits becomes its own byte string: code ``j`` occupies bits
``[j*bits, (j+1)*bits)`` of a little-endian bit stream (bit ``k`` of the stream is bit ``k % 8``,
least significant first, of byte ``k // 8``). The row is padded with zero codes to a multiple of
8 codes, so a packed row is exactly ``ceil(n / 8) * bits`` bytes and every row starts on a byte
boundary: any row range decodes without touching other rows.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray

__all__ = ["packed_row_bytes", "pack_rows", "pack_columns", "unpack_rows", "padding_is_zero"]

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
    if n % CODES_PER_UNIT or codes.dtype != np.uint8:
        padded = np.zeros((rows, units * CODES_PER_UNIT), np.uint8)
        padded[:, :n] = codes
    else:
        padded = np.ascontiguousarray(codes)
    if bits == 8:
        return padded if padded is not codes else padded.copy()
    if bits in _SPREAD:
        return _gather(padded, bits)
    grouped = padded.reshape(rows, units, CODES_PER_UNIT).astype(np.uint64)
    word = np.zeros((rows, units), np.uint64)
    for j in range(CODES_PER_UNIT):
        word |= grouped[:, :, j] << np.uint64(j * bits)
    as_bytes = word.astype("<u8").view(np.uint8).reshape(rows, units, 8)
    return np.ascontiguousarray(as_bytes[:, :, :bits]).reshape(rows, units * bits)


@functools.lru_cache(maxsize=64)
def _unit_weights(n_units: int, per_unit: int, bits: int) -> NDArray[np.float64]:
    """(n_units, n_units * per_unit) matrix summing each unit's codes, code i shifted by ``i * bits``."""
    weights = np.zeros((n_units, n_units * per_unit))
    for u in range(n_units):
        weights[u, u * per_unit : (u + 1) * per_unit] = 2.0 ** (bits * np.arange(per_unit))
    weights.flags.writeable = False  # shared by the cache
    return weights


def pack_columns(codes_t: NDArray[np.generic], bits: int) -> NDArray[np.uint8]:
    """:func:`pack_rows` of ``codes_t.T``: codes given one row per column, ``(n, rows)`` -> ``(rows, packed_row_bytes)``.

    The quantizer holds its codes transposed (see ``quantize.py``); transposing bytes back is
    slow in numpy, so the codes of each 8-code unit are summed with their bit shifts by one
    float64 matrix product (exact: a unit holds at most 48 bits here) and the unit words are
    transposed instead. Codes must be integers below ``2**bits`` (any numeric dtype).

    Example:
        >>> pack_columns(np.array([[1], [2], [3]], np.float32), 4).tolist()
        [[33, 3, 0, 0]]
    """
    _check_bits(bits)
    n, rows = codes_t.shape
    units = -(-n // CODES_PER_UNIT)
    if bits > 6 and bits != 8:  # a unit word would not be exact in float64
        return pack_rows(np.ascontiguousarray(np.asarray(codes_t).T).astype(np.uint8), bits)
    per_word = 4 if bits == 8 else CODES_PER_UNIT  # 8-bit: 4 codes per uint32 word
    padded = np.zeros((units * CODES_PER_UNIT, rows))
    padded[:n] = codes_t
    words = _unit_weights(units * CODES_PER_UNIT // per_word, per_word, bits) @ padded  # (words, rows), exact integers
    if bits == 8:
        return np.ascontiguousarray(words.astype("<u4").T).view(np.uint8)
    as_bytes = np.ascontiguousarray(words.astype("<u8").T).view(np.uint8).reshape(rows, units, 8)
    return np.ascontiguousarray(as_bytes[:, :, :bits]).reshape(rows, units * bits)


# For widths dividing 8 a packed byte holds 8 // bits whole codes, and the same codes one per
# byte make one little-endian word of 8 // bits bytes. Widening the byte to that word and a
# shift-or-mask step or two (halves, then quarters, ...) moves every code into its own byte:
# a few passes over the data instead of one per code.
_SPREAD: dict[int, tuple[str, tuple[tuple[int, int], ...]]] = {
    4: ("<u2", ((4, 0x0F0F),)),
    2: ("<u4", ((12, 0x000F000F), (6, 0x03030303))),
    1: ("<u8", ((28, 0x0000000F0000000F), (14, 0x0003000300030003), (7, 0x0101010101010101))),
}
CHUNK_CODES = 1 << 17  # codes per chunk of rows: the words and a temporary stay in L2


def _row_chunks(rows: int, per_row: int) -> range:
    return range(0, rows, max(1, CHUNK_CODES // max(per_row, 1)))


def _spread(packed: NDArray[np.uint8], bits: int, out: NDArray[np.uint8]) -> None:
    """Unpack ``(rows, units * bits)`` bytes into ``out`` ``(rows, units * 8)`` for bits 1, 2, 4."""
    word, steps = _SPREAD[bits]
    words = out.view(word)  # one word per packed byte
    step = _row_chunks(*out.shape).step
    tmp = np.empty((min(step, words.shape[0]), words.shape[1]), word)
    for r in range(0, words.shape[0], step):
        w = words[r : r + step]
        t = tmp[: w.shape[0]]
        np.copyto(w, packed[r : r + step], casting="unsafe")
        for shift, mask in steps:
            np.left_shift(w, shift, out=t, dtype=word)
            np.bitwise_or(w, t, out=w)
            np.bitwise_and(w, mask, out=w, dtype=word)


def _gather_multiplier(bits: int) -> tuple[int, int]:
    """(multiplier, shift) that gather a word's 8 // bits one-per-byte codes into its top byte.

    Code ``k`` sits at bit ``8k``; the term ``word << (top - (8 - bits) * k)`` of the product moves
    it to bit ``top + bits * k``. Every code of every term lands on its own bits (no two fields
    overlap, so the sum has no carries) and the overflow past the word wraps away.
    """
    per_word = 8 // bits
    top = 8 * (per_word - 1)
    return sum(1 << (top - (8 - bits) * k) for k in range(per_word)), top


def _gather(codes: NDArray[np.uint8], bits: int) -> NDArray[np.uint8]:
    """Inverse of :func:`_spread`: ``(rows, units * 8)`` codes (contiguous) -> ``(rows, units * bits)`` bytes."""
    word = _SPREAD[bits][0]
    words = codes.view(word)
    rows, width = words.shape
    multiplier, shift = _gather_multiplier(bits)
    out = np.empty((rows, width), np.uint8)
    step = _row_chunks(rows, codes.shape[1]).step
    w = np.empty((min(step, rows), width), word)
    for r in range(0, rows, step):
        wr = w[: min(step, rows - r)]
        np.multiply(words[r : r + step], multiplier, out=wr, dtype=word)  # modulo the word size
        np.right_shift(wr, shift, out=wr, dtype=word)
        np.copyto(out[r : r + step], wr, casting="unsafe")
    return out


def unpack_rows(packed: NDArray[np.uint8], bits: int, n: int, *, buffer: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
    """Inverse of :func:`pack_rows`: ``(rows, packed_row_bytes(n, bits))`` bytes -> ``(rows, n)`` codes.

    ``buffer``, a C-contiguous uint8 array of at least ``rows * ceil(n / 8) * 8`` elements, is
    used for the result (a view of it is returned), so that a caller decoding a few rows at a
    time does not fault in fresh pages for every chunk.

    Example:
        >>> unpack_rows(np.array([[33, 3, 0, 0]], np.uint8), 4, 3).tolist()
        [[1, 2, 3]]
    """
    _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    rows = packed.shape[0]
    width = packed_row_bytes(n, bits)
    if packed.ndim != 2 or packed.shape[1] != width:
        raise ValueError(f"packed rows must have shape ({rows}, {width}) for n={n}, bits={bits}, got {packed.shape}")
    if bits == 8:
        return packed[:, :n]
    units = width // bits
    size = rows * units * CODES_PER_UNIT
    if buffer is None:
        out = np.empty((rows, units * CODES_PER_UNIT), np.uint8)
    elif buffer.dtype == np.uint8 and buffer.flags.c_contiguous and buffer.size >= size:
        out = buffer.reshape(-1)[:size].reshape(rows, units * CODES_PER_UNIT)
    else:
        raise ValueError(f"buffer must be a C-contiguous uint8 array of at least {size} elements")
    if out.size == 0:
        return out[:, :n]
    packed = np.ascontiguousarray(packed)
    if bits in _SPREAD:
        _spread(packed, bits, out)
        return out[:, :n]
    mask = np.uint64((1 << bits) - 1)
    chunks = _row_chunks(rows, units * CODES_PER_UNIT)
    for r in chunks:
        chunk = packed[r : r + chunks.step]
        word_bytes = np.zeros((chunk.shape[0], units, 8), np.uint8)
        word_bytes[:, :, :bits] = chunk.reshape(-1, units, bits)
        word = word_bytes.view("<u8").reshape(-1, units)
        grouped = out[r : r + chunk.shape[0]].reshape(-1, units, CODES_PER_UNIT)
        for j in range(CODES_PER_UNIT):
            np.copyto(grouped[:, :, j], (word >> np.uint64(j * bits)) & mask, casting="unsafe")
    return out[:, :n]


def padding_is_zero(packed: NDArray[np.uint8], bits: int, n: int) -> bool:
    """True when the padding codes after the ``n`` real codes of every row are all zero."""
    pad = -n % CODES_PER_UNIT
    if pad == 0 or packed.shape[0] == 0:
        return True
    tail_units = packed[:, -bits:]  # the last unit holds every padding code
    codes = unpack_rows(tail_units, bits, CODES_PER_UNIT)
    return not codes[:, CODES_PER_UNIT - pad :].any()
