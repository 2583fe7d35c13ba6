"""``nanofmt inspect`` and ``nanofmt verify`` on valid, corrupt and tampered files and folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import nanofmt
from nanofmt.cli import main

REGRESSIONS = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "regressions"
RUNTIME = b"import torch\n\nclass NanoForCausalLM: ...\n"


def _run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    return result


def _strict_json(text: str) -> Any:
    def refuse(literal: str) -> Any:
        raise ValueError(f"{literal} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    path = tmp_path / "model.safetensors"
    qt = nanofmt.quantize(w, nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6))
    nanofmt.write_file(path, {"embed": qt, "head": "embed", "norm": nanofmt.quantize(w[0], nanofmt.Scheme("f32"))})
    return path


@pytest.fixture
def folder(tmp_path: Path, model_file: Path) -> Path:
    """A Nano folder: the model file, one runtime file and a config.json recording its hash."""
    (tmp_path / "modeling_nano.py").write_bytes(RUNTIME)
    config = {
        "model_type": "llama",
        "quantization_config": {
            "quant_method": "nano",
            "format_version": "1.0",
            "runtime_sha256": {"modeling_nano.py": hashlib.sha256(RUNTIME).hexdigest()},
        },
        "auto_map": {"AutoModelForCausalLM": "modeling_nano.NanoForCausalLM"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))


def test_cli_inspect_shows_a_valid_file(model_file: Path) -> None:
    result = _run("inspect", str(model_file))
    assert result.exit_code == 0 and "embed" in result.output and "tie -> embed" in result.output
    summary = _strict_json(_run("inspect", str(model_file), "--json").output)
    assert summary["totals"]["tensors"] == 3 and summary["format_versions"] == ["1.0"]


def test_cli_verify_passes_a_valid_file_and_folder(model_file: Path, folder: Path) -> None:
    assert _run("verify", str(model_file)).exit_code == 0
    result = _run("verify", str(folder), "--json")
    assert result.exit_code == 0 and _strict_json(result.output)["ok"] is True


def test_cli_verify_reports_a_flipped_bit(model_file: Path) -> None:
    _flip_last_byte(model_file)
    result = _run("verify", str(model_file), "--json")
    assert result.exit_code == 1
    assert [p["reason"] for p in _strict_json(result.output)["problems"]] == ["checksum_mismatch"]


def test_cli_inspect_reports_a_corrupt_file_in_one_line(model_file: Path) -> None:
    model_file.write_bytes(model_file.read_bytes()[:-1])
    result = _run("inspect", str(model_file))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "[file_too_short]" in result.output


@pytest.mark.parametrize("vector", sorted(p.name for p in REGRESSIONS.glob("*.safetensors")))
def test_cli_verify_refuses_every_regression_vector(tmp_path: Path, vector: str) -> None:
    expected = json.loads((REGRESSIONS / "expected.json").read_text())[vector]["reason"]
    result = _run("verify", str(REGRESSIONS / vector), "--json")
    assert result.exit_code == 1
    assert _strict_json(result.output)["problems"][0]["reason"] == expected
    assert _run("inspect", str(REGRESSIONS / vector)).exit_code == 1


def test_cli_verify_reports_a_modified_runtime_file(folder: Path) -> None:
    (folder / "modeling_nano.py").write_bytes(RUNTIME + b"import os; os.system('echo hi')\n")
    result = _run("verify", str(folder), "--json")
    assert result.exit_code == 1
    problems = _strict_json(result.output)["problems"]
    assert [(Path(p["path"]).name, p["reason"]) for p in problems] == [("modeling_nano.py", "checksum_mismatch")]


def test_cli_verify_reports_a_missing_or_unrecorded_runtime_file(folder: Path) -> None:
    (folder / "modeling_nano.py").unlink()
    (folder / "helper.py").write_text("print('not recorded')\n")
    problems = _strict_json(_run("verify", str(folder), "--json").output)["problems"]
    assert sorted((Path(p["path"]).name, p["reason"]) for p in problems) == [
        ("helper.py", "checksum_mismatch"),
        ("modeling_nano.py", "component_missing"),
    ]


def _set_runtime(folder: Path, runtime: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["runtime_sha256"] = runtime
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("runtime", "reason"),
    [
        ("not a mapping", "checksum_invalid"),
        ({"modeling_nano.py": 5}, "checksum_invalid"),
        ({"modeling_nano.py": "ABC"}, "checksum_invalid"),
        ({"../../etc/passwd": "0" * 64, "modeling_nano.py": hashlib.sha256(RUNTIME).hexdigest()}, "name_invalid"),
        ({"/etc/passwd": "0" * 64, "modeling_nano.py": hashlib.sha256(RUNTIME).hexdigest()}, "name_invalid"),
    ],
)
def test_cli_verify_refuses_a_malformed_runtime_record(folder: Path, runtime: Any, reason: str) -> None:
    _set_runtime(folder, runtime)
    result = _run("verify", str(folder), "--json")
    assert result.exit_code == 1
    assert _strict_json(result.output)["problems"][0]["reason"] == reason


@pytest.mark.parametrize("config", ["[]", "{", '{"quantization_config": "nano"}', '{"quantization_config": [1]}', "[" * 5000])
def test_cli_survives_any_config_json(folder: Path, config: str) -> None:
    (folder / "config.json").write_text(config)
    result = _run("verify", str(folder), "--json")
    problems = _strict_json(result.output)["problems"]
    assert all(p["reason"] == "file_unreadable" for p in problems)
    assert result.exit_code == (1 if problems else 0)
    assert _run("inspect", str(folder), "--json").exit_code == 0


def test_cli_verify_reports_a_folder_without_nano_files(tmp_path: Path) -> None:
    result = _run("verify", str(tmp_path), "--json")
    assert result.exit_code == 1 and _strict_json(result.output)["problems"][0]["reason"] == "file_unreadable"
