"""One torch thread for the runtime tests: tiny matmuls gain nothing from more, and on a shared
machine a second thread that waits for a busy core turns microseconds into milliseconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
