"""Properties of packing and of the codec, over generated shapes, widths and values.

The error bounds are stated against the metadata actually stored, which is what the encoder
promises whatever its search chose: every element whose value lies inside its group's grid
``[m, m + qmax * s]`` decodes to within half a step (plus float32 rounding), and every element
outside it decodes to the nearest end of the grid. A search that clips trades those outside
errors for a finer step; for plain ``affine`` it never does worse, per group, than min/max
rounding with fp16 metadata, so that is the group bound tested.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nanofmt import Scheme, dequantize, quantize
from nanofmt.bits import pack_columns, pack_rows, packed_row_bytes, padding_is_zero, unpack_rows
from nanofmt.floats import cast_f32

EPS = float(np.finfo(np.float32).eps)
SETTINGS = settings(max_examples=40, deadline=None)

AFFINE_SCHEMES = st.builds(
    lambda name, bits, group, meta: Scheme(name, bits=bits, group_size=group, meta_bits=meta if name == "affine_dq" else None),
    st.sampled_from(["affine", "affine_dq"]),
    st.sampled_from([2, 3, 4, 5, 6, 8]),
    st.sampled_from([32, 64, 128]),
    st.sampled_from([4, 6, 8]),
)
SCHEMES = st.one_of(AFFINE_SCHEMES, st.just(Scheme("int8_row", bits=8)), st.sampled_from([Scheme("f32"), Scheme("f16"), Scheme("bf16")]))


# --- packing ---------------------------------------------------------------------------------


@st.composite
def _codes(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    bits = draw(st.integers(1, 8))
    rows = draw(st.integers(0, 4))
    n = draw(st.one_of(st.sampled_from([0, 1, 7, 8, 9, 31, 32, 33, 64]), st.integers(0, 150)))
    return bits, draw(hnp.arrays(np.uint8, (rows, n), elements=st.integers(0, (1 << bits) - 1)))


@SETTINGS
@given(_codes())
def test_bits_pack_unpack_round_trip(case: tuple[int, np.ndarray]) -> None:
    bits, codes = case
    packed = pack_rows(codes, bits)
    assert packed.shape == (codes.shape[0], packed_row_bytes(codes.shape[1], bits))
    assert np.array_equal(unpack_rows(packed, bits, codes.shape[1]), codes)
    assert padding_is_zero(packed, bits, codes.shape[1])
    assert np.array_equal(pack_columns(codes.T, bits), packed)


@SETTINGS
@given(_codes())
def test_bits_rows_pack_alone_as_they_pack_together(case: tuple[int, np.ndarray]) -> None:
    bits, codes = case
    packed = pack_rows(codes, bits)
    for r in range(codes.shape[0]):
        assert np.array_equal(pack_rows(codes[r : r + 1], bits), packed[r : r + 1])


# --- values ----------------------------------------------------------------------------------


@st.composite
def _matrix(draw: st.DrawFn, max_cols: int = 300) -> np.ndarray:
    """Realistic rows (scaled normals with outliers, constants, zeros) or raw float32 values."""
    rows = draw(st.integers(1, 5))
    cols = draw(st.one_of(st.sampled_from([1, 31, 32, 33, 64, 100, 256]), st.integers(1, max_cols)))
    if draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        x = rng.standard_normal((rows, cols)) * draw(st.sampled_from([1e-4, 0.02, 1.0, 300.0]))
        x += draw(st.sampled_from([0.0, 0.0, 0.5, -40.0]))
        kind = draw(st.sampled_from(["plain", "outliers", "constant_row", "zero_row"]))
        if kind == "outliers":
            x[rng.random((rows, cols)) < 0.02] *= 30
        elif kind == "constant_row":
            x[0] = x[0, 0]
        elif kind == "zero_row":
            x[-1] = 0
        return np.clip(x, -30000, 30000).astype(np.float32)
    element = st.floats(-1000, 1000, width=32, allow_subnormal=True)
    return draw(hnp.arrays(np.float32, (rows, cols), elements=element))


def _stored_grid(qt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Each element's stored scale and offset (float32, as the decoder computes them) and its code."""
    scheme, cols = qt.scheme, qt.shape[1]
    groups = -(-cols // scheme.group_size)
    if scheme.kind == "affine":
        s, m = qt.parts["scales"].astype(np.float32), qt.parts["offsets"].astype(np.float32)
    else:
        block = np.arange(groups) // 8
        s = qt.parts["super_scales"].astype(np.float32)[:, block] * unpack_rows(qt.parts["qscales"], scheme.meta_bits, groups).astype(
            np.float32
        )
        m = qt.parts["super_offsets"].astype(np.float32)[:, block] * unpack_rows(qt.parts["qoffsets"], scheme.meta_bits, groups).astype(
            np.float32
        )
    col = np.arange(cols) // scheme.group_size
    return s[:, col], m[:, col], unpack_rows(qt.parts["codes"], scheme.bits, cols)


@SETTINGS
@given(_matrix(), AFFINE_SCHEMES)
def test_codec_affine_error_is_half_a_stored_step_inside_the_grid(x: np.ndarray, scheme: Scheme) -> None:
    qt = quantize(x, scheme)
    w = dequantize(qt).astype(np.float64)
    s, m, _ = (v.astype(np.float64) for v in _stored_grid(qt))
    qmax = (1 << scheme.bits) - 1
    top = (np.float32(qmax) * s.astype(np.float32) + m.astype(np.float32)).astype(np.float64)  # the decoded top code
    xd = x.astype(np.float64)
    # float32 rounding: choosing the code (3 roundings on a ratio up to qmax) and decoding (2 roundings)
    slack = 8 * EPS * (np.abs(m) + qmax * s)
    inside = (xd >= m) & (xd <= top)
    assert (np.abs(w - xd)[inside] <= (s / 2 + slack)[inside]).all()
    assert (w[xd < m] == m[xd < m]).all()
    assert (w[xd > top] == top[xd > top]).all()


@SETTINGS
@given(_matrix(), st.sampled_from([2, 3, 4, 8]), st.sampled_from([32, 64]))
def test_codec_affine_group_error_is_at_most_min_max_rounding(x: np.ndarray, bits: int, group: int) -> None:
    qt = quantize(x, Scheme("affine", bits=bits, group_size=group))
    err = (dequantize(qt).astype(np.float64) - x) ** 2
    qmax = np.float32((1 << bits) - 1)
    for start in range(0, x.shape[1], group):
        g = x[:, start : start + group]
        lo, hi = g.min(axis=1, keepdims=True), g.max(axis=1, keepdims=True)
        s = ((hi - lo) / qmax).astype(np.float16).astype(np.float64)
        m = lo.astype(np.float16).astype(np.float64)
        codes = np.clip(np.rint((g - m) / np.where(s > 0, s, 1)), 0, qmax) * (s > 0)
        rtn = ((codes * s).astype(np.float32) + m.astype(np.float32)).astype(np.float64)
        bound = ((rtn - g) ** 2).sum(axis=1)
        assert (err[:, start : start + group].sum(axis=1) <= bound * (1 + 1e-5) + 1e-30).all()


@SETTINGS
@given(_matrix())
def test_codec_int8_row_error_is_half_a_stored_step(x: np.ndarray) -> None:
    qt = quantize(x, Scheme("int8_row", bits=8))
    w = dequantize(qt).astype(np.float64)
    s = qt.parts["scales"].astype(np.float64)[:, None]
    xd = x.astype(np.float64)
    inside = np.abs(xd) <= 127 * s
    assert (np.abs(w - xd) <= s / 2 + 2 * EPS * np.abs(w))[inside].all()
    # the rest is clipped to the end code; that happens only where the fp16 scale rounded down,
    # by 127 times that rounding (tiny for normal fp16 scales, up to 12% of 127 steps for subnormal ones)
    assert (np.abs(w) == 127 * s)[~inside].all()
    exact = np.abs(xd).max(axis=1, keepdims=True) / 127
    assert (np.abs(xd) - 127 * s <= 127 * np.abs(exact - s) + 2 * EPS * np.abs(xd)).all()


@st.composite
def _on_a_grid(draw: st.DrawFn) -> tuple[np.ndarray, Scheme]:
    """Values an affine tensor decodes to, with every group using its lowest and highest code."""
    bits = draw(st.sampled_from([2, 3, 4, 5, 6, 8]))
    group = draw(st.sampled_from([32, 64, 128]))
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    qmax = (1 << bits) - 1
    groups = -(-cols // group)
    s = (2.0 ** rng.uniform(-20, 4, (rows, groups))).astype(np.float16)
    m = (rng.uniform(-2, 2, (rows, groups)) * qmax * s.astype(np.float64)).astype(np.float16)
    q = rng.integers(0, qmax + 1, (rows, cols))
    for start in range(0, cols, group):  # pin each group's ends (a one-element group holds both)
        q[:, start] = 0
        q[:, min(start + group, cols) - 1] = qmax if min(start + group, cols) - 1 > start else 0
    col = np.arange(cols) // group
    x = q.astype(np.float32) * s.astype(np.float32)[:, col] + m.astype(np.float32)[:, col]
    return x, Scheme("affine", bits=bits, group_size=group)


@SETTINGS
@given(_on_a_grid())
def test_codec_affine_is_idempotent_on_representable_values(case: tuple[np.ndarray, Scheme]) -> None:
    x, scheme = case
    assert np.array_equal(dequantize(quantize(x, scheme)), x)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 200), st.integers(0, 2**32 - 1))
