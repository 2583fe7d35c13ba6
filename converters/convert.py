"""HF folder -> Nano folder: plan, stream, verify, publish.

Example (a real model, from a shell)::

    nanofmt convert ./models/smollm2-135m ./out/smollm2-nano --policy qkvfp16
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import nanofmt
from nanofmt._spec import TRANSFORMS

from .allocate import CANDIDATE_SCHEMES, with_transform
from .atomic import check_destination, staging, terminate_as_interrupt
from .auto import Target, auto_policy
from .card import model_card
from .errors import ConvertError
from .folder import write_folder
from .gate import check_gate
from .gate import quality_gate as quality_gate_of
from .plan import Plan, make_plan, parse_size
from .policy import DEFAULT_TRANSFORM_BLOCK, Policy, load_policy
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
    target_bpw: float | None = None,
    max_size: int | str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    quality_gate: float | None = None,
    gate_text: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
    transform: str | None = None,
    transform_block: int | None = None,
    menu: str = "fused",
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
        target_bpw: choose a scheme per Linear/Embedding weight automatically (:mod:`.auto`) so that
            they average at most this many bits per weight, minimising the predicted error; ``policy``,
            ``bits`` and ``group_size`` do not apply then (``keep`` and ``keep_dtype`` do).
        max_size: likewise, with the weight files (kept tensors and headers included) at most this
            size (``"100MB"`` or bytes).
        calibration: a text file the source model reads (needs torch and transformers): every
            quantized tensor is encoded with GPTQ error feedback on its layer's input statistics,
            and with ``target_bpw``/``max_size`` each tensor's error is weighted by the model's
            Fisher information instead of the data-free proxy. The first 8192 tokens are used.
        quality_gate: the largest mean KL divergence (nats per token) allowed between the result and
            the per-row int8 baseline on ``gate_text`` (default: fixed Python documentation text);
            a result beyond it is not published (``quality_gate_failed``). Needs torch and transformers.
        log: called with a line of text for the slower phases (measuring, calibrating, gating).
        transform, transform_block: ``"hadamard"`` rotates each quantized tensor's rows in blocks
            of ``transform_block`` columns (default 64; format 1.1). With a policy it applies to
            every quantized rule; with ``target_bpw``/``max_size`` the allocator may choose,
            tensor by tensor, each menu scheme with or without it.
        menu: with ``target_bpw``/``max_size``: only the schemes the Nano runtime multiplies on
            ``"fused"`` kernels (at most 4 bits, int8_row, fp16; the default: decoding stays fast),
            or ``"all"`` (2-8 bits: 5/6/8-bit affine tensors decode per token, several times
            slower, for a little less error: 0.067 against 0.073 mean KL on SmolLM2 at 4.5 bits).

    Returns:
        A :class:`ConversionReport` (sizes, schemes, SQNR per tensor, timings).

    Raises:
        ConvertError: bad source, policy or destination (``reason`` says which); nothing is left at ``dst``.
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after removing the partial output.
    """
    started = time.perf_counter()
    target = None if target_bpw is None and max_size is None else Target(target_bpw, parse_size(max_size))
    if menu not in ("all", "fused"):
        raise ValueError(f"menu must be 'all' or 'fused', got {menu!r}")
    rotate = transform not in (None, "none")
    if transform is not None and transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}: use one of {', '.join(TRANSFORMS)}")
    chosen = load_policy(policy).with_overrides(
        bits=bits, group_size=group_size, keep=tuple(keep), keep_dtype=keep_dtype, **({} if target else {"transform": transform, "transform_block": transform_block})
    )
    schemes = with_transform(CANDIDATE_SCHEMES, str(transform), transform_block or DEFAULT_TRANSFORM_BLOCK) if rotate else CANDIDATE_SCHEMES
    folder = resolve_source(src)
    out = Path(dst)
    if not dry_run:
        check_destination(out, force=force, protect=folder)
    text = _read_text(gate_text, "gate text") if gate_text is not None else None
    calibration_text = _read_text(calibration, "calibration text") if calibration is not None else None
    with open_source(folder) as source, ExitStack() as cleanup:
        skeleton = analyze(folder)
        if quality_gate is not None:
            check_gate(folder, causal=skeleton.causal)  # before the work, not after it
        analyzed = time.perf_counter()
        calib = _calibrate(folder, calibration_text, fisher=target is not None, grams=not dry_run, cleanup=cleanup, log=log) if calibration_text else None
        calibrated = time.perf_counter()
        extra = {"producer": PRODUCER}
        if target is None:
            plan = make_plan(source, skeleton, chosen, max_shard_size=max_shard_size, extra=extra)
        else:
            _, plan, _ = auto_policy(
                source, skeleton, target, keep=keep, keep_dtype=chosen.keep_dtype, menu=schemes, fisher=calib.fisher if calib else None,
                max_shard_size=max_shard_size, extra=extra, progress=log, fused_only=menu == "fused",
            )  # fmt: skip
        if calib is not None:
            recorded = {**plan.policy.overrides, "calibration": {"tokens": calib.tokens, "encoder": "gptq"}}
            plan = replace(plan, policy=replace(plan.policy, overrides=recorded))
        allocated = time.perf_counter()
        name = _source_name(src, folder)
        if dry_run:
            return build_report(plan, source=name, destination=str(out), source_bytes=source.nbytes, dry_run=True)
        with terminate_as_interrupt(), staging(out, force=force) as tmp:
            grams = calib.grams if calib else None
            report = _write(plan, source, tmp, name=name, destination=str(out), workers=workers, progress=progress, grams=grams)
            if quality_gate is not None:
                report.gate = _gate(folder, tmp, quality_gate, text, log)
            phases = {"analyze_s": analyzed - started, "calibrate_s": calibrated - analyzed, "allocate_s": allocated - calibrated}
            report.timings = {**phases, **report.timings, "total_s": time.perf_counter() - started}
            report.seconds = report.timings["total_s"]
    return report


