"""Quality per bit: Nano schemes and automatic bit allocation against GGUF, HQQ, NF4 and int8 at equal size.

Every method quantizes the same tensors (every Linear weight and the token embedding; a tied LM
head is that same table; norms and biases stay) and is loaded, quantize -> dequantize, into the
same float32 transformers model. Nano rows use the numpy reference codec (``nanofmt.quantize``
then ``nanofmt.dequantize(..., "f32")``, "reference decode": the runtime decodes bit-exactly the
same values); the anchors call their own libraries (bench/quality_anchors.py says which).

SmolLM2-135M-Instruct, ``-dither`` folder (continuous weights; see ../shared/models/prepare.sh),
against the unquantized model on a fixed slice of Python's ``pydoc_data.topics`` (sorted keys from
the first; 4096 tokens, --quick 1024, in windows of 512): mean KL(reference || quantized) of the
next-token distributions over all positions (the primary metric), perplexity, top-1 agreement,
and greedy agreement (the fraction of identical tokens in 32-token greedy continuations of
bench/runtime.py's four chat prompts). all-MiniLM-L6-v2 (genuine fp32): cosine similarity of
mean-pooled sentence embeddings of corpus paragraphs, mean and worst. Both: weight SQNR pooled
over the quantized tensors, and exact bits per weight from the stored bytes (metadata and
embedding included, a tied head counted once).

"Nano auto @X" rows are converters/allocate.py over its default menu. "calibrated": each tensor's
squared error weighted by the diagonal Fisher information of the next-token distribution,
measured on a different slice of the corpus (sorted keys from the last; 8192 tokens, --quick 2048)
with labels sampled from the model, so that half the sum predicts the mean KL ("pred KL").
"data-free": relative squared error times the llama.cpp-style importance heuristic. "weight SSE":
plain squared error, which maximises the pooled weight SQNR. MiniLM has no next-token head: no
calibrated rows there.

Usage: .venv/bin/python bench/quality.py [--quick | --full] [--models smollm2,minilm] [--cache DIR] [--report-only]
--cache keeps the anchors' decoded weights between runs (HQQ takes minutes on CPU); --report-only
prints the report and the plot again from the last run's bench/out/quality.json. Writes
bench/out/quality_kl_vs_bpw.png (log-scale KL against bits per weight, every method).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from quality_anchors import Anchor, anchors
from runtime import PROMPTS  # bench/runtime.py

import nanofmt
from nanofmt import Scheme
from nanofmt.converters.allocate import (
    CANDIDATE_SCHEMES,
    Allocation,
    Candidate,
    allocate,
    estimate_menu,
    fits,
    heuristic_importance,
    runs_fused,
    with_transform,
)
from nanofmt.converters.calibrate import measure as calibrate
from nanofmt.converters.gptq import Factor, gptq_quantize, prepare, rotate_gram
from nanofmt.transforms import default_signs

ROOT = Path(__file__).resolve().parents[1]
WINDOW, GEN_TOKENS = 512, 32
DQ = {b: Scheme("affine_dq", bits=b, group_size=32, meta_bits=6) for b in (3, 4, 8)}
H64 = {b: Scheme("affine_dq", bits=b, group_size=32, meta_bits=6, transform="hadamard", transform_block=64) for b in (3, 4)}
# what `convert --transform hadamard` offers the allocator: every menu scheme with and without the rotation
MENU = with_transform(CANDIDATE_SCHEMES, "hadamard", 64)
QKV = re.compile(r"\.(q_proj|k_proj|v_proj|query|key|value)\.weight$")
TARGETS: list[tuple[str, float | None]] = [("3.5", 3.5), ("4.5", 4.5), ("qkvfp16 size", None), ("8.5", 8.5)]
Decoded = dict[str, tuple[np.ndarray, int]]
Params = dict[str, torch.nn.Parameter]


@dataclass(frozen=True)
class Settings:
    tokens: int
    calib_tokens: int
    sentences: int
    max_rows: int


MODES = {"full": Settings(4096, 8192, 256, 256), "quick": Settings(1024, 2048, 64, 128)}


@dataclass
class Row:
    label: str
    family: str  # nano, auto, gptq, anchor
    runs: str
    bpw: float
    sqnr: float
    metrics: dict[str, float] = field(default_factory=dict)
    sample: str = ""  # greedy continuation of the first prompt
    mix: str = ""  # auto rows: bits per weight by tensor kind


# --- text and models ----------------------------------------------------------------------


def corpus(tok: object, tokens: int, *, from_end: bool = False) -> tuple[list[int], set[str]]:
    """The first ``tokens`` tokens of the topics in sorted key order (or from the last key), and the keys used."""
    from pydoc_data import topics

    text, ids, keys = "", [], set()
    for k in sorted(topics.topics, reverse=from_end):
        text += topics.topics[k] + "\n\n"
        keys.add(k)
        if len(text) > 3 * tokens and len(ids := tok(text).input_ids) >= tokens:  # type: ignore[operator]
            break
    return ids[:tokens], keys


def paragraphs(count: int) -> list[str]:
    from pydoc_data import topics

    found = [p.strip() for k in sorted(topics.topics) for p in topics.topics[k].split("\n\n")]
    return [p for p in found if 80 <= len(p) <= 600][:count]


def targets(model: torch.nn.Module) -> Params:
    """What Nano quantizes: every Linear weight and the token embedding, a shared table once."""
    emb = model.get_input_embeddings()
    out: Params = {}
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Linear) or module is emb) and all(p is not module.weight for p in out.values()):
            out[f"{name}.weight"] = module.weight
    return out


def load(values: dict[str, np.ndarray], params: Params) -> None:
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(values[name]))


def logprobs(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    return model(window[None]).logits[0].float().log_softmax(-1)


def lm_compare(model: torch.nn.Module, windows: list[torch.Tensor], ref: list[torch.Tensor]) -> dict[str, float]:
    """Mean KL(ref || model), perplexity and top-1 agreement over every position of ``windows``."""
    kl = nll = top1 = 0.0
    with torch.inference_mode():
        for w, lp_ref in zip(windows, ref, strict=True):
            lp = logprobs(model, w)
            kl += float((lp_ref.exp() * (lp_ref - lp)).sum())
            top1 += float((lp.argmax(-1) == lp_ref.argmax(-1)).sum())
            nll -= float(lp[:-1].gather(1, w[1:, None]).sum())
    n = len(windows) * WINDOW
    return {"kl": kl / n, "ppl": float(np.exp(nll / (n - len(windows)))), "top1": top1 / n}


def greedy(model: torch.nn.Module, prompts: list[torch.Tensor]) -> list[list[int]]:
    with torch.inference_mode():
        return [
            model.generate(p, max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS, do_sample=False)[0, p.shape[1] :].tolist()  # type: ignore[operator]
            for p in prompts
        ]


# --- methods ------------------------------------------------------------------------------


class NanoCache:
    """Nano quantized tensors by (name, scheme): each quantized once, decoded on demand."""

    def __init__(self, originals: dict[str, np.ndarray]) -> None:
        self.originals = originals
        self.packed: dict[tuple[str, Scheme], nanofmt.QuantizedTensor] = {}

        self.gptq: dict[tuple[str, Scheme], nanofmt.QuantizedTensor] = {}
        self.factors: dict[tuple[str, int | None], Factor] = {}

    def decode(self, choices: dict[str, Scheme], grams: dict[str, np.ndarray] | None = None) -> Decoded:
        """Decoded values and stored bytes; tensors with an entry in ``grams`` are encoded by GPTQ."""
        out = {}
        for name, scheme in choices.items():
            if grams is not None and name in grams and not scheme.is_passthrough:
                qt = self.gptq.get((name, scheme))
                if qt is None:
                    key = (name, scheme.transform_block)
                    if key not in self.factors:  # act order, damping 0.01; a rotated scheme sees the rotated Gram
                        gram = grams[name]
                        if scheme.transform_block:
                            gram = rotate_gram(gram, scheme.transform_block, default_signs(gram.shape[0], 0))
                        self.factors[key] = prepare(gram)
                    qt = self.gptq[name, scheme] = gptq_quantize(self.originals[name], scheme, self.factors[key])
            else:
                qt = self.packed.get((name, scheme))
                if qt is None:
                    qt = self.packed[name, scheme] = nanofmt.quantize(self.originals[name], scheme)
            out[name] = (np.asarray(nanofmt.dequantize(qt, "f32")), qt.nbytes)
        return out


def anchor_values(anchor: Anchor, originals: dict[str, np.ndarray], cache: Path | None) -> Decoded:
    path = cache / (re.sub(r"[^A-Za-z0-9]+", "_", anchor.label) + ".npz") if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return {n: (z[n], int(z[n + ":bytes"])) for n in originals}
    out = {n: anchor.fn(x) for n, x in originals.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{n: v for n, (v, _) in out.items()}, **{n + ":bytes": np.array(b) for n, (_, b) in out.items()})
    return out


def error_tables(
    originals: dict[str, np.ndarray], fisher_diag: dict[str, np.ndarray] | None, max_rows: int
) -> dict[str, dict[tuple[str, Scheme], float]]:
    """Per proxy, per (tensor, menu scheme): converters/allocate.py's predicted error."""
    tables: dict[str, dict[tuple[str, Scheme], float]] = {"calibrated": {}, "data-free": {}, "weight SSE": {}}
    for name, x in originals.items():
        offered = [s for s in MENU if fits(s, x.shape)]  # what the allocator offers this tensor
        for s, e in estimate_menu(x, offered, weights=None if fisher_diag is None else fisher_diag[name], max_rows=max_rows).items():
            tables["data-free"][name, s], tables["weight SSE"][name, s] = e["relative"], e["sse"]
            if "weighted" in e:
                tables["calibrated"][name, s] = 0.5 * e["weighted"]  # second order: KL ~ 0.5 dw' F dw
    return {k: v for k, v in tables.items() if v}


