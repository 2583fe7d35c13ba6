"""The reference quantizer: choosing codes, scales and offsets (non-normative).

SPEC.md fixes how stored bytes decode; it does not fix how a writer picks them. This module
is our writer's choice: per group, a small search over clipped ranges, each refined by a
least-squares fit of scale and offset to the codes it produces, keeping whichever gives the
lowest squared error; the last choice between stored candidates is made on the exact decoded
values. Everything is float32 elementwise numpy (float64 only for per-group scalars) with
round-half-to-even and fixed reduction orders, so the same input gives the same bytes on
every platform.

Speed: groups are processed in chunks, each transposed to ``(group_size, chunk)`` so that
per-group reductions are plain row sweeps and per-group values broadcast along contiguous
rows, and every temporary stays in the L2 cache.

The search primitives come first; then :class:`Grid`, a tensor's fitted metadata (the exact
per-group scale and offset the decoder will use), which splits encoding in two: ``fit_grid``
chooses the metadata, and any rule for the codes (the nearest ones here; calibration-aware
error feedback in ``converters/gptq.py``) goes through ``encode_on_grid`` to the stored parts.
``encode_*`` at the end are fit + nearest + store (``codec.py`` registers them and decodes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ._spec import SCHEMES
from .bits import pack_rows
from .schemes import Scheme

__all__ = [
    "Grid",
    "fit_grid",
    "nearest_codes",
    "encode_on_grid",
    "encode_int8_row",
    "encode_affine",
    "encode_affine_dq",
    "fit_groups",
    "pick_candidates",
    "quantize_meta",
    "group_range",
    "F16_MAX",
]

F16_MAX = float(np.finfo(np.float16).max)
# The search: a least-squares fit to the codes of the full range and of a range clipped by 12%
# (6% at each end: a larger error on the rare extreme weight buys a finer step for all others),
# then Lloyd steps from the best so far (its own nearest codes, refitted). On real weights this
# matches seven clipped starts within 0.01 dB SQNR in 5/8 of the passes.
SHRINK = (0.0, 0.12)
LLOYD_STEPS = 3
TINY = np.float32(2.0**-60)
CHUNK = 4096  # groups per chunk: a float32 (32, 4096) slab is 512 KiB, so a few temporaries fit in L2

F32 = NDArray[np.float32]


def _chunks(x: F32) -> Iterator[tuple[slice, F32]]:
    """``(group_slice, x[group_slice].T)`` for consecutive chunks of groups, transposed and contiguous.

    No chunk holds a single group (the caller doubles a lone group): numpy sums one column
    pairwise but several columns row by row, and a group's result must not depend on its neighbours.
    """
    groups = x.shape[0]
    starts = list(range(0, groups, CHUNK))
    if len(starts) > 1 and groups - starts[-1] == 1:
        starts[-1] -= 1
    for start, stop in zip(starts, [*starts[1:], groups][: len(starts)], strict=True):
        yield slice(start, stop), np.ascontiguousarray(x[start:stop].T)


def _codes_t(xt: F32, scale: F32, offset: F32, qmax: int, out: F32) -> F32:
    """Nearest codes, as float32 ``(n, c)``, of transposed values; a zero scale gives code 0."""
    live = scale > TINY  # a smaller step rounds to a zero fp16 scale anyway, and 1/step would overflow
    inv = np.where(live, np.float32(1) / np.where(live, scale, np.float32(1)), np.float32(0)).astype(np.float32)
    np.subtract(xt, offset, out=out)
    np.multiply(out, inv, out=out)
    np.rint(out, out=out)
    return np.clip(out, 0, qmax, out=out)


def pick_candidates(x: F32, scales: F32, offsets: F32, bits: int) -> NDArray[np.intp]:
    """Choose, per group, the candidate (scale, offset) whose decoded values are closest to ``x``.

    ``scales`` and ``offsets`` are ``(candidates, groups)``, already the exact float32 values the
    decoder will use; the error is measured on ``fl(fl(q * scale) + offset)`` itself, with each
    candidate's nearest codes. Ties go to the earlier candidate. Returns the index per group.
    """
    if x.shape[0] == 1:  # see _chunks
        return pick_candidates(np.vstack([x, x]), np.hstack([scales, scales]), np.hstack([offsets, offsets]), bits)[:1]
    qmax = (1 << bits) - 1
    groups, n = x.shape
    choice = np.zeros(groups, np.intp)
    width = min(CHUNK, groups)
    q_buf, e_buf = np.empty((n, width), np.float32), np.empty((n, width), np.float32)
    for part, xt in _chunks(x):
        c = xt.shape[1]
        q, err = q_buf[:, :c], e_buf[:, :c]
        best_sse = np.full(c, np.inf, np.float32)
        pick = np.zeros(c, np.intp)
        for k in range(scales.shape[0]):
            s, m = scales[k, part], offsets[k, part]
            _codes_t(xt, s, m, qmax, q)
            np.multiply(q, s, out=err)  # the decoder's arithmetic, operation by operation
            np.add(err, m, out=err)
            np.subtract(err, xt, out=err)
            np.multiply(err, err, out=err)
            sse = err.sum(axis=0)
            better = sse < best_sse
            best_sse = np.where(better, sse, best_sse)
            pick = np.where(better, k, pick)
        choice[part] = pick
    return choice


def _lsq(n: int, sx: NDArray[np.float64], sxx: NDArray[np.float64], sums: tuple[F32, F32, F32]) -> tuple[NDArray[np.float64], ...]:
    """Least-squares scale and offset for fixed codes, and the squared error they leave, per group."""
    sq, sqq, sqx = (v.astype(np.float64) for v in sums)
    det = n * sqq - sq * sq
    ok = det > 0
    s = np.where(ok, (n * sqx - sq * sx) / np.where(ok, det, 1), 0.0)
    m = (sx - s * sq) / n
    sse = sxx - s * sqx - m * sx  # the normal equations hold at the optimum, which leaves this
    return s, m, np.where(ok & (s > 0), sse, np.inf)


def _code_sums(xt: F32, q: F32, tmp: F32) -> tuple[F32, F32, F32]:
    np.multiply(q, q, out=tmp)
    sqq = tmp.sum(axis=0)
    np.multiply(q, xt, out=tmp)
    return q.sum(axis=0), sqq, tmp.sum(axis=0)


def fit_groups(x: F32, bits: int) -> tuple[F32, F32]:
    """Per-group (scale, offset) with low squared error for ``x`` of shape (groups, group_size).

    Returned in float32, before any rounding to the stored precision. A constant group gets
    scale 0 and its value as offset.
    """
    if x.shape[0] == 1:  # see _chunks
        scale, offset = fit_groups(np.vstack([x, x]), bits)
        return scale[:1], offset[:1]
    qmax = (1 << bits) - 1
    groups, n = x.shape
    scale, offset = np.empty(groups, np.float32), np.empty(groups, np.float32)
    width = min(CHUNK, groups)
    q_buf, tmp_buf = np.empty((n, width), np.float32), np.empty((n, width), np.float32)
    for part, xt in _chunks(x):
        q, tmp = q_buf[:, : xt.shape[1]], tmp_buf[:, : xt.shape[1]]
        lo, hi = xt.min(axis=0), xt.max(axis=0)
        span = hi - lo
        sx = xt.sum(axis=0).astype(np.float64)
        sxx = np.multiply(xt, xt, out=tmp).sum(axis=0).astype(np.float64)
        best_sse = np.full(xt.shape[1], np.inf)
        best_s, best_m = np.zeros(xt.shape[1]), lo.astype(np.float64)  # constant groups keep these
        for step in range(len(SHRINK) + LLOYD_STEPS):
            if step < len(SHRINK):  # a clipped range first ...
                t = SHRINK[step]
                s0, m0 = span * np.float32((1 - t) / qmax), lo + span * np.float32(t / 2)
            else:  # ... then Lloyd steps: the best fit's own nearest codes, refitted
                s0, m0 = best_s.astype(np.float32), best_m.astype(np.float32)
            s, m, sse = _lsq(n, sx, sxx, _code_sums(xt, _codes_t(xt, s0, m0, qmax, q), tmp))
            better = sse < best_sse
            best_sse = np.where(better, sse, best_sse)
            best_s, best_m = np.where(better, s, best_s), np.where(better, m, best_m)
        scale[part], offset[part] = best_s, best_m
    return scale, offset


def group_range(x: F32) -> tuple[F32, F32]:
    """Per-group (min, max) of ``x`` (groups, n)."""
    lo, hi = np.empty(x.shape[0], np.float32), np.empty(x.shape[0], np.float32)
    for part, xt in _chunks(x):
        lo[part], hi[part] = xt.min(axis=0), xt.max(axis=0)
    return lo, hi


def quantize_meta(values: F32, meta_bits: int, *, signed_ok: bool, rounding: str = "nearest") -> tuple[NDArray[np.float16], F32]:
    """Quantize per-group values per block of groups: ``values`` is (blocks, groups_per_block).

    Returns the fp16 super value per block and the unsigned codes (as float32) such that
    ``super * code`` approximates each value: the nearest, or with ``rounding="down"``/``"up"``
    the nearest on that side where the code range allows. With ``signed_ok`` the super value
    takes the sign of the block's largest-magnitude value, and values of the other sign get code 0.
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
    safe = np.where(sup32 != 0, sup32, np.float32(1))[:, None]
    ratio = values / safe
    if rounding == "nearest":
        codes = np.rint(ratio)
    elif rounding in ("down", "up"):
        # "down" in value: super * code <= value; for a negative super that is the ratio's ceiling
        want_floor = (safe > 0) == (rounding == "down")
        codes = np.where(want_floor, np.floor(ratio), np.ceil(ratio))
    else:
        raise ValueError(f"rounding must be 'nearest', 'down' or 'up', got {rounding!r}")
    codes = np.clip(codes, 0, qmax)
    codes[sup32 == 0] = 0
    return sup, codes.astype(np.float32)


