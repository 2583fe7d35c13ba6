"""``--target-bpw`` / ``--max-size``: the policy that minimises predicted error within a size budget.

Every Linear and Embedding weight (the tied head is its embedding) is a candidate, except those
``--keep`` names; everything else is kept as the policy for plain tensors says. Each candidate's
error under every scheme of the menu is measured on a sample of its rows (read through the
source's memory map, so a large model is never loaded whole), and :func:`allocate.solve` picks
one scheme per tensor. The result is an ordinary :class:`Policy` with one exact-name rule per
tensor, so the conversion itself, the report and the recorded ``resolved`` policy are those of
any other policy; the budget, the proxy and the predicted error are recorded with it.

Proxies (see :mod:`.allocate`): without calibration, the data-free one (relative squared error
times llama.cpp-style importance); with a :class:`Calibration`'s Fisher diagonal, the
calibrated one (half the Fisher-weighted squared error predicts the mean KL per token).

``--max-size`` counts every byte of the weight files (kept tensors and headers included): the
candidates' budget is what is left after the rest, corrected once more if the planned files
come out larger than the first estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nanofmt import Scheme
from nanofmt.floats import bf16_bits_to_f32

from .allocate import (
    CANDIDATE_SCHEMES,
    Allocation,
    Candidate,
    allocate,
    budget_for_bpw,
    estimate_menu,
    fits,
    heuristic_importance,
    runs_fused,
)
from .errors import ConvertError
from .plan import Plan, make_plan
from .policy import Policy, Rule
from .skeleton import Skeleton
from .source import Source, SourceTensor

__all__ = ["Target", "Estimate", "auto_policy", "candidates", "error_table", "SAMPLE_ROWS"]

SAMPLE_ROWS = 128  # rows measured per tensor and scheme: errors within a few percent, seconds per tensor
_QUANT_KINDS = ("linear", "embedding")


@dataclass(frozen=True)
class Target:
    """A size budget: bits per weight over the candidate tensors, or bytes of all weight files."""

    bits_per_weight: float | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.bits_per_weight is None) == (self.max_bytes is None):
            raise ValueError("give exactly one of a bits-per-weight target and a maximum size")
        if self.bits_per_weight is not None and not 1.0 <= self.bits_per_weight <= 32.0:
            raise ValueError(f"--target-bpw must be between 1 and 32, got {self.bits_per_weight}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"--max-size must be positive, got {self.max_bytes}")

    def to_json(self) -> dict[str, Any]:
        return {"target_bpw": self.bits_per_weight} if self.bits_per_weight is not None else {"max_size": self.max_bytes}


@dataclass(frozen=True)
class Estimate:
    """What the allocation predicted, recorded with the policy."""

    proxy: str  # "data-free" or "calibrated"
    allocation: Allocation
    menu: str = "all"  # or "fused": only schemes the runtime runs on fused kernels

    def to_json(self) -> dict[str, Any]:
        a = self.allocation
        out: dict[str, Any] = {"proxy": self.proxy, "menu": self.menu, "bits_per_weight": round(a.bits_per_weight, 4), "weights": a.weights}
        if self.proxy == "calibrated":
            out["predicted_mean_kl"] = round(a.predicted_error, 6)
        return out


class _Rows:
    """A source tensor's rows as float32 on demand: ``rows[indices]`` reads only those rows."""

    def __init__(self, source: Source, tensor: SourceTensor) -> None:
        self._values = source.read(tensor.name)
        self._bf16 = tensor.record_dtype == "bf16"
        self.shape = tensor.shape

    def __getitem__(self, pick: NDArray[np.intp]) -> NDArray[np.float32]:
        rows = np.asarray(self._values[pick])
        return bf16_bits_to_f32(rows) if self._bf16 else rows.astype(np.float32)


def candidates(source: Source, skeleton: Skeleton, keep: Sequence[str] = ()) -> list[Candidate]:
    """The tensors the allocator chooses for, with their data-free importance."""
    keep_rules = [Rule(match=(p,), scheme="keep") for p in keep]
    config = source.config
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    groups = heads // kv_heads if isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads > 0 else 1
    head = skeleton.tie[0] if skeleton.tie else None
    out = []
    for t in source.tensors.values():
        kind = skeleton.kind(t.name)
        if kind not in _QUANT_KINDS or len(t.shape) != 2 or not t.is_float or min(t.shape) < 1:
            continue
        if skeleton.canonical(t.name) == head or any(r.matches(t.name, kind) for r in keep_rules):
            continue
        importance = heuristic_importance(t.name, layers if isinstance(layers, int) else None, tied_head=skeleton.tie is not None, kv_groups=groups)
        out.append(Candidate(t.name, t.shape, importance))
    if not out:
        raise ConvertError("no_linear_weights", f"nothing to allocate: no Linear or Embedding weight of {source.folder} is left after --keep")
    return out