def kind(name: str) -> str:
    return re.sub(r"^.*?\.(layers?|h|blocks?)\.\d+\.", "", name).removesuffix(".weight")


def mix(plan: Allocation, originals: dict[str, np.ndarray]) -> str:
    bits: dict[str, list[float]] = {}
    for name, o in plan.options.items():
        b = bits.setdefault(kind(name), [0.0, 0.0])
        b[0], b[1] = b[0] + 8 * o.nbytes, b[1] + originals[name].size
    return ", ".join(f"{k} {b / n:.2f}" for k, (b, n) in bits.items())


def measure(
    label: str,
    family: str,
    runs: str,
    values: Decoded,
    originals: dict[str, np.ndarray],
    params: Params,
    evaluate: Callable[[], tuple[dict[str, float], str]],
) -> Row:
    signal = sum(float(np.square(x, dtype=np.float64).sum()) for x in originals.values())
    noise = sum(float(np.square(values[n][0].astype(np.float64) - x).sum()) for n, x in originals.items())
    bpw = 8 * sum(b for _, b in values.values()) / sum(x.size for x in originals.values())
    load({n: v for n, (v, _) in values.items()}, params)
    start = time.perf_counter()
    metrics, sample = evaluate()
    print(f"  {label:40} {bpw:7.4f} bpw  evaluated in {time.perf_counter() - start:4.0f} s", file=sys.stderr)
    return Row(label, family, runs, bpw, 10 * np.log10(signal / noise), metrics, sample)