# --- whole tensors: the encoders of the quantized schemes -------------------------------------

Encoded = dict[str | None, NDArray[np.generic]]
BLOCK_GROUPS = int(SCHEMES["affine_dq"]["block_groups"])


def _groups(x: NDArray[np.float32], group: int) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """Split rows into full groups ``(rows * full, group)`` and the short tail group ``(rows, tail)``."""
    rows, cols = x.shape
    full = cols // group
    main = x[:, : full * group].reshape(rows * full, group)
    return main, (x[:, full * group :] if cols % group else None)


def _per_row(main: NDArray[np.generic], tail: NDArray[np.generic] | None, rows: int) -> NDArray[np.generic]:
    """Reassemble per-group results (main groups, then the tail group) into ``(rows, groups, ...)``."""
    shaped = main.reshape(rows, -1, *main.shape[1:])
    if tail is None:
        return shaped
    return np.concatenate([shaped, tail.reshape(rows, 1, *tail.shape[1:])], axis=1)


def _to_f16(values: NDArray[np.float32]) -> NDArray[np.float16]:
    """Round to fp16 (nearest even) within its finite range; the quantizer bounds inputs so that clipping is rare."""
    return np.clip(values, -F16_MAX, F16_MAX).astype(np.float16)


def _split(per_row: NDArray[np.generic], rows: int, full: int, has_tail: bool) -> list[NDArray[np.generic]]:
    """Inverse of :func:`_per_row` for per-group values ``(rows, groups)``: [main groups] + [tail groups]."""
    out = [per_row[:, :full].reshape(rows * full)]
    return out + ([per_row[:, full]] if has_tail else [])


