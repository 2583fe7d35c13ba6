"""The runtime's torch decoder against the numpy reference: layouts, bit unpacking, values."""

from __future__ import annotations

import numpy as np
import pytest

import nanofmt
from nanofmt.bits import pack_rows
from nanofmt.schemes import component_layout as core_layout

torch = pytest.importorskip("torch")
K = pytest.importorskip("nanofmt.loaders.nano_kernels")

SCHEMES = (
    [nanofmt.Scheme(n) for n in ("f32", "f16", "bf16")]
    + [nanofmt.Scheme("int8_row", bits=8)]
    + [nanofmt.Scheme("affine", bits=b, group_size=g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)]
    + [nanofmt.Scheme("affine_dq", bits=b, group_size=g, meta_bits=m) for b in (2, 3, 4, 6, 8) for g in (32, 128) for m in (4, 6, 8)]
)
SHAPES = [(5, 100), (3, 256), (7, 33), (1, 1031)]


def runtime_scheme(s: nanofmt.Scheme) -> K.Scheme:
    return K.Scheme(s.name, s.bits, s.group_size, s.meta_bits)


def torch_parts(qt: nanofmt.QuantizedTensor) -> dict:
    out = {}
    for role, part in qt.parts.items():
        array = np.ascontiguousarray(part)
        out[role] = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16) if qt.scheme.name == "bf16" else torch.from_numpy(array)
    return out


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_kernels_layout_matches_core(scheme: nanofmt.Scheme) -> None:
    for shape in SHAPES:
        expected = {role: (c.dtype, c.shape) for role, c in core_layout(scheme, shape, "x").items()}
        got = K.component_layout(runtime_scheme(scheme), shape)
        assert list(got.items()) == list(expected.items())  # same roles, same (checksum) order


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_kernels_decode_bit_exact(scheme: nanofmt.Scheme, rng: np.random.Generator) -> None:
    for shape in SHAPES:
        qt = nanofmt.quantize(rng.standard_normal(shape).astype(np.float32), scheme)
        got = K.decode_rows(torch_parts(qt), runtime_scheme(scheme), shape[1])
        want = nanofmt.dequantize(qt, "f32")
        assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))
        # the final cast to a 16-bit compute dtype is the reference's too (round to nearest even)
        assert np.array_equal(got.half().numpy(), nanofmt.dequantize(qt, "f16"))
        assert np.array_equal(got.bfloat16().view(torch.int16).numpy().view(np.uint16), nanofmt.dequantize(qt, "bf16"))


def test_kernels_decode_row_range_equals_slice(rng: np.random.Generator) -> None:
    scheme = nanofmt.Scheme("affine_dq", bits=3, group_size=32, meta_bits=6)
    qt = nanofmt.quantize(rng.standard_normal((9, 200)).astype(np.float32), scheme)
    parts = torch_parts(qt)
    whole = K.decode_rows(parts, runtime_scheme(scheme), 200)
    part = K.decode_rows({r: t[2:7] for r, t in parts.items()}, runtime_scheme(scheme), 200)
    assert torch.equal(part, whole[2:7])


@pytest.mark.parametrize("bits", range(1, 9))
def test_kernels_unpack_every_width(bits: int, rng: np.random.Generator) -> None:
    for n in (1, 7, 8, 9, 61):
        codes = rng.integers(0, 1 << bits, (4, n), dtype=np.uint8)
        packed = torch.from_numpy(pack_rows(codes, bits))
        assert np.array_equal(K.unpack_codes(packed, bits, n).numpy(), codes)


def test_kernels_unpack_refuses_wrong_width() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        K.unpack_codes(torch.zeros(2, 3, dtype=torch.uint8), 4, 8)


def test_kernels_stored_bytes_matches_core() -> None:
    scheme = nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6)
    assert K.stored_bytes(runtime_scheme(scheme), (64, 4096)) * 8 == scheme.bits_per_weight((64, 4096)) * 64 * 4096
