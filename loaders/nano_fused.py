"""torch's weight-only int4/int8 matmul kernels, fed from Nano codes (a runtime file).

torch ships ``aten._weight_int4pack_mm_for_cpu`` / ``aten._weight_int4pack_mm`` (CUDA), which
compute ``x @ W.T`` with ``W = (q - 8) * scale + zero`` per group of ``group_size`` columns, and
``aten._weight_int8pack_mm`` with ``W = q * scale`` per row. Nano affine 4-bit is
``W = q * s + m``, so the kernel's ``scale = s`` and ``zero = m + 8 s``; affine_dq 4-bit first
decodes its group ``s`` and ``m`` (SPEC.md order). int8_row maps onto the int8 kernel as it is.

Which schemes run fused is :func:`fused_kernel` (``loaders/export.py`` keeps a torch-free twin
for the converter; a unit test ties the two):

- 2- and 3-bit codes (0..3, 0..7) are valid int4 codes, so any affine/affine_dq tensor of at
  most 4 bits takes the int4 kernel unchanged. Its codes are widened to the int4 layout in
  memory: **4 bits per weight in RAM**, not the 2-3 of the file (the notice says so). They are
  centred on the kernel's 8 (``q + 8 - 2**(b-1)``, :func:`code_shift`), so its ``zero`` is the
  group's mid value ``m + 2**(b-1) s``, as large as the weights: a bf16 ``m + 8 s`` would carry
  an error of 2**-9 of ``8 s``, several times a 2-bit group's weights.
- A row that is not whole groups (576 columns in groups of 128) is padded to whole groups: zero
  codes in the repacked weight, ``K`` rounded up, and the activation zero-padded to match
  (``x_pad @ W_pad.T == x @ W.T`` exactly: the padded weights meet zeros). Rows are padded to
  the CPU kernel's multiple of 16 the same way, with zero scales, and the extra outputs dropped.

The kernels take their scales and zeros in the activation dtype. They are fast only for
bfloat16 (the CPU fp32/fp16 variants are scalar loops), so scales and zeros are rounded to bf16:
the result equals the chunked path up to that rounding (relative 2**-9 of a scale or zero, a few
percent of one quantization step) and the kernel's own accumulation order. Tests compare the two
paths with a tolerance sized to that.

The codes are repacked once, at load, into the kernel's private layout. For the CPU layout
(blocks of rows, two rows' codes per byte) a layout model is checked against the real op on a
small probe before it is trusted for reading rows back (the tied embedding gathers from it).
Anything unavailable falls back to the chunked path with a one-line notice.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from .nano_kernels import Scheme, group_scales_offsets, unpack_codes

logger = logging.getLogger("nanofmt.runtime")
_NOTICES: set[str] = set()
CONVERT_ROWS = 256  # rows converted per call at load: bounds the int32 transient, block aligned
INT4_GROUPS = (32, 64, 128, 256)
INT4_MAX_BITS = 4
ROW_TILE = 16  # the CPU int4 converter wants rows in multiples of 16 (CUDA: 8)


def notice(message: str) -> None:
    """Log ``message`` once per process (the fallback notice)."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        logger.warning("nanofmt: %s", message)


def _op(name: str) -> object | None:
    return getattr(torch.ops.aten, name, None)


def fused_kernel(kind: str, bits: int | None, group_size: int | None, cols: int) -> bool:
    """Whether a scheme runs on a fused kernel (where the device has them; bf16 compute by default).

    int8_row always; affine and affine_dq with at most 4 bits and a kernel group size, whatever
    ``cols`` (a tail group is padded). Everything else decodes blocks (the chunked path).
    ``loaders/export.py: fused_kernel`` is the same rule without torch.
    """
    if kind == "int8_row":
        return True
    return kind in ("affine", "affine_dq") and bits is not None and 1 <= bits <= INT4_MAX_BITS and group_size in INT4_GROUPS and cols >= 1


def code_shift(bits: int) -> int:
    """What the int4 layout adds to ``bits``-bit codes: ``8 - 2**(bits-1)`` (0 for 4 bits)."""
    return 8 - (1 << (bits - 1))


