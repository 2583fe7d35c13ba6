"""Float conversions: bf16 round-to-nearest-even, NaN, overflow, exact widening; torch agreement."""

from __future__ import annotations

import numpy as np
import pytest

from nanofmt.floats import bf16_bits_to_f32, cast_f32, f32_to_bf16_bits


def _f32(bits: list[int]) -> np.ndarray:
    return np.array(bits, np.uint32).view(np.float32)


def _bf16(values: np.ndarray) -> list[int]:
    return [int(v) for v in f32_to_bf16_bits(values)]


def test_floats_bf16_rounds_ties_to_even() -> None:
    # 0x3F80_8000 lies halfway between bf16 0x3F80 (even) and 0x3F81: stays at the even one;
    # 0x3F81_8000 lies halfway between 0x3F81 and 0x3F82 (even): goes up.
    assert _bf16(_f32([0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000])) == [0x3F80, 0x3F82, 0xBF80, 0xBF82]


def test_floats_bf16_rounds_to_nearest_off_ties() -> None:
    assert _bf16(_f32([0x3F807FFF, 0x3F808001, 0x3F80FFFF])) == [0x3F80, 0x3F81, 0x3F81]


def test_floats_bf16_overflow_goes_to_infinity() -> None:
    # the largest float32 is past the largest bf16 by more than half an ulp
    assert _bf16(_f32([0x7F7FFFFF, 0xFF7FFFFF])) == [0x7F80, 0xFF80]
    assert _bf16(_f32([0x7F7F7FFF])) == [0x7F7F]  # just below the halfway point: stays finite


def test_floats_bf16_keeps_infinities_zeros_and_subnormals() -> None:
    assert _bf16(_f32([0x7F800000, 0xFF800000, 0x00000000, 0x80000000, 0x00010000, 0x00008000])) == [
        0x7F80,
        0xFF80,
        0x0000,
        0x8000,
        0x0001,
        0x0000,  # halfway between 0 and the smallest subnormal: to even, zero
    ]


def test_floats_bf16_nan_stays_a_quiet_nan() -> None:
    signalling_with_low_payload = 0x7F800001  # plain truncation would make this an infinity
    out = f32_to_bf16_bits(_f32([0x7FC00000, signalling_with_low_payload, 0xFFC00000]))
    widened = bf16_bits_to_f32(out)
    assert np.isnan(widened).all()
    assert all(int(b) & 0x0040 for b in out)  # quiet bit set
    assert int(out[2]) & 0x8000  # sign kept


def test_floats_bf16_widening_is_exact() -> None:
    bits = np.arange(0, 1 << 16, 7, dtype=np.uint32).astype(np.uint16)
    wide = bf16_bits_to_f32(bits)
    assert wide.dtype == np.float32
    assert np.array_equal(wide.view(np.uint32) >> 16, bits.astype(np.uint32))
    finite = np.isfinite(wide)
    assert np.array_equal(f32_to_bf16_bits(wide)[finite], bits[finite])


def test_floats_cast_to_f16_overflows_to_infinity_without_warning() -> None:
    out = cast_f32(np.array([70000.0, -70000.0, 65504.0, 65519.99], np.float32), "f16")
    assert out.dtype == np.float16
    assert out.tolist() == [np.inf, -np.inf, 65504.0, 65504.0]


def test_floats_cast_f32_is_the_identity() -> None:
    x = np.array([1.5, np.nan], np.float32)
    assert cast_f32(x, "f32") is x


def test_floats_cast_rejects_an_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="dtype"):
        cast_f32(np.zeros(1, np.float32), "f64")


def _all_kinds_of_float32(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    # ties and near-ties in the low 16 bits, plus specials
    bits[: n // 4] = (bits[: n // 4] & 0xFFFF0000) | np.uint32(0x8000)
    bits[n // 4 : n // 2] = (bits[n // 4 : n // 2] & 0xFFFF0000) | rng.choice(np.array([0x7FFF, 0x8001, 0xFFFF, 0], np.uint32), n // 4)
    specials = np.array([0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x80000001, 0x7FC00000], np.uint32)
    return np.concatenate([bits, specials]).view(np.float32)


def test_floats_bf16_matches_torch_rounding() -> None:
    torch = pytest.importorskip("torch")
    x = _all_kinds_of_float32(1 << 16)
    ours = f32_to_bf16_bits(x)
    theirs = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(ours[~nan], theirs[~nan])
    assert np.isnan(bf16_bits_to_f32(ours[nan])).all()


def test_floats_f16_matches_torch_rounding() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = np.concatenate([_all_kinds_of_float32(1 << 14), (rng.standard_normal(1 << 14) * 3e4).astype(np.float32)])
    with np.errstate(over="ignore"):
        ours = cast_f32(x, "f16")
    theirs = torch.from_numpy(x.copy()).to(torch.float16).numpy()
    nan = np.isnan(x)
    assert np.array_equal(ours[~nan].view(np.uint16), theirs[~nan].view(np.uint16))
    assert np.isnan(theirs[nan]).all() and np.isnan(ours[nan]).all()


def test_floats_conversions_keep_the_shape_of_a_scalar_array() -> None:
    x = np.array(1.5, np.float32)
    assert f32_to_bf16_bits(x).shape == () and bf16_bits_to_f32(f32_to_bf16_bits(x)).shape == ()
    assert float(bf16_bits_to_f32(f32_to_bf16_bits(x))) == 1.5
