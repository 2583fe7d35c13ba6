"""torch's weight-only int4/int8 matmul kernels, fed from Nano codes (a runtime file).

torch ships ``aten._weight_int4pack_mm_for_cpu`` / ``aten._weight_int4pack_mm`` (CUDA), which
compute ``x @ W.T`` with ``W = (q - 8) * scale + zero`` per group of ``group_size`` columns, and
``aten._weight_int8pack_mm`` with ``W = q * scale`` per row. Nano affine 4-bit is
``W = q * s + m``, so the kernel's ``scale = s`` and ``zero = m + 8 s``; affine_dq 4-bit first
decodes its group ``s`` and ``m`` (SPEC.md order). int8_row maps onto the int8 kernel as it is.

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


def notice(message: str) -> None:
    """Log ``message`` once per process (the fallback notice)."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        logger.warning("nanofmt: %s", message)


def _op(name: str) -> object | None:
    return getattr(torch.ops.aten, name, None)


def int4_unfit(scheme: Scheme, rows: int, cols: int, device: torch.device) -> str | None:
    """Why the int4 kernel cannot take this tensor, or None when it can."""
    if scheme.kind not in ("affine", "affine_dq") or scheme.bits != 4:
        return f"{scheme.name} {scheme.bits}-bit has no int4 kernel"
    if scheme.group_size not in INT4_GROUPS or cols % scheme.group_size:
        return f"columns {cols} are not whole groups of {scheme.group_size}"
    if device.type == "cpu":
        if _op("_weight_int4pack_mm_for_cpu") is None or _op("_convert_weight_to_int4pack_for_cpu") is None:
            return "this torch has no CPU int4 kernel"
        return None if rows % 16 == 0 else f"rows {rows} are not a multiple of 16"
    if device.type == "cuda":
        if _op("_weight_int4pack_mm") is None:
            return "this torch has no CUDA int4 kernel"
        if rows % 8 or cols % 32:
            return f"shape ({rows}, {cols}) does not tile by (8, 32)"
        return None
    return f"no int4 kernel on {device.type}"


def int8_unfit(scheme: Scheme, device: torch.device) -> str | None:
    if scheme.kind != "int8_row":
        return f"{scheme.name} has no int8 kernel"
    if _op("_weight_int8pack_mm") is None or device.type not in ("cpu", "cuda"):
        return f"no int8 kernel on {device.type}"
    return None


# --- int4 ------------------------------------------------------------------------------------


def scales_and_zeros(parts: dict[str | None, torch.Tensor], scheme: Scheme, cols: int) -> torch.Tensor:
    """The kernel's ``(groups, rows, 2)`` bf16 table: (s, m + 8 s) per group, computed in fp32."""
    scale, offset = group_scales_offsets(parts, scheme, cols)
    zero = offset + 8.0 * scale
    return torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()


def _inner_k_tiles(cols: int) -> int:
    return next(t for t in (8, 4, 2) if cols % (t * 16) == 0)


def pack_int4(codes: torch.Tensor, cols: int) -> torch.Tensor:
    """Nano 4-bit rows ``(rows, cols/2)`` -> the int4 kernel's layout on ``codes.device``."""
    if codes.device.type == "cuda":
        # The CUDA op takes two codes per byte, the even column in the high nibble: Nano's bytes
        # with their nibbles swapped.
        swapped = (codes << 4) | (codes >> 4)
        return torch.ops.aten._convert_weight_to_int4pack(swapped.contiguous(), _inner_k_tiles(cols))
    layout = cpu_int4_layout(codes.shape[0])
    return _pack_cpu_direct(codes, cols, layout) if layout is not None else _pack_cpu_op(codes, cols)


def _pack_cpu_op(codes: torch.Tensor, cols: int) -> torch.Tensor:
    """Through torch's own converter (a scalar loop that wants int32 codes): a block at a time."""
    rows = codes.shape[0]
    out = torch.empty(rows, cols // 2, dtype=torch.uint8)
    for r0 in range(0, rows, CONVERT_ROWS):
        block = unpack_codes(codes[r0 : r0 + CONVERT_ROWS], 4, cols).to(torch.int32)
        out[r0 : r0 + block.shape[0]] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(block, 1)
    return out


def _pack_blocks(q: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Blocks of ``n`` unpacked rows ``(blocks * n, cols)`` -> their bytes ``(blocks, cols, n/2)``."""
    shaped = q.reshape(-1, n, q.shape[1])
    lo, hi = (shaped[:, : n // 2], shaped[:, n // 2 :]) if mode == "split" else (shaped[:, 0::2], shaped[:, 1::2])
    return (lo | (hi << 4)).transpose(1, 2).contiguous()


def _pack_cpu_direct(codes: torch.Tensor, cols: int, layout: CpuInt4Layout) -> torch.Tensor:
    """The CPU layout written by the verified layout model, vectorised (the op is a scalar loop)."""
    rows, b = codes.shape[0], layout.block
    out = torch.empty(rows * cols // 2, dtype=torch.uint8)
    full = rows // b * b
    step = max(b, CONVERT_ROWS * 16 // b * b)
    for r0 in range(0, full, step):  # bounded transients: `step` rows unpacked at a time
        r1 = min(full, r0 + step)
        out[r0 * cols // 2 : r1 * cols // 2] = _pack_blocks(unpack_codes(codes[r0:r1], 4, cols), b, layout.full).reshape(-1)
    if full < rows:
        out[full * cols // 2 :] = _pack_blocks(unpack_codes(codes[full:], 4, cols), rows - full, layout.partial).reshape(-1)
    return out.view(rows, cols // 2)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, group: int, sz: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for 2-D ``x`` in any float dtype (run in bf16, returned in ``x.dtype``)."""
    xb = x.to(torch.bfloat16).contiguous()
    if packed.device.type == "cuda":
        y = torch.ops.aten._weight_int4pack_mm(xb, packed, group, sz)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, group, sz)
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
