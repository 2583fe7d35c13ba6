"""Converting tiny real-architecture models: folder contract, policies on real layouts, dequantize round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import nanofmt
from nanofmt.converters import convert, dequantize_folder
from nanofmt.inspect import verify_path

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

QKV = ("q_proj", "k_proj", "v_proj", "query", "key", "value")


def records(folder: Path) -> dict[str, nanofmt.files.Record]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with nanofmt.open_file(shard) as f:
            out.update(f.records)
    return out


def test_convert_qkvfp16_folder_contract(tiny_model, tiny, tmp_path, tiny_name):
    name = tiny_name
    src = tiny_model(name)
    report = convert(src, tmp_path / "nano", policy="qkvfp16")
    out = tmp_path / "nano"
    assert verify_path(out) == []
    config = json.loads((out / "config.json").read_text())
    source_config = json.loads((src / "config.json").read_text())
    assert {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")} == source_config
    quant = config["quantization_config"]
    assert quant["quant_method"] == "nano" and quant["format_version"] == "1.0"  # no 1.1 feature used: the lowest version that says it
    assert quant["policy"]["name"] == "qkvfp16" and quant["policy"]["rules"][0]["scheme"] == "f16"
    expected_auto = {"AutoModelForCausalLM", "AutoModel"} if name in tiny.CAUSAL else {"AutoModel"}
    assert set(config["auto_map"]) == expected_auto
    recs = records(out)
    assert set(quant["policy"]["resolved"]) == set(recs)
    for rec_name, rec in recs.items():
        leaf = rec_name.rsplit(".", 2)[-2] if rec_name.count(".") >= 1 else rec_name
        if rec.tie is not None:
            continue
        if rec_name.endswith(".weight") and leaf in QKV:
            assert rec.scheme.name == "f16", rec_name
        elif len(rec.shape) == 1:
            assert rec.scheme.is_passthrough and rec.scheme.name == rec.dtype, rec_name  # norms, biases kept as in the source
        elif "embed" in rec_name or "proj" in rec_name or "dense" in rec_name or "lm_head" in rec_name:
            assert rec.scheme.name == "affine_dq" and rec.scheme.bits == 4, rec_name
            assert isinstance(rec.extra["sqnr_db"], float), rec_name
    for side in ("tokenizer_config.json", "chat_template.jinja", "README.md"):
        assert (out / side).is_file()
    assert report.totals()["output_bytes"] == (out / "model.safetensors").stat().st_size


@pytest.mark.parametrize("name", ["qwen2_tied", "gemma"])
def test_convert_tied_head_is_a_tie_record(tiny_model, tmp_path, name):
    convert(tiny_model(name), tmp_path / "nano", policy="tiedq")
    recs = records(tmp_path / "nano")
    assert recs["lm_head.weight"].tie == "model.embed_tokens.weight"
    assert recs["model.embed_tokens.weight"].scheme.name == "affine_dq"
    assert recs["model.layers.0.self_attn.q_proj.weight"].scheme.name == "affine_dq"  # tiedq: q/k/v too


@pytest.mark.parametrize("name", ["qwen2_untied", "llama", "mistral"])
def test_convert_untied_head_follows_policy(tiny_model, tmp_path, name):
    convert(tiny_model(name), tmp_path / "nano", policy="qkvfp16")
    recs = records(tmp_path / "nano")
    assert recs["lm_head.weight"].tie is None and recs["lm_head.weight"].scheme.name == "affine_dq"
    assert not any(r.tie for r in recs.values())


def test_convert_qwen2_keeps_qkv_biases(tiny_model, tmp_path):
    convert(tiny_model("qwen2_tied"), tmp_path / "nano")
    recs = records(tmp_path / "nano")
    for proj in ("q_proj", "k_proj", "v_proj"):
        bias = recs[f"model.layers.1.self_attn.{proj}.bias"]
        assert bias.scheme.name == "bf16" and bias.shape[0] > 0


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
def test_dequantize_matches_reference_decode_bitexact(tiny_model, tmp_path, tiny_name, dtype):
    convert(tiny_model(tiny_name), tmp_path / "nano", policy="tiedq")
    dequantize_folder(tmp_path / "nano", tmp_path / "plain", dtype=dtype)
    with open(tmp_path / "plain" / "model.safetensors", "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    plain = safetensors_numpy.load_file(tmp_path / "plain" / "model.safetensors") if dtype != "bf16" else None
    with nanofmt.open_file(tmp_path / "nano" / "model.safetensors") as f:
        tied = {n for n, r in f.records.items() if r.tie}
        assert set(header) - {"__metadata__"} == set(f.records) - tied
        for tensor in set(f.records) - tied:
            expected = nanofmt.dequantize(f.tensor(tensor), dtype)
            assert header[tensor]["dtype"] == {"f16": "F16", "bf16": "BF16", "f32": "F32"}[dtype]
            if plain is not None:
                assert plain[tensor].tobytes() == np.ascontiguousarray(expected).tobytes(), tensor
    if dtype == "bf16":  # numpy has no bf16: compare through torch
        from safetensors.torch import load_file

        loaded = load_file(tmp_path / "plain" / "model.safetensors")
        with nanofmt.open_file(tmp_path / "nano" / "model.safetensors") as f:
            for tensor, value in loaded.items():
                bits = value.view(torch.int16).numpy().view(np.uint16)
                assert np.array_equal(bits, nanofmt.dequantize(f.tensor(tensor), "bf16")), tensor
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "quantization_config" not in config and "auto_map" not in config


@pytest.mark.parametrize(("policy", "bits", "tolerance"), [("int8", None, 0.02), ("tiedq", 8, 0.02), ("qkvfp16", None, 0.25)])
def test_dequantized_model_tracks_source_outputs(tiny_model, tiny, tmp_path, tiny_name, policy, bits, tolerance):
    name = tiny_name
    src = tiny_model(name)
    convert(src, tmp_path / "nano", policy=policy, bits=bits)
    dequantize_folder(tmp_path / "nano", tmp_path / "plain", dtype="f32")
    ids = torch.randint(0, tiny.TINY[name][1]["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    reference = tiny.outputs(tiny.load(src, name), ids)
    got = tiny.outputs(tiny.load(tmp_path / "plain", name), ids)
    error = float((got - reference).norm() / reference.norm())
    assert error < tolerance, f"relative output error {error:.4f}"


def test_convert_sharded_input_and_output(tiny_model, tiny, tmp_path):
    src = tiny_model("qwen2_tied", shard_size="40KB")
    assert (src / "model.safetensors.index.json").is_file()
    planned = convert(src, tmp_path / "dry", policy="qkvfp16", max_shard_size="30KB", dry_run=True)
    report = convert(src, tmp_path / "nano", policy="qkvfp16", max_shard_size="30KB")
    out = tmp_path / "nano"
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "dry").exists()
    assert [(s["file"], s["bytes"]) for s in planned.shards] == [(p.name, p.stat().st_size) for p in shards]
    assert report.shards == planned.shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = {}
    for shard in shards:
        with nanofmt.open_file(shard) as f:
            stored.update(dict.fromkeys(f.entries, shard.name))
            for rec in f.records.values():
                if rec.tie:
                    assert rec.tie in f.records  # a tie lives in its target's shard
    assert index["weight_map"] == stored
    assert index["metadata"]["total_size"] == sum(s.stat().st_size for s in shards) - sum(_header_size(s) for s in shards)
    assert verify_path(out) == []
    dequantize_folder(out, tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "model.safetensors.index.json").read_text())["weight_map"]
    model = tiny.load(tmp_path / "plain", "qwen2_tied")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def _header_size(path: Path) -> int:
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def test_convert_bin_source_matches_safetensors_source(tiny_model, tiny, tmp_path):
    src = tiny_model("qwen2_tied")
    bin_src = tmp_path / "bin-src"
    bin_src.mkdir()
    (bin_src / "config.json").write_text((src / "config.json").read_text())
    model = tiny.load(src, "qwen2_tied", dtype=torch.bfloat16)
    torch.save(model.state_dict(), bin_src / "pytorch_model.bin")  # includes the tied lm_head.weight
    convert(src, tmp_path / "a", policy="qkvfp16")
    report = convert(bin_src, tmp_path / "b", policy="qkvfp16")
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert set(a) == set(b)
    assert {n: r.checksum for n, r in a.items()} == {n: r.checksum for n, r in b.items()}
    assert any(s["name"] == "lm_head.weight" for s in report.skipped)


def test_convert_dry_run_sizes_equal_real_sizes(tiny_model, tmp_path):
    for policy in ("qkvfp16", "tiedq", "int8"):
        planned = convert(tiny_model("llama"), tmp_path / policy, policy=policy, dry_run=True)
        assert not (tmp_path / policy).exists()
        done = convert(tiny_model("llama"), tmp_path / policy, policy=policy)
        assert planned.shards == done.shards
        assert done.shards[0]["bytes"] == (tmp_path / policy / "model.safetensors").stat().st_size
        assert [t.bytes_out for t in planned.tensors] == [t.bytes_out for t in done.tensors]


def test_convert_worker_processes_write_identical_bytes(tiny_model, tmp_path):
    convert(tiny_model("mistral"), tmp_path / "one", workers=1)
    report = convert(tiny_model("mistral"), tmp_path / "two", workers=2)
    assert report.workers == 2
    one = (tmp_path / "one" / "model.safetensors").read_bytes()
    assert one == (tmp_path / "two" / "model.safetensors").read_bytes()


def test_convert_model_card_reports_policy_sizes_and_quality(tiny_model, tmp_path):
    report = convert(tiny_model("llama"), tmp_path / "nano", policy="qkvfp16")
    card = (tmp_path / "nano" / "README.md").read_text()
    assert "policy `qkvfp16`" in card and "trust_remote_code=True" in card
    assert f"{report.totals()['output_bytes']:,}" in card
    assert "model.layers.N.mlp.up_proj.weight" in card  # per-group sizes
    worst = report.worst_sqnr(1)[0]
    assert f"{worst.sqnr_db:.2f}" in card
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")


def test_convert_report_counts_every_parameter(tiny_model, tiny, tmp_path):
    src = tiny_model("gemma")
    report = convert(src, tmp_path / "nano", policy="qkvfp16")
    model = tiny.load(src, "gemma")
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert report.parameters == sum(unique.values())
    totals = report.totals()
    assert sum(s["tensors"] for s in totals["schemes"].values()) == totals["stored_tensors"]
    assert math.isclose(totals["bits_per_weight"], 8 * totals["data_bytes"] / totals["parameters"], rel_tol=1e-4)


def test_convert_keeps_scalars_empty_and_3d_tensors(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    src.mkdir()
    base = tiny_model("llama")
    for f in base.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    weights = load_file(base / "model.safetensors")
    extra = {"model.logit_scale": torch.tensor(2.5), "model.empty": torch.zeros(0, 64), "model.stack": torch.ones(2, 3, 32)}
    save_file({**weights, **extra}, src / "model.safetensors", metadata={"format": "pt"})
    rules = [{"match": "model.*", "scheme": "quant"}, {"scheme": "keep"}]
    policy = tmp_path / "all.json"
    policy.write_text(json.dumps({"rules": rules}))
    report = convert(src, tmp_path / "nano", policy=policy)
    fallbacks = {t.name: t.fallback for t in report.tensors if t.fallback}
    assert set(extra) <= set(fallbacks) and all(fallbacks[n].endswith("kept") for n in extra)
    assert verify_path(tmp_path / "nano") == []
    dequantize_folder(tmp_path / "nano", tmp_path / "plain", dtype="f32")
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    assert float(plain["model.logit_scale"]) == 2.5 and plain["model.empty"].shape == (0, 64)
    assert plain["model.stack"].shape == (2, 3, 32)
