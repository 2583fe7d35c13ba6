"""Converter benchmark: sizes, peak memory and throughput on a real model, against anchors from the same run.

For each policy (qkvfp16, tiedq, int8) and worker count, the conversion runs in a fresh
interpreter (so imports and caches of earlier runs do not count) and reports:
  - output size vs the bf16 source and vs the int8 preset, and bits per weight;
  - peak resident memory (VmHWM) of the converting process, of the encoding workers, and of the
    child that reads the architecture (torch + transformers), against the goal
    1.5 x the largest source tensor + 300 MB;
  - throughput in M weights/s, for the streaming loop and end to end, next to the anchor: the
    single-core speed of ``nanofmt.quantize`` with the default scheme on one of the model's own
    tensors, measured in the same run (the machine may be shared; ratios travel, absolutes do not).
Then the qkvfp16 folder is loaded through transformers with trust_remote_code and asked one
chat question, greedy, to show it generates coherent text.

Make the model first: ``PY=.venv/bin/python bash ../shared/models/prepare.sh models``.
Usage: .venv/bin/python bench/convert.py [--model models/smollm2-135m] [--workers 1,2] [--no-generate]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLICIES = ("qkvfp16", "tiedq", "int8")
MB = 1e6


def _vmhwm(pid: int | str = "self") -> float:
    """Peak resident set size of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def child(src: str, dst: str, policy: str, workers: int) -> None:
    """Run one conversion in this (fresh) process and print its measurements as JSON."""
    from nanofmt.converters import convert
    from nanofmt.converters import workers as workers_module

    peaks: list[float] = []
    close = workers_module.WorkerPool.close

    def close_and_measure(pool: Any) -> None:
        peaks.extend(_vmhwm(p.pid) for p in pool._procs if p.poll() is None)  # noqa: SLF001  (bench-only peek)
        close(pool)

    workers_module.WorkerPool.close = close_and_measure  # type: ignore[method-assign]
    report = convert(src, dst, policy=policy, force=True, workers=workers)
    totals = report.totals()
    print(json.dumps({
        "policy": policy,
        "workers": report.workers,
        "bytes": totals["output_bytes"],
        "bits_per_weight": totals["bits_per_weight"],
        "parameters": totals["parameters"],
        "timings": report.timings,
        "main_rss_mb": _vmhwm(),
        "worker_rss_mb": max(peaks) if peaks else None,
        "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / MB,
        "torch_imported": "torch" in sys.modules,
        "sqnr": report.sqnr_summary(),
    }))


def anchor_speed(src: Path) -> tuple[str, float]:
    """Single-core ``nanofmt.quantize`` speed (M weights/s) on the source's largest Linear-shaped tensor."""
    import nanofmt
    from nanofmt.converters.source import open_source

    with open_source(src) as source:
        t = max((t for t in source.tensors.values() if len(t.shape) == 2 and "embed" not in t.name), key=lambda t: t.numel)
        values = source.read(t.name).copy()
    scheme = nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        nanofmt.quantize(values, scheme, dtype="bf16" if values.dtype.name == "uint16" else None)
        best = min(best, time.perf_counter() - start)
    return f"{t.name} {list(t.shape)}", values.size / best / MB


def largest_tensor(src: Path) -> tuple[str, int]:
    from nanofmt.converters.source import open_source

    with open_source(src) as source:
        t = max(source.tensors.values(), key=lambda t: t.nbytes)
        return t.name, t.nbytes


