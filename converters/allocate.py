"""Automatic bit allocation: one scheme per tensor, minimising the model's predicted error under a size budget.

The problem is a multiple-choice knapsack: each quantizable tensor offers options (a scheme,
the exact bytes it stores, its predicted error) and the model must fit a budget in bits.
:func:`solve` is a dynamic program over the budget cut into about a million units, with each
option's size rounded up to whole units: the result always fits, is optimal for the rounded
sizes (the loss is below a unit per tensor: about 0.003 bits per weight on a 135M model), and
never gets worse when the budget grows. It takes a few seconds for hundreds of tensors. (The
usual greedy walk along each tensor's convex hull of (bytes, error), with a Lagrangian price
per byte, was tried first: on random menus it missed the optimum in 1 case of 5 and a larger
budget sometimes gave a worse answer.)

Predicted error is additive over tensors. :func:`estimate_errors` gives three proxies:

- data-free: ``importance * sum((w - w')^2) / mean(w^2)``, i.e. the tensor's relative squared error
  times its size: every tensor's output keeps the same fraction of its signal per unit of
  importance. :func:`heuristic_importance` supplies the importance in the spirit of llama.cpp's
  Q4_K_M mix (more for attention values, the MLP down projection, the first and last layers and
  the output head, which a tied embedding also is), and for key/value heads shared by several
  query heads;
- weight SSE: ``sum((w - w')^2)``, importance 1: the allocation with the best pooled weight SQNR,
  blind to how much each tensor matters;
- calibrated: ``sum(F * (w - w')^2)`` with per-element weights ``F``, e.g. the diagonal Fisher
  information of the model's next-token distribution measured on a calibration text; then
  ``0.5 *`` the total predicts the mean KL divergence per token (a second-order expansion).

Errors are measured on a sample of rows (every scheme here quantizes rows independently, so a
sampled row has exactly the error it has in the whole tensor), scaled to the whole tensor.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> arrays = {"a.weight": rng.standard_normal((64, 256)).astype(np.float32),
    ...           "b.weight": rng.standard_normal((64, 256)).astype(np.float32)}
    >>> tensors = [Candidate("a.weight", (64, 256), importance=8.0), Candidate("b.weight", (64, 256))]
    >>> schemes = [Scheme("affine_dq", bits=b, group_size=32, meta_bits=6) for b in (3, 4, 5)]
    >>> plan = allocate(tensors, schemes, lambda c, s: estimate_errors(arrays[c.name], s)["relative"], budget_for_bpw(tensors, 4.5))
    >>> {name: s.label() for name, s in plan.choices.items()}
    {'a.weight': 'affine_dq:5b/g32/m6', 'b.weight': 'affine_dq:3b/g32/m6'}
    >>> plan.bits_per_weight <= 4.5
    True
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

import nanofmt
from nanofmt import NanoError, Scheme
from nanofmt.schemes import component_layout

from .policy import Policy, Rule

__all__ = [
    "Candidate",
    "Option",
    "Allocation",
    "CANDIDATE_SCHEMES",
    "with_transform",
    "fits",
    "runs_fused",
    "allocate",
    "solve",
    "stored_bytes",
    "budget_for_bpw",
    "estimate_errors",
    "estimate_menu",
    "heuristic_importance",
]

RESOLUTION = 1 << 20  # budget steps of the solver: under 0.003 bits per weight lost to rounding on a 135M model

# The default menu: every code width with group 32 and 6-bit metadata (4.5 bits per weight at
# 4 bits), the cheaper 4-bit-metadata and larger-group variants that fill the steps between
# widths, and fp16 for a tensor worth 16 bits.
CANDIDATE_SCHEMES: tuple[Scheme, ...] = tuple(
    Scheme("affine_dq", bits=b, group_size=g, meta_bits=m) for b in (2, 3, 4, 5, 6, 8) for g, m in ((32, 6), (32, 4), (64, 6), (128, 6))
) + (Scheme("f16"),)


def with_transform(menu: Sequence[Scheme], transform: str, block: int) -> tuple[Scheme, ...]:
    """``menu`` plus each of its quantized schemes under ``transform`` (the allocator picks per tensor)."""
    rotated = tuple(replace(s, transform=transform, transform_block=block) for s in menu if not s.is_passthrough)
    return (*menu, *rotated)


@dataclass(frozen=True)
class Candidate:
    """A tensor the allocator may quantize: its logical name, 2-D shape and importance (error multiplier)."""

    name: str
    shape: tuple[int, ...]
    importance: float = 1.0

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Option:
    """One way to store a tensor: the scheme, its exact stored bytes, its importance-weighted predicted error."""

    scheme: Scheme
    nbytes: int
    error: float


@dataclass(frozen=True)
class Allocation:
    """The solver's answer: the option chosen for every tensor, and the totals."""

    options: dict[str, Option]
    budget_bits: float
    weights: int  # elements over all allocated tensors

    @property
    def choices(self) -> dict[str, Scheme]:
        return {name: o.scheme for name, o in self.options.items()}

    @property
    def nbytes(self) -> int:
        """Predicted stored bytes of the allocated tensors (component bytes; file headers excluded)."""
        return sum(o.nbytes for o in self.options.values())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.weights if self.weights else 0.0

    @property
    def predicted_error(self) -> float:
        return sum(o.error for o in self.options.values())

    def resolved(self) -> dict[str, dict[str, object]]:
        """``{tensor: scheme JSON}``: the per-tensor record a converted folder keeps."""
        return {name: o.scheme.to_json() for name, o in self.options.items()}

    def policy(self, name: str = "auto", keep_dtype: str = "source") -> Policy:
        """A policy with one exact-name rule per allocated tensor, then ``keep`` for everything else."""
        rules = [_exact_rule(tensor, o.scheme) for tensor, o in self.options.items()]
        description = f"automatic allocation: {self.bits_per_weight:.4f} bits per weight over {len(rules)} tensors"
        return Policy(name, (*rules, Rule(scheme="keep")), keep_dtype=keep_dtype, description=description)


