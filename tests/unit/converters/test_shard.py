"""The shard writer: measured SQNR values in the records without moving data or changing the planned size."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import nanofmt
from nanofmt import Scheme, TensorPlan
from nanofmt.converters import ConvertError
from nanofmt.converters.shard import ShardWriter, shard_size, sqnr_value

SCHEMES = [Scheme("affine_dq", bits=4, group_size=32, meta_bits=6), Scheme("int8_row", bits=8), Scheme("affine", bits=3, group_size=64), Scheme("f16")]


@pytest.mark.parametrize(("signal", "noise", "expected"), [(1.0, 0.0, None), (0.0, 1.0, None), (100.0, 1.0, 20.0), (1.0, 1e-200, 999.99), (1e-20, 1.0, -99.99), (1.0, float("inf"), None)])
def test_shard_sqnr_value(signal, noise, expected):
    assert sqnr_value(signal, noise) == expected


@pytest.mark.parametrize("values", [[None, None, None, None], [-99.99, 999.99, -0.0, 5.5], [12.34, None, 0.0, 100.0]])
def test_shard_measured_values_keep_the_planned_size(tmp_path, rng, values):
    tensors = {f"t{i}": nanofmt.quantize(rng.standard_normal((5, 70)).astype(np.float32), s) for i, s in enumerate(SCHEMES)}
    plan = [TensorPlan(n, qt.shape, qt.dtype, qt.scheme) for n, qt in tensors.items()]
    plan.append(TensorPlan("head", (5, 70), "f32", tie="t0"))
    measured = frozenset(tensors)
    path = tmp_path / "s.safetensors"
    writer = ShardWriter(path, plan, measured, {"producer": "test"})
    for (name, qt), value in zip(tensors.items(), values, strict=True):
        writer.add(name, qt, value)
    writer.close()
    assert os.path.getsize(path) == shard_size(plan, measured, {"producer": "test"})
    with nanofmt.open_file(path) as f:
        f.verify()
        assert [f.records[n].extra["sqnr_db"] for n in tensors] == values
        assert f.records["head"].tie == "t0" and "sqnr_db" not in f.records["head"].extra
        assert f.extra["producer"] == "test"
        for name, qt in tensors.items():
            assert np.array_equal(nanofmt.dequantize(f.tensor(name)), nanofmt.dequantize(qt))


def test_shard_unmeasured_records_carry_no_sqnr(tmp_path):
    qt = nanofmt.quantize(np.ones((2, 32), np.float32), Scheme("f32"))
    plan = [TensorPlan("w", (2, 32), "f32", qt.scheme)]
    writer = ShardWriter(tmp_path / "s.safetensors", plan, frozenset(), {})
    writer.add("w", qt)
    writer.close()
    with nanofmt.open_file(tmp_path / "s.safetensors") as f:
        assert "sqnr_db" not in f.records["w"].extra


def test_shard_rejects_out_of_plan_tensors(tmp_path, rng):
    a = nanofmt.quantize(rng.standard_normal((2, 32)).astype(np.float32), SCHEMES[1])
    plan = [TensorPlan("a", a.shape, "f32", a.scheme), TensorPlan("b", a.shape, "f32", a.scheme)]
    writer = ShardWriter(tmp_path / "s.safetensors", plan, frozenset(), {})
    with pytest.raises(ValueError, match="expected 'a' next"):
        writer.add("b", a)
    with pytest.raises(ValueError, match="planned"):
        writer.add("a", nanofmt.quantize(rng.standard_normal((2, 32)).astype(np.float32), SCHEMES[0]))
    writer.abort()
    assert not (tmp_path / "s.safetensors").exists()


def test_shard_convert_error_survives_pickling():
    # errors raised in worker processes travel back pickled
    err = pickle.loads(pickle.dumps(ConvertError("nonfinite_weights", "holds NaN", tensor="w")))
    assert (err.reason, err.tensor, str(err)) == ("nonfinite_weights", "w", "tensor 'w': holds NaN [nonfinite_weights]")
    with pytest.raises(ValueError, match="unknown reason"):
        ConvertError("nope", "x")