def run_child(src: Path, dst: Path, policy: str, workers: int, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "NANOFMT_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, __file__, "--child", str(src), str(dst), policy, str(workers)], capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        sys.exit(f"conversion failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generate(folder: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float16).eval()
    messages = [{"role": "user", "content": "Explain what a neural network is in exactly 3 simple sentences."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=80, do_sample=False, repetition_penalty=1.08, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0][inputs["input_ids"].shape[-1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2-135m")
    parser.add_argument("--out", default="out/bench-convert")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time the default policy with")
    parser.add_argument("--no-generate", action="store_true")
    args = parser.parse_args()
    src, out = Path(args.model), Path(args.out)
    if not (src / "config.json").is_file():
        sys.exit(f"{src}: no model; build it with PY=.venv/bin/python bash ../shared/models/prepare.sh models")
    source_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    big_name, big_bytes = largest_tensor(src)
    budget = 1.5 * big_bytes / MB + 300
    anchor_tensor, anchor = anchor_speed(src)
    print(f"source: {src} ({source_bytes / MB:.1f} MB); largest tensor {big_name} {big_bytes / MB:.1f} MB -> RSS goal {budget:.0f} MB")
    print(f"anchor: nanofmt.quantize affine_dq 4b/g32/m6, one core, on {anchor_tensor}: {anchor:.2f} M weights/s")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start\n")

    runs = []
    counts = [int(w) for w in args.workers.split(",")]
    cache = out / "cache"  # the first run reads the architecture cold, later ones find it cached
    shutil.rmtree(cache, ignore_errors=True)
    for policy in POLICIES:
        for workers in counts if policy == "qkvfp16" else counts[-1:]:
            runs.append(run_child(src, out / f"{policy}-w{workers}", policy, workers, cache))
    int8 = next(r["bytes"] for r in runs if r["policy"] == "int8")
    print(f"{'':<29}{'size':-^30} {'streaming':-^38} {'peak RSS, MB':-^20}")
    print(
        f"{'policy':<8} {'workers':>7} {'MB':>7} {'/src':>6} {'/int8':>6} {'bpw':>6} {'wall s':>7} {'M w/s':>6} {'/anchor':>7} "
        f"{'M w/cpu-s':>9} {'total s':>7} {'arch s':>6} {'main':>6} {'worker':>6} {'child':>6}"
    )
    for r in runs:
        t = r["timings"]
        speed = r["parameters"] / t["stream_s"] / MB
        per_cpu = r["parameters"] / t["stream_cpu_s"] / MB
        worker = f"{r['worker_rss_mb']:.0f}" if r["worker_rss_mb"] else "-"
        print(
            f"{r['policy']:<8} {r['workers']:>7} {r['bytes'] / MB:>7.1f} {r['bytes'] / source_bytes:>6.3f} {r['bytes'] / int8:>6.3f} {r['bits_per_weight']:>6.3f} "
            f"{t['stream_s']:>7.1f} {speed:>6.1f} {speed / anchor:>7.2f} {per_cpu:>9.1f} {t['total_s']:>7.1f} {t['analyze_s']:>6.1f} "
            f"{r['main_rss_mb']:>6.0f} {worker:>6} {r['children_rss_mb']:>6.0f}"
        )
    print("(M w/cpu-s: weights per CPU-second of the converting process and its workers while streaming, robust to a busy machine;")
    print(" arch s: reading the architecture, in a torch + transformers child process unless cached (the first run is cold);")
    print(" RSS main: the converting process; worker: largest encoding worker; child: largest child process of any kind)")
    worst = max(max(r["main_rss_mb"], r["worker_rss_mb"] or 0) for r in runs)
    print(f"\npeak RSS of conversion processes {worst:.0f} MB vs goal {budget:.0f} MB: {'met' if worst <= budget else 'NOT met'}")
    arch = runs[0]["children_rss_mb"]
    print(f"architecture reader, cold run (torch + transformers on the meta device, a separate short-lived process): {arch:.0f} MB")
    for r in runs:
        if r["policy"] != "int8" and r["workers"] == counts[-1]:
            print(f"SQNR {r['policy']}: " + "; ".join(f"{k} min {v['min']:.1f} / median {v['median']:.1f} dB" for k, v in r["sqnr"].items()))
    if not args.no_generate:
        folder = out / f"qkvfp16-w{counts[-1]}"
        print(f"\n{folder} through transformers (trust_remote_code, fp16), greedy:\n  {generate(folder)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
