"""Shared fixtures: small deterministic arrays and temporary paths; one torch thread."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread per module: tiny matmuls gain nothing from more, and on a shared machine a
    second thread that waits for a busy core turns microseconds into milliseconds."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