def _exact_rule(tensor: str, scheme: Scheme) -> Rule:
    # fnmatch has no escape function: a one-character set matches a metacharacter literally
    pattern = re.sub(r"([*?\[])", r"[\1]", tensor)
    assert fnmatch.fnmatchcase(tensor, pattern)
    transform = {"transform": scheme.transform, "transform_block": scheme.transform_block} if scheme.transform != "none" else {}
    return Rule(match=(pattern,), scheme=scheme.name, bits=scheme.bits, group_size=scheme.group_size, meta_bits=scheme.meta_bits, **transform)  # type: ignore[arg-type]


def stored_bytes(scheme: Scheme, shape: tuple[int, ...]) -> int:
    """Exact stored bytes of a tensor of ``shape`` under ``scheme``, all metadata included."""
    return sum(c.nbytes for c in component_layout(scheme, shape, "x").values())


def budget_for_bpw(tensors: Sequence[Candidate], bits_per_weight: float) -> float:
    """The budget in bits that ``--target-bpw`` means: that many bits per weight of ``tensors``."""
    if not bits_per_weight > 0:
        raise ValueError(f"bits per weight must be positive, got {bits_per_weight}")
    return bits_per_weight * sum(t.size for t in tensors)


def allocate(
    tensors: Sequence[Candidate],
    schemes: Sequence[Scheme],
    error: Callable[[Candidate, Scheme], float],
    budget_bits: float,
    *,
    allowed: Callable[[Scheme, tuple[int, ...]], bool] = lambda scheme, shape: True,
) -> Allocation:
    """Choose one of ``schemes`` per tensor, minimising the summed predicted error within ``budget_bits``.

    Args:
        tensors: the tensors to allocate (names must be unique).
        schemes: the menu; a scheme that does not fit a tensor's shape is left out for that tensor.
        error: ``error(tensor, scheme)``, the tensor's predicted error under the scheme (for
            example from :func:`estimate_errors`), finite and >= 0; it is multiplied by ``tensor.importance``.
        budget_bits: the most bits all tensors together may store (see :func:`budget_for_bpw`).
        allowed: a further per-tensor filter on the menu (e.g. only what the runtime runs fused).

    Returns:
        The :class:`Allocation`; its ``nbytes * 8`` never exceeds ``budget_bits``.

    Raises:
        ValueError: duplicate names, a tensor no scheme fits, an error that is negative or not
            finite, or a budget below the cheapest choice.
    """
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("tensor names must be unique")
    menu: dict[str, list[Option]] = {}
    for t in tensors:
        fitting = [s for s in schemes if fits(s, t.shape) and allowed(s, t.shape)]
        if not fitting:
            raise ValueError(f"no candidate scheme fits {t.name} of shape {list(t.shape)}")
        menu[t.name] = [Option(s, stored_bytes(s, t.shape), t.importance * float(error(t, s))) for s in fitting]
        if not all(0 <= o.error < math.inf for o in menu[t.name]):
            raise ValueError(f"predicted errors must be finite and >= 0; {t.name}: {[o.error for o in menu[t.name]]}")
    return Allocation(solve(menu, budget_bits), budget_bits, sum(t.size for t in tensors))


