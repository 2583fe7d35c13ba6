"""``--quality-gate``: refuse a conversion that strays further from the 8-bit baseline than asked.

The baseline is the classic one the seed release compared with: the source model with every
Linear and Embedding weight stored per-row int8 (``int8_row``, decoded by the numpy reference).
The converted folder is loaded by the Nano runtime itself (``nanofmt.loaders.load_model``), so
the gate measures the artifact that ships, not a simulation of it. On a fixed text, in windows:

- the gap: mean KL(baseline || result) of the next-token distributions, in nats per token;
- for context: KL(source || baseline), KL(source || result), perplexities and top-1 agreement.

The gate fails when the gap exceeds ``max_kl``. A causal LM is required (the metric is about
next-token distributions). torch and transformers are imported inside the functions: the
converter imports this module without them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import nanofmt
from nanofmt import Scheme

from .errors import ConvertError

__all__ = ["GateResult", "quality_gate", "check_gate", "default_gate_text", "GATE_TOKENS"]

GATE_TOKENS = 2048
WINDOW = 256
_INT8 = Scheme("int8_row", bits=8)
# pydoc topics that demo and bench do not use for their own figures
_GATE_TOPICS = ("class", "for", "if", "import", "raise", "return", "def", "global", "nonlocal", "yield")


def default_gate_text() -> str:
    """A fixed text every Python has: some of ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    return "\n".join(topics[t] for t in _GATE_TOPICS if t in topics)


@dataclass(frozen=True)
class GateResult:
    """What the gate measured; ``passed`` when the gap is within ``max_kl``."""

    max_kl: float
    gap_kl: float  # KL(baseline || result)
    baseline_kl: float  # KL(source || baseline)
    result_kl: float  # KL(source || result)
    top1_vs_baseline: float
    ppl: dict[str, float]  # source, baseline, result
    tokens: int

    @property
    def passed(self) -> bool:
        return self.gap_kl <= self.max_kl

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"quality gate {verdict}: mean KL(int8 baseline || result) {self.gap_kl:.4f} nats/token "
            f"(allowed {self.max_kl:g}) over {self.tokens} tokens; top-1 agreement with the baseline {self.top1_vs_baseline:.1%}; "
            f"KL vs source: baseline {self.baseline_kl:.4f}, result {self.result_kl:.4f}; "
            f"perplexity source {self.ppl['source']:.3f}, baseline {self.ppl['baseline']:.3f}, result {self.ppl['result']:.3f}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_kl": self.max_kl,
            "gap_kl": self.gap_kl,
            "baseline_kl": self.baseline_kl,
            "result_kl": self.result_kl,
            "top1_vs_baseline": self.top1_vs_baseline,
            "ppl": self.ppl,
            "tokens": self.tokens,
        }


def _logprobs(model: Any, ids: Any, size: int) -> list[Any]:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, ids.shape[1] - 1, size):
            window = ids[:, start : start + size + 1]
            if window.shape[1] < 2:
                break
            out.append(model(window[:, :-1]).logits.float().log_softmax(-1)[0])
    return out


def _to_int8_baseline(model: Any) -> None:
    """Replace every Linear/Embedding weight by its per-row int8 round trip (tied tables once)."""
    import torch

    seen: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear | torch.nn.Embedding) or weight is None or weight.dim() != 2 or id(weight) in seen:
            continue
        seen.add(id(weight))
        values = weight.detach().float().numpy()
        decoded = nanofmt.dequantize(nanofmt.quantize(np.ascontiguousarray(values), _INT8), "f32")
        with torch.no_grad():
            weight.copy_(torch.from_numpy(np.asarray(decoded)))


def _kl(p: list[Any], q: list[Any]) -> tuple[float, float, int]:
    total, same, count = 0.0, 0, 0
    for lp, lq in zip(p, q, strict=True):
        total += float((lp.exp() * (lp - lq)).sum())
        same += int((lp.argmax(-1) == lq.argmax(-1)).sum())
        count += lp.shape[0]
    return total / count, same / count, count


def _ppl(logprobs: list[Any], ids: Any, size: int) -> float:
    nll, count = 0.0, 0
    for i, lp in enumerate(logprobs):
        target = ids[0, i * size + 1 : i * size + 1 + lp.shape[0]]
        nll -= float(lp.gather(-1, target[:, None]).sum())
        count += lp.shape[0]
    return math.exp(nll / count)


def check_gate(source_dir: str | os.PathLike[str], *, causal: bool) -> None:
    """Fail before converting when the gate could not measure the result: not a causal LM, no tokenizer.

    Raises:
        ConvertError: ``quality_gate_failed``.
    """
    if not causal:
        raise ConvertError("quality_gate_failed", "the quality gate compares next-token distributions: it needs a causal language model")
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(source_dir)
    except (OSError, ValueError) as exc:
        raise ConvertError("quality_gate_failed", f"the quality gate reads text through the source's tokenizer, which does not load: {exc}") from None


def quality_gate(
    source_dir: str | os.PathLike[str],
    nano_dir: str | os.PathLike[str],
    *,
    max_kl: float,
    text: str | None = None,
    tokens: int = GATE_TOKENS,
    progress: Callable[[str], None] | None = None,
) -> GateResult:
    """Measure the converted folder ``nano_dir`` against the int8 baseline of ``source_dir``.

    Raises:
        ConvertError: ``quality_gate_failed`` when the model is not a causal LM or the text is
        too short to measure (the gate cannot say yes); a result over ``max_kl`` is returned,
        not raised: the caller decides.
    """
    if not max_kl >= 0:
        raise ValueError(f"--quality-gate must be a KL divergence >= 0, got {max_kl}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nanofmt.loaders import load_model

    say = progress or (lambda _: None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir)
    except (OSError, ValueError) as exc:
        raise ConvertError("quality_gate_failed", f"the quality gate reads text through the source's tokenizer, which does not load: {exc}") from None
    ids = tokenizer(text if text is not None else default_gate_text(), return_tensors="pt")["input_ids"][:, :tokens]
    if ids.shape[1] < 2:
        raise ConvertError("quality_gate_failed", f"the gate text has {ids.shape[1]} tokens: nothing to measure")
    try:
        model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    except ValueError as exc:
        raise ConvertError("quality_gate_failed", f"the quality gate needs a causal language model: {exc}") from None
    # windows no longer than the model's positions (learned position tables have a hard limit)
    size = min(WINDOW, getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or WINDOW)
    say(f"quality gate: source model on {ids.shape[1]} tokens")
    source = _logprobs(model, ids, size)
    _to_int8_baseline(model)
    say("quality gate: int8 baseline")
    baseline = _logprobs(model, ids, size)
    del model
    say("quality gate: converted model")
    result = _logprobs(load_model(nano_dir, dtype=torch.float32).eval(), ids, size)
    gap, top1, count = _kl(baseline, result)
    return GateResult(
        max_kl=max_kl,
        gap_kl=gap,
        baseline_kl=_kl(source, baseline)[0],
        result_kl=_kl(source, result)[0],
        top1_vs_baseline=top1,
        ppl={"source": _ppl(source, ids, size), "baseline": _ppl(baseline, ids, size), "result": _ppl(result, ids, size)},
        tokens=count,
    )
