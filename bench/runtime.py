"""The Nano torch runtime against the bf16 source model, on SmolLM2-135M-Instruct (CPU).

Measures, for each model in its own fresh process (so resident-memory figures do not mix):
resident bytes after load and peak during generation (VmRSS / VmHWM above the process's
resident set once the libraries are imported), load time and the greedy output of a few chat
prompts; then decode tokens/s at batch 1 for all models in one process, in alternating rounds
(on a shared machine, separate runs minutes apart differ by more than the effect measured).
Every figure is also given as a ratio to the bf16 source model measured in the same run.

    PY=.venv/bin/python bash ../shared/models/prepare.sh models      # once: builds the source folders
    .venv/bin/python bench/runtime.py                                 # converts, measures, reports
    .venv/bin/python bench/runtime.py --source models/smollm2-135m-dither --policy qkvfp16 --tokens 64

Nano models load through ``nanofmt.loaders.load_model``: the code the exported folders ship, as
it is in this checkout (``trust_remote_code`` runs the same files; the tests cover that path).
Agreement is judged on the ``-dither`` folder (continuous weights, see prepare.sh). Timing uses
one thread by default (``--threads``): on a shared machine that is the stable figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Explain what a neural network is in exactly 3 simple sentences.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers greater than 10.",
]

CHILD = r"""
import json, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationMixin

def resident(key="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

# Everything that is not the model happens before the baseline: tokenizer, chat template,
# the architecture's and the runtime's code.
tok = AutoTokenizer.from_pretrained(args["path"])
texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in args["prompts"]]
inputs = [tok(t, return_tensors="pt") for t in texts]
with torch.device("meta"):
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args["source"]))
if args["nano"]:  # this checkout's runtime (a folder's own copy may be older than the code measured)
    from nanofmt.loaders import load_model
reset_peak()
base = resident()
t0 = time.perf_counter()
if args["nano"]:
    model = load_model(args["path"], dtype=torch.bfloat16, fused=args["fused"])
else:
    model = AutoModelForCausalLM.from_pretrained(args["path"], dtype=torch.bfloat16).eval()
load_s = time.perf_counter() - t0
loaded, load_peak = resident(), resident("VmHWM")
greedy = dict(do_sample=False, pad_token_id=tok.eos_token_id)
outputs = []
with torch.no_grad():
    model.generate(**inputs[0], max_new_tokens=2, **greedy)  # lazy imports; touches every weight once
    in_use = resident()
    reset_peak()
    for x in inputs:
        out = model.generate(**x, max_new_tokens=args["tokens"], min_new_tokens=args["tokens"], **greedy)
        new = out[0, x["input_ids"].shape[1]:].tolist()
        outputs.append({"ids": new, "text": tok.decode(new, skip_special_tokens=True)})
print(json.dumps({"base": base, "loaded": loaded, "load_peak": load_peak, "in_use": in_use, "run_peak": resident("VmHWM"),
                  "load_s": load_s, "outputs": outputs}))
"""


SPEED = r"""
import json, statistics, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained(args["source"])
text = tok.apply_chat_template([{"role": "user", "content": args["prompt"]}], tokenize=False, add_generation_prompt=True)
x = tok(text, return_tensors="pt")
from nanofmt.loaders import load_model
models = {}
for name, spec in args["models"].items():
    if spec["nano"]:
        models[name] = load_model(spec["path"], dtype=torch.bfloat16, fused=spec["fused"])
    else:
        models[name] = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=torch.bfloat16).eval()
greedy = dict(do_sample=False, pad_token_id=tok.eos_token_id)

def tok_s(model, n):
    t = time.perf_counter(); model.generate(**x, max_new_tokens=1, **greedy); prefill = time.perf_counter() - t
    t = time.perf_counter(); model.generate(**x, max_new_tokens=n, min_new_tokens=n, **greedy)
    return (n - 1) / max(time.perf_counter() - t - prefill, 1e-9)

speeds = {name: [] for name in models}
with torch.no_grad():
    for model in models.values():
        model.generate(**x, max_new_tokens=2, **greedy)  # warm-up
    for _ in range(args["rounds"]):  # alternate, so that the machine's load drifts over all alike
        for name, model in models.items():
            speeds[name].append(tok_s(model, args["models"][name]["tokens"]))
anchor = speeds[args["anchor"]]
print(json.dumps({name: {"tok_s": statistics.median(v), "vs_anchor": statistics.median(a / b for a, b in zip(v, anchor))} for name, v in speeds.items()}))
"""


def speeds(models: dict[str, dict], anchor: str, source: Path, *, threads: int, rounds: int) -> dict:
    args = {"models": models, "anchor": anchor, "source": str(source), "threads": threads, "rounds": rounds, "prompt": PROMPTS[0]}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", SPEED, json.dumps(args)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"timing failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def measure(path: Path, source: Path, *, nano: bool, fused: bool | None, threads: int, tokens: int) -> dict:
    args = {"path": str(path), "source": str(source), "nano": nano, "fused": fused, "threads": threads, "tokens": tokens, "prompts": PROMPTS}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"measuring {path} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def agreement(ours: list[dict], anchor: list[dict]) -> dict:
    """Greedy agreement with the anchor: identical outputs, and tokens before the first divergence."""
    same, prefix, total = 0, 0, 0
    for a, b in zip(ours, anchor, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"], strict=False)) if x != y), min(len(a["ids"]), len(b["ids"])))
        same += a["ids"] == b["ids"]
        prefix += n
        total += len(b["ids"])
    return {"identical": f"{same}/{len(anchor)}", "prefix_fraction": prefix / total}


def build(source: Path, policy: str, out: Path) -> tuple[Path, Path]:
    """The Nano folder for ``policy`` and its bf16-decoded twin (converted once, reused after)."""
    dst = out / f"{source.name}-nano-{policy}"
    if not (dst / "config.json").is_file():
        from nanofmt.converters import convert

        t = time.perf_counter()
        report = convert(source, dst, policy=policy)
        print(f"converted {source.name} with {policy}: {report.totals()['bits_per_weight']:.3f} bits/weight in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return dst, decoded_twin(dst, out)


def decoded_twin(nano: Path, out: Path) -> Path:
    """The bf16 plain copy of a Nano folder (made once): the runtime's exact target."""
    decoded = out / f"{nano.name}-decoded-bf16"
    if not (decoded / "config.json").is_file():
        from nanofmt.converters import dequantize_folder

        dequantize_folder(nano, decoded, dtype="bf16")
    return decoded


