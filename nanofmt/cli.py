"""The ``nanofmt`` command line: a thin layer over the library.

Each command parses its options, calls one library function, prints (data to stdout, progress
and messages to stderr) and maps a NanoError to one line and exit code 1. Heavy imports (torch,
transformers) happen inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import __version__
from .demo import DEFAULT_TRAIN_STEPS
from .errors import NanoError


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nanofmt")
def main() -> None:
    """nanofmt: store and run language models in the compact, openly specified Nano format.

    \b
    Examples:
      nanofmt demo                               # build a small model, convert, load, generate
      nanofmt convert ./hf-model ./nano-model --policy qkvfp16
      nanofmt inspect ./nano-model
      nanofmt verify ./nano-model
    """


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(path: str, as_json: bool) -> None:
    """Show a Nano file or folder: format version, per-tensor schemes and sizes, totals.

    Example: nanofmt inspect ./nano-model --json
    """
    from .inspect import inspect_path

    try:
        summary = inspect_path(path)
    except NanoError as exc:
        _fail(exc)
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"{summary['path']}: Nano format {', '.join(summary['format_versions'])}, {len(summary['files'])} file(s)")
    click.echo(f"{'tensor':<56} {'scheme':<22} {'shape':<16} {'bytes':>12} {'bpw':>7}")
    for t in summary["tensors"]:
        scheme = f"tie -> {t['tie']}" if t["tie"] else t["scheme"]
        bpw = f"{t['bits_per_weight']:.3f}" if t["bits_per_weight"] is not None else "-"
        click.echo(f"{t['name']:<56} {scheme:<22} {'x'.join(map(str, t['shape'])):<16} {t['bytes']:>12,} {bpw:>7}")
    totals = summary["totals"]
    click.echo(
        f"total: {totals['tensors']} tensors ({totals['stored_tensors']} stored), {totals['parameters']:,} parameters, "
        f"{totals['bytes']:,} bytes, {totals['bits_per_weight']} bits per weight"
    )


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def verify(path: str, as_json: bool) -> None:
    """Check a Nano file or folder completely: structure, checksums, padding, decoding, runtime files.

    Exits 1 if anything is wrong. Example: nanofmt verify ./nano-model
    """
    from .inspect import verify_path

    problems = verify_path(path)
    if as_json:
        _emit_json({"path": path, "ok": not problems, "problems": [p.__dict__ for p in problems]})
    else:
        for p in problems:
            click.echo(f"{p.message}", err=True)
        click.echo(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}", err=True)
    sys.exit(1 if problems else 0)


@main.command()
@click.option("--model", type=click.Path(exists=True, file_okay=False), help="An HF model folder to use instead of the built-in one.")
@click.option("--out", type=click.Path(file_okay=False), help="Where to write the Nano folders (default: the nanofmt cache).")
@click.option("--policy", default="qkvfp16", show_default=True, help="Conversion policy to demonstrate.")
@click.option("--train-steps", default=DEFAULT_TRAIN_STEPS, show_default=True, help="Training steps of the built-in model (first run only; it is cached).")
@click.option("--max-new-tokens", default=40, show_default=True)
@click.option("--eval-tokens", default=2048, show_default=True, help="Tokens of fixed text the quality figures cover.")
def demo(model: str | None, out: str | None, policy: str, train_steps: int, max_new_tokens: int, eval_tokens: int) -> None:
    """Convert, load and generate on a built-in default, showing sizes and quality.

    Without --model it trains a small Llama-architecture model (500 steps, a few minutes) on Python's own
    documentation (cached for later runs), converts it with --policy and with the int8 baseline,
    loads both through transformers (trust_remote_code), and compares them with the source.

    Example: nanofmt demo --policy tiedq
    """
    from .demo import render, run_demo

    try:
        result = run_demo(
            model=model,
            out=out,
            policy=policy,
            train_steps=train_steps,
            max_new_tokens=max_new_tokens,
            eval_tokens=eval_tokens,
            progress=lambda msg: click.echo(msg, err=True),
        )
    except NanoError as exc:
        _fail(exc)
    for line in render(result):
        click.echo(line)


class _ProgressBar:
    """A per-tensor progress bar on stderr, shown only on a terminal (created at the first event)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._done = 0

    def __call__(self, event: Any) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=event.weights_total, label="converting", file=sys.stderr, show_pos=False, item_show_func=lambda name: name)
            self._bar.__enter__()
        self._bar.update(event.weights_done - self._done, event.tensor)
        self._done = event.weights_done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@main.command("convert")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--policy", default="qkvfp16", show_default=True, help="Preset (qkvfp16, tiedq, int8) or a .toml/.json policy file.")
