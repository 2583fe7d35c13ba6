"""Tiny Hugging Face model folders with random weights, built once per session from config classes.

Each covers a layout the converter must handle: tied and untied heads, q/k/v biases (Qwen2),
Gemma's tied head, Mistral, an encoder (BERT via AutoModel), and the source dtypes f32, f16
and bf16. Every linear dimension is a multiple of 32 so the default scheme tiles it, except
where a test asks for odd shapes on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256, "max_position_embeddings": 128}
DECODER = {**COMMON, "num_key_value_heads": 2, "head_dim": 16}

# name -> (config class, config kwargs, model class, dtype of the saved weights)
TINY: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "qwen2_tied": ("Qwen2Config", {**DECODER, "tie_word_embeddings": True}, "Qwen2ForCausalLM", "bfloat16"),
    "qwen2_untied": ("Qwen2Config", {**DECODER, "tie_word_embeddings": False}, "Qwen2ForCausalLM", "float32"),
    "llama": ("LlamaConfig", {**DECODER, "tie_word_embeddings": False}, "LlamaForCausalLM", "bfloat16"),
    "gemma": ("GemmaConfig", {**DECODER, "tie_word_embeddings": True}, "GemmaForCausalLM", "float32"),
    "mistral": ("MistralConfig", {**DECODER, "tie_word_embeddings": False, "sliding_window": None}, "MistralForCausalLM", "float16"),
    "bert": ("BertConfig", {**COMMON, "type_vocab_size": 2}, "BertModel", "float32"),
}
CAUSAL = [name for name, spec in TINY.items() if spec[2].endswith("ForCausalLM")]


def build_tiny(name: str, out: Path, *, seed: int = 0, shard_size: str | None = None, **overrides: Any) -> Path:
    """Save tiny model ``name`` (random weights, fixed seed; ``overrides`` change its config) at ``out``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config_cls, kwargs, model_cls, dtype = TINY[name]
    config = getattr(transformers, config_cls)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).to(getattr(torch, dtype)).eval()
    kwargs_save = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **kwargs_save)
    # side files a real folder carries: the converter must copy them
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    (out / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return out


def add_char_tokenizer(folder: Path) -> Path:
    """Give a tiny model folder a character-level tokenizer (printable ASCII and newline, ids < 100):
    enough for code that reads text through the model's own tokenizer (the quality gate)."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<unk>": 0, **{chr(c): i + 1 for i, c in enumerate([10, *range(32, 127)])}}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_model(name, shard_size=None, tokenizer=False)``: the folder of a tiny model, built once per session."""
    cache: dict[tuple[str, str | None, bool], Path] = {}

    def get(name: str, shard_size: str | None = None, tokenizer: bool = False) -> Path:
        key = (name, shard_size, tokenizer)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{name}-{shard_size or 'single'}")
            cache[key] = build_tiny(name, folder, shard_size=shard_size)
            if tokenizer:
                add_char_tokenizer(folder)
        return cache[key]

    return get


def load_source(folder: Path, name: str, dtype: Any = None) -> Any:
    """The source model back through transformers, in eval mode (float32 unless told)."""
    import torch
    import transformers

    auto = transformers.AutoModelForCausalLM if name in CAUSAL else transformers.AutoModel
    return auto.from_pretrained(folder, dtype=dtype or torch.float32).eval()


def outputs(model: Any, ids: Any) -> Any:
    """Logits of a causal LM, last hidden state of an encoder."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``tiny_name`` runs a test over every tiny model; ``causal_name`` over the causal LMs."""
    if "tiny_name" in metafunc.fixturenames:
        metafunc.parametrize("tiny_name", list(TINY))
    if "causal_name" in metafunc.fixturenames:
        metafunc.parametrize("causal_name", CAUSAL)


class Tools:
    """Helpers for tests (test modules cannot import conftest under --import-mode=importlib)."""

    TINY = TINY
    CAUSAL = CAUSAL
    build = staticmethod(build_tiny)
    load = staticmethod(load_source)
    outputs = staticmethod(outputs)


@pytest.fixture(scope="session")
def tiny() -> type[Tools]:
    return Tools