def row(name: str, m: dict, anchor: dict, packed: int, speed: dict) -> str:
    use, peak, a_use = m["in_use"] - m["base"], m["run_peak"] - m["base"], anchor["in_use"] - anchor["base"]
    return (
        f"{name:<24} {packed / 2**20:>8.1f} {(m['loaded'] - m['base']) / 2**20:>9.1f} {use / 2**20:>8.1f} {use / a_use:>6.2f}x "
        f"{peak / 2**20:>9.1f} {peak / use:>6.2f}x {m['load_s']:>7.2f} {speed['tok_s']:>7.1f} {speed['vs_anchor']:>6.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT / "models" / "smollm2-135m-dither")
    parser.add_argument("--policy", action="append", help="converter policy (repeatable; default: qkvfp16 and tiedq)")
    parser.add_argument("--nano", type=Path, action="append", default=[], help="an existing Nano folder to measure as well")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds over all models, alternating")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    if not (args.source / "config.json").is_file():
        sys.exit(f"{args.source} is missing: run `PY=.venv/bin/python bash ../shared/models/prepare.sh models` first")
    folders = [build(args.source, p, args.out) for p in (args.policy or ["qkvfp16", "tiedq"])] + [(n, decoded_twin(n, args.out)) for n in args.nano]

    def run(path: Path, nano: bool = False, fused: bool | None = None) -> dict:
        return measure(path, args.source, nano=nano, fused=fused, threads=args.threads, tokens=args.tokens)

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))

    anchor = run(args.source)
    results: dict[str, tuple[dict, int]] = {"bf16 source": (anchor, size(args.source))}
    timed = {"bf16 source": {"path": str(args.source), "nano": False, "fused": None, "tokens": args.tokens}}
    agreements = []
    for folder, decoded in folders:
        name = folder.name.rsplit("-nano-", 1)[-1]
        twin = run(decoded)
        results[f"{name} decoded (plain)"] = (twin, size(decoded))
        for label, fused in (("fused", None), ("chunked", False)):
            m = run(folder, nano=True, fused=fused)
            results[f"{name} {label}"] = (m, size(folder))
            agreements.append((f"{name} {label}", agreement(m["outputs"], anchor["outputs"]), agreement(m["outputs"], twin["outputs"])))
            # the chunked path decodes every weight for every token: fewer tokens keep the run short
            timed[f"{name} {label}"] = {"path": str(folder), "nano": True, "fused": fused, "tokens": args.tokens if fused is None else 8}
    speed = speeds(timed, "bf16 source", args.source, threads=args.threads, rounds=args.rounds)
    speed.update({k: {"tok_s": float("nan"), "vs_anchor": float("nan")} for k in results if k not in speed})

    print(f"\nNano runtime vs the bf16 source (transformers) on {args.source.name}: CPU, {args.threads} thread(s), batch 1, {args.tokens} new tokens, bf16 compute")
    print(f"{'model':<24} {'file MiB':>8} {'load MiB':>9} {'use MiB':>8} {'vs bf16':>7} {'peak MiB':>9} {'/use':>7} {'load s':>7} {'tok/s':>7} {'vs bf16':>7}")
    for name, (m, packed) in results.items():
        print(row(name, m, anchor, packed, speed[name]))
    print(
        "\nload = resident bytes added by from_pretrained; use = resident once a first generate has touched every weight\n"
        "(transformers maps a plain safetensors file and reads it lazily, so its load figure is not its footprint);\n"
        "peak = highest resident bytes while generating. All above the process's resident set after its imports.\n"
        "tok/s = decode tokens per second at batch 1 (median of alternating rounds in one process; 'vs bf16' the median of per-round ratios).\n"
        "'decoded (plain)' = the Nano weights decoded to bf16 and run by transformers: the runtime's own reference."
    )
    print("\npeak resident bytes while loading (VmHWM during from_pretrained, above the baseline) vs the bound packed + 10% + 200 MiB:")
    for name, (m, packed) in results.items():
        if "fused" in name or "chunked" in name:
            peak = m["load_peak"] - m["base"]
            print(f"  {name:<22} {peak / 2**20:>7.1f} MiB  (bound {(1.1 * packed + (200 << 20)) / 2**20:.0f} MiB, {peak / packed:.2f}x packed)")
    print("\ngreedy agreement            with the bf16 source                       with its decoded twin (runtime only)")
    for name, source_agree, twin_agree in agreements:
        print(f"{name:<27} {source_agree['identical']} identical, {source_agree['prefix_fraction']:>4.0%} before divergence     {twin_agree['identical']} identical, {twin_agree['prefix_fraction']:>4.0%} before divergence")
    for name, (m, _) in results.items():
        print(f"\n[{name}] {m['outputs'][0]['text'][:150]!r}")
    if args.json:
        args.json.write_text(json.dumps({k: {"packed": p, **m, **speed[k]} for k, (m, p) in results.items()}, indent=2))


if __name__ == "__main__":
    main()
