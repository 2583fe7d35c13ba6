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
    >>> fused_kernel("affine_dq", 3, 128, 576), fused_kernel("affine", 5, 32, 576)
    (True, False)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["RUNTIME_FILES", "ENTRY_FILE", "AUTO_MAP", "fused_kernel", "runtime_files", "runtime_sha256"]

ENTRY_FILE = "modeling_nano.py"
# The entry file and every sibling it imports (transformers copies them together).
RUNTIME_FILES = (ENTRY_FILE, "nano_load.py", "nano_io.py", "nano_modules.py", "nano_fused.py", "nano_kernels.py", "nano_hadamard.py")
AUTO_MAP = {"AutoModelForCausalLM": "modeling_nano.NanoForCausalLM", "AutoModel": "modeling_nano.NanoModel"}
# The runtime's fused-kernel rule (nano_fused.py: INT4_GROUPS, INT4_MAX_BITS), restated here
# because that file imports torch; tests/unit/loaders ties the two over a grid.
INT4_GROUPS = (32, 64, 128, 256)
INT4_MAX_BITS = 4


def fused_kernel(kind: str, bits: int | None, group_size: int | None, cols: int) -> bool:
    """Whether the runtime multiplies a weight of this scheme on a fused kernel (torch-free).

    True for ``int8_row``, and for ``affine`` / ``affine_dq`` with at most 4 bits and a group of
    32-256 at any ``cols`` (2-3 bit codes are held at 4 bits per weight in memory; a tail group
    is padded). Everything else decodes blocks every token: several times slower. The runtime
    uses the fused path where the device has the kernels (CPU, CUDA), by default for bfloat16
    compute. ``kind`` is ``"int8_row"``, ``"affine"``, ``"affine_dq"`` or ``"passthrough"``.
    """
    if kind == "int8_row":
        return True
    return kind in ("affine", "affine_dq") and bits is not None and 1 <= bits <= INT4_MAX_BITS and group_size in INT4_GROUPS and cols >= 1


def runtime_files() -> dict[str, bytes]:
    """File name -> content of every runtime file, in RUNTIME_FILES order."""
    here = Path(__file__).parent
    return {name: (here / name).read_bytes() for name in RUNTIME_FILES}


def runtime_sha256() -> dict[str, str]:
    """File name -> sha256 hex of its content (what config.json records)."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in runtime_files().items()}
