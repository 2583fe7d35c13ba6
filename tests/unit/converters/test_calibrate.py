"""converters/calibrate.py on a tiny random Llama with tied embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nanofmt.converters.calibrate import gram_paths, load, measure  # noqa: E402


@pytest.fixture(scope="module")
def model() -> object:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def test_calibrate_grams_are_input_second_moments(model: object, tmp_path: Path) -> None:
    windows = [torch.arange(0, 16), torch.arange(10, 26)]
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, []).append(args[0].detach().reshape(-1, args[0].shape[-1])))
        for n, m in model.named_modules()  # type: ignore[attr-defined]
        if isinstance(m, torch.nn.Linear)
    ]
    with torch.no_grad():
        for w in windows:
            model(w[None])  # type: ignore[operator]
    for h in hooks:
        h.remove()
    cal = measure(model, windows, fisher=True, out=tmp_path)
    assert cal.tokens == 32
    x = torch.cat(seen["model.layers.0.mlp.down_proj"]).double()
    np.testing.assert_allclose(cal.grams["model.layers.0.mlp.down_proj.weight"], (x.T @ x).numpy(), rtol=1e-6)
    head = torch.cat(seen["lm_head"]).double()  # the tied head is stored under the embedding's name
    np.testing.assert_allclose(cal.grams["model.embed_tokens.weight"], (head.T @ head).numpy(), rtol=1e-6)
    assert "lm_head.weight" not in cal.grams
    files = cal.files
    assert files["model.layers.0.self_attn.q_proj.weight"] == files["model.layers.0.self_attn.k_proj.weight"]
    assert files["model.layers.0.mlp.gate_proj.weight"] == files["model.layers.0.mlp.up_proj.weight"]
    assert cal.fisher is not None and cal.fisher["model.embed_tokens.weight"].shape == (64, 32)
    assert all((f >= 0).all() for f in cal.fisher.values())
    paths = cal.save(tmp_path)
    assert paths == gram_paths(tmp_path)
    again = load(tmp_path)
    np.testing.assert_array_equal(np.load(paths["model.layers.0.mlp.up_proj.weight"]), cal.grams["model.layers.0.mlp.up_proj.weight"])
    assert again.fisher is not None and set(again.fisher) == set(cal.fisher)
