"""The ``hadamard`` transform in torch (a runtime file: imports only torch).

A record with ``"transform": "hadamard"`` stores rotated rows: decoding gives ``u`` (the scheme's
values, as without a transform), and the logical row is ``w = (u @ H) * s``, where ``H`` is the
normalized Sylvester Hadamard matrix of each block of ``transform_block`` consecutive columns
(symmetric, ``H @ H = I``) and ``s`` the column signs (SPEC.md 6.2, 10.6). Two directions:

- :func:`unrotate_rows` turns decoded rows into logical ones (the embedding's gathered rows, a
  weight decoded whole at load). It runs the spec's fast Walsh-Hadamard stages in their order,
  one float32 addition or subtraction per element per stage, then the exact power-of-two scale
  and the signs: bit for bit ``nanofmt.dequantize``.
- :func:`rotate_input` serves ``y = x @ W.T = (H (s * x)) @ U.T``: the activation is rotated
  and the existing kernels run over the stored ``U`` unchanged, so no weight is materialised
  and the fused int4/int8 paths stay fused. Here the rotation is one batched matmul with a
  cached ``block x block`` matrix, in float32 whatever the compute dtype. On the CPU that beats
  the stage-by-stage transform 3-10x for blocks 64-256 (one GEMM call against ``log2(block)``
  passes over the activation, each a few small ops), and float32 beats bfloat16 there too
  (no fast bf16 GEMM at these shapes); the rotated activation is rounded once, at the end.

Sign bits are LSB-first: bit ``j % 8`` of byte ``j // 8`` set means ``s[j] = -1``.
"""

from __future__ import annotations

import math

import torch

HADAMARD_BLOCKS = (16, 64, 256, 1024, 4096)  # powers of four: 1/sqrt(block) is a power of two, exact
_MATRICES: dict[tuple[int, torch.device], torch.Tensor] = {}
_SIGNS: dict[tuple[bytes, torch.device], torch.Tensor] = {}  # one factor tensor per distinct sign vector
_LAST: list[tuple[torch.Tensor, tuple[object, ...], torch.Tensor]] = []  # the last rotation: (input, key, result)


def hadamard_matrix(block: int, device: torch.device) -> torch.Tensor:
    """The normalized ``block x block`` Sylvester Hadamard matrix in float32 on ``device`` (cached)."""
    key = (block, device)
    found = _MATRICES.get(key)
    if found is None:
        index = torch.arange(block)
        ones = torch.bitwise_and(index.unsqueeze(1), index.unsqueeze(0))
        parity = torch.zeros_like(ones)
        while bool(ones.any()):  # popcount(i & j) mod 2
            parity ^= ones & 1
            ones = ones >> 1
        found = ((1 - 2 * parity).to(torch.float32) * (1.0 / math.sqrt(block))).to(device)
        _MATRICES[key] = found
    return found


def unpack_signs(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """The ``signs`` component (uint8 ``[cols / 8]``) -> float32 factors ``+1 / -1`` ``[cols]``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return (1 - 2 * bits.reshape(-1)[:cols].to(torch.float32)).contiguous()


def shared_signs(packed: torch.Tensor, cols: int, device: torch.device) -> torch.Tensor:
    """:func:`unpack_signs` on ``device``, one tensor for every equal ``signs`` component (the
    reference writer draws the same signs for every tensor of a width), so that
    :func:`rotate_shared` can tell that two modules rotate alike."""
    key = (packed.cpu().numpy().tobytes(), device)
    found = _SIGNS.get(key)
    if found is None:
        found = _SIGNS[key] = unpack_signs(packed, cols).to(device)
    return found


def rotate_shared(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """:func:`rotate_input`, reusing the previous result when the same activation comes again
    with the same signs (q/k/v, and gate/up, read one input: one rotation serves them all).

    The cache holds the input, so while its key names that memory no other tensor can occupy
    it; the version counter catches in-place writes. Inference-mode tensors have no version
    counter: they are always rotated afresh.
    """
    if x.is_inference():
        return rotate_input(x, signs, block)
    key = (x.data_ptr(), x.shape, x.stride(), x.dtype, x.device, x._version, id(signs), block)
    if _LAST and _LAST[0][1] == key:
        return _LAST[0][2]
    out = rotate_input(x, signs, block)
    _LAST[:] = [(x, key, out)]
    return out


def release_rotations() -> None:
    """Drop the cached signs and the last rotation (``nano_modules.release_scratch`` calls this)."""
    _SIGNS.clear()
    _LAST.clear()


def _fwht_(x: torch.Tensor, block: int) -> torch.Tensor:
    """In place on contiguous float32 ``(rows, cols)``: the spec's stages h = 1, 2, 4, ..., then the scale."""
    rows, cols = x.shape
    keep = torch.empty(rows * cols // 2, dtype=torch.float32, device=x.device)
    h = 1
    while h < block:
        pairs = x.view(rows, cols // (2 * h), 2, h)
        a, c = pairs[:, :, 0, :], pairs[:, :, 1, :]
        held = keep.view(a.shape).copy_(a)
        torch.add(held, c, out=a)  # x[i] = fl(a + c)
        torch.sub(held, c, out=c)  # x[i + h] = fl(a - c)
        h *= 2
    return x.mul_(1.0 / math.sqrt(block))  # exact: block is a power of four


def unrotate_rows(u: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """Logical rows ``(u @ H) * s`` from decoded float32 rows ``u`` ``(rows, cols)``, in place (bit-exact).

    ``signs`` are the float32 factors of :func:`unpack_signs`.
    """
    if not u.is_contiguous():
        u = u.contiguous()
    return _fwht_(u, block).mul_(signs)


def rotate_input(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """``H (s * x)`` blockwise along the last dim of ``x``, computed in float32, returned in ``x.dtype``.

    Three ops: the float32 ``signs`` widen ``x`` and flip its signs in one (exact), one 2-D
    ``mm`` over all blocks (a 3-D matmul costs twice as much at one token), one final rounding.
    """
    x32 = torch.mul(x, signs)
    rotated = torch.mm(x32.reshape(-1, block), hadamard_matrix(block, x.device))
    return rotated.view(x.shape).to(x.dtype)
