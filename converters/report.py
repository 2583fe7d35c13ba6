"""What a conversion did (or, for a dry run, will do): per-tensor rows, totals, and the summary table."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from .plan import Plan, TensorJob

__all__ = ["TensorRow", "ConversionReport", "build_report", "format_report", "human_bytes"]


def human_bytes(n: float) -> str:
    """``1536000`` -> ``'1.54 MB'`` (decimal units, like file managers and the hub)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


@dataclass(frozen=True)
class TensorRow:
    name: str
    kind: str
    shape: list[int]
    dtype: str
    scheme: str  # label, or "tie" for a tie record
    rule: int | None
    fallback: str | None
    bytes_in: int
    bytes_out: int
    sqnr_db: float | None = None
    tie: str | None = None
    shard: str = ""


@dataclass
class ConversionReport:
    """The outcome of :func:`nanofmt.converters.convert`; ``to_json()`` is what ``--json`` prints."""

    source: str
    destination: str
    dry_run: bool
    architecture: str
    policy: dict[str, Any]
    tensors: list[TensorRow]
    shards: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    source_bytes: int
    seconds: float = 0.0
    workers: int = 1
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # analyze_s, allocate_s, stream_s, total_s
    gate: dict[str, Any] | None = None  # the quality gate's figures, when one ran (converters/gate.py)

    @property
    def stored(self) -> list[TensorRow]:
        return [t for t in self.tensors if t.tie is None]

    @property
    def parameters(self) -> int:
        return sum(math.prod(t.shape) for t in self.stored)

    @property
    def output_bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)

    def by_scheme(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for t in self.stored:
            row = out.setdefault(t.scheme, {"tensors": 0, "parameters": 0, "bytes": 0})
            row["tensors"] += 1
            row["parameters"] += math.prod(t.shape)
            row["bytes"] += t.bytes_out
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["parameters"]))

    def worst_sqnr(self, n: int = 5) -> list[TensorRow]:
        measured = [t for t in self.stored if t.sqnr_db is not None]
        return sorted(measured, key=lambda t: t.sqnr_db)[:n]  # type: ignore[arg-type, return-value]

    def sqnr_summary(self) -> dict[str, dict[str, float]]:
        """Per scheme: min / median / mean SQNR (dB) over its measured tensors."""
        out: dict[str, dict[str, float]] = {}
        for scheme in self.by_scheme():
            values = [t.sqnr_db for t in self.stored if t.scheme == scheme and t.sqnr_db is not None]
            if values:
                out[scheme] = {"min": min(values), "median": round(statistics.median(values), 2), "mean": round(statistics.fmean(values), 2), "tensors": len(values)}
        return out

    def totals(self) -> dict[str, Any]:
        data = sum(t.bytes_out for t in self.stored)
        params = self.parameters
        return {
            "tensors": len(self.tensors),
            "stored_tensors": len(self.stored),
            "parameters": params,
            "source_bytes": self.source_bytes,
            "output_bytes": self.output_bytes,
            "data_bytes": data,
            "bits_per_weight": round(8 * data / params, 4) if params else None,
            "ratio": round(self.source_bytes / self.output_bytes, 3) if self.output_bytes else None,
            "schemes": self.by_scheme(),
            "weights_per_second": round(params / self.timings.get("stream_s", self.seconds)) if self.seconds and not self.dry_run else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "architecture": self.architecture,
            "policy": self.policy,
            "totals": self.totals(),
            "shards": self.shards,
            "sqnr": self.sqnr_summary(),
            "worst_sqnr": [{"name": t.name, "scheme": t.scheme, "sqnr_db": t.sqnr_db} for t in self.worst_sqnr()],
            "fallbacks": [{"name": t.name, "fallback": t.fallback} for t in self.tensors if t.fallback],
            "skipped": self.skipped,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "workers": self.workers,
            "quality_gate": self.gate,
            "tensors": [asdict(t) for t in self.tensors],
        }


def _row(job: TensorJob, shard: str, sqnr: dict[str, float | None]) -> TensorRow:
    bytes_in = job.source.nbytes if job.source is not None else 0
    if job.tie is not None:
        return TensorRow(job.name, job.kind, list(job.shape), job.dtype, "tie", None, None, 0, 0, tie=job.tie, shard=shard)
    assert job.choice is not None
    c = job.choice
    return TensorRow(job.name, job.kind, list(job.shape), job.dtype, c.scheme.label(), c.rule, c.fallback, bytes_in, job.nbytes, sqnr.get(job.name), shard=shard)


