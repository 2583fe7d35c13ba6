"""The convert and dequantize commands: through click's runner, once as a real process, and loading the result."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nanofmt.cli import _ProgressBar, main
from nanofmt.converters import ProgressEvent, dequantize_folder
from nanofmt.inspect import verify_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_convert_cli_json_report(tiny_model, tmp_path):
    result = run("convert", tiny_model("qwen2_untied"), tmp_path / "nano", "--policy", "int8", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["policy"]["name"] == "int8" and not report["dry_run"]
    assert report["totals"]["schemes"]["int8_row"]["tensors"] == 2 * 7 + 1  # 7 Linear per layer, plus the untied head
    assert report["shards"][0]["bytes"] == (tmp_path / "nano" / "model.safetensors").stat().st_size
    assert verify_path(tmp_path / "nano") == []


def test_convert_cli_summary_and_dry_run(tiny_model, tmp_path):
    result = run("convert", tiny_model("llama"), tmp_path / "nano", "--dry-run", "--bits", "8", "--keep", "*.down_proj.weight")
    assert result.exit_code == 0, result.output
    assert "(dry run)" in result.stdout and "affine_dq:8b/g32/m6" in result.stdout and "would write model.safetensors" in result.stdout
    assert not (tmp_path / "nano").exists()
    result = run("convert", tiny_model("llama"), tmp_path / "nano", "--policy", "tiedq", "--max-shard-size", "20KB")
    assert result.exit_code == 0, result.output
    assert "worst SQNR:" in result.stdout and "M weights/s" in result.stdout
    assert (tmp_path / "nano" / "model.safetensors.index.json").is_file()


def test_convert_cli_policy_file(tiny_model, tmp_path):
    policy = tmp_path / "mine.toml"
    policy.write_text('name = "mine"\n[[rules]]\nmatch = "*.mlp.*"\nkind = "linear"\nscheme = "affine"\nbits = 3\n\n[[rules]]\nscheme = "keep"\n')
    result = run("convert", tiny_model("llama"), tmp_path / "nano", "--policy", policy, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["totals"]["schemes"]) == {"affine:3b/g32", "bf16"}
    config = json.loads((tmp_path / "nano" / "config.json").read_text())
    assert config["quantization_config"]["policy"]["rules"][0] == {"match": "*.mlp.*", "kind": "linear", "scheme": "affine", "bits": 3}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--policy", "nope"], 2, "unknown policy 'nope'"),
        (["--max-shard-size", "lots"], 2, "as a size"),
        (["--bits", "7"], 1, "[policy_invalid]"),
    ],
)
def test_convert_cli_bad_arguments(tiny_model, tmp_path, args, code, message):
    result = run("convert", tiny_model("llama"), tmp_path / "nano", *args)
    assert result.exit_code == code and message in result.output
    assert not (tmp_path / "nano").exists()


def test_convert_cli_reports_fallbacks(tiny, tmp_path):
    src = tiny.build("llama", tmp_path / "src", intermediate_size=16)  # down_proj: 16 columns, below any group
    result = run("convert", src, tmp_path / "nano")
    assert result.exit_code == 0, result.output
    assert "fallback: model.layers.0.mlp.down_proj.weight: 16 columns < smallest group: int8_row" in result.stdout
    assert verify_path(tmp_path / "nano") == []
    config = json.loads((tmp_path / "nano" / "config.json").read_text())
    resolved = config["quantization_config"]["policy"]["resolved"]["model.layers.1.mlp.down_proj.weight"]
    assert resolved["scheme"] == "int8_row" and "smallest group" in resolved["fallback"]
    assert "Fallbacks" in (tmp_path / "nano" / "README.md").read_text()


def test_convert_cli_errors_are_one_line(tiny_model, tmp_path):
    (tmp_path / "nano").mkdir()
    (tmp_path / "nano" / "x").write_text("")
    result = run("convert", tiny_model("llama"), tmp_path / "nano")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nano'} exists and is not empty; pass --force to replace it [dst_exists]"]


def test_dequantize_cli(tiny_model, tmp_path):
    assert run("convert", tiny_model("mistral"), tmp_path / "nano").exit_code == 0
    result = run("dequantize", tmp_path / "nano", tmp_path / "plain", "--dtype", "bf16", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dtype"] == "bf16"
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert model.dtype == torch.bfloat16
    assert run("dequantize", tmp_path / "nano", tmp_path / "plain").exit_code == 1  # exists


def test_convert_cli_progress_bar_renders():
    bar = _ProgressBar()
    for done in (10, 30, 60):
        bar(ProgressEvent(f"t{done}", "model.safetensors", done // 10, 6, done, 60))
    bar.close()


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("nanofmt")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from nanofmt.cli import main; main()"]


def test_convert_cli_as_a_real_process(tiny_model, tmp_path):
    # a fresh interpreter: the model skeleton is read in a child process, the converter stays numpy-only
    env = {**os.environ, "NANOFMT_CACHE": str(tmp_path / "cache")}
    command = [*_cli_command(), "convert", str(tiny_model("gemma")), str(tmp_path / "nano"), "--json"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["architecture"] == "GemmaForCausalLM"
    assert verify_path(tmp_path / "nano") == []
    assert len(list((tmp_path / "cache" / "skeletons").glob("*.json"))) == 1  # the next conversion skips the child
    proc = subprocess.run([*_cli_command(), "convert", str(tmp_path / "missing"), str(tmp_path / "out")], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "no such folder" in proc.stderr


@pytest.mark.parametrize("name", ["llama", "qwen2_tied"])
def test_convert_then_load_with_trust_remote_code(tiny_model, tiny, tmp_path, name):
    if importlib.util.find_spec("nanofmt.loaders.export") is None:
        pytest.skip("the Nano runtime (nanofmt.loaders.export) is not in this install yet")
    convert_args = ("convert", tiny_model(name), tmp_path / "nano", "--policy", "qkvfp16")
    assert run(*convert_args).exit_code == 0
    dequantize_folder(tmp_path / "nano", tmp_path / "plain", dtype="f32")
    nano = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "nano", trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(1))
    expected = tiny.outputs(tiny.load(tmp_path / "plain", name), ids)
    got = tiny.outputs(nano, ids)
    assert float((got - expected).norm() / expected.norm()) < 1e-3
