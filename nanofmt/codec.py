"""Quantize and dequantize: one codec per scheme kind, registered in one place.

:func:`quantize` turns a float array into a :class:`QuantizedTensor` (the stored components
of one logical tensor); :func:`dequantize` turns it back, exactly as SPEC.md's
"Dequantization" section prescribes, optionally for a range of rows only. A record's transform
(``hadamard``, ``transforms.py``) wraps its scheme: quantize rotates the rows first, dequantize
unrotates the scheme's binary32 values before the final cast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from ._spec import SCHEMES, TRANSFORM_SPECS
from .bits import unpack_rows
from .errors import error
from .floats import bf16_bits_to_f32, cast_f32, f32_to_bf16_bits
from .quantize import F16_MAX, encode_affine, encode_affine_dq, encode_int8_row
from .schemes import Scheme, component_layout
from .transforms import default_signs, hadamard_rotate, hadamard_unrotate, pack_signs, unpack_signs

__all__ = ["QuantizedTensor", "quantize", "dequantize", "Codec"]

Parts = Mapping["str | None", NDArray[np.generic]]


@dataclass(frozen=True)
class QuantizedTensor:
    """One logical tensor as stored: its scheme and its component arrays, keyed by role.

    ``dtype`` is the logical tensor's original dtype (``"f32"``, ``"f16"`` or ``"bf16"``), the
    default of :func:`dequantize`. bf16 arrays are ``uint16`` bit patterns (see ``floats``).
    """

    shape: tuple[int, ...]
    dtype: str
    scheme: Scheme
    parts: Mapping[str | None, NDArray[np.generic]] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.parts.values())


class Codec:
    """Encoder and decoder of one scheme kind. Subclasses register themselves by ``kind``."""

    kind: ClassVar[str]
    registry: ClassVar[dict[str, type[Codec]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        Codec.registry[cls.kind] = cls

    @staticmethod
    def encode(x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        raise NotImplementedError

    @staticmethod
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...], dtype: str, out: NDArray[np.generic] | None) -> NDArray[np.generic]:
        """Values of the rows present in ``parts`` (already sliced to a row range), cast to ``dtype``, in ``out`` if given."""
        raise NotImplementedError


def _finite_metadata(values: NDArray[np.float16], role: str) -> NDArray[np.float32]:
    wide = np.asarray(values).astype(np.float32)
    if not np.isfinite(wide).all():
        raise error("metadata_nonfinite", f"{role} holds NaN or infinity", field=role)
    return wide


OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}
DECODE_CHUNK = 1 << 17  # values per chunk of rows: codes, values and temporaries stay in L2


def _finish(values: NDArray[np.float32], dtype: str, out: NDArray[np.generic] | None) -> NDArray[np.generic]:
    """The final cast (SPEC.md 10.3), into ``out`` when given; never an alias of stored data."""
    result = cast_f32(values, dtype)
    if out is not None:
        np.copyto(out, result.reshape(out.shape))
        return out
    return np.array(result, order="C") if np.may_share_memory(result, values) else result


def _affine_values(
    packed: NDArray[np.uint8],
    bits: int,
    scale: NDArray[np.float32],
    offset: NDArray[np.float32],
    group: int,
    cols: int,
    dtype: str,
    out: NDArray[np.generic] | None,
) -> NDArray[np.generic]:
    """w = fl(fl(q * scale) + offset) for packed codes, each group's scale and offset broadcast along its row.

    Done a few rows at a time, straight into the output (or, for f16/bf16, into a float32
    scratch chunk cast right away), so that each value is touched while it is in cache.
    """
    rows = packed.shape[0]
    target: NDArray[np.generic] = np.empty((rows, cols), OUTPUT_DTYPES[dtype]) if out is None else out.reshape(rows, cols)
    full = cols // group
    step = max(1, DECODE_CHUNK // cols)
    codes = np.empty(min(step, rows) * -(-cols // 8) * 8, np.uint8)
    scratch = None if dtype == "f32" else np.empty((min(step, rows), cols), np.float32)
    for r in range(0, rows, step):
        o: NDArray[np.float32] = target[r : r + step] if scratch is None else scratch[: min(step, rows - r)]  # type: ignore[assignment]
        np.copyto(o, unpack_rows(packed[r : r + step], bits, cols, buffer=codes), casting="unsafe")  # codes are exact in float32
        s, m = scale[r : r + step], offset[r : r + step]
        if full:  # each group's scale and offset repeated along it: contiguous operands run faster than broadcasting
            body = o[:, : full * group]
            np.multiply(body, np.repeat(s[:, :full], group, axis=1), out=body)
            np.add(body, np.repeat(m[:, :full], group, axis=1), out=body)
        if full * group < cols:
            tail = o[:, full * group :]
            np.multiply(tail, s[:, full:], out=tail)
            np.add(tail, m[:, full:], out=tail)
        if scratch is not None:
            np.copyto(target[r : r + step], cast_f32(o, dtype))
    return target if out is None else out


class PassthroughCodec(Codec):
    kind = "passthrough"

    @staticmethod
    def encode(x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        if scheme.name == "f32":
            return {None: np.array(x, dtype=np.float32, order="C")}  # a copy, and a 0-d array stays 0-d
        if scheme.name == "f16":
            with np.errstate(over="ignore"):
                return {None: x.astype(np.float16)}
        return {None: f32_to_bf16_bits(x)}

    @staticmethod
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...], dtype: str, out: NDArray[np.generic] | None) -> NDArray[np.generic]:
        data = parts[None]
        values = bf16_bits_to_f32(data) if scheme.name == "bf16" else np.asarray(data, dtype=np.float32)  # type: ignore[arg-type]
        return _finish(values.reshape(shape), dtype, out)


class Int8RowCodec(Codec):
    kind = "int8_row"

    @staticmethod
    def encode(x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        return encode_int8_row(x)

    @staticmethod
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...], dtype: str, out: NDArray[np.generic] | None) -> NDArray[np.generic]:
        scales = _finite_metadata(parts["scales"], "scales")  # type: ignore[arg-type]
        return _finish(parts["codes"].astype(np.float32) * scales[:, None], dtype, out)


class AffineCodec(Codec):
    kind = "affine"

    @staticmethod
    def encode(x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        assert scheme.bits is not None and scheme.group_size is not None
        return encode_affine(x, scheme.bits, scheme.group_size)

    @staticmethod
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...], dtype: str, out: NDArray[np.generic] | None) -> NDArray[np.generic]:
        assert scheme.bits is not None and scheme.group_size is not None
        scale = _finite_metadata(parts["scales"], "scales")  # type: ignore[arg-type]
        offset = _finite_metadata(parts["offsets"], "offsets")  # type: ignore[arg-type]
        return _affine_values(parts["codes"], scheme.bits, scale, offset, scheme.group_size, shape[1], dtype, out)  # type: ignore[arg-type]


class AffineDQCodec(Codec):
    kind = "affine_dq"
    block_groups: ClassVar[int] = int(SCHEMES["affine_dq"]["block_groups"])

    @classmethod
    def _expand(cls, per_block: NDArray[np.float32], groups: int) -> NDArray[np.float32]:
        return np.repeat(per_block, cls.block_groups, axis=1)[:, :groups]

    @classmethod
    def encode(cls, x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        assert scheme.bits is not None and scheme.group_size is not None and scheme.meta_bits is not None
        return encode_affine_dq(x, scheme.bits, scheme.group_size, scheme.meta_bits)

    @classmethod
    def decode(
        cls, parts: Parts, scheme: Scheme, shape: tuple[int, ...], dtype: str, out: NDArray[np.generic] | None
    ) -> NDArray[np.generic]:
        assert scheme.bits is not None and scheme.group_size is not None and scheme.meta_bits is not None
        groups = -(-shape[1] // scheme.group_size)
        super_scales = _finite_metadata(parts["super_scales"], "super_scales")  # type: ignore[arg-type]
        super_offsets = _finite_metadata(parts["super_offsets"], "super_offsets")  # type: ignore[arg-type]
        qscales = unpack_rows(parts["qscales"], scheme.meta_bits, groups).astype(np.float32)  # type: ignore[arg-type]
        qoffsets = unpack_rows(parts["qoffsets"], scheme.meta_bits, groups).astype(np.float32)  # type: ignore[arg-type]
        scale = cls._expand(super_scales, groups) * qscales
        offset = cls._expand(super_offsets, groups) * qoffsets
        return _affine_values(parts["codes"], scheme.bits, scale, offset, scheme.group_size, shape[1], dtype, out)  # type: ignore[arg-type]


def _check_registry() -> None:
    kinds = {s["kind"] for s in SCHEMES.values()}
    missing = kinds - set(Codec.registry)
    if missing:
        raise ImportError(f"no codec for scheme kinds {sorted(missing)} listed in spec/format.json")


_check_registry()


def _check_range(x: NDArray[np.float32]) -> None:
    lo, hi = float(x.min()), float(x.max())  # NaN propagates through both; two passes, no temporaries
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("values hold NaN or infinity")
    if max(hi, -lo) > F16_MAX / 2:
        raise ValueError(f"values exceed +-{F16_MAX / 2:g}, beyond what fp16 scales and offsets can carry")


def _signs_for(scheme: Scheme, cols: int, seed: int, signs: NDArray[np.generic] | None) -> NDArray[np.bool_] | None:
    if scheme.transform != "hadamard":
        if signs is not None:
            raise ValueError(f"signs apply to the hadamard transform, not {scheme.transform!r}")
        return None
    if signs is None:
        return default_signs(cols, seed)
    chosen = np.asarray(signs)
    if chosen.dtype != np.bool_ or chosen.shape != (cols,):
        raise ValueError(f"signs must be a bool array of shape ({cols},), got {chosen.dtype} {chosen.shape}")
    return chosen


def quantize(
    values: NDArray[np.generic], scheme: Scheme, *, dtype: str | None = None, seed: int = 0, signs: NDArray[np.generic] | None = None
) -> QuantizedTensor:
    """Quantize a float array under ``scheme``.

    Args:
        values: float32/float16 array (or bf16 as ``uint16`` bits with ``dtype="bf16"``).
        scheme: the target scheme; quantized schemes take 2-D arrays.
        dtype: the logical tensor's original dtype; inferred from ``values`` when omitted.
        seed: for a ``hadamard`` scheme, the seed of the column signs
            (:func:`nanofmt.transforms.default_signs`); the same seed gives the same bytes.
        signs: for a ``hadamard`` scheme, the column signs themselves (bool, True = -1, one per
            column), instead of drawing them from ``seed``.

    Returns:
        The stored components, ready for :func:`nanofmt.write_file`.

    Raises:
        ValueError: non-finite values, or values a quantized scheme cannot represent in fp16.
        NanoError: scheme parameters not allowed for this shape.

    Example:
        >>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
        >>> qt = quantize(w, Scheme("affine", bits=4, group_size=32))
        >>> float(np.abs(dequantize(qt) - w).max()) < 0.07
        True
    """
    array = np.asarray(values)
    source = dtype or {"float32": "f32", "float16": "f16", "uint16": "bf16"}.get(array.dtype.name)
    if source not in ("f32", "f16", "bf16"):
        raise ValueError(f"cannot quantize values of dtype {array.dtype}; give float32, float16 or bf16 bits")
    x = bf16_bits_to_f32(array) if source == "bf16" and array.dtype == np.uint16 else np.asarray(array, dtype=np.float32)
    scheme.check(tuple(x.shape))
    chosen = _signs_for(scheme, x.shape[-1] if x.ndim else 0, seed, signs)
    if not scheme.is_passthrough and x.size:
        _check_range(x)
        if chosen is not None:
            assert scheme.transform_block is not None
            x = hadamard_rotate(x, scheme.transform_block, chosen)  # what the scheme stores: u = (w * s) H
            _check_range(x)  # a rotation can raise a row's largest magnitude by up to sqrt(block)
    parts = Codec.registry[scheme.kind].encode(x, scheme)
    if chosen is not None:
        parts["signs"] = pack_signs(chosen)
    return QuantizedTensor(tuple(x.shape), source, scheme, parts)


def dequantize(
    qt: QuantizedTensor, dtype: str | None = None, *, rows: slice | None = None, out: NDArray[np.generic] | None = None
) -> NDArray[np.generic]:
    """Decode ``qt`` (or only ``rows`` of it) to ``dtype`` ('f32', 'f16' or 'bf16' as uint16 bits).

    Bit-exact to SPEC.md: float32 arithmetic in the spec's order, then one round-to-nearest-even
    cast. Decoding a row range reads only those rows' bytes and equals decoding all, then slicing.

    Args:
        qt: the stored tensor.
        dtype: output dtype; the tensor's original dtype when omitted.
        rows: a contiguous row range to decode instead of the whole tensor.
        out: a C-contiguous, writeable array of the result's shape and dtype to decode into;
            reusing one across calls saves the page faults of a fresh array, which cost more
            than the arithmetic on large tensors.

    Returns:
        A new array (never a view of ``qt``'s data), or ``out``.

    Raises:
        ValueError: a bad ``dtype``, ``rows`` or ``out``.
        NanoError: ``metadata_nonfinite`` if a scale or offset of the rows is NaN or infinite.
    """
    target = dtype or qt.dtype
    if target not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be 'f32', 'f16' or 'bf16', got {target!r}")
    row_range = slice(None) if rows is None else rows
    if rows is not None and (row_range.step not in (None, 1) or not qt.shape):
        raise ValueError("rows must be a contiguous slice of a tensor with at least one dimension")
    # the transform's components (signs) are per column, not per row: never sliced
    parts = {role: p if rows is None or role in _TRANSFORM_ROLES else p[row_range] for role, p in qt.parts.items()}
    first = next(iter(parts.values()))
    shape = (first.shape[0], *qt.shape[1:]) if qt.shape else ()
    if out is not None and not (
        isinstance(out, np.ndarray)
        and out.shape == shape
        and out.dtype == OUTPUT_DTYPES[target]
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise ValueError(f"out must be a writeable C-contiguous {OUTPUT_DTYPES[target]} array of shape {shape}")
    if math.prod(shape) == 0:
        return _finish(np.zeros(shape, np.float32), target, out)
    if qt.scheme.transform == "hadamard":
        return _decode_hadamard(parts, qt.scheme, shape, target, out)
    return Codec.registry[qt.scheme.kind].decode(parts, qt.scheme, shape, target, out)


_TRANSFORM_ROLES = frozenset(c["role"] for t in TRANSFORM_SPECS.values() for c in t.get("components", []))


def _decode_hadamard(
    parts: dict[str | None, NDArray[np.generic]], scheme: Scheme, shape: tuple[int, ...], dtype: str, out: NDArray[np.generic] | None
) -> NDArray[np.generic]:
    """SPEC.md 10.6: the scheme's binary32 values u, then w = (u H) * s row by row, then the final cast."""
    assert scheme.transform_block is not None
    rows, cols = shape
    signs = unpack_signs(parts.pop("signs"), cols)
    values: NDArray[np.float32] = out if dtype == "f32" and out is not None else np.empty(shape, np.float32)  # type: ignore[assignment]
    Codec.registry[scheme.kind].decode(parts, scheme, shape, "f32", values)
    step = max(1, DECODE_CHUNK // cols)  # a few rows at a time, so the transform's passes stay in cache
    for r in range(0, rows, step):
        chunk = values[r : r + step]
        hadamard_unrotate(chunk, scheme.transform_block, signs, out=chunk)
    if dtype == "f32":
        return values
    return _finish(values, dtype, out)


def expected_layout(qt: QuantizedTensor, name: str = "x") -> dict[str | None, tuple[str, tuple[int, ...]]]:
    """Role -> (dtype, shape) the stored components must have (used by the writer's checks)."""
    return {role: (c.dtype, c.shape) for role, c in component_layout(qt.scheme, qt.shape, name).items()}
