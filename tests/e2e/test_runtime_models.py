"""Whole models on the Nano runtime: tiny random models of each family against a reference
transformers model holding exactly the numpy-decoded weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nanofmt

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
import nano_fixtures as nf  # noqa: E402

from nanofmt.loaders import NanoLoadError, load_model  # noqa: E402
from nanofmt.loaders.nano_modules import NanoEmbedding, NanoLinear, NanoTiedHead  # noqa: E402

IDS = torch.tensor([[5, 17, 3, 99, 42, 7, 150, 64, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object, dict]]:
    tmp = tmp_path_factory.mktemp("families")
    return {family: nf.make_folder(tmp, family) for family in nf.FAMILIES}


def logits(model: object, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.double()


@pytest.mark.parametrize("family", nf.FAMILIES)
def test_runtime_logits_equal_reference_fp32(built: dict, family: str) -> None:
    folder, source, tensors = built[family]
    model = load_model(folder, dtype=torch.float32)
    assert type(model).__name__ == type(source).__name__
    want = logits(nf.reference_model(source, tensors, torch.float32))
    torch.testing.assert_close(logits(model), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", nf.FAMILIES)
def test_runtime_greedy_generation_identical(built: dict, family: str) -> None:
    folder, source, tensors = built[family]
    model = load_model(folder, dtype=torch.float32)
    reference = nf.reference_model(source, tensors, torch.float32)
    prompt = IDS[:1]
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
        theirs = reference.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", nf.FAMILIES)
def test_runtime_bf16_paths(built: dict, family: str) -> None:
    """bf16 chunked equals the reference model in bf16; the fused kernels stay close to it."""
    folder, source, tensors = built[family]
    want = logits(nf.reference_model(source, tensors, torch.bfloat16))
    chunked = load_model(folder, dtype=torch.bfloat16, fused=False)
    torch.testing.assert_close(logits(chunked), want, rtol=0.02, atol=0.02)
    fused = load_model(folder, dtype=torch.bfloat16)
    paths = {m.path for m in fused.modules() if isinstance(m, NanoLinear)}
    assert paths == {"int4"}
    assert float((logits(fused) - want).abs().max()) < 0.05 * float(want.abs().max())


def test_runtime_tied_head_shares_the_embedding(built: dict) -> None:
    model = load_model(built["qwen2"][0], dtype=torch.bfloat16)
    assert isinstance(model.model.embed_tokens, NanoEmbedding) and isinstance(model.lm_head, NanoTiedHead)
    assert model.model.embed_tokens.path == "int4"  # one table in the CPU kernel layout, read by both
    keys = set(model.state_dict())
    assert not any(k.startswith("lm_head") for k in keys) and "model.embed_tokens.weight_packed" in keys
    untied = load_model(built["llama"][0], dtype=torch.float32)
    assert isinstance(untied.lm_head, NanoLinear)


def test_runtime_fp16_and_sampling(built: dict) -> None:
    folder, source, tensors = built["gemma"]
    model = load_model(folder, dtype=torch.float16)
    reference = nf.reference_model(source, tensors, torch.float16)
    torch.testing.assert_close(logits(model), logits(reference), rtol=0.01, atol=0.01)
    model32, reference32 = load_model(folder, dtype=torch.float32), nf.reference_model(source, tensors, torch.float32)
    outs = []
    for m in (model32, reference32):
        torch.manual_seed(7)
        outs.append(m.generate(IDS[:1], max_new_tokens=10, do_sample=True, top_k=20, temperature=0.9))
    assert torch.equal(*outs)


def test_runtime_other_architectures(tmp_path: Path) -> None:
    """Gemma3's scaled embedding module; GPT-2's Conv1D weights (no Nano module: decoded at load)."""
    import transformers

    configs = {
        "gemma3": transformers.Gemma3TextConfig(**{**nf._COMMON, "head_dim": 16, "sliding_window": 16}),
        "gpt2": transformers.GPT2Config(vocab_size=160, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0),
    }
    for name, config in configs.items():
        torch.manual_seed(0)
        source = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        tied = source.all_tied_weights_keys
        tensors = {
            k: tied[k] if k in tied else nanofmt.quantize(v.float().numpy(), nf.Q4 if v.dim() == 2 and v.shape[1] % 32 == 0 else nanofmt.Scheme("f32"))
            for k, v in source.state_dict().items()
        }
        model = load_model(nf.write_nano_folder(source, tmp_path / name, tensors), dtype=torch.float32)
        assert isinstance(model.lm_head, NanoTiedHead)
        torch.testing.assert_close(logits(model), logits(nf.reference_model(source, tensors, torch.float32)), rtol=1e-5, atol=1e-5)


def test_runtime_sharded_folder(tmp_path: Path) -> None:
    folder, source, tensors = nf.make_folder(tmp_path, "llama", shards=3)
    assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 3
    model = load_model(folder, dtype=torch.float32, verify=True)
    torch.testing.assert_close(logits(model), logits(nf.reference_model(source, tensors, torch.float32)), rtol=1e-5, atol=1e-5)


def test_runtime_mixed_schemes(tmp_path: Path) -> None:
    """The reference release's policy shape: fp16 q/k/v, int8 MLP, affine_dq elsewhere, 4-bit tied table."""

    def policy(name: str, shape: tuple[int, ...]) -> nanofmt.Scheme:
        if any(p in name for p in ("q_proj", "k_proj", "v_proj")):
            return nanofmt.Scheme("f16")
        if "mlp" in name:
            return nanofmt.Scheme("int8_row", bits=8)
        if "embed" in name:
            return nf.Q4
        return nanofmt.Scheme("affine_dq", bits=3, group_size=32, meta_bits=6)

    folder, source, tensors = nf.make_folder(tmp_path, "qwen2", scheme_for=policy)
    model = load_model(folder, dtype=torch.float32)
    layer = model.model.layers[0]
    assert type(layer.self_attn.q_proj) is torch.nn.Linear and layer.self_attn.q_proj.weight.dtype == torch.float32
    assert layer.mlp.up_proj.scheme.name == "int8_row"
    torch.testing.assert_close(logits(model), logits(nf.reference_model(source, tensors, torch.float32)), rtol=1e-5, atol=1e-5)
    fused = load_model(folder, dtype=torch.bfloat16)
    assert fused.model.layers[0].mlp.up_proj.path == "int8"
    want = logits(nf.reference_model(source, tensors, torch.bfloat16))
    assert float((logits(fused) - want).abs().max()) < 0.05 * float(want.abs().max())


