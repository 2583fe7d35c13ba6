"""Codec speed and weight quality, each against a baseline measured in the same run.

Speed, on one float32 N(0, 1) matrix (4096 x 4096; --quick: 1024 x 1024), the best of several
runs, each Nano run interleaved with a baseline run so that load on a shared machine hits both
alike (the best, not the median: on a busy machine only the fastest run measures the code):
  - pack / unpack of 4-bit codes against ``np.copyto`` of the same uint8 codes (memcpy);
  - unpack + dequantize to float32 against gguf-py's numpy Q4_0 ``dequantize`` (both into fresh
    arrays; also Nano into a reused ``out=`` array, which saves the page faults of 64 MiB);
  - quantize with the MSE search against gguf-py's numpy Q4_0 ``quantize``.

Quality, on the real fp32 weights of all-MiniLM-L6-v2 (build them with
``PY=.venv/bin/python bash ../shared/models/prepare.sh models``): SQNR = 10 log10(sum x^2 /
sum (x - x')^2) pooled over every 2-D weight except the position and token-type embeddings
(the 36 encoder linears, the pooler and the word embedding), and exact bits per weight from the
stored bytes, metadata included, for Nano schemes next to GGUF Q4_0/Q4_1/Q5_0/Q8_0 (gguf-py
quantize -> dequantize) and NF4 (QLoRA levels, blocks of 64, fp32 absmax as bitsandbytes stores it).

Usage: .venv/bin/python bench/codec.py [--quick] [--model models/minilm-l6]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import nanofmt
from nanofmt import Scheme
from nanofmt.bits import pack_rows, unpack_rows

DEFAULT = Scheme("affine_dq", bits=4, group_size=32, meta_bits=6)
NANO_SCHEMES = [
    Scheme("affine_dq", bits=3, group_size=32, meta_bits=4),
    Scheme("affine_dq", bits=3, group_size=32, meta_bits=6),
    Scheme("affine_dq", bits=4, group_size=32, meta_bits=4),
    DEFAULT,
    Scheme("affine_dq", bits=4, group_size=64, meta_bits=6),
    Scheme("affine", bits=4, group_size=32),
    Scheme("affine_dq", bits=8, group_size=32, meta_bits=4),
    Scheme("affine_dq", bits=8, group_size=32, meta_bits=6),
    Scheme("int8_row", bits=8),
]
GGUF_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q8_0"]
# The 16 NormalFloat-4 levels of QLoRA (Dettmers et al. 2023, appendix E; bitsandbytes' table).
NF4 = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
     -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
     0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0],
    np.float32,
)  # fmt: skip
GOALS = [(4.5, 22.5), (8.5, 45.5), (3.5, 16.0)]  # (max bits per weight, min SQNR dB)


def timed(fn: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best seconds of ``fn`` and of ``baseline``, run alternately after one warm-up each."""
    fn(), baseline()
    ours, theirs = [], []
    for _ in range(repeats):
        for f, into in ((fn, ours), (baseline, theirs)):
            start = time.perf_counter()
            f()
            into.append(time.perf_counter() - start)
    return min(ours), min(theirs)


