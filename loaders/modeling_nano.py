"""Entry point of an exported Nano model folder for ``transformers`` (``trust_remote_code``).

The folder's ``config.json`` maps ``AutoModelForCausalLM`` to :class:`NanoForCausalLM` and
``AutoModel`` to :class:`NanoModel`. Neither is a model class of its own: ``from_pretrained``
builds the source architecture (``Qwen2ForCausalLM``, ``LlamaForCausalLM``, ...) with Nano
modules where the weights are quantized, and returns it, so ``generate()``, the KV cache, chat
templates and sampling are transformers' own::

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16, device_map="auto")

This file and its siblings are copied verbatim from ``nanofmt/loaders``; they import only
torch, transformers, safetensors, numpy and each other. They read Nano format 1.x.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, GenerationConfig

from .nano_io import INDEX_FILE, SINGLE_FILE, NanoLoadError, release_staging
from .nano_kernels import FORMAT_MAJOR
from .nano_load import build_skeleton, fill, finish, open_records, plan_tensors, swap_modules

AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
REFUSED = ("quantization_config", "load_in_8bit", "load_in_4bit")  # another quantizer on top of Nano
HUB_KEYS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def resolve_dtype(dtype: Any, config: Any) -> torch.dtype:
    """``"auto"``/None -> the source dtype in ``config`` (float32 if none); names -> torch dtypes."""
    if dtype is None or dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"Nano models compute in float16, bfloat16 or float32, not {dtype}")
    return dtype


def _device(value: Any) -> torch.device:
    if isinstance(value, int):
        return torch.device("cuda", value)
    if value == "disk":
        raise ValueError("Nano models do not offload to disk: give a device_map over devices")
    return torch.device(value)


def resolve_device_map(model: torch.nn.Module, device_map: Any, max_memory: dict[Any, Any] | None) -> dict[str, torch.device]:
    """Module prefix -> device; ``"auto"`` and friends are planned by accelerate on packed sizes."""
    if device_map is None:
        return {"": torch.device("cpu")}
    if isinstance(device_map, str) and device_map in AUTO_MAPS:
        try:  # inside try, transformers' import check leaves accelerate optional
            from accelerate.utils import get_balanced_memory, infer_auto_device_map
        except ImportError as exc:
            raise ImportError(f"device_map={device_map!r} needs accelerate: pip install accelerate") from exc
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    mapping = {k: _device(v) for k, v in device_map.items()} if isinstance(device_map, dict) else {"": _device(device_map)}
    kinds = {d.type for d in mapping.values()}
    if "cpu" in kinds and len(kinds) > 1:
        raise ValueError(f"Nano models do not offload to the CPU; the device map puts modules on {sorted(kinds)} (give max_memory or fewer layers)")
    return mapping


def device_lookup(mapping: dict[str, torch.device]) -> Any:
    """key -> device of the longest module prefix of ``key`` in ``mapping``."""

    def device_of(key: str) -> torch.device:
        parts = key.split(".")
        for n in range(len(parts), -1, -1):
            prefix = ".".join(parts[:n])
            if prefix in mapping:
                return mapping[prefix]
        raise ValueError(f"the device map places no module holding {key!r}")

    return device_of


def _local_folder(path: str | os.PathLike[str], hub: dict[str, Any]) -> Path:
    """A local folder with the model files, fetching them through the hub cache if ``path`` is a repo id."""
    if os.path.isdir(path):
        return Path(path)
    from transformers.utils import cached_file

    index = cached_file(str(path), INDEX_FILE, _raise_exceptions_for_missing_entries=False, **hub)
    if index is None:
        return Path(cached_file(str(path), SINGLE_FILE, **hub)).parent
    import json

    for shard in dict.fromkeys(json.loads(Path(index).read_text())["weight_map"].values()):
        cached_file(str(path), shard, **hub)
    return Path(index).parent


def _return_freed_memory() -> None:
    """Hand the heap the load freed (transients, replaced layouts) back to the OS, where glibc keeps it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _check_config(config: Any) -> None:
    qc = getattr(config, "quantization_config", None)
    qc = qc if isinstance(qc, dict) else getattr(qc, "to_dict", lambda: {})()
    if qc.get("quant_method") != "nano":
        raise NanoLoadError("not_nano", "config.json has no quantization_config with quant_method 'nano'")
    if str(qc.get("format_version", "")).split(".")[0] != str(FORMAT_MAJOR):
        raise NanoLoadError("version_unsupported", f"format {qc.get('format_version')!r} is not readable by this runtime (reads {FORMAT_MAJOR}.x)")


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    config: Any = None,
    head: str = "causal_lm",
    dtype: Any = "auto",
    device: Any = None,
    device_map: Any = None,
    max_memory: dict[Any, Any] | None = None,
    fused: bool | None = None,
    verify: bool = False,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build the source architecture around the packed weights of the Nano folder ``path``.

    Args:
        path: a Nano model folder (or a hub repo id holding one).
        config: the folder's config (read from ``path`` when omitted).
        head: ``"causal_lm"`` (AutoModelForCausalLM) or ``"base"`` (AutoModel).
        dtype: compute dtype: torch.float16/bfloat16/float32, a name, or "auto" (the source's).
        device / device_map: one device, a module-prefix -> device dict, or "auto"/"balanced"/
            "sequential" (planned by accelerate on the packed sizes; activations move through
            accelerate's hooks).
        fused: True forces torch's int4/int8 kernels where the layout allows, False forbids
            them, None (default) uses them where they are fast (bfloat16 compute).
        verify: check each tensor's CRC-32 against its record while reading.

    Raises:
        NanoLoadError: a missing, unexpected or mis-shaped tensor (named), a damaged file.
    """
    refused = [k for k in REFUSED if kwargs.get(k) is not None]
    if refused:
        raise ValueError(f"{refused[0]} cannot be combined with a Nano model: its weights are already quantized")
    dtype = kwargs.get("torch_dtype") if dtype == "auto" and kwargs.get("torch_dtype") is not None else dtype
    folder = _local_folder(path, {k: kwargs[k] for k in HUB_KEYS if k in kwargs})
    config = config if config is not None else AutoConfig.from_pretrained(folder)
    _check_config(config)
    compute = resolve_dtype(dtype, config)
    if attn_implementation is not None:
        config._attn_implementation_internal = attn_implementation
    records = open_records(folder)
    model = build_skeleton(config, head, compute)
    items = plan_tensors(model, records, head)
    swap_modules(model, items, compute)
    mapping = resolve_device_map(model, device_map if device_map is not None else device, max_memory)
    device_of = device_lookup(mapping)
    try:
        fill(model, items, device_of, compute, fused=fused, verify=verify)
    finally:
        release_staging()
        _return_freed_memory()
    finish(model, items, device_of)
    if device_map is not None:
        model.hf_device_map = {k: str(v) for k, v in mapping.items()}
    if len(set(mapping.values())) > 1:  # accelerate's hooks move activations between devices
        try:
            from accelerate import dispatch_model
        except ImportError as exc:
            raise ImportError("a device map over several devices needs accelerate: pip install accelerate") from exc
        dispatch_model(model, device_map=model.hf_device_map)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


class _NanoEntry:
    """A factory that transformers' auto classes call; never instantiated."""

    head = "causal_lm"
    _auto_class: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} builds models from a Nano folder: use {type(self).__name__}.from_pretrained(path)")

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModel") -> None:
        cls._auto_class = auto_class if isinstance(auto_class, str) else auto_class.__name__

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], *model_args: Any, **kwargs: Any) -> torch.nn.Module:
        if model_args:
            raise TypeError("Nano models take no positional model arguments")
        return load_pretrained(pretrained_model_name_or_path, head=cls.head, **kwargs)

    @classmethod
    def from_config(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a Nano model's weights live in its folder: use from_pretrained(path)")


class NanoForCausalLM(_NanoEntry):
    """``AutoModelForCausalLM`` entry: returns the source causal-LM class over Nano weights."""

    head = "causal_lm"


class NanoModel(_NanoEntry):
    """``AutoModel`` entry: returns the source base model over Nano weights."""

    head = "base"
