"""The torch runtime for Nano files (``nanofmt.loaders``). Needs torch, except ``export``.

Importing this package does not import torch: ``nanofmt verify`` reads
``nanofmt.loaders.export`` on machines without it. The torch names load on first use:

- ``load_model(path, device=..., dtype=...)``: a Nano folder as a transformers model.
- ``NanoLinear``, ``NanoEmbedding``, ``NanoTiedHead``: the modules over packed weights.
- ``NanoLoadError``: a folder that cannot be loaded (names the tensor).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_model", "NanoLinear", "NanoEmbedding", "NanoTiedHead", "NanoLoadError"]

_LAZY = {
    "load_model": "native",
    "NanoLinear": "nano_modules",
    "NanoEmbedding": "nano_modules",
    "NanoTiedHead": "nano_modules",
    "NanoLoadError": "nano_io",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