def speed(rows: int, cols: int, repeats: int) -> list[tuple[str, float, str, float, float, float]]:
    """Rows of (what, seconds, baseline, baseline seconds, ratio goal, work units)."""
    from gguf import GGMLQuantizationType, quants

    q4_0 = GGMLQuantizationType.Q4_0
    x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    codes = np.random.default_rng(1).integers(0, 16, (rows, cols)).astype(np.uint8)
    packed = pack_rows(codes, 4)
    copy_dst = np.empty_like(codes)
    unpack_buf = np.empty(codes.size, np.uint8)

    def memcpy() -> None:
        np.copyto(copy_dst, codes)

    out = []
    t, b = timed(lambda: pack_rows(codes, 4), memcpy, repeats)
    out.append(("pack 4-bit codes", t, "np.copyto of the codes", b, 0.5, codes.nbytes))
    t, b = timed(lambda: unpack_rows(packed, 4, cols), memcpy, repeats)
    out.append(("unpack 4-bit codes", t, "np.copyto of the codes", b, 0.5, codes.nbytes))
    t, b = timed(lambda: unpack_rows(packed, 4, cols, buffer=unpack_buf), memcpy, repeats)
    out.append(("unpack 4-bit codes, reused buffer", t, "np.copyto of the codes", b, 0.5, codes.nbytes))
    qt = nanofmt.quantize(x, DEFAULT)
    g = quants.quantize(x, q4_0)
    t, b = timed(lambda: nanofmt.dequantize(qt, "f32"), lambda: quants.dequantize(g, q4_0), repeats)
    out.append((f"dequantize {DEFAULT.label()} -> f32", t, "gguf Q4_0 dequantize", b, 2.5, x.size))
    reused = np.empty_like(x)
    t, b = timed(lambda: nanofmt.dequantize(qt, "f32", out=reused), lambda: quants.dequantize(g, q4_0), repeats)
    out.append(("  the same into a reused out= array", t, "gguf Q4_0 dequantize", b, 2.5, x.size))
    qa = nanofmt.quantize(x, Scheme("affine", bits=4, group_size=32))
    t, b = timed(lambda: nanofmt.dequantize(qa, "f32"), lambda: quants.dequantize(g, q4_0), repeats)
    out.append(("dequantize affine:4b/g32 -> f32", t, "gguf Q4_0 dequantize", b, 2.5, x.size))
    few = max(1, repeats // 2)
    t, b = timed(lambda: nanofmt.quantize(x, DEFAULT), lambda: quants.quantize(x, q4_0), few)
    out.append((f"quantize {DEFAULT.label()} (MSE search)", t, "gguf Q4_0 quantize", b, 1.0, x.size))
    return out


def print_speed(rows: int, cols: int, results: list[tuple[str, float, str, float, float, float]]) -> None:
    print(
        f"\nSpeed: {rows} x {cols} float32 N(0,1), numpy {np.__version__}, one thread; best of several runs, interleaved with the baseline"
    )
    print(f"{'operation':40} {'ms':>8} {'baseline':26} {'ms':>8} {'speed vs baseline':>18} {'goal':>7}")
    for what, t, base, b, goal, _ in results:
        ratio = b / t
        verdict = "met" if ratio >= goal else f"short {goal / ratio:.1f}x"
        print(f"{what:40} {t * 1e3:8.2f} {base:26} {b * 1e3:8.2f} {ratio:17.2f}x {goal:6.2f}x  {verdict}")
    memcpy = [b for _, _, base, b, _, _ in results if base.startswith("np.copyto")]
    if memcpy:
        n = results[0][5]
        print(f"(memcpy of {n / 2**20:.0f} MiB of codes: {n / min(memcpy) / 1e9:.1f} GB/s; pack/unpack rates are in those code bytes)")


def weights(model: Path, quick: bool) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    skip = ("embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight")
    found = {
        k: np.asarray(v, np.float32)
        for k, v in load_file(model / "model.safetensors").items()
        if v.ndim == 2 and k.endswith(".weight") and k not in skip
    }
    if quick:  # every tensor, but only the first 2048 rows of the word embedding
        found["embeddings.word_embeddings.weight"] = found["embeddings.word_embeddings.weight"][:2048]
    return found


def nf4(x: np.ndarray, block: int = 64) -> tuple[np.ndarray, int]:
    """NF4 quantize -> dequantize with an fp32 absmax per block; returns (values, stored bytes)."""
    blocks = x.reshape(-1, block)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    normed = blocks / np.where(absmax > 0, absmax, 1)
    idx = np.searchsorted((NF4[1:] + NF4[:-1]) / 2, normed)  # nearest level
    return (NF4[idx] * absmax).reshape(x.shape), blocks.shape[0] * (block // 2 + 4)


def gguf_roundtrip(name: str) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[name]

    def run(x: np.ndarray) -> tuple[np.ndarray, int]:
        data = quants.quantize(x, qtype)
        return quants.dequantize(data, qtype), data.nbytes

    return run


def nano_roundtrip(scheme: Scheme) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    def run(x: np.ndarray) -> tuple[np.ndarray, int]:
        qt = nanofmt.quantize(x, scheme)
        return np.asarray(nanofmt.dequantize(qt, "f32")), qt.nbytes

    return run


def quality(tensors: dict[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """(scheme, bits per weight, SQNR dB) pooled over ``tensors``."""
    methods: list[tuple[str, Callable[[np.ndarray], tuple[np.ndarray, int]]]] = [(f"GGUF {t}", gguf_roundtrip(t)) for t in GGUF_TYPES]
    methods.append(("NF4 g64, fp32 absmax", nf4))
    methods += [(f"Nano {s.label()}", nano_roundtrip(s)) for s in NANO_SCHEMES]
    signal = sum(float(np.square(x, dtype=np.float64).sum()) for x in tensors.values())
    count = sum(x.size for x in tensors.values())
    rows = []
    for label, fn in methods:
        noise, stored = 0.0, 0
        for x in tensors.values():
            y, nbytes = fn(x)
            noise += float(np.square(y.astype(np.float64) - x).sum())
            stored += nbytes
        rows.append((label, 8 * stored / count, 10 * np.log10(signal / noise)))
    return rows


def print_quality(tensors: dict[str, np.ndarray], rows: list[tuple[str, float, float]]) -> None:
    count = sum(x.size for x in tensors.values())
    print(
        f"\nWeight quality: all-MiniLM-L6-v2 fp32, {len(tensors)} tensors (every 2-D weight but the position/token-type embeddings), {count:,} weights"
    )
    print(f"{'scheme':28} {'bits/weight':>11} {'SQNR dB':>8}")
    for label, bpw, sqnr in sorted(rows, key=lambda r: r[1]):
        print(f"{label:28} {bpw:11.4f} {sqnr:8.2f}")
    print("\nGoals (best Nano scheme within the bit budget on these shapes):")
    for budget, target in GOALS:
        fits = [r for r in rows if r[0].startswith("Nano") and r[1] <= budget + 1e-9]
        if not fits:
            print(f"  <= {budget} bpw, >= {target} dB: no Nano scheme fits")
            continue
        label, bpw, sqnr = max(fits, key=lambda r: r[2])
        verdict = "met" if sqnr >= target else f"short by {target - sqnr:.2f} dB"
        print(f"  <= {budget} bpw, >= {target} dB: {label} {sqnr:.2f} dB at {bpw:.4f} bpw: {verdict}")
    default = next(r for r in rows if r[0] == f"Nano {DEFAULT.label()}")
    print(
        f"  default {DEFAULT.label()}: {default[2]:.2f} dB at {default[1]:.4f} bpw here (exactly 4.5 on rows of a multiple of 256 columns)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small matrix, few repeats, part of the word embedding")
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "minilm-l6")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args(argv)
    rows, cols, repeats = (1024, 1024, 3) if args.quick else (4096, 4096, 7)
    if not args.skip_speed:
        print_speed(rows, cols, speed(rows, cols, repeats))
    if args.skip_quality:
        return 0
    if not (args.model / "model.safetensors").exists():
        print(
            f"\n(no {args.model}/model.safetensors: build it with PY=.venv/bin/python bash ../shared/models/prepare.sh models)",
            file=sys.stderr,
        )
        return 0
    tensors = weights(args.model, args.quick)
    print_quality(tensors, quality(tensors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
