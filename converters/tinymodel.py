"""Build a small *real* Llama-style language model for the nanofmt demo.

The demo (convert -> load -> generate) is only convincing if the model
writes actual words, but it must run offline on a bare CPU machine. So we
train one from scratch, in a few minutes, on text every Python install
carries: ``pydoc_data.topics`` (the language reference behind ``help()``).

Example::

    from nanofmt.converters.tinymodel import build_demo_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_demo_model("/tmp/demo_model", progress=print)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("The for statement", return_tensors="pt").input_ids
    print(tok.decode(model.generate(ids, max_new_tokens=60, do_sample=False)[0]))

The folder is a plain Hugging Face checkpoint (``config.json``,
``model.safetensors`` in fp32, ``generation_config.json``, tokenizer files)
plus ``training.json`` recording the steps taken and the final loss. Training
stops by wall-clock time, but the learning-rate schedule is a pure function
of the step index and the planned step count, so passing ``steps=`` with the
recorded ``planned_steps`` replays the run without a clock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable

import torch

BOS = EOS = "<|endoftext|>"  # GPT-2 convention: one token separates documents
PAD = "<|pad|>"
VOCAB_SIZE = 1024
CONTEXT = 128
BATCH = 16
PEAK_LR = 3e-3
MIN_LR_FRAC = 0.1  # cosine floor: keep learning until the clock stops us
WARMUP = 20
CALIBRATE_AT = 5  # steps timed (after the slow first one) to plan the run
OVERRUN = 1.5  # hard stop if the machine slows down after calibration
REPORT_EVERY_S = 10.0
_REQUIRED = ("config.json", "model.safetensors", "training.json")


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    # Sorted keys: dict order is an implementation detail; the corpus is not.
    return [topics[k] for k in sorted(topics)]


def _train_tokenizer(docs: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte-level: every string is encodable and decode() restores it exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=512,
    )


def _encode(tokenizer, docs: list[str]) -> torch.Tensor:
    # One token stream, documents separated by EOS, so the model learns where
    # a topic ends; encoded per document to skip the max-length warning.
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer.backend_tokenizer.encode(doc).ids + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def _make_model(tokenizer):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    # Every linear dim is a multiple of 128 so the quantizer's row groups
    # (32/64/128) tile it exactly; vocab 1024 keeps the tied embedding aligned.
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    return model


def _lr(step: int, planned: int) -> float:
    """LR depends only on (step, planned): this is what makes runs replayable."""
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    frac = min(1.0, (step - WARMUP) / max(1, planned - WARMUP))
    cos = 0.5 * (1.0 + math.cos(math.pi * frac))
    return PEAK_LR * (MIN_LR_FRAC + (1.0 - MIN_LR_FRAC) * cos)


def _train(model, ids: torch.Tensor, seconds: float, steps: int | None,
           seed: int, progress: Callable[[str], None]) -> dict:
    # A private generator: batch order depends on `seed` alone.
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR, betas=(0.9, 0.95),
    )
    planned = steps if steps is not None else max(CALIBRATE_AT, WARMUP)
    losses: list[float] = []
    start = last_report = time.monotonic()
    t_first = start
    model.train()
    step = 0
    while step < planned:
        if steps is None and step == CALIBRATE_AT:
            # Plan the whole run from the steady-state step time, once; the
            # schedule then never looks at the clock again.
            per_step = (time.monotonic() - t_first) / (CALIBRATE_AT - 1)
            left = seconds - (time.monotonic() - start)
            planned = max(CALIBRATE_AT, CALIBRATE_AT + int(left / per_step))
            progress(f"planned {planned} steps ({per_step:.2f} s/step)")
        starts = torch.randint(0, ids.numel() - CONTEXT, (BATCH,), generator=gen)
        x = torch.stack([ids[s:s + CONTEXT] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = _lr(step, planned)
        loss = model(input_ids=x, labels=x).loss  # HF shifts labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        now = time.monotonic()
        if step == 1:
            t_first = now  # first step pays one-off allocation costs
        if now - last_report >= REPORT_EVERY_S:
            last_report = now
            progress(f"step {step}/{planned} loss {losses[-1]:.3f} {now - start:.0f}s")
        if steps is None and now - start > OVERRUN * seconds:
            progress(f"stopping early at step {step}: machine slower than calibrated")
            break
    tail = losses[-20:]
    return {
        "steps": step, "planned_steps": planned, "final_loss": losses[-1],
        "final_loss_avg20": sum(tail) / len(tail), "seconds": time.monotonic() - start,
    }


def _is_complete(path: pathlib.Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED)


def _publish(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Move the finished build into place; a half-written `out` is replaced."""
    if out.exists() and not _is_complete(out):
        trash = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:
        if not _is_complete(out):  # lost a race to a concurrent builder: fine
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def build_demo_model(out_dir: str | os.PathLike, *, train_seconds: float = 180.0,
                     seed: int = 0, progress: Callable[[str], None] | None = None,
                     steps: int | None = None) -> pathlib.Path:
    """Train (or reuse) the demo model in `out_dir` and return its path.

    If `out_dir` already holds config.json, model.safetensors and
    training.json it is returned untouched. Otherwise the model is built in
    a temporary sibling folder and renamed into place, so readers never see
    a partial checkpoint. `steps` (default: plan from `train_seconds`) fixes
    the step count, for an exact clock-free replay of a recorded run.
    """
    import transformers

    out = pathlib.Path(out_dir).absolute()
    report = progress or (lambda _msg: None)
    if _is_complete(out):
        report(f"reusing {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old_threads = torch.get_num_threads()
    try:
        # Two threads: as fast as most laptops/CI boxes, identical everywhere.
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        docs = _corpus()
        tokenizer = _train_tokenizer(docs)
        report(f"tokenizer: {len(tokenizer)} tokens")
        ids = _encode(tokenizer, docs)
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
            torch.manual_seed(seed)
            model = _make_model(tokenizer)
            n_params = sum(p.numel() for p in model.parameters())
            report(f"model: {n_params:,} parameters, corpus {ids.numel():,} tokens")
            stats = _train(model, ids, train_seconds, steps, seed, report)
        model.eval()
        model.save_pretrained(tmp)  # v5: always safetensors, tied head not stored
        tokenizer.save_pretrained(tmp)
        stats.update(
            seed=seed, train_seconds=train_seconds, parameters=n_params,
            corpus_tokens=ids.numel(), context=CONTEXT, batch=BATCH, peak_lr=PEAK_LR,
            warmup=WARMUP, min_lr_frac=MIN_LR_FRAC, threads=torch.get_num_threads(),
            corpus_sha256=hashlib.sha256("\0".join(docs).encode()).hexdigest(),
            torch=torch.__version__, transformers=transformers.__version__,
        )
        # Written last: its presence is what marks the folder as complete.
        (tmp / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
        _publish(tmp, out)
    finally:
        torch.set_num_threads(old_threads)
        shutil.rmtree(tmp, ignore_errors=True)
    report(f"done: {stats['steps']} steps, loss {stats['final_loss_avg20']:.3f}")
    return out
