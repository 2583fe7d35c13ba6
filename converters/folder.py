"""Everything in a Nano model folder besides the shards: config.json, index, runtime, side files, card.

config.json is the source config (read as JSON, not round-tripped through transformers, so
nothing is added or dropped) plus ``quantization_config`` and an ``auto_map`` to the shipped
runtime. The runtime files come from ``nanofmt.loaders.export.runtime_files()``: the same code
as ``loaders/``, copied, with their sha256 recorded so ``nanofmt verify`` can tell if they change.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import nanofmt

from .plan import Plan
from .source import TOKENIZER_PATTERNS, Source

__all__ = ["runtime_files", "nano_config", "write_folder", "SIDE_FILE_PATTERNS", "RUNTIME_MODULE"]

RUNTIME_MODULE = "modeling_nano"
SIDE_FILE_PATTERNS = (*TOKENIZER_PATTERNS, "LICENSE*", "NOTICE*", "USE_POLICY*")
_NEVER_COPIED = ("config.json", "README.md", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.py")


def runtime_files() -> tuple[dict[str, bytes], str | None]:
    """The runtime files to ship, and a warning when the runtime is not available in this install."""
    try:
        from nanofmt.loaders.export import runtime_files as exported
    except ImportError as exc:
        return {}, f"the Nano runtime is not available ({exc}); the folder will not load with trust_remote_code"
    return exported(), None


def auto_map(causal: bool) -> dict[str, str]:
    out = {"AutoModel": f"{RUNTIME_MODULE}.NanoModel"}
    if causal:
        out = {"AutoModelForCausalLM": f"{RUNTIME_MODULE}.NanoForCausalLM", **out}
    return out


def _folder_version(plan: Plan) -> str:
    """The newest version any shard declares (each declares the lowest its records need)."""
    major, minor = max((j.choice.scheme.min_version for j in plan.stored if j.choice is not None), default=(1, 0))
    return f"{major}.{minor}"


def nano_config(source_config: dict[str, Any], plan: Plan, runtime_sha256: dict[str, str]) -> dict[str, Any]:
    """The output config.json: the source's, plus ``quantization_config`` and ``auto_map``."""
    config = {k: v for k, v in source_config.items() if k not in ("quantization_config", "auto_map")}
    config["quantization_config"] = {
        "quant_method": "nano",
        "format_version": _folder_version(plan),
        "policy": {**plan.policy.to_json(), "resolved": plan.resolved()},
        "runtime_sha256": runtime_sha256,
        "converter": f"nanofmt {nanofmt.__version__}",
    }
    config["auto_map"] = auto_map(plan.skeleton.causal)
    return config


def side_files(folder: Path) -> list[Path]:
    """Tokenizer, chat template, generation config and license files of a source folder."""
    out = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or any(fnmatch.fnmatch(path.name, p) for p in _NEVER_COPIED):
            continue
        if any(fnmatch.fnmatch(path.name, p) for p in SIDE_FILE_PATTERNS):
            out.append(path)
    return out


def write_index(out: Path, plan: Plan) -> None:
    """``model.safetensors.index.json`` (HF layout) when there is more than one shard."""
    if len(plan.shards) < 2:
        return
    from nanofmt.schemes import component_layout

    weight_map = {}
    for shard in plan.shards:
        for job in shard.jobs:
            if job.tie is None:
                assert job.choice is not None
                for c in component_layout(job.choice.scheme, job.shape, job.name).values():
                    weight_map[c.name] = shard.filename
    index = {"metadata": {"total_size": sum(s.data_bytes for s in plan.shards)}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_folder(out: Path, source: Source, plan: Plan, card: str) -> list[str]:
    """Write config.json, index, runtime files, side files and README.md into ``out``; returns warnings."""
    warnings = []
    files, missing = runtime_files()
    if missing:
        warnings.append(missing)
    digests = {}
    for name, data in sorted(files.items()):
        (out / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    config = nano_config(source.config, plan, digests)
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    write_index(out, plan)
    for path in side_files(source.folder):
        shutil.copyfile(path, out / path.name)
    (out / "README.md").write_text(card)
    return warnings
