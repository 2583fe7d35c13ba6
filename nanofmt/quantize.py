"""The reference quantizer: choosing codes, scales and offsets (non-normative).

SPEC.md fixes how stored bytes decode; it does not fix how a writer picks them. This module
is our writer's choice: per group, a small search over clipped ranges, each refined by a
least-squares fit of scale and offset to the codes it produces, keeping whichever gives the
lowest squared error. Everything is float32/float64 numpy with round-half-to-even, so the
same input gives the same bytes on every platform.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["fit_groups", "fit_scales_given_offsets", "codes_for", "quantize_meta", "F16_MAX"]

F16_MAX = float(np.finfo(np.float16).max)
# Fractions of the group's range clipped at both ends before the least-squares refit. Clipping
# a little trades a larger error on the rare extreme weight for a finer step on all the others.
SHRINK = (0.0, 0.05, 0.1, 0.15, 0.2)


def codes_for(x: NDArray[np.float32], scale: NDArray[np.float32], offset: NDArray[np.float32], qmax: int) -> NDArray[np.float32]:
    """Nearest codes for ``x`` (groups along axis 0) given per-group scale/offset; zero scale -> code 0."""
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.rint((x - offset[:, None]) / safe[:, None])
    q = np.clip(q, 0, qmax, out=q)
    q[scale <= 0] = 0
    return q


def _sq_error(x: NDArray[np.float32], q: NDArray[np.float32], scale: NDArray[np.float32], offset: NDArray[np.float32]) -> NDArray[np.float64]:
    diff = q * scale[:, None] + offset[:, None] - x
    return np.einsum("ij,ij->i", diff, diff, dtype=np.float64)


def _refit(x: NDArray[np.float32], q: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Least-squares scale and offset for fixed codes: minimise sum (x - (q*s + m))^2 per group."""
    n = np.float64(x.shape[1])
    sq = q.sum(axis=1, dtype=np.float64)
    sx = x.sum(axis=1, dtype=np.float64)
    sqq = np.einsum("ij,ij->i", q, q, dtype=np.float64)
    sqx = np.einsum("ij,ij->i", q, x, dtype=np.float64)
    det = n * sqq - sq * sq
    ok = det > 0
    scale = np.where(ok, (n * sqx - sq * sx) / np.where(ok, det, 1), 0.0)
    offset = (sx - scale * sq) / n
    return scale.astype(np.float32), offset.astype(np.float32)


def fit_groups(x: NDArray[np.float32], bits: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-group (scale, offset) with low squared error for ``x`` of shape (groups, group_size).

    Returned in float32, before any rounding to the stored precision.
    """
    qmax = (1 << bits) - 1
    lo, hi = x.min(axis=1), x.max(axis=1)
    best_err = np.full(x.shape[0], np.inf)
    best_s = ((hi - lo) / qmax).astype(np.float32)
    best_m = lo.astype(np.float32)
    for t in SHRINK:
        span = (hi - lo) * np.float32(t / 2)
        s0 = ((hi - lo - 2 * span) / qmax).astype(np.float32)
        m0 = (lo + span).astype(np.float32)
        s, m = _refit(x, codes_for(x, s0, m0, qmax))
        bad = s <= 0  # degenerate refit (all codes equal): keep the clipped range
        s, m = np.where(bad, s0, s), np.where(bad, m0, m)
        err = _sq_error(x, codes_for(x, s, m, qmax), s, m)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s, best_m = np.where(better, s, best_s), np.where(better, m, best_m)
    return best_s, best_m


def fit_scales_given_offsets(x: NDArray[np.float32], offset: NDArray[np.float32], bits: int) -> NDArray[np.float32]:
    """Per-group scale with low squared error when each group's offset is already fixed."""
    qmax = (1 << bits) - 1
    top = np.maximum(x.max(axis=1) - offset, 0).astype(np.float32)
    best_err = np.full(x.shape[0], np.inf)
    best_s = (top / qmax).astype(np.float32)
    centred = x - offset[:, None]
    for t in SHRINK:
        s0 = (top * np.float32(1 - t) / qmax).astype(np.float32)
        q = codes_for(x, s0, offset, qmax)
        qq = np.einsum("ij,ij->i", q, q, dtype=np.float64)
        s = np.where(qq > 0, np.einsum("ij,ij->i", q, centred, dtype=np.float64) / np.where(qq > 0, qq, 1), 0).astype(np.float32)
        s = np.where(s > 0, s, s0)
        err = _sq_error(x, codes_for(x, s, offset, qmax), s, offset)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
    return best_s


def quantize_meta(values: NDArray[np.float32], meta_bits: int, *, signed_ok: bool) -> tuple[NDArray[np.float16], NDArray[np.float32]]:
    """Quantize one block's worth of per-group values per row block: (blocks, groups_per_block).

    Returns the fp16 super value per block and the unsigned codes (as float32) such that
    ``super * code`` approximates each value. With ``signed_ok`` the super value takes the sign
    of the block's largest-magnitude value, and values of the other sign get code 0.
    """
    qmax = (1 << meta_bits) - 1
    if signed_ok:
        idx = np.abs(values).argmax(axis=1)
        extreme = np.take_along_axis(values, idx[:, None], axis=1)[:, 0]
    else:
        extreme = values.max(axis=1)
    with np.errstate(over="ignore"):
        sup = (extreme / np.float32(qmax)).astype(np.float16)
    sup32 = sup.astype(np.float32)
    safe = np.where(sup32 != 0, sup32, np.float32(1))
    codes = np.clip(np.rint(values / safe[:, None]), 0, qmax)
    codes[sup32 == 0] = 0
    return sup, codes.astype(np.float32)
