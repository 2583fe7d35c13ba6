"""The generated model card (README.md) of a converted folder: provenance, policy, sizes, quality.

Every figure in it comes from the conversion report, so the card says what this folder holds
rather than what a template hoped for. No timestamps: converting twice gives the same card.
"""

from __future__ import annotations

import math
import re
from typing import Any

import nanofmt

from .report import ConversionReport, TensorRow, human_bytes

__all__ = ["model_card", "tensor_groups", "load_memory_bytes"]

_LAYER_INDEX = re.compile(r"\.\d+(?=\.)")


def tensor_groups(report: ConversionReport) -> list[dict[str, Any]]:
    """Tensors grouped by name with layer indices folded (``model.layers.N.mlp.up_proj.weight``)."""
    groups: dict[str, dict[str, Any]] = {}
    for t in report.stored:
        key = _LAYER_INDEX.sub(".N", t.name)
        g = groups.setdefault(key, {"group": key, "tensors": 0, "schemes": set(), "parameters": 0, "bytes": 0, "sqnr": []})
        g["tensors"] += 1
        g["schemes"].add(t.scheme)
        g["parameters"] += math.prod(t.shape)
        g["bytes"] += t.bytes_out
        if t.sqnr_db is not None:
            g["sqnr"].append(t.sqnr_db)
    out = []
    for g in groups.values():
        sqnr = g.pop("sqnr")
        g["schemes"] = ", ".join(sorted(g["schemes"]))
        g["bits_per_weight"] = round(8 * g["bytes"] / g["parameters"], 3) if g["parameters"] else None
        g["min_sqnr_db"] = min(sqnr) if sqnr else None
        out.append(g)
    return out


def load_memory_bytes(report: ConversionReport) -> int:
    """Weight memory after loading with ``dtype=torch.float16``: packed tensors as stored, kept ones at 2 bytes a value."""
    total = 0
    for t in report.stored:
        passthrough = t.scheme in ("f16", "bf16", "f32")
        total += 2 * math.prod(t.shape) if passthrough else t.bytes_out
    return total


def _base_model(report: ConversionReport, config: dict[str, Any]) -> str | None:
    for candidate in (report.source, str(config.get("_name_or_path") or "")):
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", candidate) and not candidate.startswith((".", "/")):
            return candidate
    return None


def _front_matter(report: ConversionReport, config: dict[str, Any], causal: bool) -> list[str]:
    lines = ["---", "library_name: transformers"]
    if causal:
        lines.append("pipeline_tag: text-generation")
    base = _base_model(report, config)
    if base:
        lines.append(f"base_model: {base}")
    lines += ["tags:", "- nanofmt", "- quantization", "- custom-code", "---", ""]
    return lines


def _sqnr_text(row: TensorRow) -> str:
    return f"{row.sqnr_db:.2f}" if row.sqnr_db is not None else "lossless"


def model_card(report: ConversionReport, config: dict[str, Any], *, causal: bool, source_name: str, source_files: list[tuple[str, int]]) -> str:
    """The README.md text for a converted folder."""
    totals = report.totals()
    policy = report.policy
    auto = "AutoModelForCausalLM" if causal else "AutoModel"
    lines = _front_matter(report, config, causal)
    lines += [
        f"# {source_name} (Nano, policy `{policy['name']}`)",
        "",
        f"A Nano-format conversion of `{source_name}` ({report.architecture}): {totals['parameters']:,} weights in "
        f"{human_bytes(totals['output_bytes'])} ({totals['bits_per_weight']} bits per weight on average), "
        f"down from {human_bytes(report.source_bytes)}. The folder is self-contained: it loads with `transformers` "
        "and `trust_remote_code=True`; the runtime files it ships import only torch, transformers, safetensors and numpy.",
        "",
        "## How to load",
        "",
        "```python",
        "import torch",
        f"from transformers import AutoTokenizer, {auto}",
        "",
        'path = "."  # this folder, or its hub id',
        "tok = AutoTokenizer.from_pretrained(path)",
        f"model = {auto}.from_pretrained(path, trust_remote_code=True, dtype=torch.float16).eval()",
        "```",
        "",
        "`nanofmt verify FOLDER` checks every checksum and the shipped runtime files; `nanofmt dequantize FOLDER OUT` "
        "writes a plain fp16/bf16/fp32 copy that loads without remote code.",
        "",
        "## Policy",
        "",
        f"`{policy['name']}`: {policy.get('description') or 'user policy'}. Rules are shell-style globs over tensor "
        "names, tried in order; the first match wins. The default quantized scheme (`quant`) is "
        f"`{_scheme_text(policy['default'])}`; kept tensors stay in {_keep_text(policy['keep_dtype'])}.",
        "",
        "| # | match | kind | scheme |",
        "|---|---|---|---|",
    ]
    for i, rule in enumerate(policy["rules"]):
        match = rule["match"] if isinstance(rule["match"], str) else ", ".join(rule["match"])
        lines.append(f"| {i} | `{match}` | {rule.get('kind', 'any')} | {_scheme_text(rule)} |")
    if policy.get("overrides"):
        lines += ["", *_overrides_text(dict(policy["overrides"]))]
    lines += ["", "The scheme every tensor got is recorded in `config.json` (`quantization_config.policy.resolved`) and in each shard's Nano records.", ""]
    lines += _size_section(report)
    lines += _quality_section(report)
    lines += _provenance_section(report, source_name, source_files)
    return "\n".join(lines) + "\n"


