"""The hadamard transform's pure functions: the normative stage order, orthogonality, signs packing."""

from __future__ import annotations

import numpy as np
import pytest

from nanofmt.transforms import default_signs, fwht, hadamard_rotate, hadamard_unrotate, pack_signs, unpack_signs

BLOCKS = [16, 64, 256, 1024, 4096]


def _fwht_loop(x: np.ndarray, block: int) -> np.ndarray:
    """SPEC.md 10.6 step by step on binary32 scalars: stages h = 1, 2, ..., one pair at a time."""
    out = np.array(x, np.float32)
    scale = np.float32(1 / np.sqrt(block))
    for row in out.reshape(-1, out.shape[-1]):
        for start in range(0, row.size, block):
            v = [np.float32(e) for e in row[start : start + block]]
            h = 1
            while h < block:
                for i in range(block):
                    if i & h == 0:
                        a, c = v[i], v[i + h]
                        v[i], v[i + h] = np.float32(a + c), np.float32(a - c)
                h *= 2
            row[start : start + block] = np.array(v, np.float32) * scale
    return out


def _sylvester(block: int) -> np.ndarray:
    i = np.arange(block)
    parity = (
        np.bitwise_count(i[:, None] & i[None, :]) & 1
        if hasattr(np, "bitwise_count")
        else np.vectorize(lambda a: bin(a).count("1") & 1)(i[:, None] & i[None, :])
    )
    return np.where(parity, -1.0, 1.0) / np.sqrt(block)


def _wide_values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values over many binades, so that the transform's sums round."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)


@pytest.mark.parametrize("block", [16, 64, 256])
def test_transforms_fwht_is_bit_exact_to_the_scalar_loop(block: int) -> None:
    x = _wide_values((3, 2 * block), block)
    assert fwht(x, block).tobytes() == _fwht_loop(x, block).tobytes()


def test_transforms_fwht_bit_exactness_check_can_fail() -> None:
    """Guard: another stage order (h descending) rounds differently on these values."""
    x = _wide_values((4, 64), 1)
    wrong = np.array(x)
    for start in range(0, 64, 64):
        v = wrong[:, start : start + 64]
        h = 32
        while h >= 1:
            for i in range(64):
                if i & h == 0:
                    a, c = v[:, i].copy(), v[:, i + h].copy()
                    v[:, i], v[:, i + h] = a + c, a - c
            h //= 2
    wrong *= np.float32(1 / 8)
    assert wrong.tobytes() != fwht(x, 64).tobytes()


@pytest.mark.parametrize("block", BLOCKS[:4])  # 4096 would be a 4096^3 product: the other tests cover it
def test_transforms_fwht_is_the_normalized_sylvester_matrix(block: int) -> None:
    h = fwht(np.eye(block, dtype=np.float32), block)  # row i of I times H: row i of H
    assert np.array_equal(h, _sylvester(block).astype(np.float32))
    assert np.array_equal(h, h.T)
    assert np.allclose(h.astype(np.float64) @ h.astype(np.float64), np.eye(block), atol=1e-6)


@pytest.mark.parametrize("block", BLOCKS)
def test_transforms_fwht_is_its_own_inverse_and_keeps_norms(block: int) -> None:
    x = np.random.default_rng(block).standard_normal((2, block * 2)).astype(np.float32)
    y = fwht(x, block)
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    assert np.allclose(fwht(y, block), x, atol=1e-5)


def test_transforms_fwht_in_place_and_input_untouched() -> None:
    x = _wide_values((2, 64), 3)
    before = x.copy()
    expected = fwht(x, 16)
    assert np.array_equal(x, before)
    assert fwht(x, 16, out=x) is x and x.tobytes() == expected.tobytes()


def test_transforms_rotate_unrotate_round_trip() -> None:
    w = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    w[0, 7] = 40.0  # an outlier: rotation spreads it over its block
    signs = default_signs(128, seed=9)
    u = hadamard_rotate(w, 64, signs)
    assert np.abs(u[0]).max() < 10
    assert np.allclose(hadamard_unrotate(u, 64, signs), w, atol=1e-5)
    manual = fwht(w * np.where(signs, -1, 1).astype(np.float32), 64)
    assert u.tobytes() == manual.tobytes()
    assert hadamard_unrotate(u, 64, signs).tobytes() == (fwht(u, 64) * np.where(signs, -1, 1).astype(np.float32)).tobytes()


def test_transforms_signs_pack_lsb_first() -> None:
    signs = np.zeros(16, bool)
    signs[[0, 3, 8]] = True
    packed = pack_signs(signs)
    assert packed.dtype == np.uint8 and packed.tolist() == [0x09, 0x01]
    assert np.array_equal(unpack_signs(packed, 16), signs)


def test_transforms_signs_round_trip_and_default_signs_are_deterministic() -> None:
    signs = default_signs(4096, seed=3)
    assert signs.dtype == np.bool_ and signs.shape == (4096,) and 0.45 < signs.mean() < 0.55
    assert np.array_equal(signs, default_signs(4096, seed=3)) and not np.array_equal(signs, default_signs(4096, seed=4))
    assert np.array_equal(unpack_signs(pack_signs(signs), 4096), signs)


@pytest.mark.parametrize(
    "call",
    [
        lambda: fwht(np.zeros((2, 48), np.float32), 32),  # 48 is not a multiple of 32
        lambda: fwht(np.zeros((2, 48), np.float32), 12),  # not a power of two
        lambda: fwht(np.zeros((2, 16), np.float32), 16, out=np.zeros((2, 16), np.float64)),
        lambda: hadamard_unrotate(np.zeros((1, 16), np.float32), 16, np.zeros(8, bool)),
        lambda: hadamard_rotate(np.zeros((1, 16), np.float32), 16, np.zeros(16, np.uint8)),
        lambda: unpack_signs(np.zeros(3, np.uint8), 16),
        lambda: pack_signs(np.zeros((2, 8), bool)),
    ],
)
def test_transforms_bad_arguments_raise_value_error(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_transforms_fwht_chunks_decode_like_small_calls() -> None:
    """Many chunks of blocks, the last one partial, give the bytes of small calls."""
    x = _wide_values((2 * 4096 + 5, 16), 4)  # block 16: 4096 blocks per chunk
    small = np.vstack([fwht(x[i : i + 100], 16) for i in range(0, x.shape[0], 100)])
    assert fwht(x.reshape(1, -1), 16).tobytes() == small.tobytes()
