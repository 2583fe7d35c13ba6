"""Building a transformers model around a Nano folder's packed weights (a runtime file).

The steps, each a function below:

1. :func:`open_records` reads every shard's header and records (no tensor data yet).
2. :func:`build_skeleton` builds the source architecture on the meta device (no memory).
3. :func:`plan_tensors` matches records to the model's state-dict keys: a missing, unexpected
   or mis-shaped tensor is a hard error naming it (never a randomly initialised weight).
4. :func:`swap_modules` replaces each ``nn.Linear`` / ``nn.Embedding`` whose weight is stored
   quantized by a :class:`NanoLinear` / :class:`NanoEmbedding` (still on meta), and a head tied
   to a quantized embedding by a :class:`NanoTiedHead`.
5. :func:`fill` reads one tensor at a time straight onto its target device, switching each
   module to a fused kernel right after its weight arrives (so two layouts never coexist for
   more than one module).
6. :func:`finish` ties passthrough weights, initialises non-persistent buffers (rotary tables)
   the way transformers does, and checks that nothing is left on the meta device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .nano_fused import fused_kernel, notice
from .nano_io import Arena, NanoLoadError, Record, Shard, shard_paths
from .nano_kernels import decode_values
from .nano_modules import NanoEmbedding, NanoLinear, NanoTiedHead, PackedMatrix


@dataclass
class Item:
    """One record matched to a model key: stored in ``shard``, or a tie to ``tie`` (a model key)."""

    key: str
    record: Record
    shard: Shard | None = None
    tie: str | None = None
    dense: bool = False  # quantized, but its module has no Nano counterpart: decoded at load


def open_records(folder: Path) -> dict[str, tuple[Shard, Record]]:
    """Every record of every shard, by logical name (a name in two shards is an error)."""
    found: dict[str, tuple[Shard, Record]] = {}
    for path in shard_paths(folder):
        shard = Shard(path)
        for name, record in shard.records.items():
            if name in found:
                raise NanoLoadError("duplicate_tensor", f"also recorded in {found[name][0].path.name}", path=path, tensor=name)
            found[name] = (shard, record)
    return found


def build_skeleton(config: Any, head: str, dtype: torch.dtype) -> nn.Module:
    """The source architecture on the meta device, from a copy of ``config`` without Nano keys."""
    import transformers

    clean = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k not in ("quantization_config", "auto_map")})
    clean._attn_implementation_internal = getattr(config, "_attn_implementation_internal", None)
    auto = transformers.AutoModelForCausalLM if head == "causal_lm" else transformers.AutoModel
    with torch.device("meta"):
        model = auto.from_config(clean, dtype=dtype)
    if not hasattr(model, "initialize_weights") or not hasattr(model, "all_tied_weights_keys"):
        # transformers 5 builds on meta and initialises computed buffers (rotary tables) itself;
        # before it, those buffers would stay uninitialised here: refuse rather than run wrong
        raise NanoLoadError("transformers_unsupported", f"the Nano runtime needs transformers >= 5, found {transformers.__version__}")
    model.config.quantization_config = getattr(config, "quantization_config", None)
    return model


def _tied_pairs(model: nn.Module) -> dict[str, str]:
    """Tied key -> the key it shares storage with, as the model declares it."""
    pairs = getattr(model, "all_tied_weights_keys", None)
    return dict(pairs) if isinstance(pairs, dict) else {}


def _key_for(name: str, expected: dict[str, torch.Tensor], prefix: str) -> str | None:
    if name in expected:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in expected:
        return name[len(prefix) + 1 :]  # a causal-LM checkpoint loaded as its base model
    if prefix and f"{prefix}.{name}" in expected:
        return f"{prefix}.{name}"  # a base-model checkpoint under a head
    return None


def plan_tensors(model: nn.Module, records: dict[str, tuple[Shard, Record]], head: str) -> dict[str, Item]:
    """Model key -> Item for every state-dict key; raises naming what is missing, extra or mis-shaped."""
    expected = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", "")
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    items: dict[str, Item] = {}
    unexpected = []
    for name, (shard, record) in records.items():
        key = _key_for(name, expected, prefix)
        if key is None:
            headless = head == "base" and prefix and not name.startswith(prefix + ".")
            if not headless and not any(p.search(name) for p in ignore):
                unexpected.append(name)
            continue
        if tuple(expected[key].shape) != record.shape:
            raise NanoLoadError("shape_mismatch", f"stored shape {list(record.shape)}, the model's {key!r} is {list(expected[key].shape)}", path=shard.path, tensor=name)
        tie = _key_for(record.tie, expected, prefix) if record.tie is not None else None
        items[key] = Item(key, record, None if record.tie is not None else shard, tie)
    if unexpected:
        raise NanoLoadError("unexpected_tensor", f"{len(unexpected)} stored tensor(s) the {type(model).__name__} has no place for: {', '.join(unexpected[:8])}", tensor=unexpected[0])
    for key, source in _tied_pairs(model).items():
        if key not in items and source in items:
            items[key] = Item(key, items[source].record, tie=source)
    missing = [k for k in expected if k not in items]
    if missing:
        raise NanoLoadError("missing_tensor", f"{len(missing)} tensor(s) of the {type(model).__name__} are not in the folder: {', '.join(missing[:8])}", tensor=missing[0])
    return items


def _parent(model: nn.Module, key: str) -> tuple[nn.Module, str, str]:
    """(parent module, child name, attribute) of a state-dict key ``a.b.child.attr``."""
    path, _, attr = key.rpartition(".")
    owner, _, child = path.rpartition(".")
    return model.get_submodule(owner), child, attr


def swap_modules(model: nn.Module, items: dict[str, Item], dtype: torch.dtype) -> None:
    """Put Nano modules (on meta) where the records say a weight is stored quantized."""
    for item in items.values():
        scheme = item.record.scheme
        if item.shard is None or scheme is None or not scheme.quantized:
            continue
        parent, child, attr = _parent(model, item.key)
        old = parent.get_submodule(child)
        if attr == "weight" and type(old) is nn.Linear:
            new: nn.Module = NanoLinear(old.in_features, old.out_features, scheme, bias=old.bias is not None, dtype=dtype)
        elif attr == "weight" and isinstance(old, nn.Embedding):
            new = NanoEmbedding(old.num_embeddings, old.embedding_dim, scheme, padding_idx=old.padding_idx, embed_scale=getattr(old, "scalar_embed_scale", None), dtype=dtype)
        else:
            item.dense = True  # e.g. GPT-2's Conv1D: decoded once at load into its parameter
            notice(f"no Nano module stands in for a {type(old).__name__}: its quantized weights (e.g. {item.key}) are decoded at load")
            continue
        setattr(parent, child, new)
    for item in items.values():
        if item.tie is None:
            continue
        parent, child, attr = _parent(model, item.key)
        table = model.get_submodule(item.tie.rpartition(".")[0])
        old = parent.get_submodule(child)
        if isinstance(table, NanoEmbedding) and attr == "weight" and isinstance(old, nn.Linear) and old.bias is None:
            setattr(parent, child, NanoTiedHead(table))
        elif isinstance(table, PackedMatrix):
            raise NanoLoadError("tie_unsupported", f"tied to the quantized {item.tie!r}, which a {type(old).__name__} cannot share", tensor=item.key)


def _target_dtype(model: nn.Module, key: str, dtype: torch.dtype) -> torch.dtype:
    """The compute dtype, except where the model keeps a module in float32."""
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return torch.float32 if any(k in key.split(".") for k in keep) else dtype


def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    path, _, attr = key.rpartition(".")
    module = model.get_submodule(path)
    value._is_hf_initialized = True  # type: ignore[attr-defined]
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(value, requires_grad=value.is_floating_point())
        module._parameters[attr]._is_hf_initialized = True  # type: ignore[union-attr]
    else:
        module._buffers[attr] = value


def fill(model: nn.Module, items: dict[str, Item], device_of: Any, dtype: torch.dtype, *, fused: bool | None, verify: bool) -> None:
    """Read every stored tensor onto its device; switch Nano modules to fused kernels as they fill."""
    tables = {item.tie for item in items.values() if item.tie is not None and isinstance(model.get_submodule(item.key.rpartition(".")[0]), NanoTiedHead)}
    arena = Arena()
    for item in items.values():
        if item.shard is None:
            continue
        device = device_of(item.key)
        module = model.get_submodule(item.key.rpartition(".")[0])
        packed = isinstance(module, PackedMatrix) and item.key.endswith(".weight")
        fuse = packed and _wants_fused(module, dtype, fused, tied=item.key in tables)
        # a weight headed for the int4 layout is read into the arena: only its repacked copy stays
        transient = fuse and module.scheme.kind != "int8_row" and item.key not in tables
        parts = item.shard.read(item.record, device, verify=verify, arena=arena if transient else None)
        scheme = item.record.scheme
        assert scheme is not None
        if packed:
            module.set_parts(parts)
            module.compute_dtype = dtype
            if fuse:
                reason = module.use_fused(keep_rows=isinstance(module, NanoEmbedding))
                if reason is not None:
                    notice(f"fused kernel unavailable ({reason}); {item.key} and any like it use the chunked path")
            if transient and module.path != "int4":
                module.set_parts({role: t.clone() for role, t in parts.items()})  # the arena is reused next
        elif scheme.quantized:  # item.dense
            values = decode_values(parts, scheme, item.record.shape[1])
            _set_tensor(model, item.key, values.to(_target_dtype(model, item.key, dtype)))
        else:
            tensor = parts[None]
            if tensor.is_floating_point():
                tensor = tensor.to(_target_dtype(model, item.key, dtype))
            _set_tensor(model, item.key, tensor)


def _wants_fused(module: PackedMatrix, dtype: torch.dtype, fused: bool | None, *, tied: bool) -> bool:
    """A fused kernel when asked (``fused=True``) or, by default, where it is fast: bf16 compute."""
    eligible = fused_kernel(module.scheme.kind, module.scheme.bits, module.scheme.group_size, module.cols)
    if fused is False or not eligible or (fused is None and dtype != torch.bfloat16):
        return False
    return tied or not isinstance(module, NanoEmbedding)  # a lone embedding only gathers rows: its stored layout is right


def finish(model: nn.Module, items: dict[str, Item], device_of: Any) -> None:
    """Tie passthrough weights, initialise non-persistent buffers, check nothing stayed on meta."""
    for item in items.values():
        if item.tie is not None and not isinstance(model.get_submodule(item.key.rpartition(".")[0]), NanoTiedHead):
            path, _, attr = item.key.rpartition(".")
            source_path, _, source_attr = item.tie.rpartition(".")
            source = model.get_submodule(source_path)
            slot = "_parameters" if source_attr in source._parameters else "_buffers"
            getattr(model.get_submodule(path), slot)[attr] = getattr(source, slot)[source_attr]  # one object: truly tied
    # Non-persistent buffers (rotary tables, embedding scales) are computed, not stored: give
    # them storage and let the model's own initialiser fill them, as transformers does.
    for name, buffer in list(model.named_buffers()):
        path, _, attr = name.rpartition(".")
        owner = model.get_submodule(path)
        if buffer.is_meta and attr in owner._non_persistent_buffers_set:
            owner._buffers[attr] = torch.empty_like(buffer, device=device_of(name))
    model.initialize_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise NanoLoadError("missing_tensor", f"{len(left)} tensor(s) were never loaded: {', '.join(left[:8])}", tensor=left[0])
