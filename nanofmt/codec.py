"""Quantize and dequantize: one codec per scheme kind, registered in one place.

:func:`quantize` turns a float array into a :class:`QuantizedTensor` (the stored components
of one logical tensor); :func:`dequantize` turns it back, exactly as SPEC.md's
"Dequantization" section prescribes, optionally for a range of rows only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from ._spec import SCHEMES
from .bits import pack_rows, unpack_rows
from .errors import error
from .floats import bf16_bits_to_f32, cast_f32, f32_to_bf16_bits
from .quantize import F16_MAX, codes_for, fit_groups, fit_scales_given_offsets, quantize_meta
from .schemes import Scheme, component_layout

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
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...]) -> NDArray[np.float32]:
        """Float32 values of the rows present in ``parts`` (already sliced to a row range)."""
        raise NotImplementedError


def _finite_metadata(values: NDArray[np.float16], role: str) -> NDArray[np.float32]:
    wide = np.asarray(values).astype(np.float32)
    if not np.isfinite(wide).all():
        raise error("metadata_nonfinite", f"{role} holds NaN or infinity", field=role)
    return wide


def _groups(x: NDArray[np.float32], group: int) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """Split rows into full groups ``(rows * full, group)`` and the short tail group ``(rows, tail)``."""
    rows, cols = x.shape
    full = cols // group
    main = x[:, : full * group].reshape(rows * full, group)
    return main, (x[:, full * group :] if cols % group else None)


def _per_row(main: NDArray[np.generic], tail: NDArray[np.generic] | None, rows: int) -> NDArray[np.generic]:
    """Reassemble per-group results (main groups, then the tail group) into ``(rows, groups, ...)``."""
    shaped = main.reshape(rows, -1, *main.shape[1:])
    if tail is None:
        return shaped
    return np.concatenate([shaped, tail.reshape(rows, 1, *tail.shape[1:])], axis=1)


def _codes_per_row(main: NDArray[np.float32], tail: NDArray[np.float32] | None, rows: int) -> NDArray[np.uint8]:
    joined = main.reshape(rows, -1) if tail is None else np.hstack([main.reshape(rows, -1), tail])
    return joined.astype(np.uint8)


def _affine_values(q: NDArray[np.uint8], scale: NDArray[np.float32], offset: NDArray[np.float32], group: int) -> NDArray[np.float32]:
    """w = fl(fl(q * scale) + offset), with each group's scale and offset broadcast along its row."""
    rows, cols = q.shape
    groups = scale.shape[1]
    padded = q if cols == groups * group else np.pad(q, ((0, 0), (0, groups * group - cols)))
    out = padded.reshape(rows, groups, group).astype(np.float32)
    np.multiply(out, scale[:, :, None], out=out)
    np.add(out, offset[:, :, None], out=out)
    return out.reshape(rows, groups * group)[:, :cols]


class PassthroughCodec(Codec):
    kind = "passthrough"

    @staticmethod
    def encode(x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        if scheme.name == "f32":
            return {None: np.ascontiguousarray(x, dtype=np.float32)}
        if scheme.name == "f16":
            with np.errstate(over="ignore"):
                return {None: x.astype(np.float16)}
        return {None: f32_to_bf16_bits(x)}

    @staticmethod
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...]) -> NDArray[np.float32]:
        data = parts[None]
        if scheme.name == "bf16":
            return bf16_bits_to_f32(data)  # type: ignore[arg-type]
        return np.asarray(data, dtype=np.float32)


class Int8RowCodec(Codec):
    kind = "int8_row"

    @staticmethod
    def encode(x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        absmax = np.abs(x).max(axis=1)
        scales = (absmax / np.float32(127)).astype(np.float16)
        s32 = scales.astype(np.float32)
        safe = np.where(s32 > 0, s32, np.float32(1))
        codes = np.clip(np.rint(x / safe[:, None]), -127, 127)
        codes[s32 == 0] = 0
        return {"codes": codes.astype(np.int8), "scales": scales}

    @staticmethod
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...]) -> NDArray[np.float32]:
        scales = _finite_metadata(parts["scales"], "scales")  # type: ignore[arg-type]
        return parts["codes"].astype(np.float32) * scales[:, None]


