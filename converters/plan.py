"""The conversion plan: every output tensor's scheme, size and shard, known before any data is read.

Shapes come from the source headers, kinds from the model skeleton, schemes from the policy;
the stored sizes follow from ``nanofmt.schemes.component_layout``, and the exact shard file
sizes from the same header rendering the writer uses. ``--dry-run`` prints this plan; the
conversion then streams it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from nanofmt import TensorPlan
from nanofmt.schemes import component_layout

from .errors import ConvertError
from .policy import Choice, Policy
from .shard import shard_size
from .skeleton import Skeleton
from .source import Source, SourceTensor

__all__ = ["TensorJob", "ShardPlan", "Plan", "make_plan", "parse_size", "shard_names"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: int | str | None) -> int | None:
    """Bytes from ``5GB`` / ``500MB`` / ``2GiB`` / ``1000000`` (decimal units, as transformers uses).

    >>> parse_size("2GB"), parse_size("1.5MiB"), parse_size(None)
    (2000000000, 1572864, None)
    """
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise ValueError(f"shard size must be positive, got {value}")
        return value
    m = _SIZE.match(value)
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"cannot read {value!r} as a size: use e.g. 2GB, 500MB or a byte count")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class TensorJob:
    """One output record: a stored tensor (with its source and choice) or a tie."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # record dtype: f32 / f16 / bf16
    kind: str
    source: SourceTensor | None
    choice: Choice | None
    tie: str | None = None
    nbytes: int = 0

    @property
    def measured(self) -> bool:
        """Whether the stored values can differ from the source (so an SQNR is recorded)."""
        return self.choice is not None and (not self.choice.scheme.is_passthrough or self.choice.scheme.name != self.dtype)

    def tensor_plan(self) -> TensorPlan:
        if self.tie is not None:
            return TensorPlan(self.name, self.shape, self.dtype, tie=self.tie)
        assert self.choice is not None
        return TensorPlan(self.name, self.shape, self.dtype, self.choice.scheme)


@dataclass(frozen=True)
class ShardPlan:
    filename: str
    jobs: tuple[TensorJob, ...]
    data_bytes: int
    file_bytes: int

    def tensor_plans(self) -> list[TensorPlan]:
        return [j.tensor_plan() for j in self.jobs]

    @property
    def measured(self) -> frozenset[str]:
        return frozenset(j.name for j in self.jobs if j.measured)


@dataclass(frozen=True)
class Plan:
    """Everything the conversion will write, in order."""

    jobs: tuple[TensorJob, ...]
    shards: tuple[ShardPlan, ...]
    skipped: tuple[tuple[str, str], ...]  # (source tensor, why it is not stored)
    policy: Policy
    skeleton: Skeleton
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.shards)

    @property
    def stored(self) -> list[TensorJob]:
        return [j for j in self.jobs if j.tie is None]

    def resolved(self) -> dict[str, Any]:
        """Per tensor, the scheme it got (rule index, fallback) or its tie: recorded in config.json."""
        return {j.name: ({"tie": j.tie} if j.tie else j.choice.to_json()) for j in self.jobs if j.tie or j.choice}  # type: ignore[union-attr]


def shard_names(count: int) -> list[str]:
    """HF shard file names: ``model.safetensors`` alone, else ``model-00001-of-0000N.safetensors``."""
    return ["model.safetensors"] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _stored_bytes(choice: Choice, shape: tuple[int, ...], name: str) -> int:
    choice.scheme.check(shape, tensor=name)
    return sum(c.nbytes for c in component_layout(choice.scheme, shape, name).values())


def _jobs(source: Source, skeleton: Skeleton, policy: Policy) -> tuple[list[TensorJob], list[tuple[str, str]]]:
    jobs: list[TensorJob] = []
    skipped: list[tuple[str, str]] = []
    head, target = skeleton.tie or (None, None)
    for t in source.tensors.values():
        if not t.is_float:
            skipped.append((t.name, f"{t.dtype} buffer: Nano stores floating-point tensors; transformers rebuilds it"))
            continue
        if head is not None and skeleton.canonical(t.name) == head:
            skipped.append((t.name, f"tied to {target}: stored once"))
            continue
        kind = skeleton.kind(t.name)
        choice = policy.resolve(t.name, kind, t.shape, t.record_dtype)
        jobs.append(TensorJob(t.name, t.shape, t.record_dtype, kind, t, choice, nbytes=_stored_bytes(choice, t.shape, t.name)))
        if head is not None and skeleton.canonical(t.name) == target:
            jobs.append(TensorJob(head, t.shape, t.record_dtype, "linear", None, None, tie=t.name))
    if not any(j.kind == "linear" for j in jobs):
        raise ConvertError("no_linear_weights", f"{skeleton.architecture} has no nn.Linear weights in {source.folder}: there is nothing for a Nano scheme to quantize")
    return jobs, skipped


def _split(jobs: list[TensorJob], max_bytes: int | None) -> list[list[TensorJob]]:
    """Greedy, in order; a tie goes with its target (it is listed right after it)."""
    shards: list[list[TensorJob]] = [[]]
    size = 0
    for job in jobs:
        if max_bytes is not None and job.tie is None and shards[-1] and size + job.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(job)
        size += job.nbytes
    return shards


def make_plan(source: Source, skeleton: Skeleton, policy: Policy, *, max_shard_size: int | str | None = None, extra: dict[str, Any] | None = None) -> Plan:
    """Plan the conversion of ``source`` under ``policy`` (no tensor data is read).

    Raises:
        ConvertError: ``no_linear_weights``, ``dtype_unsupported``.
    """
    jobs, skipped = _jobs(source, skeleton, policy)
    groups = _split(jobs, parse_size(max_shard_size))
    names = shard_names(len(groups))
    file_extra = dict(extra or {})
    shards = []
    for name, group in zip(names, groups, strict=True):
        draft = ShardPlan(name, tuple(group), sum(j.nbytes for j in group), 0)
        size = shard_size(draft.tensor_plans(), draft.measured, file_extra)
        shards.append(ShardPlan(name, draft.jobs, draft.data_bytes, size))
    return Plan(tuple(jobs), tuple(shards), tuple(skipped), policy, skeleton, file_extra)
