"""The runtime files an exported Nano folder carries (no torch import here).

The converter copies :func:`runtime_files` into every Nano model folder and records each
file's sha256 in ``config.json`` (``quantization_config.runtime_sha256``); ``nanofmt verify``
compares them. The files are this package's own modules, byte for byte: the folder runs the
same code as ``nanofmt.loaders`` (never a hand-edited copy).

Example:
    >>> files = runtime_files()
    >>> sorted(files) == sorted(RUNTIME_FILES)
    True
    >>> len(runtime_sha256()["modeling_nano.py"])
    64
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["RUNTIME_FILES", "ENTRY_FILE", "AUTO_MAP", "runtime_files", "runtime_sha256"]

ENTRY_FILE = "modeling_nano.py"
# The entry file and every sibling it imports (transformers copies them together).
RUNTIME_FILES = (ENTRY_FILE, "nano_load.py", "nano_io.py", "nano_modules.py", "nano_fused.py", "nano_kernels.py", "nano_hadamard.py")
AUTO_MAP = {"AutoModelForCausalLM": "modeling_nano.NanoForCausalLM", "AutoModel": "modeling_nano.NanoModel"}


def runtime_files() -> dict[str, bytes]:
    """File name -> content of every runtime file, in RUNTIME_FILES order."""
    here = Path(__file__).parent
    return {name: (here / name).read_bytes() for name in RUNTIME_FILES}


def runtime_sha256() -> dict[str, str]:
    """File name -> sha256 hex of its content (what config.json records)."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in runtime_files().items()}
