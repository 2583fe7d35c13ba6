"""The README's main command, `nanofmt demo`, end to end on a briefly trained model.

The real default trains for 500 steps; here the same code path trains for 4, which
is enough to prove the chain (build -> convert twice -> load through trust_remote_code ->
compare -> generate) and the report, not the model's fluency.
"""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from nanofmt.cli import main  # noqa: E402
from nanofmt.demo import render, run_demo  # noqa: E402


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cache = tmp_path_factory.mktemp("nanofmt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOFMT_CACHE", str(cache))
        return run_demo(train_steps=4, max_new_tokens=8, eval_tokens=256, prompts=("The for statement",)), cache


def test_demo_reports_sizes_in_the_expected_order(demo_result) -> None:  # type: ignore[no-untyped-def]
    result, _ = demo_result
    sizes = result.sizes
    assert sizes["qkvfp16"] < sizes["int8"] < sizes["source"]


def test_demo_int8_baseline_tracks_the_source_closely(demo_result) -> None:  # type: ignore[no-untyped-def]
    result, _ = demo_result
    int8, nano = result.agreement["int8"], result.agreement["qkvfp16"]
    assert all(math.isfinite(v) for a in (int8, nano) for v in (a.mean_kl, a.top1, a.ppl_source, a.ppl_quantized))
    assert 0 <= int8.mean_kl < 0.05 and int8.top1 > 0.9
    assert nano.mean_kl >= 0


def test_demo_generates_and_renders_a_report(demo_result) -> None:  # type: ignore[no-untyped-def]
    result, cache = demo_result
    [(prompt, source_text, nano_text)] = result.generations
    assert prompt == "The for statement" and isinstance(source_text, str) and isinstance(nano_text, str)
    report = "\n".join(render(result))
    assert "nano qkvfp16" in report and "nano int8" in report and "mean KL" in report
    assert (cache / "demo-out" / "nano-qkvfp16" / "config.json").is_file()


def test_demo_cli_reuses_the_cached_model(demo_result, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, cache = demo_result
    monkeypatch.setenv("NANOFMT_CACHE", str(cache))
    trained = (cache / "demo-model" / "model.safetensors").stat().st_mtime_ns
    run = CliRunner().invoke(main, ["demo", "--train-steps", "4", "--max-new-tokens", "4", "--eval-tokens", "64"])
    assert run.exit_code == 0, run.output
    assert "nano qkvfp16" in run.output
    assert (cache / "demo-model" / "model.safetensors").stat().st_mtime_ns == trained
