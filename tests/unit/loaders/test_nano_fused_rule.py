"""``loaders/export.py: fused_kernel`` (torch-free, for the converter) is the runtime's rule.

nano_fused cannot import export.py (not a runtime file), so the rule is written twice; these
tests tie the two definitions over a grid, and the definition to what ``use_fused`` really does.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nanofmt
from nanofmt.loaders import export

torch = pytest.importorskip("torch")
M = pytest.importorskip("nanofmt.loaders.nano_modules")
from nanofmt.loaders import nano_fused, nano_load  # noqa: E402
from nanofmt.loaders.nano_kernels import Scheme  # noqa: E402

KINDS = ("affine", "affine_dq", "int8_row", "passthrough", "unknown")
BITS = (None, 0, 1, 2, 3, 4, 5, 6, 7, 8)
GROUPS = (None, 16, 32, 64, 128, 256, 512)
COLS = (0, 1, 31, 64, 100, 576, 4096)


def test_nano_fused_rule_export_twin_agrees_over_grid() -> None:
    for kind, bits, group, cols in itertools.product(KINDS, BITS, GROUPS, COLS):
        assert export.fused_kernel(kind, bits, group, cols) == nano_fused.fused_kernel(kind, bits, group, cols), (kind, bits, group, cols)
    assert (export.INT4_GROUPS, export.INT4_MAX_BITS) == (nano_fused.INT4_GROUPS, nano_fused.INT4_MAX_BITS)


def _schemes() -> list[nanofmt.Scheme]:
    out = [nanofmt.Scheme("int8_row", bits=8), nanofmt.Scheme("f16")]
    for bits, group in itertools.product((2, 3, 4, 5, 6, 8), (32, 64, 128)):
        out.append(nanofmt.Scheme("affine", bits=bits, group_size=group))
        out.append(nanofmt.Scheme("affine_dq", bits=bits, group_size=group, meta_bits=6))
    return out


@pytest.mark.parametrize("cols", [64, 100, 576])
def test_nano_fused_rule_matches_use_fused(cols: int) -> None:
    rng = np.random.default_rng(cols)
    for scheme in _schemes():
        runtime = Scheme(scheme.name, scheme.bits, scheme.group_size, scheme.meta_bits)
        rule = export.fused_kernel(runtime.kind, scheme.bits, scheme.group_size, cols)
        if not runtime.quantized:
            assert not rule
            continue
        qt = nanofmt.quantize(rng.standard_normal((24, cols)).astype(np.float32), scheme)
        linear = M.NanoLinear(cols, 24, runtime, dtype=torch.bfloat16, device="cpu")  # 24 rows: padded to 32 for the CPU kernel
        linear.set_parts({role: torch.from_numpy(np.ascontiguousarray(p)) for role, p in qt.parts.items()})
        assert nano_load._wants_fused(linear, torch.bfloat16, None, tied=False) == rule, scheme.label()
        reason = linear.use_fused()
        assert (reason is None) == rule, (scheme.label(), cols, reason)
        assert (linear.path != "chunked") == rule
