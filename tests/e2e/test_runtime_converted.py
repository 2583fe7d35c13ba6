"""The runtime on folders the converter wrote: every tiny family, both presets, and the BERT
encoder through AutoModel, against the converter's own decoded copy run by transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from nanofmt.converters import convert, dequantize_folder  # noqa: E402
from nanofmt.loaders import load_model  # noqa: E402
from nanofmt.loaders.nano_modules import NanoEmbedding, NanoLinear, NanoTiedHead  # noqa: E402

IDS = torch.tensor([[5, 17, 3, 99, 42, 7, 150, 64, 8, 200, 1]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def converted(src: Path, tmp: Path, policy: str) -> tuple[Path, Path]:
    nano, plain = tmp / "nano", tmp / "plain"
    convert(src, nano, policy=policy)
    dequantize_folder(nano, plain, dtype="f32")
    return nano, plain


@pytest.mark.parametrize("policy", ["tiedq", "qkvfp16"])
def test_runtime_matches_the_converters_decoded_copy(tiny_model, tiny, causal_name: str, policy: str, tmp_path: Path) -> None:
    nano, plain = converted(tiny_model(causal_name), tmp_path, policy)
    model = load_model(nano, dtype=torch.float32)
    assert isinstance(model.model.embed_tokens, NanoEmbedding)
    assert isinstance(model.lm_head, NanoTiedHead if model.config.tie_word_embeddings else NanoLinear)
    want = tiny.outputs(tiny.load(plain, causal_name), IDS).double()
    torch.testing.assert_close(tiny.outputs(model, IDS).double(), want, rtol=1e-5, atol=1e-5)


def test_runtime_loads_a_converted_encoder(tiny_model, tiny, tmp_path: Path) -> None:
    from transformers import AutoModel

    nano, plain = converted(tiny_model("bert"), tmp_path, "tiedq")
    model = AutoModel.from_pretrained(nano, trust_remote_code=True, dtype=torch.float32)
    assert type(model).__name__ == "BertModel"
    assert any(isinstance(m, NanoLinear) or type(m).__name__ == "NanoLinear" for m in model.modules())
    want = tiny.outputs(tiny.load(plain, "bert"), IDS).double()
    torch.testing.assert_close(tiny.outputs(model, IDS).double(), want, rtol=1e-5, atol=1e-5)


def test_runtime_loads_a_sharded_conversion(tiny_model, tiny, tmp_path: Path) -> None:
    nano, plain = tmp_path / "nano", tmp_path / "plain"
    convert(tiny_model("llama"), nano, policy="tiedq", max_shard_size="20KB")
    assert len(list(nano.glob("*.safetensors"))) > 2
    dequantize_folder(nano, plain, dtype="f32")
    model = load_model(nano, dtype=torch.float32, verify=True)
    torch.testing.assert_close(tiny.outputs(model, IDS).double(), tiny.outputs(tiny.load(plain, "llama"), IDS).double(), rtol=1e-5, atol=1e-5)
