"""Generate the Nano conformance vectors in spec/vectors/ (SPEC.md, "Conformance vectors").

    python spec/make_vectors.py           # (re)write spec/vectors/
    python spec/make_vectors.py --check   # regenerate into a temporary folder, exit 1 on any difference

This is a second, deliberately plain implementation of SPEC.md that does not import nanofmt: it
packs bits one code at a time with Python integers, writes the safetensors container by hand and
computes the expected decoded values straight from the formulas of SPEC.md, "Dequantization".
tests/vectors checks the nanofmt reader against what it writes.

Vectors exercise the *decoder*: their codes, scales and offsets are drawn at random (or chosen by
hand for the edge cases), not produced by a quantizer, so tuning nanofmt's quantizer never changes
them. Each vector draws from its own seed through PCG64's raw 64-bit stream, which numpy keeps
stable across versions (its distribution methods are not promised to be), so the bytes reproduce.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from math import isqrt
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "spec" / "vectors"
FORMAT = json.loads((ROOT / "spec" / "format.json").read_text())
SCHEMES = {s["name"]: s for s in FORMAT["schemes"]}
AFFINE_BITS = SCHEMES["affine"]["bits"]
GROUPS = SCHEMES["affine"]["group_sizes"]
META_BITS = SCHEMES["affine_dq"]["meta_bits"]
BLOCK = SCHEMES["affine_dq"]["block_groups"]
TRANSFORMS = {t["name"]: t for t in FORMAT["transforms"]}
HADAMARD_BLOCKS = TRANSFORMS["hadamard"]["transform_blocks"]
CASES = ("normal", "tail", "zero", "extreme", "subnormal")
OUTPUTS = ("f32", "f16", "bf16")
NUMPY = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1", "I8": "i1"}
F16_MAX, F16_MIN_SUB = 0x7BFF, 0x0001  # fp16 bit patterns


# --- deterministic draws --------------------------------------------------------------------
class Draw:
    """Random integers and fp16 bit patterns from PCG64's raw stream (stable across numpy versions)."""

    def __init__(self, seed: int) -> None:
        self._gen = np.random.PCG64(seed)

    def ints(self, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
        """Integers in [lo, hi)."""
        raw = self._gen.random_raw(int(np.prod(shape, dtype=np.int64)))
        return (lo + (raw % np.uint64(hi - lo)).astype(np.int64)).reshape(shape)

    def f16(self, shape: tuple[int, ...], exp: tuple[int, int], *, signed: bool, mantissa: int = 1024) -> np.ndarray:
        """fp16 values with biased exponent field in [exp[0], exp[1]] (0: subnormal) and mantissa field below ``mantissa``."""
        e = self.ints(shape, exp[0], exp[1] + 1)
        m = self.ints(shape, 1 if exp == (0, 0) else 0, mantissa)
        s = self.ints(shape, 0, 2) if signed else np.zeros(shape, np.int64)
        return ((s << 15) | (e << 10) | m).astype(np.uint16).view(np.float16)

    def pick(self, shape: tuple[int, ...], choices: list[int]) -> np.ndarray:
        return np.asarray(choices, np.int64)[self.ints(shape, 0, len(choices))]


def f16(*patterns: int) -> np.ndarray:
    return np.asarray(patterns, np.uint16).view(np.float16)


# --- the spec, literally ------------------------------------------------------------------
def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """SPEC.md "Bit packing": code j of a row at stream bits [j*bits, (j+1)*bits), LSB first, rows padded to 8 codes."""
    rows, n = codes.shape
    width = -(-n // 8) * bits
    out = np.zeros((rows, width), np.uint8)
    for r in range(rows):
        stream = 0
        for j, c in enumerate(codes[r].tolist()):
            assert 0 <= c < 1 << bits
            stream |= c << (j * bits)
        out[r] = np.frombuffer(stream.to_bytes(width, "little"), np.uint8)
    return out


def per_column(per_group: np.ndarray, cols: int, group: int) -> np.ndarray:
    """Spread (rows, groups) values to (rows, cols): column j belongs to group j // group."""
    return per_group[:, np.arange(cols) // group]


def affine_values(q: np.ndarray, s: np.ndarray, m: np.ndarray, group: int) -> np.ndarray:
    """w = fl(fl(q * s) + m) in binary32, two separately rounded operations (never fused)."""
    qf = q.astype(np.float32)
    product = qf * per_column(s.astype(np.float32), q.shape[1], group)
    return product + per_column(m.astype(np.float32), q.shape[1], group)


def hadamard_values(u: np.ndarray, block: int, signs: list[bool]) -> np.ndarray:
    """SPEC.md "The hadamard transform", literally: per row and block, the stages h = 1, 2, ..., block/2 of
    binary32 additions and subtractions, one pair at a time; then the exact scale 1/sqrt(block) and the signs."""
    rows, cols = u.shape
    scale = np.float32(1.0 / isqrt(block))  # block is a power of four: a power of two, exact
    out = np.empty((rows, cols), np.float32)
    for r in range(rows):
        for start in range(0, cols, block):
            x = [np.float32(v) for v in u[r, start : start + block]]
            h = 1
            while h < block:
                for i in range(block):
                    if i & h == 0:
                        a, c = x[i], x[i + h]
                        x[i], x[i + h] = np.float32(a + c), np.float32(a - c)
                h *= 2
            for i, v in enumerate(x):
                sign = np.float32(-1.0) if signs[start + i] else np.float32(1.0)
                out[r, start + i] = np.float32(np.float32(v * scale) * sign)
    return out


def pack_signs(signs: list[bool]) -> np.ndarray:
    """The signs component: bit j % 8 of byte j // 8 is column j, 1 meaning -1."""
    out = bytearray(-(-len(signs) // 8))
    for j, negative in enumerate(signs):
        out[j // 8] |= int(negative) << (j % 8)
    return np.frombuffer(bytes(out), np.uint8).copy()


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """binary32 -> bfloat16 bit patterns, round to nearest, ties to even; NaN stays NaN (quiet)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    upper, lower = u >> np.uint64(16), u & np.uint64(0xFFFF)
    up = (lower > 0x8000) | ((lower == 0x8000) & ((upper & np.uint64(1)) == 1))
    nan = (u & np.uint64(0x7FFFFFFF)) > 0x7F800000
    return np.where(nan, upper | np.uint64(0x40), upper + up.astype(np.uint64)).astype(np.uint16)


def output_bytes(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "f32":
        return values.astype("<f4").tobytes()
    if dtype == "f16":
        with np.errstate(over="ignore"):
            return values.astype("<f2").tobytes()
    return to_bf16_bits(values).astype("<u2").tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- logical tensors ----------------------------------------------------------------------
@dataclass
class Tensor:
    """One logical tensor: its record fields, stored components (role -> (dtype, array)) and expected fp32 values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    params: dict[str, Any]
    parts: dict[str | None, tuple[str, np.ndarray]]
    values: np.ndarray
    tie: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    transform: dict[str, Any] = field(default_factory=lambda: {"transform": "none"})  # transform and its parameters

    def stored(self) -> list[tuple[str, str, np.ndarray]]:
        return [(self.name if role is None else f"{self.name}_{role}", dt, a) for role, (dt, a) in self.parts.items()]

    def record(self) -> dict[str, Any]:
        if self.tie is not None:
            return {"shape": list(self.shape), "dtype": self.dtype, "tie": self.tie, **self.extra}
        crc = 0
        for _, dt, a in self.stored():
            crc = zlib.crc32(np.ascontiguousarray(a, NUMPY[dt]).tobytes(), crc)
        checksum = f"crc32:{crc:08x}"
        return {"shape": list(self.shape), "dtype": self.dtype, **self.params, **self.transform, "checksum": checksum, **self.extra}


def passthrough(name: str, scheme: str, stored: np.ndarray, dtype: str | None = None) -> Tensor:
    """stored: float32 / float16 array, or bf16 as uint16 bit patterns."""
    wide = (stored.astype(np.uint32) << 16).view(np.float32) if scheme == "bf16" else stored.astype(np.float32)
    sdt = SCHEMES[scheme]["stored_dtype"]
    return Tensor(name, dtype or scheme, stored.shape, {"scheme": scheme}, {None: (sdt, stored)}, wide)


def int8_row(name: str, dtype: str, q: np.ndarray, s: np.ndarray) -> Tensor:
    values = q.astype(np.float32) * s.astype(np.float32)[:, None]
    parts = {"codes": ("I8", q.astype(np.int8)), "scales": ("F16", s.astype(np.float16))}
    return Tensor(name, dtype, q.shape, {"scheme": "int8_row", "bits": 8}, parts, values)


def affine(name: str, dtype: str, bits: int, group: int, q: np.ndarray, s: np.ndarray, m: np.ndarray) -> Tensor:
    parts = {"codes": ("U8", pack(q, bits)), "scales": ("F16", s), "offsets": ("F16", m)}
    params = {"scheme": "affine", "bits": bits, "group_size": group}
    return Tensor(name, dtype, q.shape, params, parts, affine_values(q, s, m, group))


def affine_dq(name: str, dtype: str, bits: int, group: int, meta: int, q: np.ndarray, codes: tuple[Any, Any], sup: np.ndarray) -> Tensor:
    """codes: the (qs, qm) scale and offset codes per group; sup: (S, M) as fp16, shape (2, rows, blocks)."""
    (qs, qm), (ss, so) = codes, sup
    block = np.arange(qs.shape[1]) // BLOCK
    s = ss.astype(np.float32)[:, block] * qs.astype(np.float32)  # s = fl(S * qs)
    m = so.astype(np.float32)[:, block] * qm.astype(np.float32)  # m = fl(M * qm)
    parts = {"codes": ("U8", pack(q, bits)), "qscales": ("U8", pack(qs, meta)), "qoffsets": ("U8", pack(qm, meta))}
    parts |= {"super_scales": ("F16", ss), "super_offsets": ("F16", so)}
    params = {"scheme": "affine_dq", "bits": bits, "group_size": group, "meta_bits": meta}
    return Tensor(name, dtype, q.shape, params, parts, affine_values(q, s, m, group))


def hadamard(t: Tensor, block: int, signs: list[bool]) -> Tensor:
    """``t`` (whose values are the scheme's u) under the hadamard transform: a signs component, w = (u H) * s."""
    parts = {**t.parts, "signs": ("U8", pack_signs(signs))}
    transform = {"transform": "hadamard", "transform_block": block}
    return Tensor(t.name, t.dtype, t.shape, t.params, parts, hadamard_values(t.values, block, signs), transform=transform)


# --- cases ------------------------------------------------------------------------------------
def affine_case(case: str, bits: int, group: int, dtype: str, d: Draw) -> Tensor:
    top = 1 << bits
    cols = {"normal": 2 * group, "tail": group + group // 2 + 3, "zero": 2 * group + 5, "extreme": 2 * group, "subnormal": group + 7}[case]
    rows = 3 if case in ("normal", "tail", "zero") else 2
    q = d.ints((rows, cols), 0, top)
    n = -(-cols // group)
    s = d.f16((rows, n), (7, 12), signed=False)  # 2^-8 .. 2^-3
    m = d.f16((rows, n), (10, 15), signed=True)  # 2^-5 .. 2
    if case == "zero":
        # row 1: group 1 all zero, group 2 constant (zero scale, codes ignored); row 2: signed zeros, then an all-zero group
        q[1, group : 2 * group] = 0
        s[1, 1:], m[1, 1], m[1, 2] = 0.0, 0.0, 0.375
        s[2] = f16(0x8000, 0x8000, 0x0000)
        m[2] = f16(0x8000, 0x0000, 0x0000)
        q[2, 2 * group :] = 0
    elif case == "extreme":
        q = d.pick((rows, cols), [0, top - 1, top - 1, int(d.ints((1,), 0, top)[0])])
        s = f16(F16_MAX, 0xFBFF, F16_MAX, F16_MIN_SUB).reshape(2, 2)
        m = f16(F16_MAX, 0xFBFF, 0xFBFF, F16_MAX).reshape(2, 2)
    elif case == "subnormal":
        s = d.f16((rows, n), (0, 0), signed=False, mantissa=64)
        m = d.f16((rows, n), (0, 0), signed=True)
        s[1, 0], m[1, 1] = f16(0x0400)[0], f16(0x8001)[0]  # the smallest normal, the smallest negative subnormal
    return affine("w", dtype, bits, group, q, s, m)


def affine_dq_case(case: str, bits: int, group: int, meta: int, dtype: str, d: Draw) -> Tensor:
    top, mtop = 1 << bits, 1 << meta
    cols = {"normal": 8, "tail": 9, "zero": 8, "extreme": 8, "subnormal": 8}[case] * group
    cols += {"tail": 5, "zero": group // 2, "subnormal": 3}.get(case, 0)
    rows = 2
    if case == "normal" and group == 32:
        cols = 16 * group  # two full blocks
    groups = -(-cols // group)
    blocks = -(-groups // BLOCK)
    q = d.ints((rows, cols), 0, top)
    qs, qm = d.ints((rows, groups), 1, mtop), d.ints((rows, groups), 0, mtop)
    ss = d.f16((rows, blocks), (4, 8), signed=False)  # 2^-11 .. 2^-7
    so = d.f16((rows, blocks), (4, 8), signed=True)
    if case == "zero":
        qs[0, 3], qm[0, 3] = 0, 0  # an all-zero group inside a live block
        q[0, 3 * group : 4 * group] = 0
        qs[0, 5] = 0  # a constant group: zero scale code, live offset (codes ignored)
        ss[0, 1], so[0, 1] = 0.0, 0.0  # an all-zero block (codes ignored)
        ss[1, 0], so[1, 0] = f16(0x8000)[0], f16(0x8000)[0]  # negative-zero super values: every value -0
        ss[1, 1] = f16(0x8000)[0]  # a block of constant groups: -0 super scale, live super offset
    elif case == "extreme":
        q = d.pick((rows, cols), [0, top - 1, top - 1, int(d.ints((1,), 0, top)[0])])
        qs = d.pick((rows, groups), [mtop - 1, mtop - 1, 1])
        qm = d.pick((rows, groups), [0, mtop - 1, mtop - 1])
        ss = f16(F16_MAX, 0xFBFF).reshape(2, 1)
        so = f16(0x5840, F16_MAX).reshape(2, 1)  # 136: with bits 8 and meta 8, w[0, 0] is where a fused multiply-add differs
        q[0, 0], qs[0, 0], qm[0, 0] = top - 1, mtop - 1, 1
    elif case == "subnormal":
        ss = d.f16((rows, blocks), (0, 0), signed=False, mantissa=64)
        so = d.f16((rows, blocks), (0, 0), signed=True)
    return affine_dq("w", dtype, bits, group, meta, q, (qs, qm), np.stack([ss, so]))


def int8_case(case: str, dtype: str, d: Draw) -> Tensor:
    shape = {"normal": (4, 48), "tail": (3, 7), "zero": (3, 16), "extreme": (2, 16), "subnormal": (2, 16)}[case]
    q = d.ints(shape, -128, 128)
    s = d.f16((shape[0],), (7, 12), signed=False)
    if case == "zero":
        s[1:] = f16(0x0000, 0x8000)
    elif case == "extreme":
        q = d.pick(shape, [-128, 127, -127, 0])
        s = f16(F16_MAX, 0xFBFF)
    elif case == "subnormal":
        s = d.f16((shape[0],), (0, 0), signed=False, mantissa=64)
    return int8_row("w", dtype, q, s)


# Values whose rounding to fp16 and bf16 the spec pins down: signed zeros and infinities, the
# canonical quiet NaN, range ends, subnormals, overflow at the fp16 edge and ties to even.
F32_SPECIAL = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F7FFFFF, 0xFF7FFFFF,
               0x00800000, 0x00000001, 0x807FFFFF, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x3F808000, 0x3F818000,
               0x3F801000, 0x3F803000, 0x33000000, 0x33400000, 0x33800000, 0xB3000001, 0x3F800000, 0x00010000]
F16_SPECIAL = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7BFF, 0xFBFF,
               0x0400, 0x0001, 0x83FF, 0x3C01, 0x3C03, 0x3C04, 0x3C0C, 0x3C00]
BF16_SPECIAL = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F7F, 0xFF7F, 0x0080, 0x0001, 0x807F, 0x4780, 0x477F, 0x3F81,
                0x3300, 0x3340, 0x3380, 0x3390]


def passthrough_case(scheme: str, case: str, d: Draw) -> list[Tensor]:
    if case == "normal":
        shape = (2, 3, 5)
        if scheme == "f32":
            bits = (d.ints(shape, 0, 2) << 31) | (d.ints(shape, 100, 140) << 23) | d.ints(shape, 0, 1 << 23)
            return [passthrough("w", "f32", bits.astype(np.uint32).view(np.float32))]
        if scheme == "f16":
            return [passthrough("w", "f16", d.f16(shape, (1, 30), signed=True), dtype="f32")]
        bits = (d.ints(shape, 0, 2) << 15) | (d.ints(shape, 100, 140) << 7) | d.ints(shape, 0, 128)
        return [passthrough("w", "bf16", bits.astype(np.uint16))]
    if case == "special":
        patterns, raw, view = {"f32": (F32_SPECIAL, np.uint32, np.float32), "f16": (F16_SPECIAL, np.uint16, np.float16)}.get(
            scheme, (BF16_SPECIAL, np.uint16, np.uint16)
        )
        return [passthrough("w", scheme, np.asarray(patterns, raw).view(view))]
    empty = {"f32": np.zeros((0, 4), np.float32), "f16": np.zeros((3, 0), np.float16), "bf16": np.zeros((0,), np.uint16)}[scheme]
    scalar = {"f32": np.float32(-2.5), "f16": np.float16(0.099976), "bf16": np.uint16(0x3E4D)}[scheme]
    return [passthrough("empty", scheme, empty), passthrough("scalar", scheme, np.asarray(scalar))]


# --- the container --------------------------------------------------------------------------
def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def metadata(tensors: list[Tensor], version: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nanofmt object; by default the lowest version that has every transform the tensors use."""
    if version is None:
        since = [TRANSFORMS[t.transform["transform"]]["since"] for t in tensors if t.tie is None]
        version = max(since, key=lambda v: tuple(map(int, v.split("."))), default="1.0")
    return {"format_version": version, **(extra or {}), "tensors": {t.name: t.record() for t in tensors}}


def container(stored: list[tuple[str, str, np.ndarray]], meta: dict[str, Any] | str | None) -> tuple[dict[str, Any], bytes]:
    """The safetensors header object and data buffer; components laid out back to back in the given order."""
    header: dict[str, Any] = {}
    if meta is not None:
        header["__metadata__"] = {"format": "pt", "nanofmt": meta if isinstance(meta, str) else dumps(meta)}
    data = bytearray()
    for name, dt, array in stored:
        raw = np.ascontiguousarray(array, NUMPY[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": list(np.shape(array)), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, bytes(data)


def file_bytes(header: dict[str, Any] | str, data: bytes) -> bytes:
    """8-byte little-endian header length, the JSON header padded with spaces to 8-byte alignment, the data."""
    text = (header if isinstance(header, str) else dumps(header)).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data


def nano_file(tensors: list[Tensor], **meta_args: Any) -> bytes:
    stored = [c for t in tensors if t.tie is None for c in t.stored()]
    return file_bytes(*container(stored, metadata(tensors, **meta_args)))


# --- the catalogue ----------------------------------------------------------------------------
@dataclass
class Vector:
    stem: str
    case: str
    what: str
    build: Callable[[Draw], list[Tensor]]
    meta_args: dict[str, Any] = field(default_factory=dict)


CASE_TEXT = {
    "normal": "random codes and metadata",
    "tail": "row length not a multiple of the group (short last group; packed rows padded)",
    "zero": "all-zero groups, a constant (zero-scale) group, signed zeros",
    "extreme": "largest fp16 metadata, codes at both ends; fp16 output overflows to infinity",
    "subnormal": "fp16-subnormal scales and offsets; fp16 output in the subnormal range",
    "special": "signed zeros, infinities, canonical NaNs, range ends, subnormals, rounding ties",
    "empty": "a zero-size tensor and a rank-0 tensor",
}


def catalogue() -> list[Vector]:
    out: list[Vector] = []
    dtypes = ("f16", "bf16", "f32")
    for scheme in ("f32", "f16", "bf16"):
        for case in ("normal", "special", "empty"):
            out.append(Vector(f"{scheme}_{case}", case, f"`{scheme}` passthrough", lambda d, s=scheme, c=case: passthrough_case(s, c, d)))
    for c, case in enumerate(CASES):
        out.append(Vector(f"int8_row_{case}", case, "`int8_row`", lambda d, c_=case, t=dtypes[c % 3]: [int8_case(c_, t, d)]))
    for i, bits in enumerate(AFFINE_BITS):
        for c, case in enumerate(CASES):
            g = GROUPS[(i + c) % 3]
            dt = dtypes[(i + c) % 3]
            what = f"`affine` {bits}-bit, group {g}"
            out.append(Vector(f"affine_b{bits}_g{g}_{case}", case, what, lambda d, a=(case, bits, g, dt): [affine_case(*a, d)]))
    for i, bits in enumerate(AFFINE_BITS):
        for c, case in enumerate(CASES):
            g, mb = GROUPS[(i + c) % 3], META_BITS[(i + 2 * c) % 3]
            dt = dtypes[(i + 2 * c) % 3]
            what = f"`affine_dq` {bits}-bit, group {g}, meta {mb}"
            build = lambda d, a=(case, bits, g, mb, dt): [affine_dq_case(*a, d)]  # noqa: E731
            out.append(Vector(f"affine_dq_b{bits}_g{g}_m{mb}_{case}", case, what, build))
    out += [
        Vector("model_tied", "tie", "a small model: quantized embedding with a tied head, int8 and passthrough tensors", model_tied),
        Vector("compat_minor_1_1", "compat", "format 1.1 with unknown top-level and record fields: readers of 1.0 ignore them",
               compat_minor, {"version": "1.1", "extra": COMPAT_EXTRA}),
        Vector("example_affine_b4_1x8", "example", "SPEC.md worked example: one 4-bit row of 8 codes",
               lambda d: [example_affine(4, [0, 1, 2, 3, 12, 13, 14, 15])]),
        Vector("example_affine_b3_1x8", "example", "SPEC.md worked example: one 3-bit row (codes straddle bytes)",
               lambda d: [example_affine(3, [1, 2, 3, 4, 5, 6, 7, 0])]),
        Vector("example_affine_dq_block", "example", "SPEC.md worked example: one affine_dq block of 8 groups", example_dq),
        Vector("example_int8_row", "example", "SPEC.md worked example: int8_row",
               lambda d: [int8_row("w", "f16", np.array([[-128, -1, 0, 127], [3, 2, 1, 0]]), f16(0x2C00, 0x3800))]),
        Vector("example_hadamard_b4_1x16", "example", "SPEC.md worked example: one row of 16 under `hadamard`, block 16", example_hadamard),
    ]
    hadamard_vectors: list[tuple[str, str, tuple[int, int], int, str, dict[str, Any]]] = [
        ("affine_dq", "normal", (3, 128), 64, "bf16", {"bits": 4, "group": 32, "meta": 6}),  # two blocks per row
        ("affine_dq", "normal", (2, 192), 16, "f16", {"bits": 3, "group": 64, "meta": 4}),  # twelve blocks per row
        ("affine_dq", "normal", (1, 2048), 1024, "bf16", {"bits": 4, "group": 128, "meta": 8}),
        ("affine", "normal", (2, 48), 16, "f16", {"bits": 4, "group": 32}),  # a short last group
        ("affine", "normal", (2, 512), 256, "f32", {"bits": 2, "group": 128}),
        ("affine", "extreme", (2, 64), 64, "f16", {"bits": 8, "group": 32}),
        ("int8_row", "normal", (2, 4096), 4096, "f16", {}),
        ("int8_row", "zero", (3, 32), 16, "f32", {}),
    ]
    for scheme, case, shape, block, dt, kw in hadamard_vectors:
        params = "".join(f"_{k[0]}{v}" for k, v in kw.items())
        stem = f"hadamard_{scheme}{params}_h{block}_{case}"
        what = f"`hadamard` block {block} over `{scheme}`" + (f" ({', '.join(f'{k} {v}' for k, v in kw.items())})" if kw else "")
        out.append(Vector(stem, case, what, lambda d, a=(scheme, shape, block, dt), k=(kw, case): [hadamard_case(*a, d, **k[0], case=k[1])]))
    out.append(Vector("model_hadamard", "tie", "a 1.1 file: a `hadamard` embedding with a tied head, and an int8 tensor without transform", model_hadamard))
    return out


def hadamard_case(scheme: str, shape: tuple[int, int], block: int, dtype: str, d: Draw, *, bits: int = 8, group: int = 32, meta: int = 4, case: str = "normal") -> Tensor:
    """Random codes and metadata of ``scheme``, rotated back by random signs.

    The metadata exponents spread wider than in the 1.0 cases, so that the transform's sums need
    rounding: a decoder that adds in another order or precision gets other bits.
    """
    rows, cols = shape
    top, groups = 1 << bits, -(-cols // group)
    if scheme == "int8_row":
        s = d.f16((rows,), (1, 20), signed=False)
        if case == "zero":  # a +0 and a -0 scale: the rotation of all-zero rows of either sign
            s[1:] = f16(0x0000, 0x8000)
        t = int8_row("w", dtype, d.ints(shape, -128, 128), s)
    elif scheme == "affine":
        q = d.ints(shape, 0, top)
        sc, m = d.f16((rows, groups), (1, 14), signed=False), d.f16((rows, groups), (1, 20), signed=True)
        if case == "extreme":  # the largest metadata: sums near 2^38, f16 output overflows
            q = d.pick(shape, [0, top - 1, top - 1, 1])
            sc, m = np.full((rows, groups), f16(F16_MAX)[0]), np.full((rows, groups), f16(0xFBFF)[0])
        t = affine("w", dtype, bits, group, q, sc, m)
    else:
        blocks = -(-groups // BLOCK)
        codes = (d.ints((rows, groups), 1, 1 << meta), d.ints((rows, groups), 0, 1 << meta))
        sup = np.stack([d.f16((rows, blocks), (1, 12), signed=False), d.f16((rows, blocks), (1, 12), signed=True)])
        t = affine_dq("w", dtype, bits, group, meta, d.ints(shape, 0, top), codes, sup)
    return hadamard(t, block, [bool(b) for b in d.ints((cols,), 0, 2)])


def model_hadamard(d: Draw) -> list[Tensor]:
    """A hadamard embedding with a tied head next to a tensor without a transform: one 1.1 file."""
    embed = hadamard_case("affine_dq", (4, 128), 64, "bf16", d, bits=4, group=32, meta=6)
    embed.name = "model.embed_tokens.weight"
    down = int8_case("normal", "bf16", d)
    down.name = "model.layers.0.mlp.down_proj.weight"
    head = Tensor("lm_head.weight", "bf16", embed.shape, {}, {}, embed.values, tie=embed.name)
    return [embed, down, head]


def example_hadamard(d: Draw) -> list[Tensor]:
    # the codes 0..15 of 15.1 (scale 0.5, offset -2: u[j] = j/2 - 2) and signs on columns 0, 3 and 8
    signs = [j in (0, 3, 8) for j in range(16)]
    t = affine("w", "f16", 4, 32, np.arange(16).reshape(1, 16), f16(0x3800).reshape(1, 1), f16(0xC000).reshape(1, 1))
    return [hadamard(t, 16, signs)]


def model_tied(d: Draw) -> list[Tensor]:
    embed = affine_dq_case("normal", 4, 32, 6, "bf16", d)
    embed.name = "model.embed_tokens.weight"
    down = int8_case("normal", "bf16", d)
    down.name = "model.layers.0.mlp.down_proj.weight"
    norm = passthrough("model.norm.weight", "f32", d.f16((512,), (13, 15), signed=False).astype(np.float32))
    head = Tensor("lm_head.weight", "bf16", embed.shape, {}, {}, embed.values, tie=embed.name)
    return [embed, down, norm, head]


COMPAT_EXTRA = {"producer": "spec/make_vectors.py", "x_future": {"note": "ignored by 1.0 readers"}}


def compat_minor(d: Draw) -> list[Tensor]:
    t = affine_case("tail", 4, 32, "f16", d)
    t.extra = {"x_future_field": [1, 2, 3]}
    return [t]


def example_affine(bits: int, codes: list[int]) -> Tensor:
    # scale 0.5 (fp16 0x3800), offset -2.0 (fp16 0xC000): w = q * 0.5 - 2
    return affine("w", "f16", bits, 32, np.array([codes]), f16(0x3800).reshape(1, 1), f16(0xC000).reshape(1, 1))


def example_dq(d: Draw) -> list[Tensor]:
    q = np.tile(np.arange(4), 64).reshape(1, 256)  # codes 0 1 2 3 0 1 2 3 ...
    qs = np.array([[1, 2, 3, 4, 5, 6, 7, 15]])
    qm = np.array([[0, 1, 2, 3, 4, 5, 6, 15]])
    return [affine_dq("w", "f16", 2, 32, 4, q, (qs, qm), f16(0x2C00, 0xAC00).reshape(2, 1, 1))]


# --- malformed files: one defect each ----------------------------------------------------------
def base() -> list[Tensor]:
    """A valid single-tensor file: affine 4-bit, group 32, shape [2, 37] (a short tail group and a padded row)."""
    s = f16(0x2E66, 0x2A00, 0x3000, 0x2C00).reshape(2, 2)
    m = f16(0xBC00, 0xB800, 0x3400, 0xC000).reshape(2, 2)
    return [affine("w", "f16", 4, 32, Draw(7).ints((2, 37), 0, 16), s, m)]


def hadamard_base(cols: int = 48) -> Tensor:
    """A valid 1.1 tensor: affine 4-bit, group 32, shape [2, cols], transform hadamard with block 16."""
    d = Draw(11)
    groups = -(-cols // 32)
    t = affine("w", "f16", 4, 32, d.ints((2, cols), 0, 16), d.f16((2, groups), (7, 12), signed=False), d.f16((2, groups), (10, 15), signed=True))
    signs = [bool(b) for b in d.ints((cols,), 0, 2)]
    if cols % 16 == 0:
        return hadamard(t, 16, signs)
    # no valid decoding: only the layout a writer would have produced, for a file with this one defect
    return Tensor(t.name, t.dtype, t.shape, t.params, {**t.parts, "signs": ("U8", pack_signs(signs))}, t.values,
                  transform={"transform": "hadamard", "transform_block": 16})


def with_parts(t: Tensor, role: str, change: Callable[[np.ndarray], None]) -> Tensor:
    """A copy of ``t`` whose ``role`` component went through ``change`` (in place on a copy)."""
    dt, a = t.parts[role]
    a = a.copy()
    change(a)
    return Tensor(t.name, t.dtype, t.shape, t.params, {**t.parts, role: (dt, a)}, t.values, transform=t.transform)


Edit = Callable[[dict[str, Any]], Any]


def edited(tensors: list[Tensor], *, meta: Edit | None = None, header: Edit | None = None, stored: list[Any] | None = None) -> bytes:
    """A file of ``tensors`` after editing its Nano metadata object, then its safetensors header object."""
    m = metadata(tensors)
    if meta:
        meta(m)
    h, data = container(stored if stored is not None else [c for t in tensors for c in t.stored()], m)
    if header:
        header(h)
    return file_bytes(h, data)


def header_text(tensors: list[Tensor], old: str, new: str) -> bytes:
    """A file of ``tensors`` whose header JSON text has ``old`` (found once) replaced by ``new``."""
    h, data = container([c for t in tensors for c in t.stored()], metadata(tensors))
    text = dumps(h)
    assert text.count(old) == 1, old
    return file_bytes(text.replace(old, new), data)


@dataclass
class Bad:
    """A malformed file: one defect, refused with ``reason`` (default: the stem) at ``stage``."""

    stem: str
    what: str
    build: Callable[[], bytes]
    stage: str = "open"  # open: opening refuses it; verify: it opens, full verification (NanoFile.verify) refuses it
    schema: bool | None = None  # does its parsed nanofmt object satisfy metadata.schema.json? None: it has none
    reason: str = ""

    def __post_init__(self) -> None:
        self.reason = self.reason or self.stem


def malformed() -> list[Bad]:
    w = base()
    good = edited(w)
    stored = w[0].stored()

    def meta(edit: Edit) -> Callable[[], bytes]:
        return lambda: edited(w, meta=edit)

    def header(edit: Edit) -> Callable[[], bytes]:
        return lambda: edited(w, header=edit)

    def fields(**values: Any) -> Callable[[], bytes]:
        return meta(lambda m: m["tensors"]["w"].update(values))

    def add(name: str, rec: dict[str, Any]) -> Callable[[], bytes]:
        return meta(lambda m: m["tensors"].update({name: rec}))

    def nanofmt_text(old: str, new: str) -> Callable[[], bytes]:
        return header(lambda h: h["__metadata__"].update(nanofmt=h["__metadata__"]["nanofmt"].replace(old, new, 1)))

    def part(role: str, change: Callable[[np.ndarray], None], t: Tensor = w[0]) -> Callable[[], bytes]:
        return lambda: nano_file([with_parts(t, role, change)])

    def shift(h: dict[str, Any]) -> None:
        for n in ("w_scales", "w_offsets"):
            h[n]["data_offsets"] = [o + 4 for o in h[n]["data_offsets"]]

    def tie(target: str, shape: list[int] | None = None) -> dict[str, Any]:
        return {"shape": shape or [2, 37], "dtype": "f16", "tie": target}

    dq = affine_dq_case("tail", 4, 32, 6, "f16", Draw(8))
    h = [hadamard_base()]
    h_stored = h[0].stored()

    def h_meta(edit: Edit) -> Callable[[], bytes]:
        return lambda: edited(h, meta=edit)

    def h_fields(**values: Any) -> Callable[[], bytes]:
        return h_meta(lambda m: m["tensors"]["w"].update(values))

    h_data = passthrough("w", "f32", Draw(12).ints((2, 16), -8, 8).astype(np.float32))
    h_data.transform = {"transform": "hadamard", "transform_block": 16}
    h_data.parts["signs"] = ("U8", pack_signs([True, False] * 8))
    f32_w_codes = {"shape": [2, 20], "dtype": "f32", "scheme": "f32", "transform": "none", "checksum": "crc32:00000000"}
    duplicate = '"w_scales":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"w_scales":'
    return [
        Bad("file_too_short", "3 bytes: shorter than the 8-byte header length", lambda: good[:3]),
        Bad("file_too_short_header", "header length runs past the end of the file", lambda: good[:40], reason="file_too_short"),
        Bad("file_too_short_data", "data buffer shorter than the tensors need", lambda: good[:-1], reason="file_too_short"),
        Bad("header_too_large", "declared header length 100 MiB + 1", lambda: struct.pack("<Q", 104857601) + b"{}      "),
        Bad("header_not_json", "header bytes are not JSON", lambda: file_bytes("not json", b"")),
        Bad("header_not_json_array", "header is JSON but an array", lambda: file_bytes("[]", b""), reason="header_not_json"),
        Bad("header_not_json_nan", "a NaN literal (not RFC 8259 JSON) in the header",
            lambda: header_text(w, '"data_offsets":[0,', '"x":NaN,"data_offsets":[0,'), reason="header_not_json"),
        Bad("header_entry_invalid", "an entry without data_offsets", header(lambda h: h["w_offsets"].pop("data_offsets"))),
        Bad("header_entry_invalid_metadata_object", "`__metadata__[\"nanofmt\"]` is a JSON object, not a string",
            header(lambda h: h["__metadata__"].update(nanofmt=metadata(w))), reason="header_entry_invalid"),
        Bad("dtype_unknown", "a component stored as F64", header(lambda h: h["w_scales"].update(dtype="F64", shape=[2, 1]))),
        Bad("data_offsets_invalid", "a hole between two tensors", lambda: edited(w, header=shift) + bytes(4)),
        Bad("data_offsets_invalid_overlap", "two tensors share bytes",
            header(lambda h: h["w_offsets"].update(data_offsets=h["w_scales"]["data_offsets"])), reason="data_offsets_invalid"),
        Bad("trailing_bytes", "8 bytes after the last tensor", lambda: good + bytes(8)),
        Bad("metadata_missing", "`__metadata__` has no `nanofmt` key", header(lambda h: h["__metadata__"].pop("nanofmt"))),
        Bad("metadata_not_json", "the nanofmt string is not JSON", nanofmt_text('{"format_version":"1.0",', "{format_version: 1.0,")),
        Bad("metadata_not_json_nan", "a NaN literal in the nanofmt JSON",
            nanofmt_text('"tensors"', '"x":NaN,"tensors"'), reason="metadata_not_json"),
        Bad("version_invalid", 'format_version "1" (no minor)', meta(lambda m: m.update(format_version="1")), schema=False),
        Bad("version_unsupported", "format_version 2.0 (an unknown major)", meta(lambda m: m.update(format_version="2.0")), schema=False),
        Bad("record_field_missing", "a record without dtype", meta(lambda m: m["tensors"]["w"].pop("dtype")), schema=False),
        Bad("record_field_invalid", 'bits given as the string "4"', fields(bits="4"), schema=False),
        Bad("scheme_unknown", 'scheme "nf4"', fields(scheme="nf4"), schema=False),
        Bad("scheme_params_invalid", "affine with bits 7", fields(bits=7), schema=False),
        Bad("transform_unknown", 'transform "givens" (not a transform of any version)', fields(transform="givens"), schema=False),
        Bad("transform_unknown_version", "a `hadamard` record in a file declaring format 1.0, which has no such transform",
            h_meta(lambda m: m.update(format_version="1.0")), schema=True, reason="transform_unknown"),
        Bad("transform_params_invalid", "`hadamard` without transform_block", h_meta(lambda m: m["tensors"]["w"].pop("transform_block")), schema=False),
        Bad("transform_params_invalid_block", "`hadamard` with transform_block 32 (not a power of four)", h_fields(transform_block=32),
            schema=False, reason="transform_params_invalid"),
        Bad("transform_params_invalid_cols", "`hadamard` block 16 over 40 columns (not a multiple of 16)",
            lambda: nano_file([hadamard_base(40)]), schema=True, reason="transform_params_invalid"),
        Bad("transform_params_invalid_none", "transform_block 16 on a record with transform `none`, in a 1.1 file",
            meta(lambda m: (m.update(format_version="1.1"), m["tensors"]["w"].update(transform_block=16))), schema=True,
            reason="transform_params_invalid"),
        Bad("transform_params_invalid_passthrough", "`hadamard` on an `f32` passthrough record", lambda: nano_file([h_data]),
            schema=False, reason="transform_params_invalid"),
        Bad("record_field_invalid_transform_block", 'transform_block given as the string "16"', h_fields(transform_block="16"),
            schema=False, reason="record_field_invalid"),
        Bad("component_missing_signs", "a `hadamard` record without its signs component",
            lambda: edited(h, stored=h_stored[:3]), schema=True, reason="component_missing"),
        Bad("component_mismatch_signs", "a signs component of 3 bytes where 48 columns need 6",
            lambda: edited(h, stored=[*h_stored[:3], ("w_signs", "U8", h_stored[3][2][:3])]), schema=True, reason="component_mismatch"),
        Bad("checksum_mismatch_signs", "one sign bit flipped after the checksum was taken (the checksum covers the signs)",
            lambda: edited(h, stored=with_parts(h[0], "signs", lambda a: a.__setitem__(0, a[0] ^ 1)).stored()), "verify", True,
            reason="checksum_mismatch"),
        Bad("shape_invalid", "a negative logical dimension", fields(shape=[2, -37]), schema=False),
        Bad("limit_exceeded", "a logical shape of 2^41 elements", fields(shape=[1 << 21, 1 << 20]), schema=True),
        Bad("name_invalid", "a record with an empty name", add("", tie("w")), schema=False),
        Bad("name_conflict", "passthrough tensor w_codes collides with a component of w", add("w_codes", f32_w_codes), schema=True),
        Bad("name_conflict_duplicate_entry", "the header names a tensor twice",
            lambda: header_text(w, '"w_scales":', duplicate), reason="name_conflict"),
        Bad("name_conflict_duplicate_record", "the nanofmt JSON names a record twice",
            nanofmt_text('"tensors":{', '"tensors":{"w":{},'), reason="name_conflict"),
        Bad("name_conflict_tie_stored", "a tie named like a stored tensor", add("w_scales", tie("w")), schema=True, reason="name_conflict"),
        Bad("component_missing", "the offsets component is absent", lambda: edited(w, stored=stored[:2]), schema=True),
        Bad("component_mismatch", "scales stored as F32",
            lambda: edited(w, stored=[stored[0], ("w_scales", "F32", stored[1][2].astype(np.float32)), stored[2]]), schema=True),
        Bad("orphan_tensor", "a stored tensor no record claims",
            lambda: edited(w, stored=[*stored, ("stray", "F32", np.zeros(1, np.float32))]), schema=True),
        Bad("tie_invalid", "a tie to a tensor that does not exist", add("head", tie("missing")), schema=True),
        Bad("tie_invalid_shape", "a tie whose shape differs from its target's",
            add("head", tie("w", [37, 2])), schema=True, reason="tie_invalid"),
        Bad("checksum_invalid", "checksum in upper-case hex", fields(checksum="crc32:0BADF00D"), schema=False),
        Bad("checksum_mismatch", "one code byte changed after the checksum was taken",
            lambda: edited(w, stored=with_parts(w[0], "codes", lambda a: a.__setitem__((0, 0), a[0, 0] ^ 1)).stored()), "verify", True),
        Bad("metadata_nonfinite", "a NaN scale (checksum matches)",
            part("scales", lambda a: a.__setitem__((1, 0), f16(0x7E00)[0])), "verify", True),
        Bad("metadata_nonfinite_dq", "an infinite affine_dq super scale (checksum matches)",
            part("super_scales", lambda a: a.__setitem__((1, 1), f16(0x7C00)[0]), dq), "verify", True, reason="metadata_nonfinite"),
        Bad("padding_nonzero", "a set bit in the padding code of a packed row (checksum matches)",
            part("codes", lambda a: a.__setitem__((0, -1), a[0, -1] | 0x80)), "verify", True),
    ]


# Reasons with no committed file, and why (SPEC.md, "Conformance vectors").
NOT_SHIPPED = {
    "file_unreadable": "a property of the path (missing, a folder, no permission), not of bytes",
    "metadata_too_large": "needs a 64 MiB file; tests/vectors builds one in a temporary folder",
}


# --- output ---------------------------------------------------------------------------------
def label(params: dict[str, Any], transform: dict[str, Any]) -> str:
    parts = [f"{params['bits']}b"] if "bits" in params and params["scheme"] != "int8_row" else []
    parts += [f"g{params['group_size']}"] if "group_size" in params else []
    parts += [f"m{params['meta_bits']}"] if "meta_bits" in params else []
    name = f"{params['scheme']}:{'/'.join(parts)}" if parts else params["scheme"]
    return name + (f"+h{transform['transform_block']}" if transform["transform"] == "hadamard" else "")


def decoded(tensor: Tensor, targets: dict[str, Tensor]) -> dict[str, Any]:
    source = targets[tensor.tie] if tensor.tie else tensor
    out: dict[str, Any] = {"shape": list(tensor.shape), "dtype": tensor.dtype, "scheme": label(source.params, source.transform)}
    if tensor.tie:
        out["tie"] = tensor.tie
    out["decoded_sha256"] = {o: sha256(output_bytes(source.values, o)) for o in OUTPUTS}
    return out


def generate(out: Path) -> None:
    """Write every vector, manifest.json and README.md under ``out``."""
    for sub in ("valid", "malformed"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob("*.safetensors"):
            stale.unlink()
    valid, bad = [], []
    for v in catalogue():
        seed = zlib.crc32(v.stem.encode())
        tensors = v.build(Draw(seed))
        data = nano_file(tensors, **v.meta_args)
        (out / "valid" / f"{v.stem}.safetensors").write_bytes(data)
        by_name = {t.name: t for t in tensors}
        entry = {"file": f"valid/{v.stem}.safetensors", "sha256": sha256(data), "seed": seed, "case": v.case, "what": v.what}
        valid.append({**entry, "tensors": {t.name: decoded(t, by_name) for t in tensors}})
    categories = {k: e["category"] for k, e in FORMAT["errors"].items() if not k.startswith("$")}
    for b in malformed():
        data = b.build()
        (out / "malformed" / f"{b.stem}.safetensors").write_bytes(data)
        entry = {"file": f"malformed/{b.stem}.safetensors", "sha256": sha256(data), "reason": b.reason}
        bad.append({**entry, "category": categories[b.reason], "stage": b.stage, "what": b.what, "schema_valid": b.schema})
    missing = set(categories) - {b["reason"] for b in bad} - set(NOT_SHIPPED)
    assert not missing, f"no malformed vector for {sorted(missing)}"
    manifest = {
        "$comment": "GENERATED by spec/make_vectors.py; see README.md. "
        "decoded_sha256: SHA-256 of the decoded values, little-endian, row-major, "
        "as binary32 (f32), binary16 (f16) and bfloat16 bit patterns (bf16). stage: open = refused when the file is opened; "
        "verify = opens, refused by full verification. schema_valid: whether the parsed nanofmt metadata satisfies "
        "spec/metadata.schema.json (null: the file has no parseable nanofmt object).",
        "format_version": FORMAT["format"]["version_written"],
        "valid": valid,
        "malformed": bad,
        "not_shipped": NOT_SHIPPED,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(readme(valid, bad))


def readme(valid: list[dict[str, Any]], bad: list[dict[str, Any]]) -> str:
    lines = [
        "# Nano conformance vectors",
        "",
        "GENERATED by `python spec/make_vectors.py` (do not edit; `--check` verifies the committed bytes).",
        "The rules they test are in [SPEC.md](../../SPEC.md); `manifest.json` holds each file's SHA-256 and, for valid files,",
        "the SHA-256 of every tensor's decoded values as f32, f16 and bf16 (little-endian, row-major).",
        "",
        "A conforming reader opens every valid file, finds the records listed, decodes every tensor to bytes with",
        "exactly those digests (any row range decodes to the same bytes as that slice of the whole), and passes",
        "full verification. It refuses every malformed file with the reason given, at the stage given: *open* when",
        "the file is opened, *verify* when only full verification (which reads the data) can tell.",
        "",
        "Valid files draw their codes and metadata at random from a fixed seed (`seed` in the manifest) or take",
        "hand-picked values; they are not a quantizer's output. Cases: " + "; ".join(f"**{k}**: {t}" for k, t in CASE_TEXT.items()) + ".",
        "",
        "`regressions/` is not written by this generator: it holds inputs found by fuzzing (see `fuzz/README.md`).",
        "",
        "## Valid",
        "",
        "| file | what | case | tensors |",
        "|---|---|---|---|",
    ]
    for v in valid:
        how = {n: f"tie -> `{t['tie']}`" if "tie" in t else t["scheme"] for n, t in v["tensors"].items()}
        tensors = ", ".join(f"`{n}` {t['dtype']} {t['shape']} {how[n]}" for n, t in v["tensors"].items())
        lines.append(f"| `{v['file']}` | {v['what']} | {v['case']} | {tensors} |")
    lines += ["", "## Malformed", "", "| file | reason | category | stage | defect |", "|---|---|---|---|---|"]
    lines += [f"| `{b['file']}` | `{b['reason']}` | {b['category']} | {b['stage']} | {b['what']} |" for b in bad]
    lines += ["", "## Reasons without a file", ""]
    lines += [f"- `{reason}`: {why}." for reason, why in NOT_SHIPPED.items()]
    return "\n".join(lines) + "\n"


MANAGED = ("valid", "malformed", "manifest.json", "README.md")  # what this script writes; regressions/ belongs to fuzz/


def differences(expected: Path, actual: Path) -> list[str]:
    """Relative paths of generated files whose bytes differ between two vector folders (or exist in only one)."""

    def listing(root: Path) -> set[str]:
        found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        return {p for p in found if p.split("/")[0] in MANAGED}

    a, b = listing(expected), listing(actual)
    return sorted((a ^ b) | {p for p in a & b if not filecmp.cmp(expected / p, actual / p, shallow=False)})


def check(committed: Path = OUT) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return differences(Path(tmp), committed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed vectors differ from a fresh generation")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        for p in stale:
            print(f"spec/vectors/{p} differs from a fresh generation: run python spec/make_vectors.py", file=sys.stderr)
        return 1 if stale else 0
    generate(OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
