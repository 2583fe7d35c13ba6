"""Row-chunked encoding gives the bytes of whole-tensor encoding, and catches bad values."""

from __future__ import annotations

import numpy as np
import pytest

import nanofmt
from nanofmt import Scheme
from nanofmt.converters import ConvertError
from nanofmt.converters import encode as encode_module
from nanofmt.converters.encode import encode_rows, row_chunks
from nanofmt.floats import f32_to_bf16_bits

SCHEMES = [
    Scheme("affine_dq", bits=4, group_size=32, meta_bits=6),
    Scheme("affine_dq", bits=3, group_size=128, meta_bits=4),
    Scheme("affine", bits=5, group_size=64),
    Scheme("int8_row", bits=8),
    Scheme("f16"),
]


def test_encode_row_chunks_cover_every_row(monkeypatch):
    monkeypatch.setattr(encode_module, "CHUNK_ELEMENTS", 1000)
    spans = row_chunks((37, 300))
    assert [s.start for s in spans] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36] and spans[-1].stop == 37
    assert row_chunks(()) == [None]
    assert row_chunks((5,)) == [slice(0, 5)]
    assert row_chunks((2, 10_000_000)) == [slice(0, 1), slice(1, 2)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_encode_chunks_equal_whole_tensor(monkeypatch, rng, scheme, dtype):
    monkeypatch.setattr(encode_module, "CHUNK_ELEMENTS", 1000)
    x = (rng.standard_normal((37, 300)) * 0.05).astype(np.float32)
    values = f32_to_bf16_bits(x) if dtype == "bf16" else x
    whole = nanofmt.quantize(values, scheme, dtype=dtype)
    chunks = [encode_rows(values[span], scheme, dtype, "w") for span in row_chunks(x.shape)]
    for role, part in whole.parts.items():
        assert np.array_equal(np.concatenate([c.parts[role] for c in chunks]), part), role
    noise = sum(c.noise for c in chunks)
    decoded = nanofmt.dequantize(whole, "f32")
    reference = float(((decoded - nanofmt.dequantize(nanofmt.quantize(values, Scheme(dtype)), "f32")) ** 2).sum())
    assert noise == pytest.approx(reference, rel=1e-6, abs=1e-12)


def test_encode_same_dtype_passthrough_is_zero_copy_and_lossless(rng):
    x = rng.standard_normal((4, 8)).astype(np.float16)
    encoded = encode_rows(x, Scheme("f16"), "f16", "w")
    assert encoded.parts[None] is x and encoded.noise == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("scheme", [SCHEMES[0], Scheme("f32")], ids=lambda s: s.label())
def test_encode_nonfinite_values_are_refused(bad, scheme):
    x = np.zeros((4, 64), np.float32)
    x[2, 5] = bad
    with pytest.raises(ConvertError, match="row 2") as info:
        encode_rows(x, scheme, "f32", "w")
    assert (info.value.reason, info.value.tensor) == ("nonfinite_weights", "w")


def test_encode_out_of_range_values():
    x = np.zeros((2, 64), np.float32)
    x[0, 0] = 1e5
    with pytest.raises(ConvertError, match="overflow fp16") as info:
        encode_rows(x, Scheme("f16"), "f32", "w")
    assert info.value.reason == "value_out_of_range"
    with pytest.raises(ConvertError, match="cannot store it") as info:
        encode_rows(x, SCHEMES[0], "f32", "w")
    assert info.value.reason == "value_out_of_range"
    assert encode_rows(x, Scheme("bf16"), "f32", "w").parts[None].dtype == np.uint16
