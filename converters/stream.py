"""The streaming loop: planned tensors, in order, from the source through the codec to the shards.

Memory stays bounded by one tensor: each tensor is encoded in row chunks (``encode.py``),
assembled into its stored parts, written, and its source pages dropped before the next one.
With ``workers > 1`` the chunks are encoded by worker processes a few chunks ahead of the writer
(the quantizer is numpy and single-threaded), and results are still consumed strictly in plan
order, so the output bytes do not depend on the worker count.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanofmt import QuantizedTensor
from nanofmt._spec import TRANSFORM_SPECS
from nanofmt.container import NUMPY_DTYPES
from nanofmt.schemes import component_layout

from .encode import Chunk, Encoded, encode_rows, row_chunks
from .gptq import GPTQ_KINDS
from .plan import Plan, TensorJob
from .shard import ShardWriter, sqnr_value
from .source import Source
from .workers import WorkerPool

__all__ = ["ProgressEvent", "stream", "choose_workers"]

POOL_MIN_WEIGHTS = 16_000_000  # below this, starting worker processes costs more than it saves
# A transform's components (the hadamard signs) are per column: every chunk carries the whole one.
PER_TENSOR_ROLES = frozenset(str(c["role"]) for t in TRANSFORM_SPECS.values() for c in t.get("components", []))


@dataclass(frozen=True)
class ProgressEvent:
    """Sent after each stored tensor is written."""

    tensor: str
    shard: str
    tensors_done: int
    tensors_total: int
    weights_done: int
    weights_total: int


def choose_workers(requested: int | None, plan: Plan, source: Source) -> int:
    """Worker processes to use: as requested, else one per core (up to 4) for big safetensors sources."""
    if source.format != "safetensors":
        return 1  # torch-loaded tensors live in this process only
    if requested is not None:
        return max(1, requested)
    quantized = sum(math.prod(j.shape) for j in plan.stored if j.choice and not j.choice.scheme.is_passthrough)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, 4) if quantized >= POOL_MIN_WEIGHTS else 1


def _chunks(plan: Plan, grams: Mapping[str, str] | None) -> Iterator[Chunk]:
    for job in plan.stored:
        assert job.source is not None and job.choice is not None
        scheme = job.choice.scheme
        gram = grams.get(job.name) if grams and scheme.kind in GPTQ_KINDS else None
        for rows in row_chunks(job.shape):
            yield Chunk(job.name, job.source, rows, scheme, job.dtype, gram)


def _results(
    plan: Plan, source: Source, pool: WorkerPool | None, window: int, grams: Mapping[str, str] | None
) -> Iterator[tuple[Chunk, Encoded]]:
    """Encoded chunks in plan order; with a pool, up to ``window`` chunks are in flight."""
    chunks = _chunks(plan, grams)
    if pool is None:
        for chunk in chunks:
            yield chunk, encode_rows(source.read(chunk.name, chunk.rows), chunk.scheme, chunk.dtype, chunk.name, chunk.gram)
        return
    pending: deque[Chunk] = deque()
    for chunk in chunks:
        pool.submit(chunk)
        pending.append(chunk)
        if len(pending) >= window:
            yield pending.popleft(), pool.next_result()
    while pending:
        yield pending.popleft(), pool.next_result()


def _assemble(job: TensorJob, results: Iterator[tuple[Chunk, Encoded]]) -> tuple[QuantizedTensor, float | None]:
    """Collect a tensor's chunks into its stored parts (a single chunk is used as is)."""
    assert job.choice is not None
    scheme = job.choice.scheme
    spans = row_chunks(job.shape)
    parts: dict[str | None, np.ndarray] = {}
    signal = noise = 0.0
    for span in spans:
        chunk, encoded = next(results)
        assert chunk.name == job.name and chunk.rows == span, "chunks arrive in plan order"
        if len(spans) == 1:
            parts = dict(encoded.parts)
        else:
            if not parts:
                layout = component_layout(scheme, job.shape, job.name)
                parts = {role: np.empty(c.shape, NUMPY_DTYPES[c.dtype]) for role, c in layout.items()}
            for role, part in encoded.parts.items():
                if role in PER_TENSOR_ROLES:
                    parts[role] = part
                else:
                    parts[role][span] = part
        signal += encoded.signal
        noise += encoded.noise
    return QuantizedTensor(job.shape, job.dtype, scheme, parts), sqnr_value(signal, noise) if job.measured else None


def stream(
    plan: Plan,
    source: Source,
    out_dir: Path,
    *,
    workers: int = 1,
    progress: Callable[[ProgressEvent], None] | None = None,
    grams: Mapping[str, str] | None = None,
) -> dict[str, float | None]:
    """Write every planned shard into ``out_dir``; returns the SQNR (dB) of each measured tensor.

    ``grams`` maps logical tensor names to ``.npy`` files of their input Gram matrices
    (``calibrate.gram_paths``): those tensors, if stored under int8_row, affine or affine_dq, are
    encoded by GPTQ; the rest round to nearest.

    A shard being written when anything fails is removed; the caller owns ``out_dir`` cleanup.
    """
    pool = WorkerPool(workers) if workers > 1 else None
    measured: dict[str, float | None] = {}
    total = sum(math.prod(j.shape) for j in plan.stored)
    done = count = 0
    try:
        results = _results(plan, source, pool, window=2 * workers + 2, grams=grams)
        for shard in plan.shards:
            writer = ShardWriter(out_dir / shard.filename, shard.tensor_plans(), shard.measured, plan.extra)
            try:
                for job in shard.jobs:
                    if job.tie is not None:
                        continue
                    qt, sqnr = _assemble(job, results)
                    writer.add(job.name, qt, sqnr)
                    del qt
                    source.release(job.name)
                    if job.measured:
                        measured[job.name] = sqnr
                    done += math.prod(job.shape)
                    count += 1
                    if progress is not None:
                        progress(ProgressEvent(job.name, shard.filename, count, len(plan.stored), done, total))
                writer.close()
            except BaseException:
                writer.abort()
                raise
    finally:
        if pool is not None:
            pool.close()
    return measured
