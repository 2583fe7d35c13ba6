"""What the model's modules are: which source tensors are Linear or Embedding weights, and the tie.

The architecture is built from config.json on torch's ``meta`` device (no memory, no weights)
and its ``nn.Linear``/``nn.Embedding`` modules listed, so nothing here guesses from tensor
names. torch and transformers cost ~400 MB of resident memory on import, more than a whole
small model, so when they are not already loaded the analysis runs in a child process
(``python -m nanofmt.converters.child skeleton FOLDER`` prints it as JSON) and the converting process
stays numpy-only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConvertError

__all__ = ["Skeleton", "analyze"]


@dataclass(frozen=True)
class Skeleton:
    """The facts about a model architecture the converter needs, in state-dict names."""

    architecture: str
    model_type: str
    causal: bool  # loads with AutoModelForCausalLM (else AutoModel only)
    linear: frozenset[str]  # "<module>.weight" of every nn.Linear
    embedding: frozenset[str]  # "<module>.weight" of every nn.Embedding
    tie: tuple[str, str] | None  # (output head weight, input embedding weight) when tied
    prefix: str  # base_model_prefix: checkpoints may carry or lack it

    def canonical(self, name: str) -> str:
        """The model's name for source tensor ``name`` (adds or strips the base-model prefix if needed)."""
        known = self.linear | self.embedding
        if name in known or not self.prefix:
            return name
        if name.startswith(self.prefix + ".") and name[len(self.prefix) + 1 :] in known:
            return name[len(self.prefix) + 1 :]
        return f"{self.prefix}.{name}" if f"{self.prefix}.{name}" in known else name

    def kind(self, name: str) -> str:
        """``linear``, ``embedding`` or ``other`` for a source tensor name."""
        model_name = self.canonical(name)
        return "linear" if model_name in self.linear else "embedding" if model_name in self.embedding else "other"

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "model_type": self.model_type,
            "causal": self.causal,
            "linear": sorted(self.linear),
            "embedding": sorted(self.embedding),
            "tie": list(self.tie) if self.tie else None,
            "prefix": self.prefix,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Skeleton:
        tie = raw.get("tie")
        return cls(raw["architecture"], raw["model_type"], raw["causal"], frozenset(raw["linear"]), frozenset(raw["embedding"]), tuple(tie) if tie else None, raw["prefix"])  # type: ignore[arg-type]


def _build(folder: Path) -> Skeleton:
    """Build the model on the meta device and list its modules (imports torch and transformers)."""
    import warnings

    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as exc:
        raise ConvertError("architecture_unknown", f"transformers {transformers.__version__} cannot read {folder / 'config.json'}: {str(exc).splitlines()[0]}") from exc
    arch = (getattr(config, "architectures", None) or [""])[0]
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        cls = getattr(transformers, arch, None) if arch else None
        if cls is not None:
            model = cls(config)
        else:
            try:
                model = transformers.AutoModelForCausalLM.from_config(config)
            except ValueError:
                model = transformers.AutoModel.from_config(config)
    names = {id(m): n for n, m in model.named_modules()}
    linear = frozenset(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    embedding = frozenset(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding))
    tie = None
    if getattr(config, "tie_word_embeddings", False):
        try:
            head = model.get_output_embeddings()
        except (NotImplementedError, AttributeError):
            head = None
        inputs = model.get_input_embeddings()
        if head is not None and inputs is not None and id(head) in names and id(inputs) in names:
            tie = (f"{names[id(head)]}.weight", f"{names[id(inputs)]}.weight")
    architecture = arch or type(model).__name__
    causal = architecture in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return Skeleton(architecture, str(config.model_type), causal, linear, embedding, tie, str(getattr(model, "base_model_prefix", "") or ""))


_CACHE: dict[str, Skeleton] = {}


def _cache_key(folder: Path) -> str:
    """Same config.json bytes and same transformers release give the same skeleton."""
    try:
        release = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        release = "none"
    return hashlib.sha256((folder / "config.json").read_bytes() + f"\0transformers {release}".encode()).hexdigest()


def _cache_file(key: str) -> Path:
    root = os.environ.get("NANOFMT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nanofmt")
    return Path(root) / "skeletons" / f"{key}.json"


def analyze(folder: str | Path, *, isolated: bool | None = None) -> Skeleton:
    """The skeleton of the model in ``folder`` (its config.json).

    Results are cached in this process and, for the child-process path (seconds of torch
    import), on disk under ``$NANOFMT_CACHE/skeletons`` (default ``~/.cache/nanofmt``).

    Args:
        isolated: run in a child process; by default only when torch is not already imported here.

    Raises:
        ConvertError: ``architecture_unknown`` when transformers cannot build the model.
    """
    folder = Path(folder)
    key = _cache_key(folder)
    if key in _CACHE:
        return _CACHE[key]
    if isolated is None:
        isolated = "torch" not in sys.modules
    if isolated:
        cached = _read_cached(key)
        skeleton = cached or _analyze_child(folder)
        if cached is None:
            _write_cached(key, skeleton)
    else:
        skeleton = _build(folder)
    _CACHE[key] = skeleton
    return skeleton


def _read_cached(key: str) -> Skeleton | None:
    try:
        return Skeleton.from_json(json.loads(_cache_file(key).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: analyse again


def _write_cached(key: str, skeleton: Skeleton) -> None:
    path = _cache_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(skeleton.to_json()))
        partial.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def _analyze_child(folder: Path) -> Skeleton:
    from .workers import child_env

    proc = subprocess.run([sys.executable, "-m", "nanofmt.converters.child", "skeleton", str(folder)], capture_output=True, text=True, env=child_env())
    try:
        raw = json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConvertError("architecture_unknown", f"analysing the model architecture failed: {tail}") from None
    if "error" in raw:
        raise ConvertError(raw["error"], raw["message"])
    return Skeleton.from_json(raw)


def main(argv: list[str]) -> int:
    try:
        print(json.dumps(_build(Path(argv[0])).to_json()))
    except ConvertError as exc:
        print(json.dumps({"error": exc.reason, "message": exc.detail}))
    return 0