def test_runtime_base_model_and_device_map(built: dict) -> None:
    folder, source, tensors = built["qwen2"]
    base = load_model(folder, dtype=torch.float32, head="base")
    assert type(base).__name__ == "Qwen2Model"
    reference = nf.reference_model(source, tensors, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(base(IDS).last_hidden_state, reference.model(IDS).last_hidden_state, rtol=1e-5, atol=1e-5)
    mapped = load_model(folder, dtype=torch.float32, device_map="auto")
    assert set(mapped.hf_device_map.values()) == {"cpu"}
    torch.testing.assert_close(logits(mapped), logits(reference), rtol=1e-5, atol=1e-5)


def test_runtime_verify_finds_a_flipped_byte(tmp_path: Path) -> None:
    folder, _, _ = nf.make_folder(tmp_path, "llama")
    path = folder / "model.safetensors"
    with nanofmt.open_file(path) as f:
        entry = f.entries["model.layers.1.mlp.down_proj.weight_codes"]
        at = f.header.data_start + entry.begin + 3
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    load_model(folder, dtype=torch.float32)  # without verify the damage goes unseen ...
    with pytest.raises(NanoLoadError, match="model.layers.1.mlp.down_proj.weight") as caught:
        load_model(folder, dtype=torch.float32, verify=True)  # ... with it, the tensor is named
    assert caught.value.reason == "checksum_mismatch"


def test_runtime_transformers_chat_and_generate(built: dict, tmp_path: Path) -> None:
    folder, source, tensors = built["qwen2"]
    nf.add_tokenizer(folder, source.config.vocab_size)
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(folder)  # AutoTokenizer would pick Qwen2's class from config.json
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    reference = nf.reference_model(source, tensors, torch.float32)
    text = tok.apply_chat_template([{"role": "user", "content": "w9 w10 w11"}], tokenize=False, add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt")
    with torch.no_grad():
        ours = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        theirs = reference.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs) and ours.shape[1] == inputs["input_ids"].shape[1] + 8


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "nanofmt" or name.startswith("nanofmt."):
            raise ImportError("nanofmt is blocked in this test")
sys.meta_path.insert(0, Block())
import json, torch
from transformers import AutoModelForCausalLM, AutoModel
folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
base = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
with torch.no_grad():
    out = model(ids).logits
    hidden = base(ids).last_hidden_state
assert not any(m == "nanofmt" or m.startswith("nanofmt.") for m in sys.modules)
print(json.dumps({"logits": out.tolist(), "base": type(base).__name__, "module": type(model.model.layers[0].mlp.up_proj).__module__}))
"""


@pytest.mark.slow
def test_runtime_folder_runs_without_nanofmt(built: dict, tmp_path: Path) -> None:
    """The exported folder is self-contained: transformers loads it in a process where nanofmt cannot import."""
    folder, source, tensors = built["mistral"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-c", BLOCKER, str(folder), json.dumps(IDS.tolist())], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["base"] == "MistralModel" and result["module"].startswith("transformers_modules.")
    want = logits(nf.reference_model(source, tensors, torch.float32))
    torch.testing.assert_close(torch.tensor(result["logits"], dtype=torch.float64), want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(np.array(result["logits"])).all()