@click.option("--bits", type=int, help="Bits of the policy's default quantized scheme (2, 3, 4, 5, 6 or 8).")
@click.option("--group-size", type=int, help="Group size of the default quantized scheme (32, 64 or 128).")
@click.option("--keep", multiple=True, metavar="PATTERN", help="Keep tensors matching this glob unquantized; repeatable, wins over the policy.")
@click.option("--keep-dtype", type=click.Choice(["source", "f16", "bf16", "f32"]), help="dtype of kept tensors (default: the policy's, usually source).")
@click.option("--max-shard-size", metavar="SIZE", help="Split the output into shards of at most SIZE (e.g. 2GB, 500MB).")
@click.option("--workers", type=click.IntRange(min=1), help="Encoding processes (default: one per core, up to 4, for large models).")
@click.option("--transform", type=click.Choice(["none", "hadamard"]), help="Rotate quantized rows (format 1.1): on every quantized rule, or with --target-bpw as a choice per tensor.")
@click.option("--transform-block", type=click.Choice(["16", "64", "256", "1024", "4096"]), help="Columns per Hadamard block (default 64).")
@click.option("--target-bpw", type=float, metavar="BITS", help="Pick a scheme per Linear/Embedding weight to minimise predicted error at this many bits per weight (replaces --policy/--bits/--group-size).")
@click.option("--menu", type=click.Choice(["fused", "all"]), default="fused", show_default=True, help="With --target-bpw/--max-size: only schemes the runtime runs on fused kernels (<= 4 bits, int8, fp16; fast decode), or all (5/6/8-bit too; slower decode).")
@click.option("--max-size", metavar="SIZE", help="Like --target-bpw, with the weight files at most SIZE in all (e.g. 80MB).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), help="A text file the model reads (needs torch): GPTQ encoding on its activations; with --target-bpw/--max-size, Fisher-weighted errors.")
@click.option("--quality-gate", type=float, metavar="KL", help="Fail, writing nothing, if the mean KL (nats/token) between the result and the int8 baseline exceeds KL (needs torch).")
@click.option("--gate-text", type=click.Path(exists=True, dir_okay=False), help="Text for --quality-gate (default: fixed Python documentation text).")
@click.option("--dry-run", is_flag=True, help="Print the plan and predicted sizes; write nothing.")
@click.option("--force", is_flag=True, help="Replace DST if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def convert_command(
    src: str,
    dst: str,
    policy: str,
    bits: int | None,
    group_size: int | None,
    keep: tuple[str, ...],
    keep_dtype: str | None,
    max_shard_size: str | None,
    workers: int | None,
    transform: str | None,
    transform_block: str | None,
    target_bpw: float | None,
    menu: str,
    max_size: str | None,
    calibration: str | None,
    quality_gate: float | None,
    gate_text: str | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Convert a Hugging Face model folder (or hub id) SRC into a self-contained Nano folder DST.

    DST is written to a temporary sibling and renamed into place when complete: an error or
    Ctrl-C leaves no DST behind. Policies are ordered glob rules, first match wins (see
    ``nanofmt.converters.policy``); --keep rules are placed before the policy's.

    \b
    Examples:
      nanofmt convert ./SmolLM2-135M-Instruct ./smollm2-nano --policy qkvfp16
      nanofmt convert ./model ./model-int8 --policy int8 --json
      nanofmt convert ./model ./model-nano --bits 8 --keep 'lm_head.weight' --dry-run
      nanofmt convert Qwen/Qwen2.5-3B-Instruct ./qwen-nano --max-shard-size 2GB
      nanofmt convert ./model ./model-auto --target-bpw 4.5 --calibration notes.txt --quality-gate 0.1
      nanofmt convert ./model ./model-auto --max-size 80MB --dry-run
    """
    from .converters import ConvertError, convert, format_report

    bar = _ProgressBar() if sys.stderr.isatty() and not as_json else None
    try:
        report = convert(
            src,
            dst,
            policy=policy,
            bits=bits,
            group_size=group_size,
            keep=keep,
            keep_dtype=keep_dtype,
            max_shard_size=max_shard_size,
            dry_run=dry_run,
            force=force,
            progress=bar,
            workers=workers,
            target_bpw=target_bpw,
            max_size=max_size,
            calibration=calibration,
            quality_gate=quality_gate,
            gate_text=gate_text,
            log=lambda line: click.echo(line, err=True),
            transform=transform,
            transform_block=int(transform_block) if transform_block else None,
            menu=menu,
        )
    except (ConvertError, NanoError) as exc:
        _fail(exc)
    except ValueError as exc:  # a bad argument value (unknown preset, unreadable size...)
        raise click.UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {dst} was not written", err=True)
        sys.exit(130)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(format_report(report))


@main.command("dequantize")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["f16", "bf16", "f32"]), default="f16", show_default=True, help="dtype of the plain weights.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def dequantize_command(path: str, out: str, dtype: str, force: bool, as_json: bool) -> None:
    """Write a plain Hugging Face copy of the Nano folder PATH at OUT (loads without remote code).

    Every tensor is decoded exactly as SPEC.md prescribes; the shard layout and tensor names
    are kept, the runtime files and quantization_config dropped.

    Example: nanofmt dequantize ./smollm2-nano ./smollm2-f16 --dtype f16
    """
    from .converters import ConvertError, dequantize_folder

    try:
        result = dequantize_folder(path, out, dtype=dtype, force=force)
    except (ConvertError, NanoError) as exc:
        _fail(exc)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {out} was not written", err=True)
        sys.exit(130)
    if as_json:
        _emit_json(result)
    else:
        click.echo(f"{out}: {result['tensors']} tensors, {result['bytes']:,} bytes of {dtype} weights in {len(result['files'])} file(s)")
