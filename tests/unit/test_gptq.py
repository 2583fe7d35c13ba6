"""converters/gptq.py and the grid API of nanofmt/quantize.py it builds on."""

from __future__ import annotations

import numpy as np
import pytest

import nanofmt
from nanofmt import Scheme
from nanofmt.converters.gptq import Factor, gptq_quantize, output_error, prepare, rotate_gram
from nanofmt.quantize import encode_on_grid, fit_grid, nearest_codes
from nanofmt.transforms import default_signs, hadamard_rotate

SCHEMES = [
    Scheme("affine_dq", bits=4, group_size=32, meta_bits=6),
    Scheme("affine_dq", bits=3, group_size=32, meta_bits=4),
    Scheme("affine", bits=4, group_size=64),
    Scheme("int8_row", bits=8),
]


def _inputs(cols: int, n: int = 2048, seed: int = 0) -> np.ndarray:
    """Correlated inputs with unequal channel energies, as a transformer's linear layers see."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) / np.sqrt(cols)
    return (rng.standard_normal((n, cols)) @ mix + 0.3 * rng.standard_normal((n, cols))) * np.exp(rng.standard_normal(cols))


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    x = _inputs(192)
    w = np.random.default_rng(1).standard_normal((48, 192)).astype(np.float32) * np.float32(0.05)
    return w, x.T @ x


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_gptq_output_error_below_round_to_nearest(case: tuple[np.ndarray, np.ndarray], scheme: Scheme) -> None:
    w, gram = case
    rtn = output_error(w, nanofmt.dequantize(nanofmt.quantize(w, scheme)), gram).sum()
    gptq = output_error(w, nanofmt.dequantize(gptq_quantize(w, scheme, gram)), gram).sum()
    assert gptq < 0.8 * rtn


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_gptq_decodes_to_the_grid_values_it_chose(case: tuple[np.ndarray, np.ndarray], scheme: Scheme) -> None:
    w, gram = case
    qt = gptq_quantize(w, scheme, gram)
    grid = fit_grid(w, scheme)  # static groups: the grid of the original weights
    expected = encode_on_grid(np.zeros(w.shape, np.int64), grid)
    for role, part in expected.items():
        if role != "codes":
            np.testing.assert_array_equal(qt.parts[role], part)
    codes = nanofmt.bits.unpack_rows(qt.parts["codes"], scheme.bits or 8, w.shape[1]) if scheme.kind != "int8_row" else qt.parts["codes"]
    np.testing.assert_array_equal(nanofmt.dequantize(qt), grid.values(np.asarray(codes)))


def test_grid_encoders_are_fit_nearest_store() -> None:
    x = np.random.default_rng(2).standard_normal((5, 100)).astype(np.float32)
    for scheme in SCHEMES:
        grid = fit_grid(x, scheme)
        parts = encode_on_grid(nearest_codes(x, grid), grid)
        reference = nanofmt.quantize(x, scheme).parts
        assert list(parts) == list(reference)
        for role in parts:
            np.testing.assert_array_equal(parts[role], reference[role])


def test_encode_on_grid_refuses_bad_codes() -> None:
    grid = fit_grid(np.ones((2, 32), np.float32), SCHEMES[0])
    with pytest.raises(ValueError, match="shape"):
        encode_on_grid(np.zeros((2, 31), np.int64), grid)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        encode_on_grid(np.full((2, 32), 16), grid)


def test_gptq_refit_keeps_the_better_rows(case: tuple[np.ndarray, np.ndarray]) -> None:
    w, gram = case
    scheme = SCHEMES[1]
    once = output_error(w, nanofmt.dequantize(gptq_quantize(w, scheme, gram)), gram)
    twice = output_error(w, nanofmt.dequantize(gptq_quantize(w, scheme, gram, refit=True)), gram)
    assert twice.sum() <= once.sum() * 1.0001


def test_gptq_rows_are_independent(case: tuple[np.ndarray, np.ndarray]) -> None:
    w, gram = case
    factor = prepare(gram)
    whole = nanofmt.dequantize(gptq_quantize(w, SCHEMES[0], factor))
    top = nanofmt.dequantize(gptq_quantize(w[:20], SCHEMES[0], factor))
    np.testing.assert_allclose(top, whole[:20], atol=1e-6)


def test_gptq_handles_dead_inputs_and_a_zero_gram() -> None:
    x = _inputs(64, seed=3)
    x[:, [0, 5, 63]] = 0  # inputs that never fire
    w = np.random.default_rng(4).standard_normal((8, 64)).astype(np.float32)
    qt = gptq_quantize(w, SCHEMES[0], x.T @ x)
    assert np.isfinite(nanofmt.dequantize(qt)).all()
    rtn = nanofmt.quantize(w, SCHEMES[0])
    zero = gptq_quantize(w, SCHEMES[0], np.zeros((64, 64)), act_order=False)  # no information: round to nearest
    for role in rtn.parts:
        np.testing.assert_array_equal(zero.parts[role], rtn.parts[role])


def test_gptq_hadamard_rotates_weights_and_gram(case: tuple[np.ndarray, np.ndarray]) -> None:
    w, gram = case
    scheme = Scheme("affine_dq", bits=4, group_size=32, meta_bits=6, transform="hadamard", transform_block=64)
    signs = default_signs(w.shape[1], 0)
    rotated = rotate_gram(gram, 64, signs)
    u = hadamard_rotate(w, 64, signs)
    e = np.random.default_rng(5).standard_normal(w.shape).astype(np.float32)
    # the output error is the same measured either side of the rotation
    np.testing.assert_allclose(output_error(u, hadamard_rotate(w + e, 64, signs), rotated), output_error(w, w + e, gram), rtol=1e-4)
    qt = gptq_quantize(w, scheme, gram)
    assert set(qt.parts) == set(nanofmt.quantize(w, scheme).parts)
    rtn = output_error(w, nanofmt.dequantize(nanofmt.quantize(w, scheme)), gram).sum()
    assert output_error(w, nanofmt.dequantize(qt), gram).sum() < 0.8 * rtn


def test_gptq_refuses_bad_arguments(case: tuple[np.ndarray, np.ndarray]) -> None:
    w, gram = case
    with pytest.raises(ValueError, match="columns but the gram"):
        gptq_quantize(w[:, :96], SCHEMES[0], gram)
    with pytest.raises(ValueError, match="square"):
        gptq_quantize(w, SCHEMES[0], gram[:, :10])
    with pytest.raises(ValueError, match="2-D"):
        gptq_quantize(w[0], SCHEMES[0], gram)
    with pytest.raises(ValueError, match="GPTQ chooses codes"):
        gptq_quantize(w, Scheme("f16"), gram)
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize(w, SCHEMES[0], np.full_like(gram, np.nan))
    bad = w.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        gptq_quantize(bad, SCHEMES[0], gram)
    with pytest.raises(ValueError, match="damp"):
        prepare(gram, damp=0)
    assert isinstance(prepare(gram), Factor)