def build_report(plan: Plan, *, source: str, destination: str, source_bytes: int, sqnr: dict[str, float | None] | None = None, dry_run: bool = False) -> ConversionReport:
    rows = [_row(job, shard.filename, sqnr or {}) for shard in plan.shards for job in shard.jobs]
    return ConversionReport(
        source=source,
        destination=destination,
        dry_run=dry_run,
        architecture=plan.skeleton.architecture,
        policy=plan.policy.to_json(),
        tensors=rows,
        shards=[{"file": s.filename, "bytes": s.file_bytes, "tensors": len(s.jobs)} for s in plan.shards],
        skipped=[{"name": n, "reason": r} for n, r in plan.skipped],
        source_bytes=source_bytes,
    )


def _plan_lines(report: ConversionReport) -> list[str]:
    lines = [f"  {'tensor':<56} {'kind':<9} {'shape':<14} {'scheme':<22} {'rule':>4} {'bytes':>12}  shard"]
    for r in report.tensors:
        scheme = f"tie -> {r.tie}" if r.tie else r.scheme
        rule = "-" if r.rule is None else str(r.rule)
        lines.append(f"  {r.name:<56} {r.kind:<9} {'x'.join(map(str, r.shape)) or 'scalar':<14} {scheme:<22} {rule:>4} {r.bytes_out:>12,}  {r.shard}")
    return lines + [""]


def format_report(report: ConversionReport, *, per_tensor: bool | None = None) -> str:
    """The human summary: per-scheme table, sizes, speed, fallbacks, worst SQNR, skipped tensors.

    ``per_tensor`` (default: for a dry run) first lists every tensor's planned scheme, rule and size.
    """
    t = report.totals()
    verb = "would write" if report.dry_run else "wrote"
    lines = [f"{report.source} -> {report.destination}: {report.architecture}, policy {report.policy['name']}" + (" (dry run)" if report.dry_run else "")]
    if report.dry_run if per_tensor is None else per_tensor:
        lines += _plan_lines(report)
    lines.append(f"  {'scheme':<24} {'tensors':>7} {'parameters':>14} {'bytes':>14} {'bpw':>7}")
    for scheme, row in t["schemes"].items():
        bpw = 8 * row["bytes"] / row["parameters"] if row["parameters"] else 0.0
        lines.append(f"  {scheme:<24} {row['tensors']:>7} {row['parameters']:>14,} {row['bytes']:>14,} {bpw:>7.3f}")
    ties = [r for r in report.tensors if r.tie]
    for r in ties:
        lines.append(f"  {'tie':<24} {1:>7} {'':>14} {0:>14} {'':>7}  {r.name} -> {r.tie}")
    lines.append(f"  {'total':<24} {t['tensors']:>7} {t['parameters']:>14,} {t['data_bytes']:>14,} {t['bits_per_weight'] or 0:>7.3f}")
    shards = ", ".join(f"{s['file']} ({human_bytes(s['bytes'])})" for s in report.shards)
    ratio = f" ({t['ratio']:.2f}x smaller)" if t["ratio"] else ""
    lines.append(f"source {human_bytes(report.source_bytes)} -> {human_bytes(t['output_bytes'])}{ratio}; {verb} {shards}")
    if not report.dry_run and report.seconds:
        streamed = report.timings.get("stream_s") or report.seconds
        lines.append(
            f"{report.seconds:.1f} s in all ({report.timings.get('analyze_s', 0.0):.1f} s reading the architecture); "
            f"streaming {t['parameters'] / streamed / 1e6:.1f} M weights/s with {report.workers} worker process(es)"
        )
    allocation = report.policy.get("overrides", {}).get("allocation")
    if allocation:
        predicted = f", predicted mean KL {allocation['predicted_mean_kl']:.4f}" if "predicted_mean_kl" in allocation else ""
        lines.append(f"allocation ({allocation['proxy']} proxy): {allocation['bits_per_weight']:.4f} bits per weight over {allocation['weights']:,} weights{predicted}")
    if report.gate is not None:
        g = report.gate
        lines.append(
            f"quality gate passed: KL(int8 baseline || result) {g['gap_kl']:.4f} <= {g['max_kl']:g} over {g['tokens']} tokens; "
            f"perplexity source {g['ppl']['source']:.3f}, int8 {g['ppl']['baseline']:.3f}, result {g['ppl']['result']:.3f}"
        )
    for r in (r for r in report.tensors if r.fallback):
        lines.append(f"fallback: {r.name}: {r.fallback}")
    worst = report.worst_sqnr()
    if worst:
        lines.append("worst SQNR: " + ", ".join(f"{r.name} {r.sqnr_db:.2f} dB ({r.scheme})" for r in worst))
    for s in report.skipped:
        lines.append(f"skipped: {s['name']}: {s['reason']}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
