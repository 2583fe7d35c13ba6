"""Encoding row ranges: the unit of work, the same in this process or in a worker process.

Every Nano scheme works row by row (int8_row per row; affine groups and affine_dq blocks run
along a row), so quantizing a tensor in row chunks gives exactly the bytes quantizing it whole
would, while the float32 temporaries of the quantizer stay a few MB instead of several times
the tensor. A chunk is also what a worker process gets: it reads its rows from the memory-mapped
source itself, so only the (small) quantized parts travel back.

A chunk with a ``gram`` (the path of its tensor's input Gram matrix, from ``calibrate.py``) is
encoded by GPTQ (``gptq.py``) instead of rounding to nearest; rows are independent given the
Gram, so chunking still gives the tensor's bytes (up to the rounding of the matrix products).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

import nanofmt
from nanofmt import Scheme
from nanofmt.floats import bf16_bits_to_f32
from nanofmt.transforms import default_signs

from .errors import ConvertError
from .gptq import GPTQ_KINDS, Factor, gptq_quantize, prepare, rotate_gram
from .source import SourceTensor, read_rows, release_rows

__all__ = ["Chunk", "Encoded", "encode_rows", "run_chunk", "row_chunks", "gram_factor", "CHUNK_ELEMENTS"]

CHUNK_ELEMENTS = 1 << 20  # ~4 MB of float32 per chunk: the quantizer's temporaries stay ~10x that
F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Chunk:
    """Rows ``rows`` of one tensor, to be stored under ``scheme`` (record dtype ``dtype``)."""

    name: str
    source: SourceTensor
    rows: slice | None
    scheme: Scheme
    dtype: str
    gram: str | None = None  # a .npy of the tensor's input Gram matrix: encode by GPTQ


@dataclass(frozen=True)
class Encoded:
    """The stored parts of a chunk and its sums for the SQNR: sum x^2 and sum (x - decoded)^2."""

    parts: dict[str | None, NDArray[np.generic]]
    signal: float
    noise: float


def row_chunks(shape: tuple[int, ...]) -> list[slice | None]:
    """Row ranges of about CHUNK_ELEMENTS elements each (one ``None`` for a scalar)."""
    if not shape:
        return [None]
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return [slice(r, min(r + step, shape[0])) for r in range(0, max(shape[0], 1), step)]


def _as_f32(values: NDArray[np.generic], dtype: str) -> NDArray[np.float32]:
    return bf16_bits_to_f32(values) if dtype == "bf16" else values.astype(np.float32, copy=False)  # type: ignore[arg-type]


def _sum_sq(x: NDArray[np.float32]) -> float:
    # float32 dot: ~1e-6 relative error per chunk, far below the 0.01 dB the SQNR is rounded to,
    # and ~100x faster than widening to float64 first; chunks are summed in Python floats.
    flat = x.reshape(-1)
    return float(np.dot(flat, flat)) if flat.size else 0.0


@functools.lru_cache(maxsize=2)  # a tensor's chunks arrive one after another: factor its Gram once
def gram_factor(path: str, transform: str = "none", block: int | None = None) -> Factor:
    """The GPTQ factor of the Gram matrix saved at ``path`` (for a ``hadamard`` scheme, of the rotated one, with the codec's default signs)."""
    gram = np.load(path, mmap_mode="r")
    if transform == "hadamard" and block:
        gram = rotate_gram(gram, block, default_signs(gram.shape[0], 0))
    return prepare(gram)


def _factor(path: str, scheme: Scheme, shape: tuple[int, ...], name: str) -> Factor:
    try:
        factor = gram_factor(path, scheme.transform, scheme.transform_block)
    except (OSError, ValueError) as exc:
        raise ConvertError("calibration_invalid", f"cannot use the Gram matrix {path}: {exc}", tensor=name) from exc
    if len(shape) != 2 or factor.cols != shape[1]:
        raise ConvertError(
            "calibration_invalid", f"the Gram matrix {path} is {factor.cols} x {factor.cols}, the tensor's shape {shape}", tensor=name
        )
    return factor


def encode_rows(values: NDArray[np.generic], scheme: Scheme, dtype: str, name: str, gram: str | None = None) -> Encoded:
    """Encode source values (float32/float16, or bf16 as uint16 bits with ``dtype="bf16"``); by GPTQ against ``gram`` if given.

    Raises:
        ConvertError: ``nonfinite_weights`` for NaN/inf, ``value_out_of_range`` for values the
        scheme's fp16 fields (or an fp16 store) cannot carry.
    """
    x = _as_f32(values, dtype)
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.argwhere(~finite)[0][0]) if x.ndim else 0
        raise ConvertError(
            "nonfinite_weights", f"holds NaN or infinity (first in row {bad} of this chunk); the source is damaged", tensor=name
        )
    if scheme.name == dtype:  # stored exactly as in the source: no copy, no error
        return Encoded({None: values}, 0.0, 0.0)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if scheme.name == "f16" and peak > F16_MAX:
        raise ConvertError(
            "value_out_of_range", f"values up to {peak:g} overflow fp16; keep it in its source dtype (--keep '{name}')", tensor=name
        )
    factor = _factor(gram, scheme, x.shape, name) if gram is not None and scheme.kind in GPTQ_KINDS else None
    try:
        if factor is not None:
            qt = gptq_quantize(x, scheme, factor, dtype=dtype)
        else:
            qt = nanofmt.quantize(x, scheme, dtype=dtype)  # x: the exact float32 values, widened once
    except ValueError as exc:
        raise ConvertError("value_out_of_range", f"{scheme.label()} cannot store it: {exc}", tensor=name) from exc
    decoded = np.asarray(nanofmt.dequantize(qt, "f32"), dtype=np.float32)
    np.subtract(decoded, x, out=decoded)
    return Encoded(dict(qt.parts), _sum_sq(x), _sum_sq(decoded))


def run_chunk(chunk: Chunk) -> Encoded:
    """Read a chunk from its memory-mapped source file and encode it (worker entry point)."""
    values = read_rows(chunk.source, chunk.rows)
    if chunk.source.dtype == "F64":
        values = values.astype(np.float32)
    try:
        encoded = encode_rows(values, chunk.scheme, chunk.dtype, chunk.name, chunk.gram)
        if None in encoded.parts and encoded.parts[None] is values:  # a view of the map: copy before release
            encoded = Encoded({None: np.array(values)}, encoded.signal, encoded.noise)
        return encoded
    finally:
        del values
        release_rows(chunk.source, chunk.rows)
