"""Float conversions the spec pins down exactly.

numpy has no bfloat16 type, so bf16 values travel as ``uint16`` arrays holding the bf16 bit
pattern (the upper half of the float32 pattern); :func:`bf16_bits_to_f32` widens them exactly
and :func:`f32_to_bf16_bits` narrows with IEEE round-to-nearest-even, as torch and every
accelerator do. fp16 uses numpy's own float16, which also rounds to nearest even.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["f32_to_bf16_bits", "bf16_bits_to_f32", "cast_f32"]


def f32_to_bf16_bits(values: NDArray[np.float32]) -> NDArray[np.uint16]:
    """Round float32 to bfloat16 (nearest, ties to even) and return the bit patterns.

    NaN stays a (quiet) NaN; values past the bf16 range round to infinity as IEEE requires.
    """
    u = np.asarray(values, dtype=np.float32, order="C").view(np.uint32)  # ascontiguousarray would make 0-d 1-d
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(bits: NDArray[np.uint16]) -> NDArray[np.float32]:
    """Widen bfloat16 bit patterns to float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def cast_f32(values: NDArray[np.float32], dtype: str) -> NDArray[np.generic]:
    """The final cast of SPEC.md's dequantization: float32 -> 'f32' | 'f16' | 'bf16' (bf16 as uint16 bits)."""
    if dtype == "f32":
        return values
    if dtype == "f16":
        with np.errstate(over="ignore"):  # overflow to inf is the IEEE result the spec asks for
            return values.astype(np.float16)
    if dtype == "bf16":
        return f32_to_bf16_bits(values)
    raise ValueError(f"dtype must be 'f32', 'f16' or 'bf16', got {dtype!r}")
