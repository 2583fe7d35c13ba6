"""Writing a Nano file and reading it back gives the same tensors, bit for bit, ties included."""

from __future__ import annotations

import itertools
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanofmt
from nanofmt import QuantizedTensor, Scheme, dequantize, open_file, quantize, write_file
from nanofmt._spec import SCHEMES as SPEC_SCHEMES  # the allowed parameters, never retyped
from nanofmt.floats import f32_to_bf16_bits

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_names = itertools.count()

SCHEMES = st.one_of(
    st.sampled_from([Scheme("f32"), Scheme("f16"), Scheme("bf16"), Scheme("int8_row", bits=8)]),
    st.builds(lambda b, g: Scheme("affine", bits=b, group_size=g), st.sampled_from(SPEC_SCHEMES["affine"]["bits"]), st.sampled_from(SPEC_SCHEMES["affine"]["group_sizes"])),
    st.builds(
        lambda b, g, m: Scheme("affine_dq", bits=b, group_size=g, meta_bits=m),
        st.sampled_from(SPEC_SCHEMES["affine_dq"]["bits"]),
        st.sampled_from(SPEC_SCHEMES["affine_dq"]["group_sizes"]),
        st.sampled_from(SPEC_SCHEMES["affine_dq"]["meta_bits"]),
    ),
)


@st.composite
def _tensor(draw: st.DrawFn) -> QuantizedTensor:
    scheme = draw(SCHEMES)
    if scheme.is_passthrough:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    else:
        shape = (draw(st.integers(1, 5)), draw(st.integers(1, 200)))
    x = draw(hnp.arrays(np.float32, shape, elements=st.floats(-100, 100, width=32)))
    source = draw(st.sampled_from(["f32", "f16", "bf16"]))
    values = {"f32": x, "f16": x.astype(np.float16), "bf16": f32_to_bf16_bits(x)}[source]
    return quantize(values, scheme, dtype=source)


def _same(a: QuantizedTensor, b: QuantizedTensor) -> None:
    assert (a.shape, a.dtype, a.scheme) == (b.shape, b.dtype, b.scheme)
    assert a.parts.keys() == b.parts.keys()
    for role in a.parts:
        pa, pb = np.asarray(a.parts[role]), np.asarray(b.parts[role])
        assert (pa.dtype, pa.shape) == (pb.dtype, pb.shape), role
        assert pa.tobytes() == pb.tobytes(), role


@SETTINGS
@given(st.lists(_tensor(), min_size=1, max_size=4), st.data())
def test_file_write_then_read_is_bit_exact(tmp_path: Path, tensors: list[QuantizedTensor], data: st.DataObject) -> None:
    named: dict[str, QuantizedTensor | str] = {f"layer.{i}.weight": qt for i, qt in enumerate(tensors)}
    ties = data.draw(st.lists(st.sampled_from(sorted(named)), max_size=2))
    for i, target in enumerate(ties):
        named[f"tied.{i}.weight"] = target
    path = tmp_path / f"m{next(_names)}.safetensors"
    write_file(path, named, extra={"note": "round trip"})
    with open_file(path) as f:
        assert set(f.records) == set(named)
        for name, value in named.items():
            original = named[value] if isinstance(value, str) else value
            assert isinstance(original, QuantizedTensor)
            back = f.tensor(name)
            _same(back, original)
            assert dequantize(back).tobytes() == dequantize(original).tobytes()
            f.check_checksum(name)
        f.verify()
        assert not list(f.problems())


def test_file_round_trip_of_a_realistic_tensor_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    embed = quantize(rng.standard_normal((100, 96)).astype(np.float32), Scheme("affine_dq", bits=4, group_size=32, meta_bits=6))
    tensors: dict[str, QuantizedTensor | str] = {
        "model.embed_tokens.weight": embed,
        "model.layers.0.mlp.down_proj.weight": quantize(
            rng.standard_normal((64, 300)).astype(np.float16), Scheme("affine", bits=8, group_size=128)
        ),
        "model.norm.weight": quantize(np.ones(96, np.float32), Scheme("f32")),
        "lm_head.weight": "model.embed_tokens.weight",
    }
    path = tmp_path / "model.safetensors"
    write_file(path, tensors)
    with nanofmt.open_file(path) as f:
        _same(f.tensor("lm_head.weight"), embed)
        assert f.records["lm_head.weight"].tie == "model.embed_tokens.weight"
        # a row range read straight from the memory map decodes like the same rows in memory
        rows = slice(17, 60)
        assert dequantize(f.tensor("lm_head.weight"), rows=rows).tobytes() == dequantize(embed, rows=rows).tobytes()
        f.verify()


def test_file_tie_to_a_missing_tensor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tie target"):
        write_file(tmp_path / "x.safetensors", {"a": "b"})
