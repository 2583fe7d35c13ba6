"""Decoding Nano packed rows in torch, bit-exact to SPEC.md's "Dequantization" section.

This is a runtime file: it is copied verbatim into every exported Nano model folder and runs
there without nanofmt, so it imports only torch and its siblings. The arithmetic follows the
numpy reference (``nanofmt/codec.py``) step for step, in float32:

- affine:     ``w = fl(fl(q * scale) + offset)``
- affine_dq:  ``scale = fl(super_scale * qscale)``, ``offset = fl(super_offset * qoffset)``, then affine
- int8_row:   ``w = fl(q * scale)``
- passthrough: the stored value, widened exactly

and ends with one round-to-nearest-even cast to the compute dtype. Each torch op below is one
IEEE operation on float32 (no fused multiply-add across ops), so the decoded weights equal
``nanofmt.dequantize`` bit for bit on CPU and CUDA.

Packed codes are LSB-first within each row (SPEC.md, "Bit packing"): code ``j`` occupies bits
``[j*bits, (j+1)*bits)`` of the row's little-endian bit stream, and every row is padded to a
multiple of 8 codes, so any row range decodes on its own.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .nano_hadamard import unpack_signs, unrotate_rows

FORMAT_MAJOR = 1  # the format versions this runtime reads: 1.x (SPEC.md, "Versions")
BLOCK_GROUPS = 8  # affine_dq: groups sharing one super scale and super offset
CODES_PER_UNIT = 8  # 8 codes of b bits are exactly b bytes

# safetensors dtype strings of Nano components and the torch dtype each is read as
TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "U8": torch.uint8, "I8": torch.int8}
PASSTHROUGH = {"f32": "F32", "f16": "F16", "bf16": "BF16"}  # scheme name -> stored dtype
KINDS = {"f32": "passthrough", "f16": "passthrough", "bf16": "passthrough", "int8_row": "int8_row", "affine": "affine", "affine_dq": "affine_dq"}


class Scheme(NamedTuple):
    """A record's scheme fields (``None`` where the scheme takes no such parameter).

    ``transform`` is ``"none"`` or ``"hadamard"`` (format 1.1, with ``transform_block``): the
    stored rows are rotated, see ``nano_hadamard``.
    """

    name: str
    bits: int | None = None
    group_size: int | None = None
    meta_bits: int | None = None
    transform: str = "none"
    transform_block: int | None = None

    @property
    def kind(self) -> str:
        return KINDS[self.name]

    @property
    def quantized(self) -> bool:
        return self.kind != "passthrough"

    @property
    def rotated(self) -> bool:
        return self.transform == "hadamard"


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def component_layout(scheme: Scheme, shape: tuple[int, ...]) -> dict[str | None, tuple[str, tuple[int, ...]]]:
    """Role -> (stored dtype, stored shape), in the spec's component (and checksum) order:
    the scheme's components, then the transform's (``signs``).

    A copy of ``spec/format.json``'s shape formulas for format 1.x; a unit test checks it against
    ``nanofmt.schemes.component_layout`` so the two cannot drift.
    """
    if scheme.kind == "passthrough":
        return {None: (PASSTHROUGH[scheme.name], tuple(shape))}
    rows, cols = shape
    layout = _scheme_layout(scheme, rows, cols)
    if scheme.rotated:
        layout["signs"] = ("U8", (cols // 8,))
    return layout


def _scheme_layout(scheme: Scheme, rows: int, cols: int) -> dict[str | None, tuple[str, tuple[int, ...]]]:
    if scheme.kind == "int8_row":
        return {"codes": ("I8", (rows, cols)), "scales": ("F16", (rows,))}
    assert scheme.bits is not None and scheme.group_size is not None
    codes = ("U8", (rows, _ceil(cols, CODES_PER_UNIT) * scheme.bits))
    groups = _ceil(cols, scheme.group_size)
    if scheme.kind == "affine":
        return {"codes": codes, "scales": ("F16", (rows, groups)), "offsets": ("F16", (rows, groups))}
    assert scheme.meta_bits is not None
    meta = ("U8", (rows, _ceil(groups, CODES_PER_UNIT) * scheme.meta_bits))
    supers = ("F16", (rows, _ceil(groups, BLOCK_GROUPS)))
    return {"codes": codes, "qscales": meta, "qoffsets": meta, "super_scales": supers, "super_offsets": supers}


def unpack_codes(packed: torch.Tensor, bits: int, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(rows, ceil(n/8)*bits)`` uint8 -> ``(rows, n)`` uint8 codes (LSB-first within each row).

    ``out``, when given, is a uint8 buffer of at least ``2 * rows * ceil(n/8) * 8`` elements: the
    codes are written into its first half, the unpacking's intermediates into the second (the
    chunked path passes its scratch, so decoding a block allocates nothing). Without it, one
    buffer of that size is allocated. Every width works in uint8 only: a wider integer
    intermediate costs 8-24 bytes per code, which is what the chunked path's peaks were made of.
    """
    rows, width = packed.shape
    if width != _ceil(n, CODES_PER_UNIT) * bits:
        raise ValueError(f"packed rows of {width} bytes cannot hold {n} codes of {bits} bits")
    if bits == 8:
        return packed[:, :n]
    units = width // bits  # 8 codes of b bits are exactly b bytes
    size = rows * units * CODES_PER_UNIT
    if out is None:
        out = torch.empty(2 * size, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    if 8 % bits == 0:  # 1, 2, 4 bits: a byte holds whole codes; shift whole rows (contiguous reads)
        per = 8 // bits
        whole = [out[size + j * rows * width : size + (j + 1) * rows * width].view(rows, width) for j in range(per)]
        for j, part in enumerate(whole):
            torch.bitwise_right_shift(packed, j * bits, out=part)
            part.bitwise_and_(mask)
        codes = out[:size].view(rows, width, per)
        torch.stack(whole, dim=-1, out=codes)  # stacking beats strided writes 2x on CPU
        return codes.view(rows, width * per)[:, :n]
    # code j of every unit: its low bits from byte j*b // 8, its high bits (if it straddles) from
    # the next byte; uint8 left shifts drop what lies beyond the code, the mask the rest.
    parts = packed.reshape(rows, units, bits)
    shifted = [out[size + j * rows * units : size + (j + 1) * rows * units].view(rows, units) for j in range(CODES_PER_UNIT)]
    spill = out[: rows * units].view(rows, units)  # the first half is free until the final stack
    for j, part in enumerate(shifted):
        byte, shift = divmod(j * bits, 8)
        torch.bitwise_right_shift(parts[..., byte], shift, out=part)
        if shift + bits > 8:
            torch.bitwise_left_shift(parts[..., byte + 1], 8 - shift, out=spill)
            part.bitwise_or_(spill)
        part.bitwise_and_(mask)
    full = out[:size].view(rows, units, CODES_PER_UNIT)
    torch.stack(shifted, dim=-1, out=full)
    return full.view(rows, units * CODES_PER_UNIT)[:, :n]


def _expand_blocks(per_block: torch.Tensor, groups: int) -> torch.Tensor:
    return per_block.repeat_interleave(BLOCK_GROUPS, dim=1)[:, :groups]


def group_scales_offsets(parts: dict[str | None, torch.Tensor], scheme: Scheme, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group float32 scale and offset ``(rows, groups)`` of an affine or affine_dq tensor."""
    if scheme.kind == "affine":
        return parts["scales"].float(), parts["offsets"].float()
    assert scheme.group_size is not None and scheme.meta_bits is not None
    groups = _ceil(cols, scheme.group_size)
    qscales = unpack_codes(parts["qscales"], scheme.meta_bits, groups).float()
    qoffsets = unpack_codes(parts["qoffsets"], scheme.meta_bits, groups).float()
    scale = _expand_blocks(parts["super_scales"].float(), groups) * qscales
    offset = _expand_blocks(parts["super_offsets"].float(), groups) * qoffsets
    return scale, offset


def _affine_values(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group: int, out: torch.Tensor) -> torch.Tensor:
    """``out = fl(fl(q * scale) + offset)``, each group's scale and offset broadcast along its row.

    The whole groups go as one ``(rows, groups, group)`` view, a short tail group (``cols`` not a
    multiple of ``group``) on its own: no padded copy of the block.
    """
    rows, cols = q.shape
    whole = cols // group
    if whole:
        view = out[:, : whole * group].view(rows, whole, group)
        view.copy_(q[:, : whole * group].view(rows, whole, group))
        view.mul_(scale[:, :whole].unsqueeze(-1))
        view.add_(offset[:, :whole].unsqueeze(-1))
    if whole * group < cols:
        tail = out[:, whole * group :]
        tail.copy_(q[:, whole * group :])
        tail.mul_(scale[:, whole : whole + 1])
        tail.add_(offset[:, whole : whole + 1])
    return out


def decode_rows(
    parts: dict[str | None, torch.Tensor],
    scheme: Scheme,
    cols: int,
    out: torch.Tensor | None = None,
    codes: torch.Tensor | None = None,
    code_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 values ``(rows, cols)`` of the rows whose components are in ``parts`` (row-sliced),
    as stored: a ``hadamard`` record's rows come out rotated (:func:`decode_values` undoes that).

    ``out``, when given, is a float32 ``(rows, cols)`` buffer to write into (the chunked linear
    reuses one scratch buffer this way). ``codes``, when given, are the rows' affine codes
    already unpacked to ``(rows, cols)`` uint8 (read from a kernel layout); ``parts`` then needs
    only the metadata. ``code_buffer`` is uint8 scratch for unpacking (see :func:`unpack_codes`).
    """
    first = next(iter(parts.values()))
    rows = first.shape[0] if first.dim() else 1
    if out is None:
        out = torch.empty(rows, cols, dtype=torch.float32, device=first.device)
    kind = scheme.kind
    if kind == "passthrough":
        return out.copy_(parts[None].reshape(rows, cols))
    if kind == "int8_row":
        out.copy_(parts["codes"])
        return out.mul_(parts["scales"].float().unsqueeze(-1))
    assert scheme.bits is not None and scheme.group_size is not None
    scale, offset = group_scales_offsets(parts, scheme, cols)
    q = codes if codes is not None else unpack_codes(parts["codes"], scheme.bits, cols, out=code_buffer)
    return _affine_values(q, scale, offset, scheme.group_size, out)


def decode_values(parts: dict[str | None, torch.Tensor], scheme: Scheme, cols: int, codes: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 logical values of the rows in ``parts``: :func:`decode_rows`, then the record's
    transform undone (its ``signs`` component is whole, not row-sliced); bit-exact to the reference."""
    values = decode_rows(parts, scheme, cols, codes=codes)
    if scheme.rotated:
        assert scheme.transform_block is not None
        values = unrotate_rows(values, unpack_signs(parts["signs"], cols).to(values.device), scheme.transform_block)
    return values


def stored_bytes(scheme: Scheme, shape: tuple[int, ...]) -> int:
    """Bytes of all components of one logical tensor."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1}
    return sum(math.prod(s) * sizes[d] for d, s in component_layout(scheme, shape).values())