def int4_padded(rows: int, cols: int, group: int) -> tuple[int, int]:
    """The kernel's ``(N, K)`` for a ``(rows, cols)`` weight: rows to 16, columns to whole groups."""
    return -(-rows // ROW_TILE) * ROW_TILE, -(-cols // group) * group


def int4_unfit(scheme: Scheme, rows: int, cols: int, device: torch.device) -> str | None:
    """Why the int4 kernel cannot take this tensor, or None when it can."""
    if scheme.kind not in ("affine", "affine_dq") or not fused_kernel(scheme.kind, scheme.bits, scheme.group_size, cols):
        return f"{scheme.name} {scheme.bits}-bit g{scheme.group_size} has no int4 kernel"
    if device.type == "cpu":
        if _op("_weight_int4pack_mm_for_cpu") is None or _op("_convert_weight_to_int4pack_for_cpu") is None:
            return "this torch has no CPU int4 kernel"
        return None
    if device.type == "cuda":
        return "this torch has no CUDA int4 kernel" if _op("_weight_int4pack_mm") is None else None
    return f"no int4 kernel on {device.type}"


def int8_unfit(scheme: Scheme, device: torch.device) -> str | None:
    if scheme.kind != "int8_row":
        return f"{scheme.name} has no int8 kernel"
    if _op("_weight_int8pack_mm") is None or device.type not in ("cpu", "cuda"):
        return f"no int8 kernel on {device.type}"
    return None


# --- int4 ------------------------------------------------------------------------------------


def scales_and_zeros(parts: dict[str | None, torch.Tensor], scheme: Scheme, cols: int, padded_rows: int | None = None) -> torch.Tensor:
    """The kernel's ``(groups, padded_rows, 2)`` bf16 table: (s, m + 2**(b-1) s) per group (the
    codes are shifted by :func:`code_shift`), computed in fp32; padding rows get zeros."""
    assert scheme.bits is not None
    scale, offset = group_scales_offsets(parts, scheme, cols)
    zero = offset + float(8 - code_shift(scheme.bits)) * scale
    table = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16)
    rows = table.shape[1]
    if padded_rows is not None and padded_rows > rows:
        table = torch.nn.functional.pad(table, (0, 0, 0, padded_rows - rows))
    return table.contiguous()


def _inner_k_tiles(cols: int) -> int:
    return next(t for t in (8, 4, 2) if cols % (t * 16) == 0)


def _codes(codes: torch.Tensor, bits: int, cols: int, r0: int, r1: int, k: int) -> torch.Tensor:
    """Codes ``(r1 - r0, k)`` uint8 of Nano rows ``r0:r1`` (any width <= 4 bits) plus
    :func:`code_shift`, zero beyond the stored rows and columns (the kernel's padding)."""
    rows = codes.shape[0]
    got = unpack_codes(codes[min(r0, rows) : min(r1, rows)], bits, cols)
    if code_shift(bits):
        got = got + code_shift(bits)
    if got.shape == (r1 - r0, k):
        return got
    out = torch.zeros(r1 - r0, k, dtype=torch.uint8, device=codes.device)
    out[: got.shape[0], :cols] = got
    return out


