"""The anchor quantizers of ``bench/quality.py``: other formats, quantize -> dequantize on our tensors.

Each anchor maps one float32 2-D weight to (its decoded float32 values, the bytes its format
stores for it, metadata included) by calling the real library, so the values are the ones that
library's runtime would multiply with. What ran is said per anchor in ``runs``:

- GGUF Q4_0 / Q4_1 / Q5_0 / Q8_0: gguf-py's numpy quantizer (``gguf.quants``), the reference port
  of ggml's ``quantize_row_*_ref``, blocks of 32 with fp16 metadata (4.5 / 5.0 / 5.5 / 8.5 bits);
- HQQ 4-bit and 3-bit, group 64: the ``hqq`` package's ``Quantizer`` (half-quadratic solver, its
  default parameters), scale and zero cast to fp16 as HQQ stores them for an fp16 model; the size is
  the library's packed codes (3-bit: 10 codes per int32, so 3.2 bits) plus 2 x fp16 per group;
- NF4, blocks of 64: ``bitsandbytes.functional.quantize_4bit`` on CPU, with its fp32 absmax per
  block (4.5 bits) and with double quantization of the absmax (about 4.127 bits); the 16- and
  256-entry code tables bitsandbytes also saves per tensor (about 0.01 bits here) are not counted;
- per-row int8: ``bitsandbytes.functional.int8_vectorwise_quant`` (LLM.int8's vector-wise absmax
  quantization without the outlier split), fp32 scale per row.

None of these runs the other format's own inference kernels: they are quantize -> dequantize
into the same float32 transformers model, as the Nano rows are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from codec import gguf_roundtrip  # bench/codec.py

Roundtrip = Callable[[np.ndarray], tuple[np.ndarray, int]]


@dataclass(frozen=True)
class Anchor:
    label: str
    runs: str  # what really ran
    fn: Roundtrip


def hqq(bits: int, group: int = 64) -> Roundtrip:
    def run(x: np.ndarray) -> tuple[np.ndarray, int]:
        import torch
        from hqq.core.quantize import BaseQuantizeConfig, Quantizer

        params = BaseQuantizeConfig(nbits=bits, group_size=group)["weight_quant_params"]
        codes, meta = Quantizer.quantize(torch.from_numpy(x), device="cpu", **params)
        meta["scale"], meta["zero"] = meta["scale"].half(), meta["zero"].half()
        meta["compute_dtype"] = torch.float32
        decoded = Quantizer.dequantize(codes, meta).numpy()
        return decoded, codes.nbytes + meta["scale"].nbytes + meta["zero"].nbytes

    return run


def nf4(block: int = 64, double_quant: bool = False) -> Roundtrip:
    def run(x: np.ndarray) -> tuple[np.ndarray, int]:
        import torch
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit

        codes, state = quantize_4bit(torch.from_numpy(x), blocksize=block, quant_type="nf4", compress_statistics=double_quant)
        stored = codes.nbytes + state.absmax.nbytes
        if double_quant:
            stored += state.state2.absmax.nbytes + 4  # the second-level fp32 absmax per 256 blocks, and the fp32 offset
        return dequantize_4bit(codes, state).numpy(), stored

    return run


def int8_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    import torch
    from bitsandbytes.functional import int8_vectorwise_dequant, int8_vectorwise_quant

    codes, absmax, _ = int8_vectorwise_quant(torch.from_numpy(x), threshold=0.0)
    return int8_vectorwise_dequant(codes, absmax).float().numpy(), codes.nbytes + absmax.nbytes


def anchors() -> list[Anchor]:
    gguf = "gguf-py numpy quantize -> dequantize"
    return [
        *(Anchor(f"GGUF {t}", gguf, gguf_roundtrip(t)) for t in ("Q4_0", "Q4_1", "Q5_0", "Q8_0")),
        Anchor("HQQ 4-bit g64", "hqq library quantize -> dequantize", hqq(4)),
        Anchor("HQQ 3-bit g64", "hqq library quantize -> dequantize", hqq(3)),
        Anchor("NF4 g64", "bitsandbytes quantize -> dequantize", nf4()),
        Anchor("NF4 g64 double-quant", "bitsandbytes quantize -> dequantize", nf4(double_quant=True)),
        Anchor("int8 per row", "bitsandbytes quantize -> dequantize", int8_rows),
    ]
