"""torch modules that run straight from Nano packed weights (a runtime file: no nanofmt import).

- :class:`NanoLinear` holds one quantized weight matrix as buffers named like its stored
  components (``weight_codes``, ``weight_scales``, ...), so a module's state-dict keys are the
  file's stored names. It multiplies either through torch's weight-only int4/int8 kernels (the
  fused path, see ``nano_fused``) or by decoding a bounded block of rows into a reused scratch
  buffer, multiplying, and moving on (the chunked path).
- :class:`NanoEmbedding` decodes only the rows of the requested tokens.
- :class:`NanoTiedHead` computes logits over the embedding's packed table, which is stored once.

A weight stored with the ``hadamard`` transform (rotated rows ``U``, ``W = (U H) * s``; see
``nano_hadamard``) keeps its ``weight_signs`` beside the other components. Products with ``W``
(the linear, the tied head, on every path) rotate the activation instead of the weight; the
embedding undoes the rotation on the rows it gathers, bit-exact to the reference decoder.

``NANOFMT_CHUNK_BYTES`` caps the float32 block the chunked path decodes at a time (default 4 MiB
on the CPU, where a block costs memory more than time, and 64 MiB on accelerators, where each
block costs a dozen kernel launches); with the compute-dtype copy and the unpacked codes, the
shared scratch stays within 3x the cap whatever the matrix size, and decoding a block allocates
nothing large. ``.to(device)`` moves the packed buffers as they are; ``.to(dtype)`` changes the
compute dtype only (the stored fp16 metadata is never rounded).

The fused path runs in bfloat16 whatever the compute dtype (the only dtype its kernels are fast
in); by default the loader picks it for bf16 compute only. It takes int8_row and every
affine/affine_dq weight of at most 4 bits (``nano_fused.fused_kernel``): 2- and 3-bit codes are
held in the int4 layout, 4 bits per weight in memory, and rows that are not whole groups are
padded to whole groups. Its codes live in the kernel's
device-specific layout, so such a module cannot change device: load the model on the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .nano_fused import (
    code_shift,
    cpu_int4_layout,
    gather_int4_cpu,
    int4_matmul,
    int4_padded,
    int4_unfit,
    int8_matmul,
    int8_unfit,
    notice,
    pack_int4,
    scales_and_zeros,
)
from .nano_hadamard import release_rotations, rotate_shared, shared_signs, unrotate_rows
from .nano_kernels import TORCH_DTYPES, Scheme, component_layout, decode_rows

CHUNK_BYTES: int | None = int(os.environ["NANOFMT_CHUNK_BYTES"]) if os.environ.get("NANOFMT_CHUNK_BYTES") else None
DEFAULT_CHUNK_BYTES = {"cpu": 4 << 20}  # other devices: ACCELERATOR_CHUNK_BYTES
ACCELERATOR_CHUNK_BYTES = 64 << 20
_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A flat buffer of at least ``numel`` elements, shared by every module on this device/dtype.

    Modules run one after another on one stream, so one buffer serves them all; it grows to the
    largest block asked for and stays (``release_scratch`` frees it). Two threads running models
    on one device at once would share it: give each its own process.
    """
    key = (str(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable under inference_mode and outside it alike
            buf = torch.empty(numel, dtype=dtype, device=device)
        _SCRATCH[key] = buf
    return buf[:numel]


def release_scratch() -> None:
    _SCRATCH.clear()
    release_rotations()


def _fails(call: Callable[[], torch.Tensor]) -> str | None:
    """Why a kernel refuses a one-row trial call, or None when it runs (ops can exist yet reject a build or GPU)."""
    try:
        call()
    except (RuntimeError, NotImplementedError) as exc:
        return f"the kernel refused a trial call ({str(exc).splitlines()[0][:120]})"
    return None


class PackedMatrix(nn.Module):
    """A ``(rows, cols)`` matrix held as Nano components; base of NanoLinear and NanoEmbedding."""

    def __init__(self, rows: int, cols: int, scheme: Scheme, *, dtype: torch.dtype = torch.float16, device: torch.device | str = "meta") -> None:
        super().__init__()
        self.rows, self.cols, self.scheme = rows, cols, scheme
        self.compute_dtype = dtype
        self.path = "chunked"  # or "int4" / "int8": the fused kernels
        self.chunk_bytes: int | None = None  # per-module override of CHUNK_BYTES
        self._packed: list[str] = []
        self._sign_factors: torch.Tensor | None = None  # hadamard: float32 +1/-1 per column, from weight_signs
        for role, (stored_dtype, shape) in component_layout(scheme, (rows, cols)).items():
            self._add(f"weight_{role}", torch.empty(shape, dtype=TORCH_DTYPES[stored_dtype], device=device))

    def _add(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor)
        self._packed.append(name)

    def _drop(self, name: str) -> None:
        del self._buffers[name]
        self._packed.remove(name)

    def set_parts(self, parts: dict[str | None, torch.Tensor]) -> None:
        """Install the stored components (role -> tensor, stored dtypes); they become the buffers as they are."""
        for role, (stored_dtype, shape) in component_layout(self.scheme, (self.rows, self.cols)).items():
            tensor = parts[role]
            if tensor.dtype != TORCH_DTYPES[stored_dtype] or tuple(tensor.shape) != shape:
                raise ValueError(f"weight_{role} must be {stored_dtype} {list(shape)}, got {tensor.dtype} {list(tensor.shape)}")
            self._buffers[f"weight_{role}"] = tensor
        self._sign_factors = None

    @property
    def packed_device(self) -> torch.device:
        return self._buffers[self._packed[0]].device  # type: ignore[union-attr]

    def parts(self, select: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str | None, torch.Tensor]:
        """The Nano components (role -> tensor), each passed through ``select`` (a row selection)
        except ``signs``, which is per column."""
        roles = component_layout(self.scheme, (self.rows, self.cols))
        chosen: dict[str | None, torch.Tensor] = {role: t for role in roles if (t := self._buffers.get(f"weight_{role}")) is not None}
        return {role: t if role == "signs" else select(t) for role, t in chosen.items()}

    def signs(self, device: torch.device) -> torch.Tensor:
        """A hadamard record's column sign factors (float32 +1/-1) on ``device``, unpacked once."""
        factors = self._sign_factors
        if factors is None or factors.device != device:
            factors = shared_signs(self._buffers["weight_signs"], self.cols, device)  # type: ignore[arg-type]
            self._sign_factors = factors
        return factors

    # -- decoding --------------------------------------------------------------------------------
    def decode(self, r0: int, r1: int, dtype: torch.dtype) -> torch.Tensor:
        """Stored rows ``r0:r1`` in ``dtype`` (a hadamard record's still rotated), decoded into the
        shared scratch (valid until the next call)."""
        n = (r1 - r0) * self.cols
        w32 = scratch(self.packed_device, torch.float32, n).view(r1 - r0, self.cols)
        codes = scratch(self.packed_device, torch.uint8, 2 * (r1 - r0) * (-(-self.cols // 8) * 8))
        decode_rows(self.parts(lambda t: t[r0:r1]), self.scheme, self.cols, out=w32, code_buffer=codes)
        if dtype == torch.float32:
            return w32
        return scratch(self.packed_device, dtype, n).view(r1 - r0, self.cols).copy_(w32)

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """Logical rows ``ids`` (1-D) in float32, decoding only those rows (any transform undone)."""
        codes = None
        if self.path == "int4":  # the codes live in the kernel's (padded) layout; metadata as stored
            n, k = int4_padded(self.rows, self.cols, self.scheme.group_size)  # type: ignore[arg-type]
            codes = gather_int4_cpu(self._buffers["weight_packed"], ids, n, k, self._layout)[:, : self.cols]  # type: ignore[arg-type]
            codes -= code_shift(self.scheme.bits)  # type: ignore[arg-type]
        values = decode_rows(self.parts(lambda t: t.index_select(0, ids)), self.scheme, self.cols, codes=codes)
        if self.scheme.rotated:
            assert self.scheme.transform_block is not None
            values = unrotate_rows(values, self.signs(values.device), self.scheme.transform_block)
        return values

    def chunk_rows(self) -> int:
        cap = self.chunk_bytes or CHUNK_BYTES or DEFAULT_CHUNK_BYTES.get(self.packed_device.type, ACCELERATOR_CHUNK_BYTES)
        return max(1, cap // (4 * self.cols))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for 2-D ``x`` (``(m, cols)`` -> ``(m, rows)``) in ``x.dtype``.

        A hadamard record stores ``U`` with ``W = (U H) * s``: ``x`` is rotated to ``H (s * x)``
        and multiplied by the stored rows as they are (``x @ W.T == H(s * x) @ U.T``).
        """
        if self.scheme.rotated:
            assert self.scheme.transform_block is not None
            x = rotate_shared(x, self.signs(x.device), self.scheme.transform_block)
        if self.path == "int4":
            return int4_matmul(x, self._buffers["weight_packed"], self.scheme.group_size, self._buffers["weight_sz"], self.rows)  # type: ignore[arg-type]
        if self.path == "int8":
            return int8_matmul(x, self._buffers["weight_codes"], self._buffers["weight_scales"])  # type: ignore[arg-type]
        step = self.chunk_rows()
        if step >= self.rows:
            return F.linear(x, self.decode(0, self.rows, x.dtype))
        y = torch.empty(x.shape[0], self.rows, dtype=x.dtype, device=x.device)
        for r0 in range(0, self.rows, step):
            r1 = min(self.rows, r0 + step)
            y[:, r0:r1] = F.linear(x, self.decode(r0, r1, x.dtype))
        return y

    # -- fused kernels ---------------------------------------------------------------------------
    def use_fused(self, *, keep_rows: bool = False) -> str | None:
        """Switch to torch's int4/int8 kernel on the current device; the reason if it cannot.

        ``keep_rows`` keeps the stored metadata beside the kernel's (the tied embedding still
        gathers exact rows from the table; it needs a verified CPU layout model to find them).
        """
        device = self.packed_device
        probe = torch.zeros(1, self.cols, dtype=torch.bfloat16, device=device)
        if self.scheme.kind == "int8_row":
            reason = int8_unfit(self.scheme, device)
            codes, scales = self._buffers["weight_codes"], self._buffers["weight_scales"]
            reason = reason or _fails(lambda: int8_matmul(probe, codes, scales))  # type: ignore[arg-type]
            if reason is None:
                self.path = "int8"
            return reason
        reason = int4_unfit(self.scheme, self.rows, self.cols, device)
        if reason is not None:
            return reason
        assert self.scheme.bits is not None and self.scheme.group_size is not None
        shape = int4_padded(self.rows, self.cols, self.scheme.group_size)
        if keep_rows:
            self._layout = cpu_int4_layout(shape[0]) if device.type == "cpu" else None
            if self._layout is None:
                return f"cannot read rows back from the int4 layout on {device.type}"
        try:
            sz = scales_and_zeros(self.parts(), self.scheme, self.cols, shape[0])
            packed = pack_int4(self._buffers["weight_codes"], self.cols, self.scheme.bits, shape)  # type: ignore[arg-type]
        except RuntimeError as exc:  # the op exists but refuses this build or device
            return f"int4 repack failed ({str(exc).splitlines()[0][:120]})"
        reason = _fails(lambda: int4_matmul(probe, packed, self.scheme.group_size, sz, self.rows))  # type: ignore[arg-type]
        if reason is not None:
            return reason
        if self.scheme.bits < 4:
            notice(f"{self.scheme.bits}-bit weights run on the int4 kernel, held at 4 bits per weight in memory (the file has {self.scheme.bits})")
        for name in list(self._packed):
            if name == "weight_signs":  # a few bytes, kept (the loader may have read it into a reused buffer)
                self._buffers[name] = self._buffers[name].clone()  # type: ignore[union-attr]
            elif name == "weight_codes" or not keep_rows:
                self._drop(name)
        self._add("weight_packed", packed)
        self._add("weight_sz", sz)
        self.path = "int4"
        return None

    # -- device and dtype moves ----------------------------------------------------------------
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedMatrix:  # type: ignore[override]
        packed = {name: self._buffers.pop(name) for name in self._packed}
        try:
            super()._apply(fn, recurse)
            old = next(iter(packed.values()))
            probe = fn(torch.empty(0, dtype=self.compute_dtype, device=old.device))  # where and in what fn sends floats
            if self.path == "int4" and probe.device != old.device:
                raise RuntimeError(f"{type(self).__name__} holds int4 codes in the {old.device.type} kernel layout; load the model again with device={probe.device}")
            packed = {name: t.to(probe.device) for name, t in packed.items()}  # type: ignore[misc]
            if probe.dtype.is_floating_point:
                self.compute_dtype = probe.dtype
        finally:
            self._buffers.update(packed)
            self._sign_factors = None
        return self

    def extra_repr(self) -> str:
        s = self.scheme
        params = "/".join(f"{k[0]}{v}" for k, v in (("bits", s.bits), ("group", s.group_size), ("meta", s.meta_bits)) if v)
        transform = f"+hadamard{s.transform_block}" if s.rotated else ""
        return f"rows={self.rows}, cols={self.cols}, scheme={s.name}:{params}{transform}, path={self.path}"


class NanoLinear(PackedMatrix):
    """``nn.Linear`` over a Nano-packed weight; ``bias`` (if any) is an ordinary parameter."""

    def __init__(self, in_features: int, out_features: int, scheme: Scheme, *, bias: bool = False, dtype: torch.dtype = torch.float16, device: torch.device | str = "meta") -> None:
        super().__init__(out_features, in_features, scheme, dtype=dtype, device=device)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


class NanoEmbedding(PackedMatrix):
    """``nn.Embedding`` over a Nano-packed table; decodes only the requested rows.

    ``embed_scale`` multiplies the output (Gemma-style scaled embeddings), in the compute dtype.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, scheme: Scheme, *, padding_idx: int | None = None, embed_scale: float | None = None, dtype: torch.dtype = torch.float16, device: torch.device | str = "meta") -> None:
        super().__init__(num_embeddings, embedding_dim, scheme, dtype=dtype, device=device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.embed_scale = padding_idx, embed_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(self.packed_device)
        out = self.gather(flat).to(self.compute_dtype)
        if self.embed_scale is not None:
            out = out * torch.tensor(self.embed_scale, dtype=torch.float32).to(self.compute_dtype)
        return out.reshape(*ids.shape, self.embedding_dim).to(ids.device)


class NanoTiedHead(nn.Module):
    """Logits over a :class:`NanoEmbedding`'s packed table: ``h @ E.T``, computed in vocabulary
    chunks (or by the int4 kernel). The table is referenced, not registered, so it is stored and
    saved once; transformers already slices ``hidden_states`` to the positions it needs
    (``logits_to_keep``) before calling the head.
    """

    def __init__(self, table: NanoEmbedding) -> None:
        super().__init__()
        self.__dict__["table"] = table  # plain attribute: not a submodule, no second copy
        self.in_features, self.out_features = table.embedding_dim, table.num_embeddings

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        table = self.__dict__["table"]
        x = h.reshape(-1, self.in_features).to(table.packed_device)
        logits = table.matmul(x).to(h.device)
        return logits.reshape(*h.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to the embedding table"
