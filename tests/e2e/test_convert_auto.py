"""Automatic bit allocation (--target-bpw, --max-size) and the quality gate, end to end on tiny models."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nanofmt.cli import main
from nanofmt.converters import ConvertError, convert
from nanofmt.inspect import verify_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quantized_bpw(report) -> float:
    """Bits per weight over the tensors the allocator chose for (everything not kept as is)."""
    rows = [t for t in report.stored if t.kind in ("linear", "embedding")]
    return 8 * sum(t.bytes_out for t in rows) / sum(t.bytes_in // 2 if t.dtype in ("bf16", "f16") else t.bytes_in // 4 for t in rows)


def test_convert_auto_meets_the_target_and_records_it(tiny_model, tmp_path):
    report = convert(tiny_model("qwen2_tied"), tmp_path / "nano", target_bpw=4.5)
    assert quantized_bpw(report) <= 4.5
    policy = json.loads((tmp_path / "nano" / "config.json").read_text())["quantization_config"]["policy"]
    assert policy["overrides"]["target_bpw"] == 4.5
    assert policy["overrides"]["allocation"]["proxy"] == "data-free"
    assert policy["overrides"]["allocation"]["bits_per_weight"] <= 4.5
    # the resolved policy names a concrete scheme for every candidate, and it is what was stored
    resolved = policy["resolved"]
    assert resolved["model.layers.0.mlp.down_proj.weight"]["scheme"] in ("affine_dq", "f16")
    assert resolved["lm_head.weight"] == {"tie": "model.embed_tokens.weight"}
    assert verify_path(tmp_path / "nano") == []
    from nanofmt.loaders import load_model

    model = load_model(tmp_path / "nano", dtype=torch.float32)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_convert_auto_more_bits_buy_less_error(tiny_model, tmp_path):
    low = convert(tiny_model("llama"), tmp_path / "a", target_bpw=3.5, dry_run=True)
    high = convert(tiny_model("llama"), tmp_path / "b", target_bpw=6.0, dry_run=True)
    assert quantized_bpw(low) <= 3.5 < quantized_bpw(high) <= 6.0
    # a dry run allocates too, and writes nothing
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert low.totals()["output_bytes"] < high.totals()["output_bytes"]


def test_convert_auto_max_size_bounds_the_files(tiny_model, tmp_path):
    src = tiny_model("llama")
    int8 = convert(src, tmp_path / "int8", policy="int8", dry_run=True).totals()["output_bytes"]
    report = convert(src, tmp_path / "nano", max_size=int8 // 2)
    files = sum(p.stat().st_size for p in (tmp_path / "nano").glob("*.safetensors"))
    assert files == report.totals()["output_bytes"] <= int8 // 2
    assert report.policy["overrides"]["max_size"] == int8 // 2


def test_convert_auto_too_small_a_budget_is_refused_cleanly(tiny_model, tmp_path):
    with pytest.raises(ConvertError) as info:
        convert(tiny_model("llama"), tmp_path / "nano", max_size="2KB")
    assert info.value.reason == "budget_too_small"
    assert not (tmp_path / "nano").exists()


def test_convert_auto_keep_patterns_stay_out_of_the_allocation(tiny_model, tmp_path):
    report = convert(tiny_model("llama"), tmp_path / "nano", target_bpw=4.0, keep=["*.q_proj.weight"], dry_run=True)
    q = [t for t in report.tensors if t.name.endswith("q_proj.weight")]
    assert q and all(t.scheme == "bf16" for t in q)
    assert report.policy["overrides"]["keep"] == ["*.q_proj.weight"]


def test_convert_auto_arguments_are_checked(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        convert(tiny_model("llama"), tmp_path / "nano", target_bpw=4.0, max_size="1MB")
    with pytest.raises(ValueError, match="between 1 and 32"):
        convert(tiny_model("llama"), tmp_path / "nano", target_bpw=0.5)
    empty = tmp_path / "calib.txt"
    empty.write_text("  \n")
    with pytest.raises(ConvertError) as info:
        convert(tiny_model("llama"), tmp_path / "nano", calibration=empty)
    assert info.value.reason == "calibration_invalid" and not (tmp_path / "nano").exists()


def test_convert_quality_gate_passes_and_is_recorded(tiny_model, tmp_path):
    report = convert(tiny_model("llama", tokenizer=True), tmp_path / "nano", policy="int8", quality_gate=0.01)
    assert report.gate is not None and report.gate["passed"] and report.gate["gap_kl"] <= 0.01
    assert report.gate["tokens"] > 100
    assert "## Quality gate" in (tmp_path / "nano" / "README.md").read_text()


def test_convert_quality_gate_failure_publishes_nothing(tiny_model, tmp_path):
    with pytest.raises(ConvertError) as info:
        convert(tiny_model("llama", tokenizer=True), tmp_path / "nano", target_bpw=3.5, quality_gate=0.0)
    assert info.value.reason == "quality_gate_failed"
    assert "KL(int8 baseline || result)" in str(info.value)
    assert not (tmp_path / "nano").exists()


def test_convert_cli_target_bpw_and_gate(tiny_model, tmp_path):
    result = CliRunner().invoke(
        main, ["convert", str(tiny_model("qwen2_tied", tokenizer=True)), str(tmp_path / "nano"), "--target-bpw", "5", "--quality-gate", "10"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "allocation (data-free proxy)" in result.stdout and "quality gate passed" in result.stdout
    failed = CliRunner().invoke(main, ["convert", str(tiny_model("qwen2_tied", tokenizer=True)), str(tmp_path / "n2"), "--target-bpw", "3.5", "--quality-gate", "0"])
    assert failed.exit_code == 1 and "quality_gate_failed" in failed.output


def test_convert_transform_option_applies_to_policy_and_menu(tiny_model, tmp_path):
    result = CliRunner().invoke(
        main, ["convert", str(tiny_model("llama")), str(tmp_path / "rot"), "--policy", "tiedq", "--transform", "hadamard", "--transform-block", "16"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    quant = json.loads((tmp_path / "rot" / "config.json").read_text())["quantization_config"]
    assert quant["format_version"] == "1.1"
    resolved = quant["policy"]["resolved"]["model.layers.0.mlp.up_proj.weight"]
    assert resolved["transform"] == "hadamard" and resolved["transform_block"] == 16
    assert "hadamard rotation, block 16" in (tmp_path / "rot" / "README.md").read_text()
    assert verify_path(tmp_path / "rot") == []
    # with a target, every menu scheme is offered with and without the rotation: the allocation
    # covers both, and whatever it picks is recorded as an exact rule the folder reproduces
    report = convert(tiny_model("llama"), tmp_path / "auto", target_bpw=4.5, transform="hadamard", transform_block=16)
    labels = {t.scheme for t in report.stored if t.kind in ("linear", "embedding")}
    assert all(label.startswith("affine_dq") for label in labels)
    with pytest.raises(ValueError, match="unknown transform"):
        convert(tiny_model("llama"), tmp_path / "bad", transform="givens")


CALIBRATION = "def f(x):\n    return x * 2  # doubles\n" * 40


def stored_codes(folder, name):
    from nanofmt import open_file

    with open_file(folder / "model.safetensors") as f:
        return f.component(name).copy()


def test_convert_calibrated_policy_encodes_with_gptq(tiny_model, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    src = tiny_model("llama", tokenizer=True)
    text = tmp_path / "calib.txt"
    text.write_text(CALIBRATION)
    plain = convert(src, tmp_path / "rtn", policy="tiedq")
    report = convert(src, tmp_path / "gptq", policy="tiedq", calibration=text)
    assert "calibration" not in plain.policy.get("overrides", {})
    assert report.policy["overrides"]["calibration"]["encoder"] == "gptq"
    assert report.policy["overrides"]["calibration"]["tokens"] > 100
    assert verify_path(tmp_path / "gptq") == []
    name = "model.layers.0.mlp.down_proj.weight_codes"
    rtn, gptq = stored_codes(tmp_path / "rtn", name), stored_codes(tmp_path / "gptq", name)
    assert rtn.shape == gptq.shape and (rtn != gptq).mean() > 0.05  # error feedback moved codes
    # the temporary Grams were written where tempfile said, and are gone
    assert not list(scratch.glob("nanofmt-calibration-*"))


def test_convert_calibrated_target_uses_the_fisher_proxy(tiny_model, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(CALIBRATION)
    report = convert(tiny_model("qwen2_tied", tokenizer=True), tmp_path / "nano", target_bpw=5.0, calibration=text)
    allocation = report.policy["overrides"]["allocation"]
    assert allocation["proxy"] == "calibrated" and allocation["predicted_mean_kl"] > 0
    # a dry run measures the Fisher information it allocates with, and no Grams: it encodes nothing
    logged = []
    dry = convert(tiny_model("qwen2_tied", tokenizer=True), tmp_path / "dry", target_bpw=5.0, calibration=text, dry_run=True, log=logged.append)
    assert dry.policy["overrides"]["allocation"] == allocation
    assert any("calibrating: Fisher information of" in line for line in logged)
    assert quantized_bpw(report) <= 5.0
    card = (tmp_path / "nano" / "README.md").read_text()
    assert "chosen per tensor by `nanofmt convert` for a budget of 5.0 bits per weight" in card
    assert "Fisher information" in card and "GPTQ error feedback" in card


def test_convert_auto_fused_menu_keeps_to_fused_kernels(tiny_model, tmp_path):
    from nanofmt.loaders.export import fused_kernel

    report = convert(tiny_model("llama"), tmp_path / "nano", target_bpw=5.0, dry_run=True)  # the default
    assert report.policy["overrides"]["allocation"]["menu"] == "fused"
    resolved = report.policy["rules"]
    quantized = [r for r in resolved if r.get("scheme") not in ("keep", "f16", "bf16", "f32")]
    assert quantized and all(fused_kernel(r["scheme"], r.get("bits"), r.get("group_size"), 64) for r in quantized)
    assert quantized_bpw(report) <= 5.0
    everything = convert(tiny_model("llama"), tmp_path / "nano", target_bpw=5.0, menu="all", dry_run=True)
    assert everything.policy["overrides"]["allocation"]["menu"] == "all"
    with pytest.raises(ValueError, match="menu"):
        convert(tiny_model("llama"), tmp_path / "nano", target_bpw=5.0, menu="fast")


def test_convert_quality_gate_refuses_what_it_cannot_measure(tiny_model, tmp_path):
    with pytest.raises(ConvertError, match="tokenizer") as info:
        convert(tiny_model("llama"), tmp_path / "nano", quality_gate=1.0)  # no tokenizer in the folder
    assert info.value.reason == "quality_gate_failed" and not (tmp_path / "nano").exists()
    with pytest.raises(ConvertError, match="causal language model"):
        convert(tiny_model("bert", tokenizer=True), tmp_path / "bert", quality_gate=1.0)
    assert not (tmp_path / "bert").exists()