def methods(
    model_name: str,
    originals: dict[str, np.ndarray],
    params: Params,
    evaluate: Callable[[], tuple[dict[str, float], str]],
    fisher_diag: dict[str, np.ndarray] | None,
    importance: Callable[[str], float],
    settings: Settings,
    cache: Path | None,
    grams: dict[str, np.ndarray] | None = None,
) -> list[Row]:
    """Every row of one model's table, measured in turn on the same model object.

    ``importance`` is the data-free proxy's per-tensor multiplier; ``fisher_diag`` enables the calibrated rows.
    """
    nano, rows = NanoCache(originals), []
    ref = "Nano reference decode"

    def run(label: str, family: str, runs: str, values: Decoded) -> Row:
        rows.append(measure(label, family, runs, values, originals, params, evaluate))
        return rows[-1]

    fixed = {
        f"Nano tiedq ({DQ[4].label()})": dict.fromkeys(originals, DQ[4]),
        f"Nano qkvfp16 (q/k/v f16, {DQ[4].label()})": {n: Scheme("f16") if QKV.search(n) else DQ[4] for n in originals},
        f"Nano {DQ[3].label()}": dict.fromkeys(originals, DQ[3]),
        f"Nano {DQ[8].label()}": dict.fromkeys(originals, DQ[8]),
        **{f"Nano {H64[b].label()}": {n: H64[b] if fits(H64[b], x.shape) else DQ[b] for n, x in originals.items()} for b in (4, 3)},
    }
    for label, choices in fixed.items():
        run(label, "nano", ref, nano.decode(choices))
    qkv_bits = 8 * sum(b for _, b in nano.decode(fixed[next(k for k in fixed if "qkvfp16" in k)]).values())
    print(f"{model_name}: measuring each tensor's error under {len(MENU)} schemes", file=sys.stderr)
    tables = error_tables(originals, fisher_diag, settings.max_rows)
    for proxy, table in tables.items():
        for tag, bpw in TARGETS:
            budget = qkv_bits if bpw is None else bpw * sum(x.size for x in originals.values())
            imp = importance if proxy == "data-free" else (lambda n: 1.0)
            plan = allocate(
                [Candidate(n, x.shape, imp(n)) for n, x in originals.items()], CANDIDATE_SCHEMES, lambda c, s, t=table: t[c.name, s], budget
            )
            row = run(f"Nano auto @{tag} ({proxy})", "auto", ref, nano.decode(plan.choices))
            row.mix = mix(plan, originals)
            if proxy == "calibrated":
                row.metrics["pred_kl"] = plan.predicted_error
    # the menu with the hadamard rotation, under the sharpest proxy this model has
    proxy = "calibrated" if "calibrated" in tables else "weight SSE"
    for tag, bpw in (("3.5", 3.5), ("4.5", 4.5)):
        plan = rotated_plan(originals, tables[proxy], bpw)
        row = run(f"Nano auto @{tag} ({proxy}, +h64 menu)", "auto", ref, nano.decode(plan.choices))
        row.mix = mix(plan, originals)
    if grams is not None and "calibrated" in tables:
        gptq_rows(nano, run, originals, tables["calibrated"], grams)
    for anchor in anchors():
        start = time.perf_counter()
        values = anchor_values(anchor, originals, cache)
        print(f"  {anchor.label}: quantized in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        run(anchor.label, "anchor", anchor.runs, values)
    return rows


def rotated_plan(originals: dict[str, np.ndarray], table: dict[tuple[str, Scheme], float], bpw: float, *, fused: bool = False) -> Allocation:
    """The allocation over MENU (schemes with and without the hadamard rotation) at ``bpw``;
    ``fused``: only schemes the runtime multiplies on fused kernels (``convert --menu fused``)."""
    tensors = [Candidate(n, x.shape) for n, x in originals.items()]
    allowed = runs_fused if fused else (lambda scheme, shape: True)
    return allocate(tensors, MENU, lambda c, s: table[c.name, s], bpw * sum(x.size for x in originals.values()), allowed=allowed)


def gptq_rows(
    nano: NanoCache,
    run: Callable[[str, str, str, Decoded], Row],
    originals: dict[str, np.ndarray],
    calibrated: dict[tuple[str, Scheme], float],
    grams: dict[str, np.ndarray],
) -> None:
    """GPTQ encoding (converters/gptq.py) against the calibration slice's input Grams.

    Each setting twice: the tied embedding by GPTQ against the final hidden states (its head
    role) and by rounding to nearest (its lookup role). Allocations are the calibrated ones
    (their error table is rounding to nearest's).
    """
    emb = next(n for n in originals if "embed" in n)
    head_rtn = {n: g for n, g in grams.items() if n != emb}
    runs = "GPTQ (act order, static groups) + reference decode"
    settings: list[tuple[str, dict[str, Scheme]]] = [(f"{DQ[b].label()}", dict.fromkeys(originals, DQ[b])) for b in (4, 3)]
    for tag, bpw in (("4.5", 4.5), ("3.5", 3.5)):
        plan = allocate(
            [Candidate(n, x.shape) for n, x in originals.items()],
            CANDIDATE_SCHEMES,
            lambda c, s: calibrated[c.name, s],
            bpw * sum(x.size for x in originals.values()),
        )
        settings.append((f"auto @{tag} (calibrated)", plan.choices))
    settings.append((H64[4].label(), {n: H64[4] if fits(H64[4], x.shape) else DQ[4] for n, x in originals.items()}))
    settings += [(f"auto @{tag} (calibrated, +h64 menu)", rotated_plan(originals, calibrated, bpw).choices) for tag, bpw in (("4.5", 4.5), ("3.5", 3.5))]
    settings += [(f"auto @{tag} (calibrated, +h64 menu, fused only)", rotated_plan(originals, calibrated, bpw, fused=True).choices) for tag, bpw in (("4.5", 4.5), ("3.5", 3.5))]
    for label, choices in settings:
        # the embedding's lookup-role variant only where it was asked: the plain uniform and auto rows
        variants = (("GPTQ", grams), ("GPTQ, emb RTN", head_rtn)) if "h64" not in label else (("GPTQ", grams),)
        for suffix, table in variants:
            start = time.perf_counter()
            values = nano.decode(choices, table)
            print(f"  {label} {suffix}: encoded in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            run(f"Nano {label} {suffix}", "gptq", runs, values)


# --- the two models -----------------------------------------------------------------------


def smollm(path: Path, settings: Settings, cache: Path | None) -> tuple[list[Row], str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    params = targets(model)
    originals = {n: p.detach().numpy().copy() for n, p in params.items()}
    (ids, keys), (calib_ids, calib_keys) = corpus(tok, settings.tokens), corpus(tok, settings.calib_tokens, from_end=True)
    assert not keys & calib_keys, "calibration text must not overlap the evaluation text"
    windows = [torch.tensor(c) for c in np.array_split(ids, settings.tokens // WINDOW)]
    calib = [torch.tensor(c) for c in np.array_split(calib_ids, settings.calib_tokens // WINDOW)]
    chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    prompts = [tok(c, return_tensors="pt").input_ids for c in chats]
    with torch.inference_mode():
        ref = [logprobs(model, w) for w in windows]
    ref_ppl = lm_compare(model, windows, ref)["ppl"]
    ref_gen = greedy(model, prompts)
    start = time.perf_counter()
    calibration = calibrate(model, calib, fisher=True)  # converters/calibrate.py: Fisher diagonal and input Grams
    fisher_diag = dict(calibration.fisher or {})
    print(f"Fisher and Grams on {settings.calib_tokens} calibration tokens in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    def evaluate() -> tuple[dict[str, float], str]:
        gen = greedy(model, prompts)
        same = np.mean([np.mean(np.equal(a, b)) for a, b in zip(gen, ref_gen, strict=True)])
        return {**lm_compare(model, windows, ref), "greedy": float(same)}, tok.decode(gen[0], skip_special_tokens=True)

    cfg = model.config
    groups = cfg.num_attention_heads // cfg.num_key_value_heads

    def importance(name: str) -> float:
        return heuristic_importance(name, cfg.num_hidden_layers, tied_head=cfg.tie_word_embeddings, kv_groups=groups)

    rows = methods("SmolLM2", originals, params, evaluate, fisher_diag, importance, settings, cache, dict(calibration.grams))
    header = (
        f"SmolLM2-135M-Instruct (-dither): {sum(x.size for x in originals.values()):,} weights in {len(originals)} tensors "
        f"(every Linear weight and the tied embedding/head); {settings.tokens} tokens of pydoc_data.topics in windows of {WINDOW}; "
        f"reference: unquantized float32, perplexity {ref_ppl:.3f}\n  reference greedy answer to {PROMPTS[0]!r}: "
        f"{tok.decode(ref_gen[0], skip_special_tokens=True)!r}"
    )
    return rows, header


def minilm(path: Path, settings: Settings, cache: Path | None) -> tuple[list[Row], str]:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    params = targets(model)
    originals = {n: p.detach().numpy().copy() for n, p in params.items()}
    batches = [
        tok(paragraphs(settings.sentences)[i : i + 32], padding=True, truncation=True, return_tensors="pt")
        for i in range(0, settings.sentences, 32)
    ]

    def embed() -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for b in batches:
                mask = b["attention_mask"][..., None].float()
                out.append(torch.nn.functional.normalize((model(**b).last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    ref = embed()

    def evaluate() -> tuple[dict[str, float], str]:
        cos = (embed() * ref).sum(-1)
        return {"cos": float(cos.mean()), "cos_min": float(cos.min())}, ""

    n_layers = model.config.num_hidden_layers
    rows = methods(
        "MiniLM", originals, params, evaluate, None, lambda n: heuristic_importance(n, n_layers, tied_head=False), settings, cache
    )
    header = (
        f"all-MiniLM-L6-v2: {sum(x.size for x in originals.values()):,} weights in {len(originals)} tensors (every Linear weight, "
        f"the pooler's included, and the word embedding); {len(ref)} corpus paragraphs, mean-pooled normalized embeddings"
    )
    return rows, header


# --- report -------------------------------------------------------------------------------


def table(rows: list[Row], lm: bool) -> list[str]:
    q4 = next((r.metrics.get("kl") for r in rows if r.label == "GGUF Q4_0"), None)
    if lm:
        head = f"{'method':44} {'bpw':>7} {'SQNR dB':>7} {'mean KL':>9} {'xQ4_0':>6} {'pred KL':>8} {'ppl':>8} {'top-1':>6} {'greedy':>6}  what ran"
    else:
        head = f"{'method':44} {'bpw':>7} {'SQNR dB':>7} {'cos mean':>9} {'cos min':>8}  what ran"
    lines = [head]
    for r in sorted(rows, key=lambda r: r.bpw):
        m = r.metrics
        if lm:
            pred = f"{m['pred_kl']:8.4f}" if "pred_kl" in m else f"{'':8}"
            ratio = f"{m['kl'] / q4:6.2f}" if q4 else f"{'':6}"
            lines.append(
                f"{r.label:44} {r.bpw:7.4f} {r.sqnr:7.2f} {m['kl']:9.5f} {ratio} {pred} {m['ppl']:8.3f} {m['top1']:6.3f} {m['greedy']:6.3f}  {r.runs}"
            )
        else:
            lines.append(f"{r.label:44} {r.bpw:7.4f} {r.sqnr:7.2f} {m['cos']:9.5f} {m['cos_min']:8.5f}  {r.runs}")
    lines += [f"  {r.label} bits per weight by tensor: {r.mix}" for r in rows if r.mix]
    return lines


def best(rows: list[Row], budget: float, key: Callable[[Row], float], family: tuple[str, ...] = ("nano", "auto", "gptq")) -> Row | None:
    fits = [r for r in rows if r.family in family and r.bpw <= budget + 1e-9]
    return min(fits, key=key) if fits else None


def verdict(ok: bool, what: str) -> str:
    return f"{what}: {'met' if ok else 'SHORT'}"


def goals(lm: list[Row] | None, enc: list[Row] | None) -> list[str]:
    """The issue's goals, each with the row that answers it and the ratio."""
    out = []
    by = {r.label: r for r in lm or []}
    kl = lambda r: r.metrics["kl"]  # noqa: E731
    if lm:
        r, q4, hqq = best(lm, 4.5, kl), by["GGUF Q4_0"], by["HQQ 4-bit g64"]
        if r:
            a, b = kl(r) / kl(q4), kl(r) / kl(hqq)
            out.append(f"<= 4.5 bpw: {r.label} at {r.bpw:.4f} bpw, mean KL {kl(r):.5f}; greedy answer: {r.sample!r}")
            out.append("    " + verdict(a <= 0.5, f"{a:.2f}x GGUF Q4_0's {kl(q4):.5f} (goal <= 0.5x)"))
            out.append("    " + verdict(b <= 0.7, f"{b:.2f}x HQQ 4-bit g64's {kl(hqq):.5f} (goal <= 0.7x)"))
        qkv = next(r for r in lm if r.label.startswith("Nano qkvfp16"))
        autos = [r for r in lm if "@qkvfp16 size" in r.label]
        if autos:
            a_best = min(autos, key=kl)
            out.append(
                verdict(
                    kl(a_best) < kl(qkv),
                    f"qkvfp16 size ({qkv.bpw:.4f} bpw): {a_best.label} KL {kl(a_best):.5f} = {kl(a_best) / kl(qkv):.2f}x qkvfp16's {kl(qkv):.5f} (goal < 1x)",
                )
            )
        r = best(lm, 8.5, kl)
        if r:
            i8, q8 = by["int8 per row"], by["GGUF Q8_0"]
            out.append(f"<= 8.5 bpw: {r.label} at {r.bpw:.4f} bpw, mean KL {kl(r):.6f}")
            out.append("    " + verdict(kl(r) <= kl(i8), f"{kl(r) / kl(i8):.2f}x int8 per row's {kl(i8):.6f} (goal <= 1x)"))
            out.append("    " + verdict(kl(r) <= kl(q8), f"{kl(r) / kl(q8):.2f}x GGUF Q8_0's {kl(q8):.6f} (goal <= 1x)"))
        r = best(lm, 3.5, kl)
        if r:
            out.append(
                f"<= 3.5 bpw: {r.label} at {r.bpw:.4f} bpw: mean KL {kl(r):.4f}, top-1 {r.metrics['top1']:.3f}, greedy agreement {r.metrics['greedy']:.3f}"
            )
            out.append(f"    its greedy answer to {PROMPTS[0]!r}: {r.sample!r}")
    if enc:
        for budget, target in ((4.5, 22.5), (3.5, 16.0)):
            r = best(enc, budget, lambda r: -r.sqnr)
            if r:
                out.append(
                    verdict(
                        r.sqnr >= target, f"MiniLM <= {budget} bpw: {r.label} at {r.bpw:.4f} bpw, SQNR {r.sqnr:.2f} dB (goal >= {target})"
                    )
                )
    return out


def plot(lm: list[Row] | None, enc: list[Row] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (rows, m, t)
        for rows, m, t in (
            (lm, "kl", "SmolLM2-135M (-dither): mean KL vs the unquantized model"),
            (enc, "cos", "all-MiniLM-L6-v2: 1 - mean cosine of embeddings"),
        )
        if rows
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 6.5), squeeze=False)
    proxies = {"calibrated": "tab:red", "data-free": "tab:orange", "weight SSE": "tab:purple"}
    for ax, (rows, metric, title) in zip(axes[0], panels, strict=True):
        value = (lambda r: r.metrics["kl"]) if metric == "kl" else (lambda r: max(1 - r.metrics["cos"], 1e-9))
        for proxy, color in proxies.items():
            autos = sorted((r for r in rows if r.family == "auto" and proxy in r.label), key=lambda r: r.bpw)
            if autos:
                ax.plot([r.bpw for r in autos], [value(r) for r in autos], "-*", color=color, markersize=9, label=f"Nano auto ({proxy})")
        for r in (r for r in rows if r.family == "nano"):
            ax.plot(r.bpw, value(r), "o", color="tab:blue")
            ax.annotate(
                r.label.removeprefix("Nano ").split(" (")[0], (r.bpw, value(r)), fontsize=8, xytext=(5, 3), textcoords="offset points"
            )
        for r, marker in zip((r for r in rows if r.family == "anchor"), "s^vDPX<>h", strict=False):
            ax.plot(r.bpw, value(r), marker, color="dimgray", markerfacecolor="none", markersize=8, label=r.label)
        for r in (r for r in rows if r.family == "gptq" and "emb RTN" not in r.label):
            ax.plot(r.bpw, value(r), "x", color="tab:green", markersize=9)
        ax.plot([], [], "x", color="tab:green", label="Nano GPTQ")
        ax.plot([], [], "o", color="tab:blue", label="Nano fixed scheme")
        ax.set(
            xlabel="bits per weight (all metadata, embedding included)",
            ylabel="mean KL (nats/token)" if metric == "kl" else "1 - cosine",
            yscale="log",
            title=title,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="1024 tokens, 2048 calibration tokens, 64 paragraphs, errors from 128 rows per tensor"
    )
    mode.add_argument("--full", action="store_true", help="4096 tokens, 8192 calibration tokens, 256 paragraphs, 256 rows (the default)")
    parser.add_argument("--models", default="smollm2,minilm", help="comma-separated: smollm2, minilm")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--cache", type=Path, default=None, help="keep the anchors' decoded weights here between runs")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "out" / "quality_kl_vs_bpw.png")
    parser.add_argument("--report-only", action="store_true", help="print the report and plot again from the last run's quality.json")
    args = parser.parse_args(argv)
    saved = args.plot.with_name("quality.json")
    if args.report_only:
        data = json.loads(saved.read_text())
        return report({k: ([Row(**r) for r in rows], header) for k, (rows, header) in data["results"].items()}, data["mode"], args)
    settings = MODES["quick" if args.quick else "full"]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    wanted = set(args.models.split(","))
    sources = {"smollm2": (args.models_dir / "smollm2-135m-dither", smollm), "minilm": (args.models_dir / "minilm-l6", minilm)}
    results: dict[str, tuple[list[Row], str]] = {}
    for key, (path, fn) in sources.items():
        if key not in wanted:
            continue
        if not (path / "config.json").exists():
            print(f"(no {path}: build it with PY=.venv/bin/python bash ../shared/models/prepare.sh models)", file=sys.stderr)
            continue
        cache = args.cache / path.name if args.cache else None
        results[key] = fn(path, settings, cache)
    saved.parent.mkdir(parents=True, exist_ok=True)
    mode_name = "quick" if args.quick else "full"
    saved.write_text(json.dumps({"mode": mode_name, "results": {k: ([asdict(r) for r in rows], h) for k, (rows, h) in results.items()}}))
    return report(results, mode_name, args)


def report(results: dict[str, tuple[list[Row], str]], mode_name: str, args: argparse.Namespace) -> int:
    lm, enc = results.get("smollm2", ([], ""))[0] or None, results.get("minilm", ([], ""))[0] or None
    print(
        f"\nQuality per bit ({mode_name} run). Anchors are quantize -> dequantize into the same float32 model; Nano rows are reference decode."
    )
    if args.cache:
        print(f"(anchors' decoded weights read from {args.cache} where an earlier run left them)")
    for key, (rows, header) in results.items():
        print(f"\n{header}")
        print("\n".join(table(rows, key == "smollm2")))
    print("\nGoals (same run, same tensors; the best Nano row within each budget):")
    print("\n".join(f"  {line}" for line in goals(lm, enc)))
    if results:
        plot(lm, enc, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
