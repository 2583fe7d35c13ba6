"""One short check of the Nano runtime on a CUDA GPU (no network; about a minute on an H100).

    python3 bench/gpu_check.py                    # builds a random-weight Qwen2-0.5B-shaped Nano folder
    python3 bench/gpu_check.py --folder PATH      # or checks an existing Nano folder
    python3 bench/gpu_check.py --device cpu --size small   # the same flow on the CPU (a smoke test)

Runs from a plain checkout (nanofmt need not be installed). For the chunked and the fused path
in bf16 it loads the model onto the GPU, compares its logits with the CPU chunked path in
float32 (the exact decode), reports GPU memory allocated after load (against the packed size)
and at the peak of a generation, load time and decode tokens/s at batch 1; then checks that
``.to("cuda")`` of a CPU-loaded model and ``AutoModelForCausalLM.from_pretrained(...,
trust_remote_code=True, device_map=...)`` give the same logits. Prints a report, writes
``$OUT/gpu_check.json`` when ``OUT`` is set, and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import nanofmt  # noqa: E402

try:
    import nanofmt.loaders.modeling_nano  # noqa: F401  (an installed nanofmt)
except ImportError:  # a plain checkout: loaders/ is the package nanofmt.loaders
    spec = importlib.util.spec_from_file_location("nanofmt.loaders", ROOT / "loaders" / "__init__.py", submodule_search_locations=[str(ROOT / "loaders")])
    assert spec is not None and spec.loader is not None
    nanofmt.loaders = sys.modules["nanofmt.loaders"] = importlib.util.module_from_spec(spec)  # type: ignore[attr-defined]
    spec.loader.exec_module(nanofmt.loaders)  # type: ignore[attr-defined]

from nanofmt.loaders import load_model  # noqa: E402
from nanofmt.loaders.nano_modules import PackedMatrix  # noqa: E402

SIZES = {  # Qwen2-shaped (q/k/v biases, tied head)
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
}


def build_folder(size: str, out: Path) -> Path:
    import nano_fixtures
    import transformers

    config = transformers.Qwen2Config(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=True)
    return nano_fixtures.random_folder(out / f"qwen2-{size}-nano", config)


def packed_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.buffers(), *model.parameters()] if not t.is_meta)


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.to(next(iter(model.buffers())).device)).logits.float().cpu()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def decode_speed(model: torch.nn.Module, ids: torch.Tensor, tokens: int, device: str) -> float:
    greedy = dict(do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, **greedy)  # warm-up
        sync(device)
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **greedy)
        sync(device)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **greedy)
        sync(device)
        return (tokens - 1) / max(time.perf_counter() - t - prefill, 1e-9)


def check_path(folder: Path, device: str, fused: bool, reference: torch.Tensor, ids: torch.Tensor, tokens: int, file_bytes: int) -> dict:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t = time.perf_counter()
    model = load_model(folder, device=device, dtype=torch.bfloat16, fused=fused)
    sync(device)
    out: dict = {"load_s": time.perf_counter() - t, "tensor_bytes": packed_bytes(model), "file_bytes": file_bytes}
    paths: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, PackedMatrix):
            paths[m.path] = paths.get(m.path, 0) + 1
    out["paths"] = paths
    if device == "cuda":
        out["allocated_after_load"] = torch.cuda.memory_allocated() - before
        out["load_peak"] = torch.cuda.max_memory_allocated() - before
        torch.cuda.reset_peak_memory_stats()
    out["logits_rel_err_vs_cpu_fp32"] = rel_err(logits_of(model, ids), reference)
    out["decode_tok_s"] = decode_speed(model, ids[:1, :16].to(device), tokens, device)
    if device == "cuda":
        out["generation_peak"] = torch.cuda.max_memory_allocated() - before
    del model
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, help="an existing Nano folder (default: build a random-weight one)")
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    import transformers

    report: dict = {"torch": torch.__version__, "transformers": transformers.__version__, "device": args.device, "checks": {}, "failures": []}
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device: nothing to check (use --device cpu for a smoke test)")
            return 1
        report["gpu"] = torch.cuda.get_device_name()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="nano-gpu-check-"))
    t = time.perf_counter()
    folder = args.folder or build_folder(args.size, tmp)
    report["folder"], report["build_s"] = str(folder), time.perf_counter() - t
    file_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    ids = torch.randint(0, config["vocab_size"], (2, 48))

    def check(name: str, fn, limit: float | None = None) -> None:
        try:
            result = fn()
            report["checks"][name] = result
            err = result.get("logits_rel_err_vs_cpu_fp32") if isinstance(result, dict) else None
            if limit is not None and err is not None and not err <= limit:
                report["failures"].append(f"{name}: logits differ from the CPU path by {err:.3g} (limit {limit})")
        except Exception as exc:  # report and go on: one broken path must not hide the others
            report["checks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            report["failures"].append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()

    reference = logits_of(load_model(folder, device="cpu", dtype=torch.float32, fused=False), ids)
    # bf16 compute vs the exact float32 decode: a few percent of the largest logit at most
    check("chunked bf16", lambda: check_path(folder, args.device, False, reference, ids, args.tokens, file_bytes), 0.05)
    check("fused bf16", lambda: check_path(folder, args.device, True, reference, ids, args.tokens, file_bytes), 0.08)

    def moved() -> dict:
        model = load_model(folder, device="cpu", dtype=torch.float32, fused=False).to(args.device)
        return {"logits_rel_err_vs_cpu_fp32": rel_err(logits_of(model, ids), reference)}

    def remote_code() -> dict:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32, device_map=args.device)
        return {"logits_rel_err_vs_cpu_fp32": rel_err(logits_of(model, ids), reference), "hf_device_map": getattr(model, "hf_device_map", None)}

    check(".to(device) of a CPU-loaded model (fp32)", moved, 1e-4)
    check("trust_remote_code + device_map (fp32)", remote_code, 1e-4)

    print(f"\nNano runtime on {report.get('gpu', args.device)}: torch {report['torch']}, transformers {report['transformers']}")
    print(f"folder {folder} ({file_bytes / 2**20:.1f} MiB of shards; built in {report['build_s']:.1f} s)")
    for name, result in report["checks"].items():
        print(f"\n[{name}]")
        for key, value in result.items():
            shown = f"{value / 2**20:.1f} MiB ({value / file_bytes:.2f}x the shards)" if key.endswith(("bytes", "after_load", "peak")) and isinstance(value, int) else value
            print(f"  {key}: {shown:.4g}" if isinstance(shown, float) else f"  {key}: {shown}")
    print("\n" + ("all checks passed" if not report["failures"] else "FAILED:\n  " + "\n  ".join(report["failures"])))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
