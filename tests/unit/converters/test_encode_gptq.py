"""Encoding with a Gram matrix: chunks go through GPTQ, and still assemble into the tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nanofmt
from nanofmt import Scheme
from nanofmt.converters import ConvertError
from nanofmt.converters import encode as encode_module
from nanofmt.converters.encode import encode_rows, gram_factor, row_chunks
from nanofmt.converters.gptq import gptq_quantize, output_error

SCHEMES = [
    Scheme("affine_dq", bits=3, group_size=32, meta_bits=6),
    Scheme("int8_row", bits=8),
    Scheme("affine_dq", bits=4, group_size=32, meta_bits=6, transform="hadamard", transform_block=64),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1024, 128)) @ rng.standard_normal((128, 128))) * np.exp(rng.standard_normal(128))
    path = tmp_path_factory.mktemp("gram") / "w.gram.npy"
    np.save(path, x.T @ x)
    w = (rng.standard_normal((37, 128)) * 0.05).astype(np.float32)
    return w, x.T @ x, str(path)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_encode_with_gram_is_gptq_chunk_by_chunk(
    monkeypatch: pytest.MonkeyPatch, saved: tuple[np.ndarray, np.ndarray, str], scheme: Scheme
) -> None:
    w, gram, path = saved
    monkeypatch.setattr(encode_module, "CHUNK_ELEMENTS", 1000)
    whole = gptq_quantize(w, scheme, gram_factor(path, scheme.transform, scheme.transform_block))
    chunks = [encode_rows(w[span], scheme, "f32", "w", gram=path) for span in row_chunks(w.shape)]
    assert len(chunks) > 1
    for role, part in whole.parts.items():
        joined = chunks[0].parts[role] if role == "signs" else np.concatenate([c.parts[role] for c in chunks])
        if role == "codes":  # the lazy updates' matrix products may round differently for fewer rows
            assert np.mean(joined != part) < 0.01
        else:
            np.testing.assert_array_equal(joined, part)
    rtn = nanofmt.dequantize(nanofmt.quantize(w, scheme))
    assert output_error(w, nanofmt.dequantize(whole), gram).sum() < output_error(w, rtn, gram).sum()


def test_encode_with_gram_ignores_passthrough(saved: tuple[np.ndarray, np.ndarray, str]) -> None:
    w, _, path = saved
    encoded = encode_rows(w, Scheme("f16"), "f32", "w", gram=path)
    np.testing.assert_array_equal(encoded.parts[None], w.astype(np.float16))


def test_encode_gram_of_wrong_width_is_refused(saved: tuple[np.ndarray, np.ndarray, str], tmp_path: Path) -> None:
    w, _, _ = saved
    np.save(tmp_path / "g.npy", np.eye(64))
    with pytest.raises(ConvertError, match="64 x 64") as info:
        encode_rows(w, SCHEMES[0], "f32", "w", gram=str(tmp_path / "g.npy"))
    assert info.value.reason == "calibration_invalid"


def test_stream_with_grams_writes_gptq_tensors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    from safetensors.numpy import save_file

    from nanofmt.converters import preset
    from nanofmt.converters.plan import make_plan
    from nanofmt.converters.skeleton import Skeleton
    from nanofmt.converters.source import open_source
    from nanofmt.converters.stream import stream

    rng = np.random.default_rng(3)
    skeleton = Skeleton(
        "TinyForCausalLM", "tiny", True, linear=frozenset({"model.q.weight", "lm_head.weight"}),
        embedding=frozenset({"model.embed.weight"}), tie=("lm_head.weight", "model.embed.weight"), prefix="model",
    )  # fmt: skip
    tensors = {n: (rng.standard_normal((64, 64)) * 0.05).astype(np.float32) for n in ("model.embed.weight", "model.q.weight")}
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    save_file(tensors, src_dir / "model.safetensors")
    x = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))
    np.save(tmp_path / "q.npy", x.T @ x)
    monkeypatch.setattr(encode_module, "CHUNK_ELEMENTS", 1000)
    written = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        out.mkdir()
        with open_source(src_dir) as source:
            plan = make_plan(source, skeleton, preset("tiedq"))
            stream(plan, source, out, workers=workers, grams={"model.q.weight": str(tmp_path / "q.npy")})
        with nanofmt.open_file(out / plan.shards[0].filename) as f:
            written[workers] = {n: f.tensor(n) for n in tensors}
    q, embed = written[1]["model.q.weight"], written[1]["model.embed.weight"]
    np.testing.assert_array_equal(
        nanofmt.dequantize(embed), nanofmt.dequantize(nanofmt.quantize(tensors["model.embed.weight"], embed.scheme))
    )
    rtn = nanofmt.dequantize(nanofmt.quantize(tensors["model.q.weight"], q.scheme))
    gram = x.T @ x
    assert (
        output_error(tensors["model.q.weight"], nanofmt.dequantize(q), gram).sum()
        < output_error(tensors["model.q.weight"], rtn, gram).sum()
    )
    for name in tensors:  # the output does not depend on the worker count
        np.testing.assert_array_equal(nanofmt.dequantize(written[2][name]), nanofmt.dequantize(written[1][name]))
