"""The ``hadamard`` transform: a block-diagonal randomized Hadamard rotation of each row (SPEC.md 6.2, 10.6).

A record with this transform stores ``u = ((w * s) @ H)`` blockwise, where ``H`` is the normalized
Sylvester Hadamard matrix of the block (symmetric, ``H @ H = I``) and ``s`` a vector of column
signs; decoding gives ``w = (u @ H) * s``. Rotating spreads a row's outliers over its block, so
the scheme's groups see flatter values and quantize with less error.

The decoding direction is normative and bit-exact: :func:`fwht` runs the stages of SPEC.md 10.6
in their order (h = 1, 2, 4, ...), one binary32 addition or subtraction per element per stage,
then scales by ``2^-(log2(block) / 2)``, which is exact. The blocks are copied block-major
(element ``i`` of every block in one contiguous row) a chunk at a time, and each stage is one
vectorised pass over the pairs ``(i, i + h)``, seen through a ``(block / (2h), 2, h, blocks)``
reshape: the same pairs and the same single operations as the scalar loop, so the same bits.

Example:
    >>> x = np.arange(16, dtype=np.float32)
    >>> signs = default_signs(16, seed=0)
    >>> bool(np.allclose(hadamard_unrotate(hadamard_rotate(x, 16, signs), 16, signs), x, atol=1e-5))
    True
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["fwht", "hadamard_rotate", "hadamard_unrotate", "default_signs", "pack_signs", "unpack_signs"]


def _check_block(cols: int, block: int) -> int:
    """log2(block), after checking that ``block`` is a power of two dividing ``cols``."""
    if not isinstance(block, (int, np.integer)) or block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block!r}")
    if cols % block:
        raise ValueError(f"the last axis ({cols}) must be a multiple of the block ({block})")
    return int(block).bit_length() - 1


CHUNK = 1 << 16  # values transformed at a time: the block-major copy and its temporaries stay in L2


def _stages(columns: NDArray[np.float32], block: int, half: NDArray[np.float32]) -> None:
    """The stages of SPEC.md 10.6 on ``columns`` (block, m): column ``i`` of every block is row ``i``."""
    m = columns.shape[1]
    h = 1
    while h < block:
        pairs = columns.reshape(block // (2 * h), 2, h, m)
        a, c = pairs[:, 0], pairs[:, 1]
        keep = half[: a.size].reshape(a.shape)
        np.copyto(keep, a)
        np.add(keep, c, out=a)  # x[i] = fl(a + c)
        np.subtract(keep, c, out=c)  # x[i + h] = fl(a - c)
        h *= 2


def fwht(x: ArrayLike, block: int, *, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """Normalized fast Walsh-Hadamard transform of each ``block`` consecutive values of the last axis, in binary32.

    Args:
        x: values (converted to float32); the last axis a multiple of ``block``.
        block: a power of two (Nano files use 16, 64, 256, 1024 or 4096: powers of four, so
            the final scale ``2^-(log2(block) / 2)`` is a power of two and exact).
        out: a C-contiguous float32 array of ``x``'s shape to write into; it may be ``x`` itself.

    Returns:
        ``out``, or a new float32 array: each block times the normalized Sylvester Hadamard
        matrix ``H[i, j] = (-1)^popcount(i & j) / sqrt(block)``.
    """
    src = np.asarray(x, dtype=np.float32)
    if src.ndim == 0:
        raise ValueError("fwht needs an array with at least one axis")
    k = _check_block(src.shape[-1], block)
    if out is None:
        out = np.array(src, dtype=np.float32, order="C")
    elif not (out.dtype == np.float32 and out.shape == src.shape and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {src.shape}")
    elif out is not src:
        np.copyto(out, src)
    if out.size == 0:
        return out
    blocks = out.reshape(-1, block)
    step = max(1, CHUNK // block)
    scratch = np.empty(block * min(step, blocks.shape[0]), np.float32)
    half = np.empty(scratch.size // 2, np.float32)
    for start in range(0, blocks.shape[0], step):
        part = blocks[start : start + step]
        columns = scratch[: part.size].reshape(block, part.shape[0])  # block-major: each stage runs over long contiguous rows
        np.copyto(columns, part.T)
        _stages(columns, block, half)
        np.copyto(part, columns.T)
    if k:  # block 2^k: scale by 2^(-k/2), exact for even k (k odd is not a Nano block)
        np.multiply(out, np.float32(2.0 ** (-k / 2)), out=out)
    return out


def _sign_factors(signs: ArrayLike, cols: int) -> NDArray[np.float32]:
    s = np.asarray(signs)
    if s.dtype != np.bool_ or s.shape != (cols,):
        raise ValueError(f"signs must be a bool array of shape ({cols},), got {s.dtype} {s.shape}")
    return np.where(s, np.float32(-1), np.float32(1)).astype(np.float32)


def hadamard_rotate(w: ArrayLike, block: int, signs: ArrayLike) -> NDArray[np.float32]:
    """The encoding direction: ``u = fwht(w * s)`` (``s[j] = -1`` where ``signs[j]``), a new float32 array."""
    x = np.asarray(w, dtype=np.float32)
    signed = x * _sign_factors(signs, x.shape[-1])  # exact: a multiplication by +-1
    return fwht(signed, block, out=signed)


def hadamard_unrotate(u: ArrayLike, block: int, signs: ArrayLike, *, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """The decoding direction of SPEC.md 10.6: ``w = fwht(u) * s``, bit-exact; ``out`` may be ``u`` itself."""
    x = np.asarray(u, dtype=np.float32)
    factors = _sign_factors(signs, x.shape[-1])
    result = fwht(x, block, out=out)
    return np.multiply(result, factors, out=result)


def default_signs(cols: int, seed: int) -> NDArray[np.bool_]:
    """Random column signs (True = -1) from ``numpy.random.default_rng(seed)``.

    Not normative: files store their signs, so any choice decodes; this is the reference
    writer's, deterministic for a given seed.
    """
    return np.random.default_rng(seed).integers(0, 2, cols, dtype=np.uint8).astype(bool)


def pack_signs(signs: ArrayLike) -> NDArray[np.uint8]:
    """Bools -> the ``signs`` component: bit ``j % 8`` of byte ``j // 8`` is column ``j`` (1 = negative)."""
    s = np.asarray(signs)
    if s.dtype != np.bool_ or s.ndim != 1:
        raise ValueError(f"signs must be a 1-D bool array, got {s.dtype} with shape {s.shape}")
    return np.packbits(s, bitorder="little")


def unpack_signs(packed: ArrayLike, cols: int) -> NDArray[np.bool_]:
    """The ``signs`` component -> ``cols`` bools (True = -1)."""
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.shape != (-(-cols // 8),):
        raise ValueError(f"packed signs must be uint8 of shape ({-(-cols // 8)},), got {p.dtype} {p.shape}")
    return np.unpackbits(p, count=cols, bitorder="little").astype(bool)
