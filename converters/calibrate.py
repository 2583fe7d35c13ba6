"""Calibration statistics: what a calibration text tells the encoder about each weight.

For every ``nn.Linear`` the Gram matrix of its inputs, ``G = sum x x^T`` over the calibration
tokens (float64), which GPTQ (``gptq.py``) needs; optionally the diagonal Fisher information of
the next-token distribution per weight element, which the allocator's calibrated error uses
(``0.5 * sum F (w - w')^2`` predicts the mean KL per token). The tied LM head's input is the
final hidden state; its Gram is stored under the embedding's weight name, since the file stores
that one table.

Saved as a directory of ``.npy`` files plus ``calibration.json`` (name -> file), so that encoding
worker processes memory-map one tensor's Gram by path. Linears fed the same activation (q/k/v,
gate/up) share one Gram, accumulated once and stored once. With ``out`` given, Grams accumulate
straight into memory-mapped files there: resident memory is one window's activations, the rest
is page cache the OS can write back.

torch and transformers are imported inside the functions: the converter stays importable without them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Calibration", "collect", "measure", "fisher_diagonal", "gram_paths", "load", "INDEX"]

INDEX = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """Per weight name: the input Gram matrix (``(cols, cols)`` float64) and, if measured, the diagonal Fisher (the weight's shape, float32)."""

    grams: Mapping[str, NDArray[np.float64]]
    fisher: Mapping[str, NDArray[np.float32]] | None
    tokens: int
    files: Mapping[str, str]  # weight name -> Gram file name (shared files for shared inputs)

    def save(self, directory: str | Path) -> dict[str, str]:
        """Write the ``.npy`` files (those not already there) and the index; returns weight name -> Gram path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written: set[str] = set()
        for name, gram in self.grams.items():
            file = self.files[name]
            if file not in written and not (isinstance(gram, np.memmap) and Path(str(gram.filename)) == out / file):
                np.save(out / file, gram)
            written.add(file)
        fisher_files = {}
        for name, f in (self.fisher or {}).items():
            fisher_files[name] = f"{name}.fisher.npy"
            np.save(out / fisher_files[name], f)
        index = {"tokens": self.tokens, "grams": dict(self.files), "fisher": fisher_files}
        (out / INDEX).write_text(json.dumps(index, indent=1))
        return gram_paths(out)


def gram_paths(directory: str | Path) -> dict[str, str]:
    """Weight name -> Gram ``.npy`` path, from a saved calibration's index (what the converter's stream takes)."""
    root = Path(directory)
    index = json.loads((root / INDEX).read_text())
    return {name: str(root / file) for name, file in index["grams"].items()}


def load(directory: str | Path) -> Calibration:
    """Read a saved calibration, memory-mapped."""
    root = Path(directory)
    index = json.loads((root / INDEX).read_text())
    grams = {name: np.load(root / file, mmap_mode="r") for name, file in index["grams"].items()}
    fisher = {name: np.load(root / file, mmap_mode="r") for name, file in index["fisher"].items()} or None
    return Calibration(grams, fisher, int(index["tokens"]), dict(index["grams"]))


def _linears(model: Any) -> dict[str, Any]:
    """Weight name -> nn.Linear; a head tied to the input embedding is named as the embedding's weight."""
    import torch

    emb = model.get_input_embeddings()
    emb_name = next(f"{n}.weight" for n, m in model.named_modules() if m is emb)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            out[emb_name if module.weight is emb.weight else f"{name}.weight"] = module
    return out


def _targets(model: Any) -> dict[str, Any]:
    """What Nano quantizes (as bench/quality.py): every Linear weight and the token embedding, a shared table once."""
    import torch

    emb = model.get_input_embeddings()
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Linear) or module is emb) and all(p is not module.weight for p in out.values()):
            out[f"{name}.weight"] = module.weight
    return out


def measure(model: Any, windows: list[Any], *, fisher: bool = True, grams: bool = True, out: str | Path | None = None) -> Calibration:
    """Gram matrices and/or the diagonal Fisher of a loaded float32 model over token windows (1-D LongTensors).

    The Fisher uses labels sampled from the model (seeded): each position's gradient then has
    zero mean, so the square of a window's summed gradient estimates the sum of the positions'
    squared gradients without bias. Both are per token of the calibration text.
    """
    import torch

    linears = _linears(model) if grams else {}
    params = _targets(model) if fisher else {}
    root = Path(out) if out is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    found: dict[str, NDArray[np.float64]] = {}
    files: dict[str, str] = {}
    shared: dict[int, str] = {}  # id of the activation tensor seen in this forward -> owner name
    step: dict[str, Any] = {}

    def hook(name: str) -> Any:
        def pre(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = id(x)
            if key in shared and step.get(shared[key]) is x:
                files[name] = files[shared[key]]
                if name not in found:
                    found[name] = found[shared[key]]
                return
            shared[key], step[name] = name, x
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            if name not in found:
                files[name] = f"{name}.gram.npy"
                cols = x.shape[-1]
                found[name] = (
                    np.lib.format.open_memmap(root / files[name], mode="w+", dtype=np.float64, shape=(cols, cols))
                    if root is not None
                    else np.zeros((cols, cols))
                )
            found[name] += (flat.T @ flat).numpy()

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    gen = torch.Generator().manual_seed(0)
    tensors = list(params.values())
    acc = [torch.zeros_like(p) for p in tensors]
    tokens = 0
    model.requires_grad_(False)
    try:
        for p in tensors:
            p.requires_grad_(True)
        for w in windows:
            shared.clear()
            step.clear()
            tokens += int(w.numel())
            if not fisher:
                with torch.inference_mode():
                    model(w[None])
                continue
            logits = model(w[None]).logits[0].float()
            with torch.no_grad():
                labels = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
            grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"), tensors)
            for a, g in zip(acc, grads, strict=True):
                a.add_(g.square())
    finally:
        for h in handles:
            h.remove()
        model.requires_grad_(False)
    for gram in found.values():
        if isinstance(gram, np.memmap):
            gram.flush()
    diag = {name: (a / max(tokens, 1)).numpy() for name, a in zip(params, acc, strict=True)} if fisher else None
    return Calibration(found, diag, tokens, files)


def collect(
    model_dir: str | Path,
    text: str,
    *,
    tokens: int = 8192,
    window: int = 512,
    fisher: bool = True,
    grams: bool = True,
    out: str | Path | None = None,
) -> Calibration:
    """Load the Hugging Face model in float32, run the first ``tokens`` tokens of ``text`` in windows of ``window``, and measure.

    With ``out`` the Grams are accumulated in (and the whole calibration saved to) that directory;
    pass ``gram_paths(out)`` to the converter.

    Raises:
        ValueError: a text shorter than one token, or non-positive sizes.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokens < 1 or window < 1:
        raise ValueError(f"tokens and window must be positive, got {tokens} and {window}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text).input_ids[:tokens]
    if not ids:
        raise ValueError("the calibration text has no tokens")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    windows = [torch.tensor(ids[i : i + window]) for i in range(0, len(ids), window)]
    calibration = measure(model, windows, fisher=fisher, grams=grams, out=out)
    if out is not None:
        calibration.save(out)
    return calibration


def fisher_diagonal(model_dir: str | Path, text: str, *, tokens: int = 8192, window: int = 512) -> dict[str, NDArray[np.float32]]:
    """Only the diagonal Fisher information per weight name (what the allocator's calibrated error needs)."""
    return dict(collect(model_dir, text, tokens=tokens, window=window, fisher=True, grams=False).fisher or {})