def error_table(
    source: Source,
    tensors: Sequence[Candidate],
    menu: Sequence[Scheme],
    *,
    fisher: Mapping[str, NDArray[np.floating]] | None = None,
    max_rows: int = SAMPLE_ROWS,
    progress: Callable[[str], None] | None = None,
    allowed: Callable[[Scheme, tuple[int, ...]], bool] = lambda scheme, shape: True,
) -> dict[tuple[str, Scheme], float]:
    """Predicted error per (tensor, scheme): 0.5 x Fisher-weighted SSE with ``fisher``, else relative SSE.

    The importance multiplier is not applied here (``allocate`` applies ``Candidate.importance``).
    """
    table: dict[tuple[str, Scheme], float] = {}
    for i, c in enumerate(tensors):
        rows = _Rows(source, source.tensors[c.name])
        weights = None if fisher is None else fisher.get(c.name)
        if fisher is not None and weights is None:
            raise ConvertError("calibration_invalid", "the calibration has no Fisher information for it", tensor=c.name)
        offered = [s for s in menu if fits(s, c.shape) and allowed(s, c.shape)]
        for s, e in estimate_menu(rows, offered, weights=weights, max_rows=max_rows).items():  # type: ignore[arg-type]
            table[c.name, s] = 0.5 * e["weighted"] if weights is not None else e["relative"]
        source.release(c.name)
        if progress is not None and ((i + 1) % max(1, len(tensors) // 10) == 0 or i + 1 == len(tensors)):
            progress(f"measured {i + 1}/{len(tensors)} tensors under {len(menu)} schemes")
    return table


def _policy(allocation: Allocation, base_keep_dtype: str, keep: Sequence[str], target: Target, estimate: Estimate) -> Policy:
    policy = allocation.policy(keep_dtype=base_keep_dtype)
    keep_rules = tuple(Rule(match=(p,), scheme="keep") for p in keep)
    overrides = {**target.to_json(), **({"keep": list(keep)} if keep else {}), "allocation": estimate.to_json()}
    return replace(policy, rules=keep_rules + policy.rules, overrides=overrides)


def auto_policy(
    source: Source,
    skeleton: Skeleton,
    target: Target,
    *,
    keep: Sequence[str] = (),
    keep_dtype: str = "source",
    menu: Sequence[Scheme] = CANDIDATE_SCHEMES,
    fisher: Mapping[str, NDArray[np.floating]] | None = None,
    max_rows: int = SAMPLE_ROWS,
    max_shard_size: int | str | None = None,
    extra: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    fused_only: bool = False,
) -> tuple[Policy, Plan, Estimate]:
    """Measure, allocate and plan: the policy meeting ``target``, its plan, and what it predicts.

    ``fused_only`` keeps to the schemes the Nano runtime multiplies on fused kernels (at most 4
    bits, or int8_row, or fp16): decoding stays fast, at some cost in quality per byte.

    Raises:
        ConvertError: ``budget_too_small`` when even the cheapest scheme per tensor does not fit.
    """
    tensors = candidates(source, skeleton, keep)
    weights = sum(t.size for t in tensors)
    allowed = runs_fused if fused_only else (lambda scheme, shape: True)
    table = error_table(source, tensors, menu, fisher=fisher, max_rows=max_rows, progress=progress, allowed=allowed)
    proxy = "calibrated" if fisher is not None else "data-free"
    menu_name = "fused" if fused_only else "all"

    def solve(budget_bits: float) -> Allocation:
        try:
            return allocate(tensors, menu, lambda c, s: table[c.name, s], budget_bits, allowed=allowed)
        except ValueError as exc:
            raise ConvertError("budget_too_small", f"{target.to_json()}: {exc}") from None

    def plan_for(allocation: Allocation) -> tuple[Policy, Plan]:
        policy = _policy(allocation, keep_dtype, keep, target, Estimate(proxy, allocation, menu_name))
        return policy, make_plan(source, skeleton, policy, max_shard_size=max_shard_size, extra=extra)

    if target.bits_per_weight is not None:
        allocation = solve(budget_for_bpw(tensors, target.bits_per_weight))
        policy, plan = plan_for(allocation)
        return policy, plan, Estimate(proxy, allocation, menu_name)
    assert target.max_bytes is not None
    # the bytes that are not the candidates' (kept tensors, headers): read off the plan of any allocation
    roomy = solve(32.0 * weights)
    _, plan = plan_for(roomy)
    fixed = plan.file_bytes - roomy.nbytes
    budget = 8.0 * (target.max_bytes - fixed)
    for _ in range(3):
        allocation = solve(budget)
        policy, plan = plan_for(allocation)
        over = plan.file_bytes - target.max_bytes
        if over <= 0:
            return policy, plan, Estimate(proxy, allocation, menu_name)
        budget -= 8.0 * over  # headers grew with the chosen schemes' fields: take it from the candidates
    raise ConvertError("budget_too_small", f"could not fit the weight files in {target.max_bytes} bytes (planned {plan.file_bytes})")
