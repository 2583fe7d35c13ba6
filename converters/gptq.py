"""GPTQ: codes chosen with error feedback from each linear layer's input statistics (Frantar et al. 2022).

Rounding to nearest minimises each weight's own error, but what the model feels is the error of
the layer's output, whose square summed over calibration inputs ``x`` is
``trace((W - W') G (W - W')^T)`` with ``G = sum x x^T``, the inputs' Gram matrix. GPTQ takes
one column at a time, rounds it, and moves the rounding error onto the columns not yet rounded
in the proportions that cancel it best under ``G`` (a row of the upper Cholesky factor of the
dampened ``G^-1``), in lazy blocks so that most of the work is matrix products.

The format fixes each group's scale and offset, so they are fitted up front on the original
weights ("static groups": ``nanofmt.quantize.fit_grid``) and only the codes are chosen here.
That also frees the column order: columns go in order of decreasing ``G`` diagonal ("act
order"), the inputs with the most energy first, while their error can still be compensated.
Rows are independent given ``G``, so a row range is quantized just as in the whole tensor.

A ``hadamard`` scheme stores ``u = w R`` (``R = diag(s) H``, orthogonal); since ``W x = U R^T x``
its inputs are ``R^T x``, with Gram matrix ``R^T G R``: GPTQ runs on ``u`` against that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from nanofmt import QuantizedTensor, Scheme
from nanofmt.quantize import Grid, encode_on_grid, fit_grid
from nanofmt.transforms import default_signs, hadamard_rotate, pack_signs

__all__ = ["Factor", "prepare", "gptq_quantize", "output_error", "GPTQ_KINDS"]

GPTQ_KINDS = ("int8_row", "affine", "affine_dq")
F16_HALF = float(np.finfo(np.float16).max) / 2  # nanofmt.quantize's bound on values


@dataclass(frozen=True)
class Factor:
    """A Gram matrix made ready for GPTQ: the column order and the upper Cholesky factor of the dampened inverse, in that order."""

    order: NDArray[np.intp]
    upper: NDArray[np.float32]
    damp: float  # the damping actually used (raised if the first was not enough)

    @property
    def cols(self) -> int:
        return int(self.order.shape[0])


def prepare(gram: NDArray[np.floating], *, damp: float = 0.01, act_order: bool = True) -> Factor:
    """Factor a Gram matrix ``(cols, cols)``: shared by every row range of the tensors with these inputs.

    An input that was always zero (a zero diagonal) gets a unit diagonal and no correlations: its
    column is rounded to nearest and passes no error on. ``damp`` adds that fraction of the mean
    diagonal to the diagonal; it is raised tenfold (up to three times) if the matrix is still not
    positive definite.

    Raises:
        ValueError: not a finite square matrix, or ``damp`` not positive.
    """
    g = np.asarray(gram)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"gram must be a square (cols, cols) matrix, got shape {g.shape}")
    if not damp > 0:
        raise ValueError(f"damp must be positive, got {damp}")
    h = np.array(g, dtype=np.float64)
    if not np.isfinite(h).all():
        raise ValueError("gram holds NaN or infinity")
    h = (h + h.T) / 2
    diag = np.diag(h).copy()
    dead = ~(diag > 0)
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    diag[dead] = 0  # dead columns go last under act order
    mean = float(np.diag(h)[~dead].mean()) if (~dead).any() else 1.0
    order = np.argsort(-diag, kind="stable") if act_order else np.arange(h.shape[0])
    h = h[np.ix_(order, order)]
    for attempt in range(4):
        used = damp * 10**attempt
        try:
            lower = np.linalg.cholesky(h + np.eye(h.shape[0]) * (used * mean))
            inv_lower = np.linalg.inv(lower)
            upper = np.linalg.cholesky(inv_lower.T @ inv_lower).T  # H^-1 = U^T U
            break
        except np.linalg.LinAlgError:
            continue
    else:
        raise ValueError(f"gram is not positive semi-definite even with damping {used:g}")
    return Factor(order, upper.astype(np.float32), used)


def _check(w: NDArray[np.generic], scheme: Scheme, cols: int | None) -> NDArray[np.float32]:
    x = np.asarray(w)
    if x.ndim != 2:
        raise ValueError(f"weights must be 2-D (rows, cols), got shape {x.shape}")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"weights have {x.shape[1]} columns but the gram matrix is {cols} x {cols}")
    if scheme.kind not in GPTQ_KINDS:
        raise ValueError(f"GPTQ chooses codes for {', '.join(GPTQ_KINDS)}; got {scheme.label()}")
    scheme.check(tuple(x.shape))
    x = np.asarray(x, dtype=np.float32)
    _check_values(x)
    return x


def _check_values(x: NDArray[np.float32]) -> None:
    if not np.isfinite(x).all():
        raise ValueError("values hold NaN or infinity")
    if x.size and float(np.abs(x).max()) > F16_HALF:
        raise ValueError(f"values exceed +-{F16_HALF:g}, beyond what fp16 scales and offsets can carry")


def rotate_gram(gram: NDArray[np.floating], block: int, signs: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``R^T G R`` for the rotation ``u = w R`` of ``hadamard_rotate`` (row vectors, so ``G R`` rotates G's rows)."""
    half = hadamard_rotate(np.asarray(gram, np.float32), block, signs)  # G R
    return hadamard_rotate(np.ascontiguousarray(half.T), block, signs).T.astype(np.float64)  # (G R)^T R = R^T G R


