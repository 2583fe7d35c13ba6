"""SPEC.md's worked examples show the bytes and values of committed vectors, exactly.

An example is a ```text block whose first line is ``vector <path under spec/vectors>``; every other
line has one of the forms below, and an unknown form fails the test (so an example cannot silently
go unchecked).
"""

from __future__ import annotations

import importlib.util
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import nanofmt
from nanofmt.schemes import component_layout

ROOT = Path(__file__).resolve().parents[2]
SPEC_MD = ROOT / "SPEC.md"
BLOCKS = re.findall(r"```text\nvector (\S+)\n(.*?)```", SPEC_MD.read_text(), re.S)


def _hex(text: str) -> tuple[bytes, bool]:
    """Bytes written as hex pairs, and whether a trailing '...' marks them as a prefix only."""
    words = text.split()
    partial = bool(words) and words[-1] == "..."
    return bytes.fromhex("".join(words[:-1] if partial else words)), partial


def _check_line(f: nanofmt.NanoFile, data: bytes, line: str) -> None:
    key, _, value = line.partition(": ")
    if key == "prefix":
        assert data[:8] == _hex(value)[0]
    elif key == "header":
        (length,) = struct.unpack("<Q", data[:8])
        text = value.encode()
        assert data[8 : 8 + len(text)] == text and set(data[8 + len(text) : 8 + length]) <= {0x20}
    elif key.startswith("checksum "):
        name = key.split()[1]
        record = f.records[name]
        assert record.scheme is not None
        crc = 0
        for component in component_layout(record.scheme, record.shape, name).values():
            crc = zlib.crc32(f.component(component.name).tobytes(), crc)
        assert value == f.records[name].checksum == f"crc32:{crc:08x}"
    elif key.split()[0] in ("f32", "f16", "bf16"):
        dtype, name = key.split()
        words = value.split()
        words = words[:-1] if words[-1] == "..." else words
        decoded = np.ascontiguousarray(nanofmt.dequantize(f.tensor(name), dtype)).reshape(-1)[: len(words)]
        if dtype == "bf16":
            expected = np.array([int(w, 16) for w in words], np.uint16)
        else:
            expected = np.array([float(w) for w in words], np.float32 if dtype == "f32" else np.float16)
        assert decoded.tobytes() == expected.tobytes(), (name, decoded.tolist())
    elif key in f.entries:
        shown, partial = _hex(value)
        actual = f.component(key).tobytes()
        assert (actual[: len(shown)] if partial else actual) == shown, key
    else:
        raise AssertionError(f"unknown worked-example line: {line!r}")


def test_spec_md_has_worked_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(("vector", "body"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_spec_worked_example_matches_its_vector(vector: str, body: str) -> None:
    path = ROOT / "spec" / "vectors" / vector
    data = path.read_bytes()
    with nanofmt.open_file(path) as f:
        for line in body.strip().splitlines():
            _check_line(f, data, line)


@pytest.mark.parametrize("line", ["w_codes: 10 32 dc ff", "f32 w: -2 -1.5 -1 -0.5 4 4.5 5 5.25", "bf16 w: c001 ...", "checksum w: crc32:05811eca", "w_scales: 00 39 ..."])
def test_worked_example_check_fails_on_a_wrong_line(line: str) -> None:
    """Guard: the example check above can fail (each line is one byte or value off)."""
    path = ROOT / "spec" / "vectors" / "valid" / "example_affine_b4_1x8.safetensors"
    with nanofmt.open_file(path) as f, pytest.raises(AssertionError):
        _check_line(f, path.read_bytes(), line)


def test_spec_md_generated_tables_are_current() -> None:
    spec = importlib.util.spec_from_file_location("spec_gen", ROOT / "spec" / "gen.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = SPEC_MD.read_text()
    assert gen.render_spec_md(text, gen.render_blocks(gen.json.loads(gen.FORMAT_JSON.read_text()))) == text, "run python spec/gen.py"
