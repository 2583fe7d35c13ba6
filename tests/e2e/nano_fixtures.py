"""Tiny random models of each family, written as Nano folders with the core API.

The runtime tests need Nano folders whose every stored value is known. They are written here
with ``nanofmt.quantize`` + ``nanofmt.write_file`` (not the converter), so a runtime test fails
only for the runtime's reasons, and a reference model is built from exactly the values the
numpy reference decodes (``nanofmt.dequantize``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nanofmt
from nanofmt.bits import pack_rows
from nanofmt.loaders.export import AUTO_MAP, runtime_files, runtime_sha256

Q4 = nanofmt.Scheme("affine", bits=4, group_size=32)
SchemeFor = Callable[[str, tuple[int, ...]], "nanofmt.Scheme | None"]

_COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def family_config(family: str) -> object:
    """A tiny config of ``family``: qwen2 (q/k/v biases, tied), llama (untied), gemma (tied, scaled embeddings), mistral (untied)."""
    import transformers

    if family == "qwen2":
        return transformers.Qwen2Config(**_COMMON, tie_word_embeddings=True)
    if family == "llama":
        return transformers.LlamaConfig(**_COMMON, tie_word_embeddings=False)
    if family == "gemma":
        return transformers.GemmaConfig(**_COMMON, head_dim=16, tie_word_embeddings=True)
    if family == "mistral":
        return transformers.MistralConfig(**_COMMON, tie_word_embeddings=False, sliding_window=64)
    raise ValueError(family)


FAMILIES = ("qwen2", "llama", "gemma", "mistral")


def tiny_model(family: str, seed: int = 0) -> nn.Module:
    """A random fp32 causal LM of ``family`` (biases and norms randomised too, so they matter)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (0 if name.endswith("bias") or family == "gemma" else 1))
    return model.eval()


def quantize_all(model: nn.Module, scheme_for: SchemeFor | None = None) -> dict[str, nanofmt.QuantizedTensor | str]:
    """Logical name -> stored tensor (or tie target) for every tensor of ``model``'s state dict.

    ``scheme_for(name, shape)`` picks the scheme of a Linear/Embedding weight (None: keep it as
    f32); by default affine 4-bit g32. Everything else is stored as f32.
    """
    chooser = scheme_for or (lambda name, shape: Q4)
    quantizable = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    tied = dict(getattr(model, "all_tied_weights_keys", {}) or {}) if model.config.tie_word_embeddings else {}
    out: dict[str, nanofmt.QuantizedTensor | str] = {}
    for name, tensor in model.state_dict().items():
        if name in tied:
            out[name] = tied[name]
            continue
        values = tensor.detach().float().numpy()
        scheme = chooser(name, tuple(values.shape)) if name in quantizable else None
        out[name] = nanofmt.quantize(values, scheme or nanofmt.Scheme("f32"))
    return out


def write_nano_folder(model: nn.Module, dst: Path, tensors: dict[str, nanofmt.QuantizedTensor | str], *, shards: int = 1) -> Path:
    """Write ``tensors`` as a Nano model folder of ``model``'s config (runtime files included)."""
    dst.mkdir(parents=True, exist_ok=True)
    names = [n for n, v in tensors.items() if not isinstance(v, str)]
    groups = [names[i::shards] for i in range(shards)]
    files = [dst / "model.safetensors"] if shards == 1 else [dst / f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map: dict[str, str] = {}
    for path, group in zip(files, groups, strict=True):
        chosen: dict[str, nanofmt.QuantizedTensor | str] = {n: tensors[n] for n in group}
        chosen.update({n: t for n, t in tensors.items() if isinstance(t, str) and t in group})  # a tie sits with its target
        nanofmt.write_file(path, chosen)
        with nanofmt.open_file(path) as f:
            weight_map.update(dict.fromkeys(f.entries, path.name))
    if shards > 1:
        total = sum(p.stat().st_size for p in files)
        (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = model.config.to_dict()
    config["quantization_config"] = {"quant_method": "nano", "format_version": nanofmt.FORMAT_VERSION, "runtime_sha256": runtime_sha256()}
    config["auto_map"] = dict(AUTO_MAP)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name, data in runtime_files().items():
        (dst / name).write_bytes(data)
    return dst


def reference_model(model: nn.Module, tensors: dict[str, nanofmt.QuantizedTensor | str], dtype: torch.dtype) -> nn.Module:
    """A plain transformers model holding exactly the numpy-decoded values of ``tensors``, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    state = {n: torch.from_numpy(np.array(nanofmt.dequantize(t, "f32"))) for n, t in tensors.items() if not isinstance(t, str)}
    ref.load_state_dict(state, strict=False)
    ref.tie_weights()
    return ref.to(dtype).eval()


def make_folder(tmp: Path, family: str, *, scheme_for: SchemeFor | None = None, shards: int = 1, seed: int = 0) -> tuple[Path, nn.Module, dict[str, nanofmt.QuantizedTensor | str]]:
    """Tiny model of ``family`` -> (Nano folder, source model, stored tensors)."""
    model = tiny_model(family, seed)
    tensors = quantize_all(model, scheme_for)
    return write_nano_folder(model, tmp / f"{family}-nano", tensors, shards=shards), model, tensors


def random_packed(shape: tuple[int, int], scheme: nanofmt.Scheme, rng: np.random.Generator) -> nanofmt.QuantizedTensor:
    """A valid affine tensor with random codes and metadata, without running the quantizer (instant at any size)."""
    rows, cols = shape
    assert scheme.kind == "affine" and scheme.bits is not None and scheme.group_size is not None
    groups = -(-cols // scheme.group_size)
    codes = rng.integers(0, 1 << scheme.bits, (rows, cols), dtype=np.uint8)
    parts = {
        "codes": pack_rows(codes, scheme.bits),
        "scales": (rng.random((rows, groups), dtype=np.float32) * 0.01).astype(np.float16),
        "offsets": (rng.standard_normal((rows, groups), dtype=np.float32) * 0.05).astype(np.float16),
    }
    return nanofmt.QuantizedTensor((rows, cols), "f32", scheme, parts)


def random_folder(dst: Path, config: object, scheme: nanofmt.Scheme = Q4, seed: int = 0) -> Path:
    """A Nano folder for ``config`` whose Linear/Embedding weights are random packed tensors."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    rng = np.random.default_rng(seed)
    quantizable = {f"{n}.weight" for n, m in skeleton.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    tied = dict(getattr(skeleton, "all_tied_weights_keys", {}) or {}) if config.tie_word_embeddings else {}
    tensors: dict[str, nanofmt.QuantizedTensor | str] = {}
    for name, tensor in skeleton.state_dict().items():
        if name in tied:
            tensors[name] = tied[name]
        elif name in quantizable:
            tensors[name] = random_packed(tuple(tensor.shape), scheme, rng)
        else:
            tensors[name] = nanofmt.quantize(np.ones(tuple(tensor.shape), np.float32), nanofmt.Scheme("f32"))
    return write_nano_folder(skeleton, dst, tensors)


def add_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over ``vocab_size`` tokens, with a chat template, saved into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")
    tok.chat_template = "{% for m in messages %}w2 {{ m['content'] }} w3 {% endfor %}{% if add_generation_prompt %}w4{% endif %}"
    tok.save_pretrained(folder)