def _packed_rows(packed: list[NDArray[np.uint8]], rows: int) -> NDArray[np.uint8]:
    """Groups packed one by one -> packed rows: full groups hold whole 8-code units, so their bytes just concatenate."""
    return np.hstack([p.reshape(rows, -1) for p in packed]) if len(packed) > 1 else packed[0].reshape(rows, -1)


def _by_block(per_group: F32) -> F32:
    """(rows, groups) -> (rows * blocks, BLOCK_GROUPS), zero-padding the last block."""
    rows, groups = per_group.shape
    blocks = -(-groups // BLOCK_GROUPS)
    padded = np.zeros((rows, blocks * BLOCK_GROUPS), np.float32)
    padded[:, :groups] = per_group
    return padded.reshape(rows * blocks, BLOCK_GROUPS)


def _expand(per_block: F32, groups: int) -> F32:
    return np.repeat(per_block, BLOCK_GROUPS, axis=1)[:, :groups]


# --- the grid: fixed metadata, codes chosen by anyone ----------------------------------------


@dataclass(frozen=True)
class Grid:
    """The values one ``(rows, cols)`` tensor's codes can decode to, with the stored metadata that says so.

    Per row and group, ``scale`` and ``offset`` are the exact float32 values the decoder uses:
    a code ``q`` in ``[qmin, qmax]`` decodes to ``fl(fl(q * scale) + offset)`` (int8_row: offset
    0, one group per row). ``meta`` holds every stored component but the codes. :func:`fit_grid`
    makes one; :meth:`nearest` is the reference encoder's rounding onto it; any other choice of
    codes (error feedback, say) becomes stored parts through :func:`encode_on_grid`.
    """

    scale: F32  # (rows, groups)
    offset: F32  # (rows, groups)
    cols: int
    group_size: int
    bits: int
    signed: bool  # int8_row: codes -qmax..qmax, rounded by division as its encoder always has
    meta: Encoded

    @property
    def qmin(self) -> int:
        return -self.qmax if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def _per_column(self, cols: slice, rows: slice) -> tuple[F32, F32]:
        index = np.arange(*cols.indices(self.cols)) // self.group_size
        return self.scale[rows][:, index], self.offset[rows][:, index]

    def nearest(self, x: F32, cols: slice = slice(None), rows: slice = slice(None)) -> F32:
        """Nearest codes (float32) of ``x``, the values of columns ``cols`` of rows ``rows``; a zero scale gives code 0."""
        scale, offset = self._per_column(cols, rows)
        if self.signed:
            q = np.rint(x / np.where(scale > 0, scale, np.float32(1)))
            q[scale == 0] = 0
        else:  # as _codes_t: a tiny step rounds to a zero fp16 scale anyway, and 1/step would overflow
            live = scale > TINY
            q = np.rint((x - offset) * np.where(live, np.float32(1) / np.where(live, scale, np.float32(1)), np.float32(0)))
        return np.clip(q, self.qmin, self.qmax, out=q).astype(np.float32, copy=False)

    def values(self, codes: NDArray[np.generic], cols: slice = slice(None), rows: slice = slice(None)) -> F32:
        """Decoded float32 values of ``codes`` (columns ``cols`` of rows ``rows``), in the decoder's arithmetic."""
        scale, offset = self._per_column(cols, rows)
        return np.add(np.multiply(codes.astype(np.float32), scale), offset)


ROW_STEP = 1 << 18  # elements per slab of nearest_codes: a few float32 temporaries stay small


def nearest_codes(x: F32, grid: Grid) -> NDArray[np.generic]:
    """The reference encoder's codes of ``x`` on ``grid``: uint8, or int8 for int8_row."""
    rows = x.shape[0]
    codes = np.empty(x.shape, np.int8 if grid.signed else np.uint8)
    step = max(1, ROW_STEP // max(1, grid.cols))
    for r in range(0, rows, step):
        part = slice(r, min(r + step, rows))
        codes[part] = grid.nearest(x[part], rows=part)
    return codes


def encode_on_grid(codes: NDArray[np.generic], grid: Grid) -> Encoded:
    """The stored parts of integer ``codes`` ``(rows, cols)`` on ``grid``: packed codes plus the grid's metadata.

    Raises:
        ValueError: codes of the wrong shape or outside ``[grid.qmin, grid.qmax]``.
    """
    codes = np.asarray(codes)
    if codes.shape != (grid.scale.shape[0], grid.cols):
        raise ValueError(f"codes must have shape {(grid.scale.shape[0], grid.cols)}, got {codes.shape}")
    if codes.size and (int(codes.min()) < grid.qmin or int(codes.max()) > grid.qmax):
        raise ValueError(f"codes must lie in [{grid.qmin}, {grid.qmax}]")
    stored = codes.astype(np.int8) if grid.signed else pack_rows(codes.astype(np.uint8, copy=False), grid.bits)
    return {"codes": stored, **grid.meta}


def fit_grid(x: F32, scheme: Scheme) -> Grid:
    """The reference encoder's metadata for ``x`` (2-D float32, already in the coded domain) under ``scheme``.

    Raises:
        ValueError: a scheme that is not int8_row, affine or affine_dq.
    """
    if scheme.kind == "int8_row":
        return _fit_int8_row(x)
    if scheme.kind == "affine" and scheme.bits and scheme.group_size:
        return _fit_affine(x, scheme.bits, scheme.group_size)
    if scheme.kind == "affine_dq" and scheme.bits and scheme.group_size and scheme.meta_bits:
        return _fit_affine_dq(x, scheme.bits, scheme.group_size, scheme.meta_bits)
    raise ValueError(f"no grid for scheme {scheme.label()}: int8_row, affine and affine_dq have one")


def _fit_int8_row(x: F32) -> Grid:
    """int8_row: one fp16 scale per row, absmax / 127."""
    scales = (np.abs(x).max(axis=1) / np.float32(127)).astype(np.float16)
    s32 = scales.astype(np.float32)[:, None]
    return Grid(s32, np.zeros_like(s32), x.shape[1], max(1, x.shape[1]), 8, True, {"scales": scales})


def _fit_affine(x: F32, bits: int, group: int) -> Grid:
    """affine: per group, the searched fit or the plain min/max grid, whichever decodes closer."""
    rows = x.shape[0]
    qmax = (1 << bits) - 1
    main, tail = _groups(x, group)
    scales, offsets = [], []
    for part in (p for p in (main, tail) if p is not None):
        lo, hi = group_range(part)
        fit_s, fit_m = fit_groups(part, bits)
        # The plain min/max grid is a candidate too, listed first so that on a tie values that
        # already lie on a grid (a decoded tensor) keep exactly that grid.
        s16 = np.stack([_to_f16((hi - lo) / np.float32(qmax)), _to_f16(fit_s)])
        m16 = np.stack([_to_f16(lo), _to_f16(fit_m)])
        choice = pick_candidates(part, s16.astype(np.float32), m16.astype(np.float32), bits)
        pick = np.arange(part.shape[0])
        scales.append(s16[choice, pick])
        offsets.append(m16[choice, pick])
    s16_rows = _per_row(scales[0], scales[1] if tail is not None else None, rows)
    m16_rows = _per_row(offsets[0], offsets[1] if tail is not None else None, rows)
    meta: Encoded = {"scales": s16_rows, "offsets": m16_rows}
    return Grid(s16_rows.astype(np.float32), m16_rows.astype(np.float32), x.shape[1], group, bits, False, meta)


def _fit_affine_dq(x: F32, bits: int, group: int, meta_bits: int) -> Grid:
    """affine_dq: the searched fit, its scale and offset coded against per-block super values."""
    rows = x.shape[0]
    qmax = (1 << bits) - 1
    main, tail = _groups(x, group)
    present = [p for p in (main, tail) if p is not None]
    groups, full, mb = -(-x.shape[1] // group), x.shape[1] // group, meta_bits
    qmeta = np.float32((1 << mb) - 1)

    def join(values: list[NDArray[np.float32]]) -> NDArray[np.float32]:
        return _per_row(values[0], values[1] if tail is not None else None, rows).astype(np.float32, copy=False)

    def per_group(per_block: NDArray[np.float16]) -> NDArray[np.float32]:
        return _expand(per_block.astype(np.float32).reshape(rows, -1), groups)

    fits = [fit_groups(p, bits) for p in present]
    fit_s, fit_m = join([s for s, _ in fits]), join([m for _, m in fits])
    # Offsets: the block's super offset from its largest, and for each group the codes just
    # below and just above its fitted offset ...
    super_offsets, qm_down = quantize_meta(_by_block(fit_m), mb, signed_ok=True, rounding="down")
    qm_up = quantize_meta(_by_block(fit_m), mb, signed_ok=True, rounding="up")[1]
    so = per_group(super_offsets)
    qm = [q.reshape(rows, -1)[:, :groups] for q in (qm_down, qm_up)]
    # ... each with a scale that keeps the group's top end where the fit put it ...
    s_want = [np.maximum(fit_s + (fit_m - so * q) / np.float32(qmax), 0).astype(np.float32) for q in qm]
    super_scales = quantize_meta(_by_block(np.maximum(*s_want)), mb, signed_ok=False)[0]
    ss = per_group(super_scales)
    safe = np.where(ss > 0, ss, np.float32(1))
    # ... and that scale's codes just above and just below: four candidates, decided on the
    # decoded values themselves. A live group never gets a zero step.
    cands = [
        (np.where((want > 0) & (ss > 0), np.clip(rounded(want / safe), 1, qmeta), 0).astype(np.float32), q)
        for want, q in zip(s_want, qm, strict=True)
        for rounded in (np.ceil, np.floor)
    ]
    s_all = [_split(ss * qs, rows, full, tail is not None) for qs, _ in cands]
    m_all = [_split(so * q, rows, full, tail is not None) for _, q in cands]
    picked = [pick_candidates(p, np.stack([c[i] for c in s_all]), np.stack([c[i] for c in m_all]), bits) for i, p in enumerate(present)]
    choice = join([ch.astype(np.float32) for ch in picked]).astype(np.intp)
    qs, qo = np.choose(choice, [qs for qs, _ in cands]), np.choose(choice, [q for _, q in cands])
    meta: Encoded = {
        "qscales": pack_rows(qs.astype(np.uint8), mb),
        "qoffsets": pack_rows(qo.astype(np.uint8), mb),
        "super_scales": super_scales.reshape(rows, -1),
        "super_offsets": super_offsets.reshape(rows, -1),
    }
    return Grid(ss * qs, so * qo, x.shape[1], group, bits, False, meta)


def encode_int8_row(x: F32) -> Encoded:
    """int8_row: one fp16 scale per row, absmax / 127, and nearest codes."""
    grid = _fit_int8_row(x)
    return encode_on_grid(nearest_codes(x, grid), grid)


def encode_affine(x: F32, bits: int, group: int) -> Encoded:
    """affine: per group, the searched fit or the plain min/max grid, whichever decodes closer; nearest codes."""
    grid = _fit_affine(x, bits, group)
    return encode_on_grid(nearest_codes(x, grid), grid)


def encode_affine_dq(x: F32, bits: int, group: int, meta_bits: int) -> Encoded:
    """affine_dq: the searched fit, its scale and offset coded against per-block super values; nearest codes."""
    grid = _fit_affine_dq(x, bits, group, meta_bits)
    return encode_on_grid(nearest_codes(x, grid), grid)