def runs_fused(scheme: Scheme, shape: tuple[int, ...]) -> bool:
    """Whether the Nano runtime multiplies this tensor on a fused kernel (passthrough counts as fast)."""
    from nanofmt.loaders.export import fused_kernel  # torch-free: the runtime's own rule

    return scheme.is_passthrough or fused_kernel(scheme.kind, scheme.bits, scheme.group_size, shape[-1])


def fits(scheme: Scheme, shape: tuple[int, ...]) -> bool:
    """Whether ``scheme`` can store a tensor of ``shape`` (parameters, transform block, group within the row)."""
    try:
        scheme.check(shape)
    except NanoError:
        return False
    return scheme.group_size is None or shape[-1] >= scheme.group_size


def _frontier(options: Sequence[Option]) -> list[Option]:
    """The options no other beats on both bytes and error, cheapest first."""
    out: list[Option] = []
    for o in sorted(options, key=lambda o: (o.nbytes, o.error)):
        if not out or o.error < out[-1].error:
            out.append(o)
    return out


def solve(menu: Mapping[str, Sequence[Option]], budget_bits: float, resolution: int = RESOLUTION) -> dict[str, Option]:
    """The knapsack core: one option per name, summed error minimised, ``8 * bytes <= budget_bits``.

    Dynamic programming over the budget in units of ``ceil(largest total / resolution)`` bytes:
    each option's bytes are rounded up to whole units, so the answer always fits, is optimal for
    the rounded sizes, and is never worse for a larger budget (the unit depends on the menu only).

    >>> a = [Option(Scheme("f16"), 100, 0.0), Option(Scheme("int8_row", bits=8), 50, 1.0)]
    >>> b = [Option(Scheme("f16"), 100, 0.0), Option(Scheme("int8_row", bits=8), 50, 9.0)]
    >>> {k: o.nbytes for k, o in solve({"a": a, "b": b}, 8 * 150).items()}
    {'a': 50, 'b': 100}
    """
    fronts = {name: _frontier(opts) for name, opts in menu.items()}
    if any(not 0 < len(f) < 256 for f in fronts.values()):
        raise ValueError("every tensor needs between 1 and 255 options")
    cheapest = sum(f[0].nbytes for f in fronts.values())
    if 8 * cheapest > budget_bits:
        raise ValueError(f"budget of {budget_bits:.0f} bits is below the smallest choice ({8 * cheapest} bits)")
    unit = max(1, -(-sum(f[-1].nbytes for f in fronts.values()) // resolution))
    cap = int(budget_bits // 8) // unit
    # best[u]: least error of the tensors so far within u units; picks[t][u]: the option that gives it
    best = np.zeros(cap + 1)
    picks = []
    for front in fronts.values():
        new, pick = np.full(cap + 1, np.inf), np.zeros(cap + 1, np.uint8)
        for k, o in enumerate(front):
            c = -(-o.nbytes // unit)
            if c <= cap:
                cand = best[: cap + 1 - c] + o.error
                better = cand < new[c:]
                new[c:][better], pick[c:][better] = cand[better], k
        best = new
        picks.append(pick)
    if not np.isfinite(best[cap]):  # rounding up made the cheapest choice miss a budget it fits
        return {name: f[0] for name, f in fronts.items()}
    chosen, u = {}, cap
    for (name, front), pick in zip(reversed(fronts.items()), reversed(picks), strict=True):
        o = front[pick[u]]
        chosen[name] = o
        u -= -(-o.nbytes // unit)
    return {name: chosen[name] for name in menu}


def estimate_errors(
    x: NDArray[np.floating], scheme: Scheme, *, weights: NDArray[np.floating] | None = None, max_rows: int | None = 256
) -> dict[str, float]:
    """Predicted error of storing ``x`` under ``scheme`` by each proxy: :func:`estimate_menu` for one scheme."""
    return estimate_menu(x, [scheme], weights=weights, max_rows=max_rows)[scheme]


def estimate_menu(
    x: NDArray[np.floating], schemes: Sequence[Scheme], *, weights: NDArray[np.floating] | None = None, max_rows: int | None = 256
) -> dict[Scheme, dict[str, float]]:
    """Predicted error of storing ``x`` under each of ``schemes``, from one quantize -> dequantize of sampled rows.

    ``x`` is a 2-D array, or anything with a ``shape`` whose ``x[indices]`` gives those rows
    (a memory-mapped source tensor): only the sampled rows are read, once for all schemes.

    Returns, per scheme, ``{"sse": sum((x - x')^2), "relative": sse / mean(x^2)}``, plus
    ``"weighted": sum(weights * (x - x')^2)`` given ``weights`` (the shape of ``x``, e.g. a
    diagonal Fisher), each estimated for the whole tensor. With more than ``max_rows`` rows
    (``None``: never), the rows of most weight mass (half the sample; none without weights) are
    measured exactly and an evenly strided sample of the others stands for the rest, scaled by
    their count, and for ``weighted`` by their weight mass: a Fisher diagonal is concentrated in
    few rows (an embedding's frequent tokens) that a strided sample would mostly miss.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    rows, cols = x.shape[0], x.shape[1]
    mass = None if weights is None else weights.sum(axis=1, dtype=np.float64)
    if max_rows is None or rows <= max_rows:
        heavy, rest = np.arange(rows), np.empty(0, np.intp)
    else:
        k = max_rows // 2 if mass is not None else 0  # no weights: no heavy rows
        heavy = np.sort(np.argpartition(mass, rows - k)[rows - k :]) if mass is not None and k else np.empty(0, np.intp)
        rest = np.setdiff1d(np.arange(rows), heavy)
    sample = rest[np.linspace(0, len(rest) - 1, (max_rows or 0) - len(heavy)).round().astype(np.intp)] if len(rest) else rest
    pick = np.concatenate([heavy, sample])
    xs = np.ascontiguousarray(x[pick], dtype=np.float32)
    h = len(heavy)
    scale = len(rest) / len(sample) if len(sample) else 0.0
    # the signal power from the rows read (the strided sample stands for the rest), so that a
    # memory-mapped tensor is never read whole
    power_rows = np.square(xs, dtype=np.float64).sum(axis=1)
    power = float((power_rows[:h].sum() + scale * power_rows[h:].sum()) / (rows * cols))
    picked_weights = None if weights is None else weights[pick]
    out = {}
    for scheme in schemes:
        err = np.square(np.asarray(nanofmt.dequantize(nanofmt.quantize(xs, scheme), "f32"), np.float64) - xs)
        per_row = err.sum(axis=1)
        sse = float(per_row[:h].sum() + scale * per_row[h:].sum())
        found = {"sse": sse, "relative": sse / power if power > 0 else 0.0}
        if picked_weights is not None and mass is not None:
            w_row = (err * picked_weights).sum(axis=1)
            rest_mass, sample_mass = float(mass[rest].sum()), float(mass[sample].sum())
            if sample_mass > 0:
                tail = rest_mass / sample_mass * float(w_row[h:].sum())
            else:  # the sample has no weight: the rest's mean weight times its squared error
                tail = rest_mass / max(1, len(rest) * cols) * scale * float(per_row[h:].sum())
            found["weighted"] = float(w_row[:h].sum()) + tail
        out[scheme] = found
    return out


_LAYER = re.compile(r"\.(?:layers?|h|blocks?)\.(\d+)\.")
# value projections and the MLP's down projection (BERT's is the layer's own ``output.dense``)
_MORE_BITS = re.compile(r"v_proj|\.value\.|down_proj|\.fc2\.|\.w2\.|(?<!attention)\.output\.dense")
_KV = re.compile(r"[kv]_proj|\.key\.|\.value\.")
_HEAD = ("lm_head", "embed_tokens", "word_embeddings", ".wte.", "embed_out")


def heuristic_importance(name: str, n_layers: int | None = None, *, tied_head: bool = True, kv_groups: int = 1) -> float:
    """Data-free importance of a tensor (an error multiplier), in the spirit of llama.cpp's Q4_K_M mix.

    Q4_K_M spends two more bits on the attention value and MLP down projections in its
    "use_more_bits" layers (the first and last eighth, and every third in between) and six bits
    on the output head. Here, multiplied together:

    - x2 for value and down projections;
    - x ``kv_groups`` for key and value projections under grouped-query attention (heads / kv
      heads): each of their heads serves that many query heads, so its error reaches them all;
    - x1.5 for every tensor of the first and last eighth of the ``n_layers`` layers;
    - x2 for the output head, which a tied token embedding also is (``tied_head``).

    >>> heuristic_importance("model.layers.0.self_attn.v_proj.weight", 30, kv_groups=3)
    9.0
    >>> heuristic_importance("model.layers.12.mlp.up_proj.weight", 30)
    1.0
    """
    weight = 1.0
    if _MORE_BITS.search(name):
        weight *= 2.0
    if _KV.search(name):
        weight *= kv_groups
    m = _LAYER.search(name)
    if m and n_layers:
        i, edge = int(m.group(1)), max(1, n_layers // 8)
        weight *= 1.5 if i < edge or i >= n_layers - edge else 1.0
    if any(k in name for k in _HEAD) and (tied_head or "embed" not in name):
        weight *= 2.0
    return weight