def pack_int4(codes: torch.Tensor, cols: int, bits: int = 4, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Nano rows of ``bits``-bit codes -> the int4 kernel's layout of the padded ``shape = (N, K)``
    (default: the stored rows and ``cols``) on ``codes.device``."""
    n, k = shape or (codes.shape[0], cols)
    if codes.device.type == "cuda":
        # The CUDA op takes two codes per byte, the even column in the high nibble.
        nibbles = torch.empty(n, k // 2, dtype=torch.uint8, device=codes.device)
        for r0 in range(0, n, CONVERT_ROWS):
            q = _codes(codes, bits, cols, r0, min(n, r0 + CONVERT_ROWS), k)
            nibbles[r0 : r0 + q.shape[0]] = (q[:, 0::2] << 4) | q[:, 1::2]
        return torch.ops.aten._convert_weight_to_int4pack(nibbles, _inner_k_tiles(k))
    layout = cpu_int4_layout(n)
    return _pack_cpu_direct(codes, cols, layout, bits, (n, k)) if layout is not None else _pack_cpu_op(codes, cols, bits, (n, k))


def _pack_cpu_op(codes: torch.Tensor, cols: int, bits: int = 4, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Through torch's own converter (a scalar loop that wants int32 codes): a block at a time."""
    n, k = shape or (codes.shape[0], cols)
    out = torch.empty(n, k // 2, dtype=torch.uint8)
    for r0 in range(0, n, CONVERT_ROWS):
        block = _codes(codes, bits, cols, r0, min(n, r0 + CONVERT_ROWS), k).to(torch.int32)
        out[r0 : r0 + block.shape[0]] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(block, 1)
    return out


def _pack_blocks(q: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Blocks of ``n`` unpacked rows ``(blocks * n, cols)`` -> their bytes ``(blocks, cols, n/2)``."""
    shaped = q.reshape(-1, n, q.shape[1])
    lo, hi = (shaped[:, : n // 2], shaped[:, n // 2 :]) if mode == "split" else (shaped[:, 0::2], shaped[:, 1::2])
    return (lo | (hi << 4)).transpose(1, 2).contiguous()


def _pack_cpu_direct(codes: torch.Tensor, cols: int, layout: CpuInt4Layout, bits: int = 4, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """The CPU layout written by the verified layout model, vectorised (the op is a scalar loop)."""
    (n, k), b = shape or (codes.shape[0], cols), layout.block
    out = torch.empty(n * k // 2, dtype=torch.uint8)
    full = n // b * b
    step = max(b, CONVERT_ROWS * 16 // b * b)
    for r0 in range(0, full, step):  # bounded transients: `step` rows unpacked at a time
        r1 = min(full, r0 + step)
        out[r0 * k // 2 : r1 * k // 2] = _pack_blocks(_codes(codes, bits, cols, r0, r1, k), b, layout.full).reshape(-1)
    if full < n:
        out[full * k // 2 :] = _pack_blocks(_codes(codes, bits, cols, full, n, k), n - full, layout.partial).reshape(-1)
    return out.view(n, k // 2)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, group: int, sz: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``x @ W.T`` for 2-D ``x`` in any float dtype (run in bf16, returned in ``x.dtype``).

    ``x`` narrower than the kernel's ``K`` (``group`` times the table's groups) is zero-padded;
    outputs beyond ``rows`` (padding rows) are dropped.
    """
    xb = x.to(torch.bfloat16)
    k = sz.shape[0] * group
    if xb.shape[-1] < k:
        xb = torch.nn.functional.pad(xb, (0, k - xb.shape[-1]))
    xb = xb.contiguous()
    if packed.device.type == "cuda":
        y = torch.ops.aten._weight_int4pack_mm(xb, packed, group, sz)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, group, sz)
    if rows is not None and rows < y.shape[1]:
        y = y[:, :rows].contiguous()
    return y.to(x.dtype)


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x.contiguous(), codes, scales.to(x.dtype))


# --- reading rows back from the CPU int4 layout ----------------------------------------------


class CpuInt4Layout(NamedTuple):
    """Where the CPU op puts row ``r``'s codes: blocks of ``block`` rows, ``K`` bytes columns each.

    Within a block of ``n`` rows the bytes form ``(K, n/2)``; row ``r`` sits in byte column ``c``,
    nibble ``h``: ``split`` puts rows ``r`` and ``r + n/2`` in one byte, ``pair`` rows ``2i`` and
    ``2i + 1``. Full and partial (last) blocks may differ.
    """

    block: int
    full: str
    partial: str


def gather_int4_cpu(packed: torch.Tensor, ids: torch.Tensor, rows: int, cols: int, layout: CpuInt4Layout) -> torch.Tensor:
    """Codes ``(len(ids), cols)`` uint8 of rows ``ids`` of a CPU-layout int4 matrix."""
    ids = ids.to(torch.int64)
    b = layout.block
    start = ids // b * b
    r = ids - start
    n = torch.clamp(rows - start, max=b)
    half = n // 2
    split = torch.tensor(layout.full == "split") if layout.partial == layout.full else torch.where(n == b, layout.full == "split", layout.partial == "split")
    column = torch.where(split, r % half, r // 2)
    nibble = torch.where(split, r // half, r % 2)
    k = torch.arange(cols, dtype=torch.int64)
    index = (start * (cols // 2)).unsqueeze(1) + k.unsqueeze(0) * half.unsqueeze(1) + column.unsqueeze(1)
    values = packed.reshape(-1)[index]
    return (values >> (4 * nibble).to(torch.uint8).unsqueeze(1)) & 15


_LAYOUTS: dict[int, CpuInt4Layout | None] = {}


def cpu_int4_layout(rows: int) -> CpuInt4Layout | None:
    """The layout model that reproduces the CPU op for a matrix of ``rows`` rows, or None.

    Found by packing small random probes with the real op (two full blocks, the same partial
    block as ``rows``, converted both whole and in ``CONVERT_ROWS`` pieces) and keeping the first
    candidate model that reads every probe row back exactly.
    """
    for block in (64, 32, 128, 16):
        key = block * 1000 + rows % block
        if key in _LAYOUTS:
            found = _LAYOUTS[key]
            if found is not None:
                return found
            continue
        _LAYOUTS[key] = _probe(block, rows % block)
        if _LAYOUTS[key] is not None:
            return _LAYOUTS[key]
    return None


def _probe(block: int, tail: int) -> CpuInt4Layout | None:
    gen = torch.Generator().manual_seed(block + tail)
    cols = 64
    n = 2 * CONVERT_ROWS + tail if CONVERT_ROWS % block == 0 else 2 * block + tail
    q = torch.randint(0, 16, (n, cols), dtype=torch.int32, generator=gen)
    try:
        whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    except RuntimeError:
        return None
    nano = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    if whole.shape != (n, cols // 2) or not torch.equal(_pack_cpu_op(nano, cols), whole):
        return None
    ids = torch.arange(n)
    for full in ("split", "pair"):
        for partial in ("pair", "split"):
            candidate = CpuInt4Layout(block, full, partial)
            reads = torch.equal(gather_int4_cpu(whole, ids, n, cols, candidate), q.to(torch.uint8))
            if reads and torch.equal(_pack_cpu_direct(nano, cols, candidate), whole):
                return candidate
    return None
