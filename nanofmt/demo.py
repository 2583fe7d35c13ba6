"""The built-in demo: build a small real model, convert it, load it back, generate, compare.

This is orchestration over the converter and the runtime, run by ``nanofmt demo``. It imports
torch and transformers only inside its functions, so importing ``nanofmt`` stays numpy-only.

The default model is trained for 500 steps (a few minutes) on Python's own documentation
(``pydoc_data.topics``, present on every machine), so the text it prints means something and
the sizes are those of a real checkpoint rather than random weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoResult", "run_demo", "compare_logits", "folder_bytes"]

# A fixed step count, not a time budget: the same model on every machine, however busy. 500
# steps (about 3-4 minutes on two idle cores) take the loss to ~2 and the text to real phrases.
DEFAULT_TRAIN_STEPS = 500
DEFAULT_PROMPTS = ("The for statement", "Exceptions are raised when", "A class definition")
# Agreement between a quantized model and its source needs no held-out text: any fixed text
# the source model reads fluently will do.
EVAL_TOPICS = ("while", "with", "lambda", "assert", "try")


def default_cache() -> Path:
    root = os.environ.get("NANOFMT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nanofmt")
    return Path(root)


def folder_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    """Bytes of the weight files of a model folder."""
    return sum(p.stat().st_size for p in folder.glob(pattern))


def _eval_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[t] for t in EVAL_TOPICS if t in topics)


@dataclass(frozen=True)
class Agreement:
    """How closely a quantized model's next-token distributions follow the source model's."""

    mean_kl: float  # nats per token, KL(source || quantized)
    top1: float  # fraction of positions with the same argmax
    ppl_source: float
    ppl_quantized: float


def compare_logits(source: Any, quantized: Any, input_ids: Any, window: int = 256) -> Agreement:
    """KL divergence, top-1 agreement and perplexities over ``input_ids`` in windows of ``window`` tokens."""
    import torch

    kl_sum, same, nll_s, nll_q, count = 0.0, 0, 0.0, 0.0, 0
    with torch.inference_mode():
        for start in range(0, input_ids.shape[1] - 1, window):
            ids = input_ids[:, start : start + window + 1]
            if ids.shape[1] < 2:
                break
            ls = source(ids[:, :-1]).logits.float().log_softmax(-1)
            lq = quantized(ids[:, :-1].to(_device_of(quantized))).logits.float().cpu().log_softmax(-1)
            target = ids[:, 1:]
            kl_sum += float((ls.exp() * (ls - lq)).sum(-1).sum())
            same += int((ls.argmax(-1) == lq.argmax(-1)).sum())
            nll_s -= float(ls.gather(-1, target[..., None]).sum())
            nll_q -= float(lq.gather(-1, target[..., None]).sum())
            count += target.numel()
    return Agreement(kl_sum / count, same / count, math.exp(nll_s / count), math.exp(nll_q / count))


def _device_of(model: Any) -> Any:
    return next(iter(model.buffers()), next(iter(model.parameters()))).device


def _generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    import torch

    inputs = tokenizer(prompt, return_tensors="pt").to(_device_of(model))
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True))


@dataclass(frozen=True)
class DemoResult:
    model_dir: Path
    sizes: dict[str, int]  # label -> bytes of weight files
    agreement: dict[str, Agreement]  # label -> vs the source model
    generations: list[tuple[str, str, str]]  # (prompt, source text, nano text)
    timings: dict[str, float]


def _convert(src: Path, dst: Path, policy: str) -> None:
    from nanofmt.converters import convert

    convert(src, dst, policy=policy, force=True)


def run_demo(
    *,
    model: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    policy: str = "qkvfp16",
    train_steps: int = DEFAULT_TRAIN_STEPS,
    max_new_tokens: int = 40,
    eval_tokens: int = 2048,
    prompts: tuple[str, ...] = DEFAULT_PROMPTS,
    progress: Callable[[str], None] = lambda _: None,
) -> DemoResult:
    """Convert ``model`` (default: the built-in small model, trained and cached on first use) with
    ``policy`` and with the ``int8`` baseline, load both through transformers' remote-code path,
    and measure sizes, agreement with the source over ``eval_tokens`` tokens of fixed
    documentation text, and greedy generations.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    timings: dict[str, float] = {}
    cache = default_cache()
    if model is None:
        from nanofmt.converters.tinymodel import build_demo_model

        progress(f"demo model: {cache / 'demo-model'} (trained once, {train_steps} steps, a few minutes; cached after)")
        t = time.perf_counter()
        source_dir = build_demo_model(cache / "demo-model", steps=train_steps, progress=progress)
        timings["build"] = time.perf_counter() - t
    else:
        source_dir = Path(model)
    out_root = Path(out) if out is not None else cache / "demo-out"
    variants = {policy: out_root / f"nano-{policy}"}
    if policy != "int8":
        variants["int8"] = out_root / "nano-int8"
    for label, dst in variants.items():
        progress(f"converting with policy {label} -> {dst}")
        t = time.perf_counter()
        _convert(source_dir, dst, label)
        timings[f"convert {label}"] = time.perf_counter() - t

    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    reference = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    ids = tokenizer(_eval_text(), return_tensors="pt")["input_ids"][:, :eval_tokens]
    sizes = {"source": folder_bytes(source_dir)}
    agreement: dict[str, Agreement] = {}
    loaded: dict[str, Any] = {}
    for label, dst in variants.items():
        t = time.perf_counter()
        loaded[label] = AutoModelForCausalLM.from_pretrained(dst, trust_remote_code=True, dtype=torch.float32).eval()
        timings[f"load {label}"] = time.perf_counter() - t
        sizes[label] = folder_bytes(dst)
        agreement[label] = compare_logits(reference, loaded[label], ids)
    generations = [(p, _generate(reference, tokenizer, p, max_new_tokens), _generate(loaded[policy], tokenizer, p, max_new_tokens)) for p in prompts]
    return DemoResult(Path(source_dir), sizes, agreement, generations, timings)


def render(result: DemoResult) -> Iterator[str]:
    """The demo's report as lines of text."""
    yield f"source model: {result.model_dir}"
    yield ""
    yield f"{'variant':<16} {'weights':>12} {'vs source':>10} {'mean KL':>10} {'top-1':>8} {'ppl':>8}"
    src = result.sizes["source"]
    yield f"{'source':<16} {src:>12,} {'1.00x':>10} {'-':>10} {'-':>8} {next(iter(result.agreement.values())).ppl_source:>8.2f}"
    for label, a in result.agreement.items():
        size = result.sizes[label]
        yield f"{'nano ' + label:<16} {size:>12,} {size / src:>9.2f}x {a.mean_kl:>10.4f} {a.top1:>8.1%} {a.ppl_quantized:>8.2f}"
    yield ""
    for prompt, ref_text, nano_text in result.generations:
        yield f"prompt: {prompt!r}"
        yield f"  source : {ref_text!r}"
        yield f"  nano   : {nano_text!r}"
    yield ""
    yield "timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())

