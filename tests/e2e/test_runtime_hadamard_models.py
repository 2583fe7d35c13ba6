"""Whole models with ``hadamard`` records on the runtime: written with the core API and by the
converter (a policy with the transform), loaded natively and through trust_remote_code, against
a plain transformers model holding the numpy reference decode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import nanofmt

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
import nano_fixtures as nf  # noqa: E402

from nanofmt.converters import convert, dequantize_folder, preset  # noqa: E402
from nanofmt.loaders import load_model  # noqa: E402
from nanofmt.loaders.nano_modules import NanoEmbedding, NanoLinear, NanoTiedHead  # noqa: E402

IDS = torch.tensor([[5, 17, 3, 99, 42, 7, 150, 64, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9]])
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rotated(name: str, shape: tuple[int, ...]) -> nanofmt.Scheme:
    """Every quantized scheme, each with the largest block that tiles its columns (96-wide down_proj: 16)."""
    block = 64 if shape[1] % 64 == 0 else 16
    if "embed" in name or "self_attn" in name:
        return nanofmt.Scheme("affine", bits=4, group_size=32, transform="hadamard", transform_block=block)
    if "lm_head" in name:
        return nanofmt.Scheme("int8_row", bits=8, transform="hadamard", transform_block=block)
    return nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6, transform="hadamard", transform_block=block)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object, dict]]:
    tmp = tmp_path_factory.mktemp("hadamard")
    return {family: nf.make_folder(tmp, family, scheme_for=rotated) for family in ("qwen2", "llama")}


def logits(model: object, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.double()


def close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    assert float((got - want).abs().max()) <= rel * float(want.abs().max())


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_runtime_hadamard_model_matches_reference(built: dict, family: str) -> None:
    folder, source, tensors = built[family]
    with nanofmt.open_file(folder / "model.safetensors") as f:
        assert json.loads(f.header.metadata["nanofmt"])["format_version"] == "1.1"
    model = load_model(folder, dtype=torch.float32)
    assert isinstance(model.model.embed_tokens, NanoEmbedding) and model.model.embed_tokens.scheme.rotated
    assert isinstance(model.lm_head, NanoTiedHead if family == "qwen2" else NanoLinear)
    reference = nf.reference_model(source, tensors, torch.float32)
    want = logits(reference)
    torch.testing.assert_close(logits(model), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    with torch.no_grad():
        ours = model.generate(IDS[:1], max_new_tokens=8, do_sample=False)
        theirs = reference.generate(IDS[:1], max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_runtime_hadamard_bf16_fused_and_chunked(built: dict, family: str) -> None:
    folder, source, tensors = built[family]
    want = logits(nf.reference_model(source, tensors, torch.bfloat16))
    close(logits(load_model(folder, dtype=torch.bfloat16, fused=False)), want, 0.05)
    fused = load_model(folder, dtype=torch.bfloat16)
    paths = {m.path for m in fused.modules() if isinstance(m, NanoLinear)}
    assert paths == ({"int4"} if family == "qwen2" else {"int4", "int8"})
    close(logits(fused), want, 0.05)


def test_runtime_hadamard_trust_remote_code(built: dict) -> None:
    from transformers import AutoModelForCausalLM

    folder, source, tensors = built["qwen2"]
    assert "nano_hadamard.py" in {p.name for p in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    assert type(model.lm_head).__name__ == "NanoTiedHead"
    want = logits(nf.reference_model(source, tensors, torch.float32))
    torch.testing.assert_close(logits(model), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["qwen2_tied", "llama"])
def test_runtime_hadamard_converted_with_a_policy(tiny_model, tiny, name: str, tmp_path: Path) -> None:
    """The converter takes the transform from the policy, records it, and the runtime loads it both ways."""
    from transformers import AutoModelForCausalLM

    nano, plain = tmp_path / "nano", tmp_path / "plain"
    convert(tiny_model(name), nano, policy=preset("tiedq").with_overrides(transform="hadamard"))
    config = json.loads((nano / "config.json").read_text())
    policy = config["quantization_config"]["policy"]
    assert policy["overrides"]["transform"] == "hadamard"
    assert policy["resolved"]["model.layers.0.mlp.down_proj.weight"]["transform_block"] == 64
    with nanofmt.open_file(next(nano.glob("*.safetensors"))) as f:
        assert f.records["model.embed_tokens.weight"].scheme.transform == "hadamard"
    dequantize_folder(nano, plain, dtype="f32")
    want = tiny.outputs(tiny.load(plain, name), IDS).double()
    scale = float(want.abs().max())
    native = load_model(nano, dtype=torch.float32)
    assert native.model.layers[0].mlp.down_proj.scheme.rotated
    torch.testing.assert_close(tiny.outputs(native, IDS).double(), want, rtol=1e-5, atol=1e-5 * scale)
    remote = AutoModelForCausalLM.from_pretrained(nano, trust_remote_code=True, dtype=torch.float32)
    torch.testing.assert_close(tiny.outputs(remote, IDS).double(), want, rtol=1e-5, atol=1e-5 * scale)