def _keep_text(keep_dtype: str) -> str:
    return "their source dtype" if keep_dtype == "source" else f"`{keep_dtype}`"


def _scheme_text(raw: dict[str, Any]) -> str:
    params = [f"{k}={raw[k]}" for k in ("bits", "group_size", "meta_bits") if raw.get(k) is not None]
    rotation = f" + {raw['transform']} rotation, block {raw.get('transform_block', 64)}" if raw.get("transform") not in (None, "none") else ""
    return raw["scheme"] + (f" ({', '.join(params)})" if params else "") + rotation


def _overrides_text(overrides: dict[str, Any]) -> list[str]:
    """The automatic allocation and calibration in words; any other override as recorded."""
    lines = []
    allocation = overrides.pop("allocation", None)
    target = overrides.pop("target_bpw", None)
    max_size = overrides.pop("max_size", None)
    if allocation is not None:
        budget = f"{target} bits per weight" if target is not None else f"weight files of at most {max_size:,} bytes"
        proxy = (
            "each tensor's squared error weighted by the model's Fisher information on the calibration text"
            if allocation["proxy"] == "calibrated"
            else "each tensor's relative squared error times a llama.cpp-style importance (data-free)"
        )
        predicted = f"; predicted mean KL divergence {allocation['predicted_mean_kl']}" if "predicted_mean_kl" in allocation else ""
        lines.append(
            f"The schemes were chosen per tensor by `nanofmt convert` for a budget of {budget}, minimising {proxy}: "
            f"{allocation['bits_per_weight']} bits per weight over {allocation['weights']:,} weights{predicted}."
        )
    calibration = overrides.pop("calibration", None)
    if calibration is not None:
        lines.append(
            f"Quantized tensors were encoded with {calibration['encoder'].upper()} error feedback on their layers' inputs "
            f"over {calibration['tokens']:,} tokens of calibration text."
        )
    if overrides:
        lines.append(f"Command-line overrides: `{overrides}`.")
    return lines


def _size_section(report: ConversionReport) -> list[str]:
    totals = report.totals()
    lines = [
        "## Sizes",
        "",
        f"- weights on disk: {totals['output_bytes']:,} bytes ({human_bytes(totals['output_bytes'])}) in {len(report.shards)} shard(s); source: {report.source_bytes:,} bytes",
        f"- predicted weight memory after loading with `dtype=torch.float16`: {human_bytes(load_memory_bytes(report))} "
        "(packed tensors as stored, kept tensors at 2 bytes a value; activations and the KV cache come on top)",
        "",
        "| scheme | tensors | weights | bytes | bits/weight |",
        "|---|---:|---:|---:|---:|",
    ]
    for scheme, row in totals["schemes"].items():
        lines.append(f"| {scheme} | {row['tensors']} | {row['parameters']:,} | {row['bytes']:,} | {8 * row['bytes'] / max(1, row['parameters']):.3f} |")
    for t in report.tensors:
        if t.tie:
            lines.append(f"| tie: `{t.name}` -> `{t.tie}` | 1 | 0 | 0 | - |")
    lines += ["", "Per tensor group (layer index folded to `N`):", "", "| group | tensors | scheme | weights | bytes | bits/weight | min SQNR (dB) |", "|---|---:|---|---:|---:|---:|---:|"]
    for g in tensor_groups(report):
        sqnr = f"{g['min_sqnr_db']:.2f}" if g["min_sqnr_db"] is not None else "-"
        lines.append(f"| `{g['group']}` | {g['tensors']} | {g['schemes']} | {g['parameters']:,} | {g['bytes']:,} | {g['bits_per_weight']} | {sqnr} |")
    return lines + [""]


def _quality_section(report: ConversionReport) -> list[str]:
    lines = [
        "## Quality measured by the converter",
        "",
        "Signal-to-quantization-noise ratio per tensor, 10 log10(sum w^2 / sum (w - w_stored)^2), in dB (higher is better; "
        "every 6 dB is one bit). This is a weight-space figure, not a task benchmark.",
        "",
        "| scheme | tensors | min | median | mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for scheme, s in report.sqnr_summary().items():
        lines.append(f"| {scheme} | {s['tensors']} | {s['min']:.2f} | {s['median']:.2f} | {s['mean']:.2f} |")
    worst = report.worst_sqnr()
    if worst:
        lines += ["", "Lowest: " + ", ".join(f"`{t.name}` {_sqnr_text(t)} dB" for t in worst) + "."]
    fallbacks = [t for t in report.tensors if t.fallback]
    if fallbacks:
        lines += ["", "Fallbacks (a rule's scheme did not fit the tensor):", ""] + [f"- `{t.name}`: {t.fallback}" for t in fallbacks]
    return lines + [""]


def _provenance_section(report: ConversionReport, source_name: str, source_files: list[tuple[str, int]]) -> list[str]:
    lines = [
        "## Provenance",
        "",
        f"- source: `{source_name}` ({report.architecture})",
        "- source weights: " + ", ".join(f"`{name}` ({size:,} bytes)" for name, size in source_files),
        f"- converter: nanofmt {nanofmt.__version__}, Nano format {nanofmt.FORMAT_VERSION}",
    ]
    if report.skipped:
        lines.append("- not stored: " + "; ".join(f"`{s['name']}` ({s['reason']})" for s in report.skipped))
    lines += ["", "Licensing follows the source model; its license files, if any, are copied alongside."]
    return lines