def test_codec_int8_row_is_idempotent_on_representable_values(rows: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = (2.0 ** rng.uniform(-24, 8, (rows, 1))).astype(np.float16).astype(np.float32)
    q = rng.integers(-127, 128, (rows, cols))
    q[:, rng.integers(0, cols)] = rng.choice([-127, 127])  # each row reaches its scale's end
    x = q.astype(np.float32) * s
    assert np.array_equal(dequantize(quantize(x, Scheme("int8_row", bits=8))), x)


@SETTINGS
@given(_matrix(), SCHEMES, st.data())
def test_codec_row_range_decode_equals_full_decode_then_slice(x: np.ndarray, scheme: Scheme, data: st.DataObject) -> None:
    qt = quantize(x, scheme)
    start = data.draw(st.integers(0, x.shape[0]))
    stop = data.draw(st.integers(start, x.shape[0]))
    wide = dequantize(qt, "f32")
    for dtype in ("f32", "f16", "bf16"):
        full = dequantize(qt, dtype)
        assert full.tobytes() == cast_f32(wide, dtype).tobytes()  # one cast of the float32 values
        part = dequantize(qt, dtype, rows=slice(start, stop))
        assert part.dtype == full.dtype and part.tobytes() == full[start:stop].tobytes()


@SETTINGS
@given(_matrix(max_cols=200), SCHEMES)
def test_codec_quantize_is_deterministic_and_row_local(x: np.ndarray, scheme: Scheme) -> None:
    qt = quantize(x, scheme)
    again = quantize(x.copy(), scheme)
    last = quantize(x[-1:], scheme)
    for role, part in qt.parts.items():
        assert part.tobytes() == again.parts[role].tobytes()
        assert part[-1:].tobytes() == last.parts[role].tobytes()
