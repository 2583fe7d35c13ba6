"""README's numpy-only example runs as written (docs that drift are worse than none)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_core_example() -> None:
    assert any("nanofmt.quantize" in b for b in BLOCKS)


@pytest.mark.parametrize("block", [b for b in BLOCKS if "import numpy as np, nanofmt" in b])
def test_readme_core_example_runs(block: str, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict[str, object] = {}
        exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    rows = namespace["rows"]
    assert getattr(rows, "shape") == (8, 4096)  # noqa: B009
    assert (tmp_path / "w.safetensors").is_file()
