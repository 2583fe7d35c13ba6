"""Loading a Nano folder without going through transformers' auto classes.

Example::

    from nanofmt.loaders import load_model
    model = load_model("./nano-model", device="cpu", dtype=torch.bfloat16)
    out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=20)

The machinery is the exported runtime's own (``modeling_nano.load_pretrained``): the native
path and the ``trust_remote_code`` path cannot drift apart.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .modeling_nano import load_pretrained

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = "auto",
    device_map: Any = None,
    fused: bool | None = None,
    verify: bool = False,
    head: str = "causal_lm",
) -> torch.nn.Module:
    """Build the source architecture over the packed weights of the Nano folder ``path``.

    Reads one tensor at a time from the shards straight onto ``device`` (or the devices of
    ``device_map``); the full-precision weights never exist. ``dtype="auto"`` computes in the
    source model's dtype. ``fused``: see :func:`nanofmt.loaders.modeling_nano.load_pretrained`.
    ``verify=True`` checks every tensor's CRC-32 while reading.

    Raises:
        NanoLoadError (a ValueError): missing, unexpected or mis-shaped tensors, by name.
    """
    return load_pretrained(path, head=head, dtype=dtype, device=device, device_map=device_map, fused=fused, verify=verify)
