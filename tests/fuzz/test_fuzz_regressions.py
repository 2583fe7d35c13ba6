"""Every input that once broke the reader (spec/vectors/regressions/) keeps the contract now."""

from __future__ import annotations

import json
from pathlib import Path

import nanofmt_fuzz_oracle as oracle
import numpy as np
import pytest

import nanofmt
from nanofmt.bits import unpack_rows

REGRESSIONS = oracle.VECTORS / "regressions"
EXPECTED = {k: v for k, v in json.loads((REGRESSIONS / "expected.json").read_text()).items() if not k.startswith("$")}


def test_regressions_every_file_has_an_expectation() -> None:
    assert sorted(p.name for p in REGRESSIONS.glob("*.safetensors")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_regressions_replay_keeps_the_contract(workdir: Path, name: str) -> None:
    reasons = oracle.exercise_bytes((REGRESSIONS / name).read_bytes(), workdir, trace=True)
    expected = EXPECTED[name]["reason"]
    with pytest.raises(nanofmt.NanoError) if expected else _nothing():
        nanofmt.open_file(workdir / "input.safetensors").close()
    assert (reasons[-1:] if expected else reasons) == ([expected] if expected else [])


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_regressions_rank0_tensor_dequantizes(tmp_path: Path) -> None:
    """Found by the structured fuzzer: dequantize() once indexed a rank-0 tensor by rows (IndexError)."""
    path = tmp_path / "scalar.safetensors"
    nanofmt.write_file(path, {"s": nanofmt.quantize(np.array(1.5, np.float16), nanofmt.Scheme("f16"))})
    with nanofmt.open_file(path) as f:
        assert float(nanofmt.dequantize(f.tensor("s"))) == 1.5


@pytest.mark.parametrize("bits", range(1, 9))
def test_regressions_unpack_zero_rows(bits: int) -> None:
    """Found while writing the unpacker fuzzer: the 1/2/4-bit lookup-table path failed to reshape zero rows."""
    assert unpack_rows(np.zeros((0, bits), np.uint8), bits, 8).shape == (0, 8)
