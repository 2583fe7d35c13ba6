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
