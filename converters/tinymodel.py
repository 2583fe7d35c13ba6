"""Build a small *real* Llama-style language model for the nanofmt demo.

The demo (convert -> load -> generate) is only convincing if the model
writes actual words, but it must run offline on a bare CPU machine. So we
train one from scratch, in a few minutes, on text every Python install
carries: ``pydoc_data.topics`` (the language reference behind ``help()``).

Example::

    from nanofmt.converters.tinymodel import build_demo_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_demo_model("demo-model", progress=print)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("The for statement", return_tensors="pt").input_ids
    print(tok.decode(model.generate(ids, max_new_tokens=60, do_sample=False)[0]))

The folder is a plain Hugging Face checkpoint (``config.json``,
``model.safetensors`` in fp32, ``generation_config.json``, tokenizer files)
plus ``training.json`` recording the steps taken and the final loss. Training
stops by wall-clock time, but the learning-rate schedule is a pure function
of the step index and the final step count, so passing ``steps=`` with the
recorded ``steps`` replays the run exactly (same torch build and threads).
An idle 2-core machine reaches ~500 steps (loss ~2.5) in the default 180 s;
a busy one gets far fewer and the text degrades into repetition, so callers
that need a known quality regardless of load should pass ``steps=500``.
"""

from __future__ import annotations

import hashlib
import json
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
PEAK_LR = 6e-4  # swept 3.5e-4..3e-3 at 400 steps: 6e-4 lowest loss
WARMUP = 20
STABLE_FRAC = 0.8  # share of the time budget at peak LR; the rest decays
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


def _decay_steps(total: int) -> int:
    return total // 5


def _lr(step: int, total: int | None) -> float:
    """Warmup-stable-decay; depends only on (step, total), so runs replay.

    `total` is None while the clock-driven run has not yet fixed its length:
    the stable phase needs no end point, which is what lets us stop by time
    and still have a schedule that a step count alone reproduces.
    """
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    if total is None:
        return PEAK_LR
    decay = _decay_steps(total)
    start = total - decay
    if step < start:
        return PEAK_LR
    return PEAK_LR * max(0.0, (total - step) / (decay + 1))


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
    total = steps
    losses: list[float] = []
    start = last_report = time.monotonic()
    model.train()
    step = 0
    while total is None or step < total:
        elapsed = time.monotonic() - start
        if total is None and elapsed >= STABLE_FRAC * seconds:
            # Fix the length now: the decay phase is 1/4 of the steps so far,
            # i.e. ~the remaining time if the machine keeps its pace. Chosen
            # so that total - _decay_steps(total) == step exactly.
            total = max(step + step // 4, 1)
            progress(f"decaying from step {step} to {total}")
            continue
        starts = torch.randint(0, ids.numel() - CONTEXT, (BATCH,), generator=gen)
        x = torch.stack([ids[s:s + CONTEXT] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = _lr(step, total)
        loss = model(input_ids=x, labels=x).loss  # HF shifts labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        now = time.monotonic()
        if now - last_report >= REPORT_EVERY_S:
            last_report = now
            progress(f"step {step}/{total or '?'} loss {losses[-1]:.3f} {now - start:.0f}s")
    tail = losses[-20:]
    return {
        "steps": step, "final_loss": losses[-1] if losses else None,
        "final_loss_avg20": sum(tail) / len(tail) if tail else None,
        "seconds": time.monotonic() - start,
    }


def _save_quietly(model, tokenizer, path: pathlib.Path) -> None:
    from transformers.utils import logging as hf_logging

    # save_pretrained draws a tqdm bar on stderr; callers asked for silence.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)  # v5: always safetensors; tied head not stored
        tokenizer.save_pretrained(path)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    # mkdtemp (and the safetensors writer) create owner-only modes; the cache
    # is meant to be read by whoever runs the demo, so use ordinary modes.
    path.chmod(0o755)
    for f in path.iterdir():
        f.chmod(0o644)


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
        _save_quietly(model, tokenizer, tmp)
        stats.update(
            seed=seed, train_seconds=train_seconds, parameters=n_params,
            corpus_tokens=ids.numel(), context=CONTEXT, batch=BATCH, peak_lr=PEAK_LR,
            warmup=WARMUP, threads=torch.get_num_threads(),
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