def _read_text(path: str | os.PathLike[str] | None, what: str) -> str:
    assert path is not None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError("calibration_invalid", f"cannot read the {what} {path}: {exc}") from None
    if not text.strip():
        raise ConvertError("calibration_invalid", f"the {what} {path} is empty")
    return text


@dataclass(frozen=True)
class _Calibrated:
    fisher: dict[str, np.ndarray] | None  # for the allocator's calibrated proxy
    grams: dict[str, str]  # weight name -> .npy path of its input Gram, for GPTQ encoding
    tokens: int


def _calibrate(folder: Path, text: str, *, fisher: bool, grams: bool, cleanup: ExitStack, log: Callable[[str], None] | None) -> _Calibrated:
    """Run the source model (torch) over the calibration text: input Grams on disk, Fisher, as asked.

    The Grams go to a temporary directory that lives until the conversion ends: worker
    processes memory-map them by path. A dry run encodes nothing, so it asks for none.
    """
    from .calibrate import collect, gram_paths

    directory = Path(tempfile.mkdtemp(prefix="nanofmt-calibration-"))
    cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
    if log is not None:
        wanted = " and ".join(w for w, on in (("input statistics", grams), ("Fisher information", fisher)) if on) or "token count"
        log(f"calibrating: {wanted} of the source model on the calibration text")
    try:
        measured = collect(folder, text, fisher=fisher, grams=grams, out=directory)
    except (OSError, ValueError) as exc:
        raise ConvertError("calibration_invalid", f"calibrating {folder} failed: {exc}") from None
    if log is not None:
        log(f"calibrated on {measured.tokens} tokens")
    return _Calibrated(dict(measured.fisher) if measured.fisher is not None else None, gram_paths(directory), measured.tokens)


def _gate(source: Path, result: Path, max_kl: float, text: str | None, log: Callable[[str], None] | None) -> dict[str, object]:
    """Run the quality gate on the finished temporary folder; a failure removes it (nothing is published)."""
    gate = quality_gate_of(source, result, max_kl=max_kl, text=text, progress=log)
    if not gate.passed:
        raise ConvertError("quality_gate_failed", gate.summary() + "; nothing was written")
    with open(result / "README.md", "a", encoding="utf-8") as card:
        card.write(f"\n## Quality gate\n\n{gate.summary()}.\n")
    return gate.to_json()


def _write(
    plan: Plan,
    source: Source,
    tmp: Path,
    *,
    name: str,
    destination: str,
    workers: int | None,
    progress: Callable[[ProgressEvent], None] | None,
    grams: dict[str, str] | None = None,
) -> ConversionReport:
    count = choose_workers(workers, plan, source)
    try:
        started, cpu = time.perf_counter(), os.times()
        sqnr = stream(plan, source, tmp, workers=count, progress=progress, grams=grams)
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