def _feedback(x: NDArray[np.float32], grid: Grid, factor: Factor, block: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Codes ``(rows, cols)`` by column-sequential rounding with error feedback, and the values each column had when rounded."""
    order, u = factor.order, factor.upper
    cols, rows = order.shape[0], x.shape[0]
    work = np.ascontiguousarray(x[:, order].T)  # (cols, rows): a column is a contiguous row here
    codes = np.empty_like(work)
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        err = np.empty((b1 - b0, rows), np.float32)
        for i in range(b0, b1):
            j = slice(int(order[i]), int(order[i]) + 1)
            col = work[i][:, None]
            q = grid.nearest(col, cols=j)
            codes[i] = q[:, 0]
            err[i - b0] = (col - grid.values(q, cols=j))[:, 0] / u[i, i]
            if i + 1 < b1:
                work[i + 1 : b1] -= u[i, i + 1 : b1, None] * err[i - b0][None, :]
        if b1 < cols:
            work[b1:] -= u[b0:b1, b1:].T @ err
    inverse = np.argsort(order)
    return np.ascontiguousarray(codes.T[:, inverse]), np.ascontiguousarray(work.T[:, inverse])


def output_error(x: NDArray[np.floating], decoded: NDArray[np.floating], gram: NDArray[np.floating]) -> NDArray[np.float64]:
    """Per row, ``e G e^T`` with ``e = x - decoded``: the squared output error summed over the calibration inputs."""
    e = np.asarray(x, np.float64) - np.asarray(decoded, np.float64)
    return np.einsum("ij,jk,ik->i", e, np.asarray(gram, np.float64), e)


def _pick_rows(better: NDArray[np.bool_], a: Grid, b: Grid) -> Grid:
    """Grid ``b`` on the rows where ``better``, else ``a``: every scheme's metadata is per row."""

    def mix(p: NDArray[np.generic], q: NDArray[np.generic]) -> NDArray[np.generic]:
        return np.where(better.reshape(-1, *[1] * (p.ndim - 1)), q, p)

    meta = {role: mix(p, b.meta[role]) for role, p in a.meta.items()}
    return Grid(mix(a.scale, b.scale), mix(a.offset, b.offset), a.cols, a.group_size, a.bits, a.signed, meta)  # type: ignore[arg-type]


def gptq_quantize(
    w: NDArray[np.generic],
    scheme: Scheme,
    gram: NDArray[np.floating] | Factor,
    *,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
    refit: bool = False,
    dtype: str = "f32",
    seed: int = 0,
    signs: NDArray[np.bool_] | None = None,
) -> QuantizedTensor:
    """Quantize ``w`` ``(rows, cols)`` under ``scheme``, choosing codes by GPTQ against the input Gram matrix.

    Args:
        w: the weights, float32 (or float16/float64: widened or narrowed to float32 first).
        scheme: int8_row, affine or affine_dq.
        gram: ``sum x x^T`` over calibration inputs ``(cols, cols)``, or its :func:`prepare` result
            (reuse one for every row range of a tensor).
        damp, act_order: as in :func:`prepare` (ignored when ``gram`` is a Factor).
        block: columns per lazy batch update (only speed depends on it, not the result, up to rounding).
        refit: fit the grid again on the values GPTQ rounded (which drifted from the originals),
            run again, and keep per row whichever pass has the lower output error.
        dtype: the logical tensor's original dtype, recorded in the result.
        seed, signs: for a ``hadamard`` scheme, as in ``nanofmt.quantize`` (the same seed gives the
            same signs, so every row range of a tensor agrees). ``gram`` is in the original
            (unrotated) input space; a Factor must already be of the rotated one.

    Returns:
        A QuantizedTensor that ``nanofmt.dequantize`` decodes.

    Raises:
        ValueError: bad shapes, a scheme without codes, non-finite or out-of-range values.
    """
    x = _check(w, scheme, gram.cols if isinstance(gram, Factor) else np.shape(gram)[0] if np.ndim(gram) == 2 else None)
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    chosen = None
    if scheme.transform == "hadamard" and scheme.transform_block:
        chosen = default_signs(x.shape[1], seed) if signs is None else np.asarray(signs)
        x = hadamard_rotate(x, scheme.transform_block, chosen)
        _check_values(x)  # a rotation can raise a row's largest magnitude by up to sqrt(block)
        if not isinstance(gram, Factor):
            gram = rotate_gram(gram, scheme.transform_block, chosen)
    elif scheme.transform != "none":
        raise ValueError(f"GPTQ does not handle transform {scheme.transform!r}")
    factor = gram if isinstance(gram, Factor) else prepare(gram, damp=damp, act_order=act_order)
    grid = fit_grid(x, scheme)
    codes, rounded = _feedback(x, grid, factor, block)
    if refit:
        second = fit_grid(np.clip(rounded, -F16_HALF, F16_HALF), scheme)
        codes2, _ = _feedback(x, second, factor, block)
        g = factor_gram(factor)
        better = output_error(x, second.values(codes2), g) < output_error(x, grid.values(codes), g)
        grid, codes = _pick_rows(better, grid, second), np.where(better[:, None], codes2, codes)
    parts = encode_on_grid(codes.astype(np.int64), grid)
    if chosen is not None:
        parts["signs"] = pack_signs(chosen)
    return QuantizedTensor(tuple(x.shape), dtype, scheme, parts)


def factor_gram(factor: Factor) -> NDArray[np.float64]:
    """The dampened Gram matrix a factor stands for, in the original column order (up to a scale)."""
    u = factor.upper.astype(np.float64)
    inv_u = np.linalg.inv(u)
    h = inv_u @ inv_u.T  # (U^T U)^-1
    inverse = np.argsort(factor.order)
    return h[np.ix_(inverse, inverse)]
