"""HF folder -> Nano folder: plan, stream, verify, publish.

Example (a real model, from a shell)::

    nanofmt convert ./models/smollm2-135m ./out/smollm2-nano --policy qkvfp16
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import nanofmt

from .atomic import check_destination, staging, terminate_as_interrupt
from .card import model_card
from .errors import ConvertError
from .folder import write_folder
from .plan import Plan, make_plan
from .policy import Policy, load_policy
from .report import ConversionReport, build_report
from .skeleton import analyze
from .source import Source, open_source, resolve_source
from .stream import ProgressEvent, choose_workers, stream

__all__ = ["convert"]

PRODUCER = f"nanofmt {nanofmt.__version__} convert"


def _source_name(spec: str | os.PathLike[str], folder: Path) -> str:
    return str(spec) if not Path(spec).exists() else folder.resolve().name


def _verify_shards(out: Path, plan: Plan) -> None:
    """Re-open what was written: every shard must parse, hold the planned records and have the planned size."""
    for shard in plan.shards:
        path = out / shard.filename
        with nanofmt.open_file(path) as f:
            if set(f.records) != {j.name for j in shard.jobs}:
                raise ConvertError("write_failed", f"{shard.filename} does not hold the planned tensors")
        if path.stat().st_size != shard.file_bytes:
            raise ConvertError("write_failed", f"{shard.filename} is {path.stat().st_size} bytes, planned {shard.file_bytes}")


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    policy: str | os.PathLike[str] | Policy = "qkvfp16",
    bits: int | None = None,
    group_size: int | None = None,
    keep: Sequence[str] = (),
    keep_dtype: str | None = None,
    max_shard_size: int | str | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
    workers: int | None = None,
) -> ConversionReport:
    """Convert a Hugging Face model folder (or hub id) into a self-contained Nano folder.

    Args:
        src: a local HF folder (config.json + safetensors or pytorch_model*.bin) or a hub id.
        dst: the output folder; written to a temporary sibling and renamed into place.
        policy: a preset (``qkvfp16``, ``tiedq``, ``int8``), a .toml/.json policy file, or a Policy.
        bits, group_size: override the policy's default quantized scheme.
        keep: glob patterns of tensors to keep unquantized (they take precedence over the policy).
        keep_dtype: dtype of kept tensors: ``source`` (default), ``f16``, ``bf16`` or ``f32``.
        max_shard_size: split the output into HF-style shards of at most this size (``"2GB"``).
        dry_run: plan only: nothing is read beyond headers and nothing is written.
        force: replace a non-empty ``dst``.
        progress: called with a :class:`ProgressEvent` after each tensor.
        workers: encoding processes (default: one per core, up to 4, for models over 16M quantized weights).

    Returns:
        A :class:`ConversionReport` (sizes, schemes, SQNR per tensor, timings).

    Raises:
        ConvertError: bad source, policy or destination (``reason`` says which); nothing is left at ``dst``.
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after removing the partial output.
    """
    started = time.perf_counter()
    chosen = load_policy(policy).with_overrides(bits=bits, group_size=group_size, keep=tuple(keep), keep_dtype=keep_dtype)
    folder = resolve_source(src)
    out = Path(dst)
    if not dry_run:
        check_destination(out, force=force, protect=folder)
    with open_source(folder) as source:
        skeleton = analyze(folder)
        analyzed = time.perf_counter()
        plan = make_plan(source, skeleton, chosen, max_shard_size=max_shard_size, extra={"producer": PRODUCER})
        name = _source_name(src, folder)
        if dry_run:
            return build_report(plan, source=name, destination=str(out), source_bytes=source.nbytes, dry_run=True)
        with terminate_as_interrupt(), staging(out, force=force) as tmp:
            report = _write(plan, source, tmp, name=name, destination=str(out), workers=workers, progress=progress)
            report.timings = {"analyze_s": analyzed - started, **report.timings, "total_s": time.perf_counter() - started}
            report.seconds = report.timings["total_s"]
    return report


def _write(plan: Plan, source: Source, tmp: Path, *, name: str, destination: str, workers: int | None, progress: Callable[[ProgressEvent], None] | None) -> ConversionReport:
    count = choose_workers(workers, plan, source)
    try:
        started, cpu = time.perf_counter(), os.times()
        sqnr = stream(plan, source, tmp, workers=count, progress=progress)
        streamed, cpu_end = time.perf_counter() - started, os.times()
        _verify_shards(tmp, plan)
        report = build_report(plan, source=name, destination=destination, source_bytes=source.nbytes, sqnr=sqnr)
        report.workers = count
        # CPU seconds of this process and its (finished) worker processes while streaming
        used = sum(getattr(cpu_end, f) - getattr(cpu, f) for f in ("user", "system", "children_user", "children_system"))
        report.timings = {"stream_s": streamed, "stream_cpu_s": used}
        report.seconds = time.perf_counter() - started
        files = [(f.name, f.stat().st_size) for f in source.files]
        card = model_card(report, source.config, causal=plan.skeleton.causal, source_name=name, source_files=files)
        report.warnings += write_folder(tmp, source, plan, card)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ConvertError("write_failed", f"writing {destination} failed: {exc.strerror or exc}{where}; nothing was written") from exc
    return report
