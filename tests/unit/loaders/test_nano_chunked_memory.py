"""The chunked path allocates next to nothing beyond its shared scratch, for every code width.

Instrumented with the torch profiler's allocation records (deterministic, unlike resident-set
figures): a 3/5/6-bit or tail-group (576 columns in groups of 128) weight used to unpack its
codes through int64 words and decode a tail group through a padded float copy, allocating one
to two times the scratch cap per block (several times the packed model per token, which the
allocator then kept resident).
"""

from __future__ import annotations

import numpy as np
import pytest

import nanofmt

torch = pytest.importorskip("torch")
M = pytest.importorskip("nanofmt.loaders.nano_modules")
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from nanofmt.loaders.nano_kernels import Scheme, unpack_codes  # noqa: E402

ROWS, COLS, CHUNK_ROWS = 512, 576, 64
SCHEMES = [
    nanofmt.Scheme("affine_dq", bits=3, group_size=32, meta_bits=4),
    nanofmt.Scheme("affine_dq", bits=5, group_size=128, meta_bits=6),
    nanofmt.Scheme("affine_dq", bits=6, group_size=128, meta_bits=6),
    nanofmt.Scheme("affine", bits=4, group_size=128),
    nanofmt.Scheme("affine_dq", bits=8, group_size=64, meta_bits=8),
]


def allocations(call: object) -> tuple[int, int]:
    """(largest single allocation, total bytes allocated) by torch ops while ``call()`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()  # type: ignore[operator]
    sizes = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
    return max(sizes, default=0), sum(sizes)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_nano_chunked_decode_allocates_little_beyond_scratch(scheme: nanofmt.Scheme) -> None:
    qt = nanofmt.quantize(np.random.default_rng(0).standard_normal((ROWS, COLS)).astype(np.float32), scheme)
    linear = M.NanoLinear(COLS, ROWS, Scheme(scheme.name, scheme.bits, scheme.group_size, scheme.meta_bits), dtype=torch.bfloat16, device="cpu")
    linear.set_parts({role: torch.from_numpy(np.ascontiguousarray(p)) for role, p in qt.parts.items()})
    linear.chunk_bytes = cap = CHUNK_ROWS * COLS * 4
    x = torch.randn(1, COLS, dtype=torch.bfloat16)
    want = x.double() @ torch.from_numpy(nanofmt.dequantize(qt, "f32")).double().T
    got = linear(x)  # first call: the shared scratch grows to its size
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    largest, total = allocations(lambda: linear(x))
    blocks = ROWS // CHUNK_ROWS
    assert largest <= cap // 8, (largest, cap)  # metadata and outputs only: no block-sized temporary
    assert total <= blocks * cap // 2, (total, blocks * cap)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7])
def test_nano_unpack_codes_into_buffer_allocates_nothing(bits: int) -> None:
    rows, n = 40, 100
    codes = torch.randint(0, 1 << bits, (rows, n), dtype=torch.uint8)
    padded = torch.zeros(rows, 104, dtype=torch.uint8)
    padded[:, :n] = codes
    bitpos = torch.arange(104 * bits).reshape(1, 104, bits)  # LSB-first bit stream, 8 codes per `bits` bytes
    stream = ((padded.unsqueeze(-1).to(torch.int64) >> (bitpos % bits)) & 1).reshape(rows, -1)
    packed = (stream.reshape(rows, -1, 8) << torch.arange(8)).sum(-1).to(torch.uint8)
    buffer = torch.empty(2 * rows * 104, dtype=torch.uint8)
    assert torch.equal(unpack_codes(packed, bits, n, out=buffer), codes)
    largest, _ = allocations(lambda: unpack_codes(packed, bits, n, out=buffer))
    assert largest <= 64  # a few scalar wrappers at most: nothing per code
