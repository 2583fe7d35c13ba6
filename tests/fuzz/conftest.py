"""Makes the fuzzing oracle in ``fuzz/oracle.py`` importable as ``nanofmt_fuzz_oracle``.

The atheris harnesses and these hypothesis fuzzers check the same contract with the same code.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ORACLE_PATH = Path(__file__).resolve().parents[2] / "fuzz" / "oracle.py"
_spec = importlib.util.spec_from_file_location("nanofmt_fuzz_oracle", ORACLE_PATH)
assert _spec is not None and _spec.loader is not None
oracle = importlib.util.module_from_spec(_spec)
sys.modules["nanofmt_fuzz_oracle"] = oracle
_spec.loader.exec_module(oracle)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """One scratch folder for all fuzz inputs (hypothesis refuses function-scoped fixtures)."""
    with tempfile.TemporaryDirectory(prefix="nanofmt-fuzz-") as tmp:
        yield Path(tmp)
