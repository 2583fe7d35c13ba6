"""The codec: one known example per scheme, edge groups, exact sizes, refusals, determinism."""

from __future__ import annotations

import numpy as np
import pytest

import nanofmt
from nanofmt import Scheme, dequantize, quantize
from nanofmt.bits import unpack_rows
from nanofmt.quantize import F16_MAX

AFFINE4 = Scheme("affine", bits=4, group_size=32)
DQ4 = Scheme("affine_dq", bits=4, group_size=32, meta_bits=6)
INT8 = Scheme("int8_row", bits=8)
QUANTIZED = [
    INT8,
    AFFINE4,
    Scheme("affine", bits=2, group_size=64),
    Scheme("affine", bits=8, group_size=128),
    DQ4,
    Scheme("affine_dq", bits=3, group_size=64, meta_bits=4),
    Scheme("affine_dq", bits=8, group_size=32, meta_bits=8),
]


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_codec_int8_row_known_example() -> None:
    x = np.array([[127.0, -63.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    qt = quantize(x, INT8)
    assert qt.parts["scales"].dtype == np.float16 and qt.parts["scales"].tolist() == [1.0, 0.0]
    assert qt.parts["codes"].dtype == np.int8
    assert qt.parts["codes"].tolist() == [[127, -64, 0, 0], [0, 0, 0, 0]]  # -63.5 rounds to even
    assert dequantize(qt).tolist() == [[127.0, -64.0, 0.0, 0.0], [0.0] * 4]


def test_codec_affine_known_example_is_exact_on_its_grid() -> None:
    x = np.tile(np.arange(16, dtype=np.float32) * 0.5 - 2, 2)[None, :]  # one group, codes 0..15 twice
    qt = quantize(x, AFFINE4)
    assert qt.parts["scales"].tolist() == [[0.5]] and qt.parts["offsets"].tolist() == [[-2.0]]
    assert qt.parts["codes"].tolist() == [[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] * 2]
    assert np.array_equal(dequantize(qt), x)


def test_codec_affine_dq_known_example_is_exact_on_its_grid() -> None:
    step = np.float32(63 / 256)  # = 63 * 2**-8: super scale 2**-8 with scale code 63
    codes = np.tile(np.arange(16, dtype=np.float32), 16)  # 8 groups of 32: one full block
    x = (codes * step)[None, :]
    qt = quantize(x, DQ4)
    assert qt.parts["super_scales"].tolist() == [[2.0**-8]]
    assert qt.parts["super_offsets"].tolist() == [[0.0]]
    assert unpack_rows(qt.parts["qscales"], 6, 8).tolist() == [[63] * 8]
    assert unpack_rows(qt.parts["qoffsets"], 6, 8).tolist() == [[0] * 8]
    assert np.array_equal(unpack_rows(qt.parts["codes"], 4, 256), codes[None].astype(np.uint8))
    assert np.array_equal(dequantize(qt), x)


def test_codec_affine_dq_decodes_by_the_spec_formula() -> None:
    x = np.random.default_rng(3).standard_normal((3, 300)).astype(np.float32)
    qt = quantize(x, DQ4)
    groups = 10
    block = np.arange(groups) // 8
    s = qt.parts["super_scales"].astype(np.float32)[:, block] * unpack_rows(qt.parts["qscales"], 6, groups).astype(np.float32)
    m = qt.parts["super_offsets"].astype(np.float32)[:, block] * unpack_rows(qt.parts["qoffsets"], 6, groups).astype(np.float32)
    col = np.arange(300) // 32
    q = unpack_rows(qt.parts["codes"], 4, 300).astype(np.float32)
    expected = q * s[:, col] + m[:, col]  # numpy float32: two roundings, no FMA
    assert _bits_equal(dequantize(qt), expected)


@pytest.mark.parametrize("scheme", QUANTIZED, ids=Scheme.label)
def test_codec_all_zero_groups_decode_to_zero(scheme: Scheme) -> None:
    x = np.zeros((3, 256), np.float32)
    x[1, 128:] = np.linspace(-1, 1, 128)  # a live row next to dead ones
    out = dequantize(quantize(x, scheme))
    assert not out[0].any() and not out[2].any()
    if scheme.kind != "int8_row":
        assert not out[1, :128].any()  # whole groups of zeros stay exactly zero


@pytest.mark.parametrize("scheme", QUANTIZED, ids=Scheme.label)
@pytest.mark.parametrize("value", [0.3, -7.25, 1e-3, 3000.0])
def test_codec_constant_rows_decode_close_to_the_constant(scheme: Scheme, value: float) -> None:
    x = np.full((2, 96), value, np.float32)
    out = dequantize(quantize(x, scheme))
    assert np.all(out == out[0, 0])  # every element of a constant row decodes alike
    # affine_dq's offset is a code times an fp16 super offset, which is subnormal below 2**-14 * 63
    assert abs(float(out[0, 0]) - value) <= abs(value) * 2.0**-10 + 63 * 2.0**-25


def test_codec_affine_constant_group_is_its_fp16_value() -> None:
    out = dequantize(quantize(np.full((1, 32), 0.3, np.float32), AFFINE4))
    assert out[0, 0] == np.float32(np.float16(0.3))


@pytest.mark.parametrize("scheme", [s for s in QUANTIZED if s.group_size], ids=Scheme.label)
def test_codec_tail_group_is_fitted_on_its_own(scheme: Scheme) -> None:
    assert scheme.group_size is not None
    cols = scheme.group_size * 2 + 5
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, cols)).astype(np.float32) * 0.01
    x[:, -5:] *= 1000  # the tail's range is 1000 times the others'
    qt = quantize(x, scheme)
    assert qt.parts["codes"].shape == (4, -(-cols // 8) * (scheme.bits or 0))
    err = np.abs(dequantize(qt) - x)
    span = np.ptp(x[:, : -5 or None], axis=1, keepdims=True)
    assert (err[:, :-5] <= span).all()  # the big tail does not widen the full groups' steps
    assert float(err[:, -5:].max()) <= float(np.ptp(x[:, -5:])) / 2


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("cols", [256, 512, 4096])
def test_codec_affine_dq_4b_g32_m6_is_exactly_4_5_bits_per_weight(rows: int, cols: int) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, cols)).astype(np.float32)
    qt = quantize(x, DQ4)
    assert 8 * qt.nbytes / x.size == 4.5
    assert DQ4.bits_per_weight((rows, cols)) == 4.5


@pytest.mark.parametrize("scheme", QUANTIZED, ids=Scheme.label)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_codec_quantize_refuses_non_finite_values(scheme: Scheme, bad: float) -> None:
    x = np.zeros((2, 64), np.float32)
    x[1, 7] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize(x, scheme)


@pytest.mark.parametrize("scheme", QUANTIZED, ids=Scheme.label)
def test_codec_quantize_refuses_values_beyond_half_the_fp16_range(scheme: Scheme) -> None:
    x = np.zeros((1, 64), np.float32)
    x[0, 3] = -F16_MAX / 2 * 1.001
    with pytest.raises(ValueError, match="exceed"):
        quantize(x, scheme)
    x[0, 3] = F16_MAX / 2  # the limit itself is fine
    out = dequantize(quantize(x, scheme))
    assert np.isfinite(out).all()


def test_codec_passthrough_keeps_non_finite_values() -> None:
    x = np.array([[np.nan, np.inf, 1.0]], np.float32)
    out = dequantize(quantize(x, Scheme("f32")))
    assert _bits_equal(out, x)


@pytest.mark.parametrize("scheme", QUANTIZED, ids=Scheme.label)
def test_codec_is_deterministic_whatever_the_memory_layout(scheme: Scheme) -> None:
    x = np.random.default_rng(5).standard_normal((37, 300)).astype(np.float32)
    first = quantize(x, scheme)
    for same in (x.copy(), np.asfortranarray(x), np.vstack([x, x])[:37], x.astype(np.float16).astype(np.float32)):
        if same.dtype == np.float32 and not np.array_equal(same, x):
            continue
        again = quantize(same, scheme)
        assert first.parts.keys() == again.parts.keys()
        assert all(_bits_equal(first.parts[k], again.parts[k]) for k in first.parts)


@pytest.mark.parametrize("scheme", QUANTIZED, ids=Scheme.label)
def test_codec_rows_are_encoded_independently(scheme: Scheme) -> None:
    # 300 rows of 512 columns are 4800 groups of 32: more than one of the quantizer's chunks
    x = np.random.default_rng(6).standard_normal((300, 512)).astype(np.float32)
    whole = quantize(x, scheme)
    part = quantize(x[101:250], scheme)
    assert all(_bits_equal(whole.parts[k][101:250], part.parts[k]) for k in whole.parts)


def test_codec_float16_and_bf16_inputs_keep_their_dtype() -> None:
    x = np.random.default_rng(9).standard_normal((2, 64)).astype(np.float16)
    qt = quantize(x, DQ4)
    assert qt.dtype == "f16" and dequantize(qt).dtype == np.float16
    bf = nanofmt.floats.f32_to_bf16_bits(x.astype(np.float32))
    qt = quantize(bf, DQ4)
    assert qt.dtype == "bf16" and dequantize(qt).dtype == np.uint16


def test_codec_error_is_lower_than_plain_min_max_rounding() -> None:
    x = np.random.default_rng(10).standard_normal((64, 512)).astype(np.float32)
    groups = x.reshape(-1, 32)
    lo, hi = groups.min(axis=1, keepdims=True), groups.max(axis=1, keepdims=True)
    step = (hi - lo) / 15
    rtn = np.clip(np.rint((groups - lo) / step), 0, 15) * step + lo
    rtn_err = float(((rtn - groups) ** 2).sum())
    for scheme in (AFFINE4, DQ4):
        err = float(((dequantize(quantize(x, scheme)) - x) ** 2).sum())
        assert err < 0.9 * rtn_err, scheme.label()


def test_codec_groups_do_not_depend_on_how_the_quantizer_chunks_them() -> None:
    # 4097 groups in one row: the quantizer's chunks split them differently than it splits 4096
    x = np.random.default_rng(11).standard_normal((1, 4097 * 32)).astype(np.float32)
    whole, prefix = quantize(x, AFFINE4), quantize(x[:, : 4096 * 32], AFFINE4)
    assert _bits_equal(whole.parts["scales"][:, :4096], prefix.parts["scales"])
    assert _bits_equal(whole.parts["codes"][:, : 4096 * 16], prefix.parts["codes"])


@pytest.mark.parametrize("scheme", [Scheme("f32"), Scheme("bf16"), *QUANTIZED], ids=Scheme.label)
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_codec_dequantize_into_out_matches_a_fresh_result(scheme: Scheme, dtype: str) -> None:
    x = np.random.default_rng(12).standard_normal((70, 300)).astype(np.float32)
    qt = quantize(x, scheme)
    fresh = dequantize(qt, dtype)
    out = np.full_like(fresh, 7)
    assert dequantize(qt, dtype, out=out) is out
    assert _bits_equal(out, fresh)
    part = np.empty_like(fresh[5:40])
    assert _bits_equal(dequantize(qt, dtype, rows=slice(5, 40), out=part), fresh[5:40])


def test_codec_dequantize_refuses_an_unfit_out() -> None:
    qt = quantize(np.ones((4, 64), np.float32), AFFINE4)
    for bad in (
        np.empty((4, 63), np.float32),
        np.empty((4, 64), np.float64),
        np.empty((64, 4), np.float32).T,
        np.empty((4, 64), np.float16),
    ):
        with pytest.raises(ValueError, match="out must be"):
            dequantize(qt, "f32", out=bad)
    with pytest.raises(ValueError, match="dtype"):
        dequantize(qt, "f64")


def test_codec_dequantize_never_returns_stored_data() -> None:
    qt = quantize(np.ones((2, 3), np.float32), Scheme("f32"))
    out = dequantize(qt)
    out[0, 0] = 5
    assert qt.parts[None][0, 0] == 1