class AffineCodec(Codec):
    kind = "affine"

    @staticmethod
    def encode(x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        assert scheme.bits is not None and scheme.group_size is not None
        rows = x.shape[0]
        qmax = (1 << scheme.bits) - 1
        main, tail = _groups(x, scheme.group_size)
        fitted = [fit_groups(part, scheme.bits) for part in (main, tail) if part is not None]
        # Round to the stored fp16 first, then choose codes against the rounded values.
        s16 = [np.clip(s, 0, F16_MAX).astype(np.float16) for s, _ in fitted]
        m16 = [np.clip(m, -F16_MAX, F16_MAX).astype(np.float16) for _, m in fitted]
        codes = [
            codes_for(part, s.astype(np.float32), m.astype(np.float32), qmax)
            for part, s, m in zip((p for p in (main, tail) if p is not None), s16, m16, strict=True)
        ]
        tail_codes = codes[1] if tail is not None else None
        return {
            "codes": pack_rows(_codes_per_row(codes[0], tail_codes, rows), scheme.bits),
            "scales": _per_row(s16[0], s16[1] if tail is not None else None, rows),
            "offsets": _per_row(m16[0], m16[1] if tail is not None else None, rows),
        }

    @staticmethod
    def decode(parts: Parts, scheme: Scheme, shape: tuple[int, ...]) -> NDArray[np.float32]:
        assert scheme.bits is not None and scheme.group_size is not None
        scale = _finite_metadata(parts["scales"], "scales")  # type: ignore[arg-type]
        offset = _finite_metadata(parts["offsets"], "offsets")  # type: ignore[arg-type]
        q = unpack_rows(parts["codes"], scheme.bits, shape[1])  # type: ignore[arg-type]
        return _affine_values(q, scale, offset, scheme.group_size)


class AffineDQCodec(Codec):
    kind = "affine_dq"
    block_groups: ClassVar[int] = int(SCHEMES["affine_dq"]["block_groups"])

    @classmethod
    def _by_block(cls, per_group: NDArray[np.float32]) -> NDArray[np.float32]:
        """(rows, groups) -> (rows * blocks, block_groups), zero-padding the last block."""
        rows, groups = per_group.shape
        blocks = -(-groups // cls.block_groups)
        padded = np.zeros((rows, blocks * cls.block_groups), np.float32)
        padded[:, :groups] = per_group
        return padded.reshape(rows * blocks, cls.block_groups)

    @classmethod
    def _expand(cls, per_block: NDArray[np.float32], groups: int) -> NDArray[np.float32]:
        return np.repeat(per_block, cls.block_groups, axis=1)[:, :groups]

    @classmethod
    def encode(cls, x: NDArray[np.float32], scheme: Scheme) -> dict[str | None, NDArray[np.generic]]:
        assert scheme.bits is not None and scheme.group_size is not None and scheme.meta_bits is not None
        rows = x.shape[0]
        qmax = (1 << scheme.bits) - 1
        main, tail = _groups(x, scheme.group_size)
        present = [p for p in (main, tail) if p is not None]
        fits = [fit_groups(p, scheme.bits) for p in present]
        groups = -(-x.shape[1] // scheme.group_size)

        def join(values: list[NDArray[np.float32]]) -> NDArray[np.float32]:
            return _per_row(values[0], values[1] if tail is not None else None, rows).astype(np.float32, copy=False)

        def split(per_row: NDArray[np.float32]) -> list[NDArray[np.float32]]:
            full = main.shape[0] // rows
            out = [per_row[:, :full].reshape(-1)]
            return out + ([per_row[:, full]] if tail is not None else [])

        # Offsets first: their quantized values fix where each group's codes start ...
        super_offsets, qoffsets = quantize_meta(cls._by_block(join([m for _, m in fits])), scheme.meta_bits, signed_ok=True)
        qoffsets = qoffsets.reshape(rows, -1)[:, :groups]
        offsets = cls._expand(super_offsets.astype(np.float32).reshape(rows, -1), groups) * qoffsets
        # ... then scales are refitted to the offsets the decoder will really use.
        scales_fit = join([fit_scales_given_offsets(p, m, scheme.bits) for p, m in zip(present, split(offsets), strict=True)])
        super_scales, qscales = quantize_meta(cls._by_block(scales_fit), scheme.meta_bits, signed_ok=False)
        qscales = qscales.reshape(rows, -1)[:, :groups]
        qscales = np.where((scales_fit > 0) & (qscales == 0), 1, qscales)  # a live group never gets a zero step
        scales = cls._expand(super_scales.astype(np.float32).reshape(rows, -1), groups) * qscales
        codes = [codes_for(p, s, m, qmax) for p, s, m in zip(present, split(scales), split(offsets), strict=True)]
        return {
            "codes": pack_rows(_codes_per_row(codes[0], codes[1] if tail is not None else None, rows), scheme.bits),
            "qscales": pack_rows(qscales.astype(np.uint8), scheme.meta_bits),
            "qoffsets": pack_rows(qoffsets.astype(np.uint8), scheme.meta_bits),
            "super_scales": super_scales.reshape(rows, -1),
            "super_offsets": super_offsets.reshape(rows, -1),
        }

    @classmethod
    def decode(cls, parts: Parts, scheme: Scheme, shape: tuple[int, ...]) -> NDArray[np.float32]:
        assert scheme.bits is not None and scheme.group_size is not None and scheme.meta_bits is not None
        groups = -(-shape[1] // scheme.group_size)
        super_scales = _finite_metadata(parts["super_scales"], "super_scales")  # type: ignore[arg-type]
        super_offsets = _finite_metadata(parts["super_offsets"], "super_offsets")  # type: ignore[arg-type]
        qscales = unpack_rows(parts["qscales"], scheme.meta_bits, groups).astype(np.float32)  # type: ignore[arg-type]
        qoffsets = unpack_rows(parts["qoffsets"], scheme.meta_bits, groups).astype(np.float32)  # type: ignore[arg-type]
        scale = cls._expand(super_scales, groups) * qscales
        offset = cls._expand(super_offsets, groups) * qoffsets
        q = unpack_rows(parts["codes"], scheme.bits, shape[1])  # type: ignore[arg-type]
        return _affine_values(q, scale, offset, scheme.group_size)


def _check_registry() -> None:
    kinds = {s["kind"] for s in SCHEMES.values()}
    missing = kinds - set(Codec.registry)
    if missing:
        raise ImportError(f"no codec for scheme kinds {sorted(missing)} listed in spec/format.json")


_check_registry()


def quantize(values: NDArray[np.generic], scheme: Scheme, *, dtype: str | None = None) -> QuantizedTensor:
    """Quantize a float array under ``scheme``.

    Args:
        values: float32/float16 array (or bf16 as ``uint16`` bits with ``dtype="bf16"``).
        scheme: the target scheme; quantized schemes take 2-D arrays.
        dtype: the logical tensor's original dtype; inferred from ``values`` when omitted.

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
    x = bf16_bits_to_f32(array) if source == "bf16" and array.dtype == np.uint16 else array.astype(np.float32)
    scheme.check(tuple(x.shape))
    if not scheme.is_passthrough:
        if not np.isfinite(x).all():
            raise ValueError("values hold NaN or infinity")
        if x.size and float(np.abs(x).max()) > F16_MAX / 2:
            raise ValueError(f"values exceed +-{F16_MAX / 2:g}, beyond what fp16 scales and offsets can carry")
    parts = Codec.registry[scheme.kind].encode(x, scheme)
    return QuantizedTensor(tuple(x.shape), source, scheme, parts)


def dequantize(qt: QuantizedTensor, dtype: str | None = None, *, rows: slice | None = None) -> NDArray[np.generic]:
    """Decode ``qt`` (or only ``rows`` of it) to ``dtype`` ('f32', 'f16' or 'bf16' as uint16 bits).

    Bit-exact to SPEC.md: float32 arithmetic in the spec's order, then one round-to-nearest-even
    cast. Decoding a row range reads only those rows' bytes and equals decoding all, then slicing.
    """
    row_range = slice(None) if rows is None else rows
    if rows is not None and (row_range.step not in (None, 1) or not qt.shape):
        raise ValueError("rows must be a contiguous slice of a tensor with at least one dimension")
    parts = {role: p[row_range] for role, p in qt.parts.items()}
    first = next(iter(parts.values()))
    shape = (first.shape[0], *qt.shape[1:]) if qt.shape else ()
    if math.prod(shape) == 0:
        return cast_f32(np.zeros(shape, np.float32), dtype or qt.dtype)
    values = Codec.registry[qt.scheme.kind].decode(parts, qt.scheme, shape)
    return cast_f32(np.ascontiguousarray(values.reshape(shape)), dtype or qt.dtype)


def expected_layout(qt: QuantizedTensor, name: str = "x") -> dict[str | None, tuple[str, tuple[int, ...]]]:
    """Role -> (dtype, shape) the stored components must have (used by the writer's checks)."""
    return {role: (c.dtype, c.shape) for role, c in component_layout(qt.scheme, qt.shape, name).items()}
