"""Which tensor gets which scheme: an ordered rule list where the first matching rule wins.

A policy is data (a preset, or a TOML/JSON file), recorded verbatim in the converted folder
together with the scheme each tensor really got. Precedence is only ever list order: there
is no "most specific pattern wins", so a reader of the rules can predict every outcome.

Patterns are shell-style globs (:func:`fnmatch.fnmatchcase`, case-sensitive) matched against
the *whole* source tensor name. ``*`` matches any run of characters, dots included; ``?`` one
character; ``[...]`` a set. Examples: ``*.q_proj.weight``, ``model.layers.0.*``, ``lm_head.weight``.
A rule may also require a tensor ``kind``: ``linear`` (the weight of an ``nn.Linear``),
``embedding`` (of an ``nn.Embedding``) or ``other`` (norms, biases, buffers, anything else);
``match`` defaults to ``*``.

The ``scheme`` of a rule is one of:
    ``"quant"``  the policy's default quantized scheme (affine_dq 4-bit, group 32, 6-bit
                 metadata = 4.5 bits per weight, unless the policy or ``--bits``/``--group-size`` say otherwise);
    ``"keep"``   stored as is, in the policy's ``keep_dtype`` (``"source"``: the tensor's own dtype);
    a scheme name (``f16``, ``bf16``, ``f32``, ``int8_row``, ``affine``, ``affine_dq``) with
                 ``bits``/``group_size``/``meta_bits``; missing ones come from the default scheme.

A rule with a quantized scheme may also carry ``transform = "hadamard"`` and ``transform_block``
(16, 64, 256, 1024 or 4096; default 64): the rows are stored rotated by a randomized blockwise
Hadamard transform (Nano format 1.1), which spreads outliers before quantization.
``transform = "none"`` (or no ``transform``) stores them as they are.

Fallbacks, applied after matching and reported for every tensor they touch:
    - a quantized scheme on a tensor of kind ``other`` or that is not 2-D: kept;
    - ``affine``/``affine_dq`` on a tensor with fewer columns than the group size: the largest
      allowed group size that fits; with fewer columns than the smallest group (32): ``int8_row``;
    - ``hadamard`` on a tensor whose columns are not whole blocks: the largest allowed smaller
      block that divides them; if none does, no transform.
A tensor no rule matches is kept.

Example:
    >>> p = preset("qkvfp16")
    >>> p.resolve("model.layers.0.self_attn.q_proj.weight", "linear", (64, 64), "bf16").scheme.label()
    'f16'
    >>> p.resolve("model.layers.0.mlp.up_proj.weight", "linear", (128, 64), "bf16").scheme.label()
    'affine_dq:4b/g32/m6'
    >>> p.resolve("model.norm.weight", "other", (64,), "bf16").scheme.label()
    'bf16'
    >>> h = p.with_overrides(transform="hadamard", transform_block=256)
    >>> h.resolve("model.layers.0.mlp.down_proj.weight", "linear", (64, 1536), "bf16").scheme.label()
    'affine_dq:4b/g32/m6+h256'
    >>> h.resolve("model.layers.0.mlp.up_proj.weight", "linear", (1536, 576), "bf16").fallback
    '576 columns are not whole blocks of 256: block 64'
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nanofmt import NanoError, Scheme
from nanofmt._spec import SCHEMES, TRANSFORM_SPECS

from .errors import ConvertError

__all__ = ["Rule", "Policy", "Choice", "PRESETS", "preset", "load_policy", "policy_from_dict", "DEFAULT_SCHEME", "KINDS"]

KINDS = ("linear", "embedding", "other")
KEEP_DTYPES = ("source", "f16", "bf16", "f32")
DEFAULT_SCHEME = Scheme("affine_dq", bits=4, group_size=32, meta_bits=6)
_RULE_KEYS = {"match", "kind", "scheme", "bits", "group_size", "meta_bits", "transform", "transform_block"}
_SCHEME_KEYS = {"scheme", "bits", "group_size", "meta_bits", "transform", "transform_block"}
TRANSFORMS = tuple(TRANSFORM_SPECS)  # "none", "hadamard"
HADAMARD_BLOCKS: tuple[int, ...] = tuple(TRANSFORM_SPECS["hadamard"]["transform_blocks"])
DEFAULT_TRANSFORM_BLOCK = 64  # divides every hidden size in common use; the activation rotation stays cheap
_POLICY_KEYS = {"name", "description", "keep_dtype", "default", "rules"}
# what Policy.to_json adds: a recorded policy (config.json) loads back as a policy file
_RECORD_KEYS = {"pattern_syntax": "fnmatch", "precedence": "first match wins", "overrides": None, "resolved": None}
_QUANT_KINDS = ("linear", "embedding")  # a quantized scheme needs a weight the runtime multiplies by


@dataclass(frozen=True)
class Rule:
    """One line of a policy: which tensors (``match`` globs, optional ``kind``) get which scheme."""

    match: tuple[str, ...] = ("*",)
    kind: str | None = None
    scheme: str = "quant"
    bits: int | None = None
    group_size: int | None = None
    meta_bits: int | None = None
    transform: str | None = None  # None or "none": no transform; "hadamard"
    transform_block: int | None = None

    @property
    def quantized(self) -> bool:
        """Whether the rule gives a quantized scheme (the only kind a transform applies to)."""
        return self.scheme == "quant" or (self.scheme in SCHEMES and SCHEMES[self.scheme]["kind"] != "passthrough")

    def matches(self, name: str, kind: str) -> bool:
        return (self.kind is None or self.kind == kind) and any(fnmatch.fnmatchcase(name, p) for p in self.match)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match[0] if len(self.match) == 1 else list(self.match)}
        if self.kind is not None:
            out["kind"] = self.kind
        out["scheme"] = self.scheme
        out.update({k: getattr(self, k) for k in ("bits", "group_size", "meta_bits", "transform", "transform_block") if getattr(self, k) is not None})
        return out


@dataclass(frozen=True)
class Choice:
    """What one tensor gets: the concrete scheme, the rule that chose it (index, None if none did), any fallback."""

    scheme: Scheme
    rule: int | None
    fallback: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {**self.scheme.to_json(), "rule": self.rule}
        if self.fallback:
            out["fallback"] = self.fallback
        return out


@dataclass(frozen=True)
class Policy:
    """An ordered rule list plus the default quantized scheme and the dtype kept tensors use."""

    name: str
    rules: tuple[Rule, ...]
    default: Scheme = DEFAULT_SCHEME
    keep_dtype: str = "source"
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_overrides(
        self,
        *,
        bits: int | None = None,
        group_size: int | None = None,
        keep: tuple[str, ...] | list[str] = (),
        keep_dtype: str | None = None,
        transform: str | None = None,
        transform_block: int | None = None,
    ) -> Policy:
        """The policy after CLI overrides: ``bits``/``group_size`` change the default quantized
        scheme; each ``keep`` pattern becomes a keep rule placed first (so it wins); ``keep_dtype``
        replaces the kept tensors' dtype; ``transform`` (``"hadamard"`` or ``"none"``) replaces
        the transform of every quantized rule, ``transform_block`` its block (default 64).

        Raises:
            ValueError: an unknown transform or block, or a block without a hadamard rule to take it.
        """
        default = self.default
        if bits is not None or group_size is not None:
            default = _with_params(self.default, bits, group_size)
        transformed = _override_transform(self.rules, transform, transform_block)
        rules = tuple(Rule(match=(p,), scheme="keep") for p in keep) + transformed
        pairs = (("bits", bits), ("group_size", group_size), ("keep", list(keep)), ("keep_dtype", keep_dtype), ("transform", transform), ("transform_block", transform_block))
        changes = {k: v for k, v in pairs if v}
        return replace(self, rules=rules, default=default, keep_dtype=keep_dtype or self.keep_dtype, overrides={**self.overrides, **changes})

    def resolve(self, name: str, kind: str, shape: tuple[int, ...], dtype: str) -> Choice:
        """The scheme for tensor ``name`` (of ``kind``, ``shape`` and source ``dtype`` f32/f16/bf16)."""
        for index, rule in enumerate(self.rules):
            if rule.matches(name, kind):
                return _fit(self._scheme_of(rule, dtype), index, kind, shape, self._kept(dtype))
        return Choice(self._kept(dtype), None)

    def _kept(self, dtype: str) -> Scheme:
        return Scheme(dtype if self.keep_dtype == "source" else self.keep_dtype)

    def _scheme_of(self, rule: Rule, dtype: str) -> Scheme:
        if rule.scheme == "keep":
            return self._kept(dtype)
        if rule.scheme == "quant":
            scheme = _with_params(self.default, rule.bits, rule.group_size, rule.meta_bits)
        else:
            scheme = _concrete(rule.scheme, rule.bits, rule.group_size, rule.meta_bits, self.default)
        if rule.transform == "hadamard" and not scheme.is_passthrough:
            return replace(scheme, transform="hadamard", transform_block=rule.transform_block or DEFAULT_TRANSFORM_BLOCK)
        return scheme

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "pattern_syntax": "fnmatch", "precedence": "first match wins"}
        if self.description:
            out["description"] = self.description
        out["default"] = self.default.to_json()
        out["keep_dtype"] = self.keep_dtype
        out["rules"] = [r.to_json() for r in self.rules]
        if self.overrides:
            out["overrides"] = dict(self.overrides)
        return out


def _with_params(base: Scheme, bits: int | None, group_size: int | None, meta_bits: int | None = None) -> Scheme:
    return _concrete(base.name, bits or base.bits, group_size or base.group_size, meta_bits or base.meta_bits, base)


def _concrete(name: str, bits: int | None, group_size: int | None, meta_bits: int | None, default: Scheme) -> Scheme:
    """A scheme with exactly the parameters its kind takes; missing ones come from ``default``."""
    spec = SCHEMES.get(name)
    if spec is None:
        raise ConvertError("policy_invalid", f"unknown scheme {name!r} (use quant, keep or one of {', '.join(SCHEMES)})")
    given = {"bits": bits, "group_size": group_size, "meta_bits": meta_bits}
    params: dict[str, int | None] = {}
    for key, allowed_key in (("bits", "bits"), ("group_size", "group_sizes"), ("meta_bits", "meta_bits")):
        allowed = spec.get(allowed_key)
        inherited = getattr(default, key)
        # a parameter the scheme does not take stays None; a missing one is inherited when allowed
        params[key] = None if allowed is None else given[key] if given[key] is not None else inherited if inherited in allowed else allowed[-1]
    scheme = Scheme(name, bits=params["bits"], group_size=params["group_size"], meta_bits=params["meta_bits"])
    try:
        scheme.check((1, 128))
    except NanoError as exc:
        raise ConvertError("policy_invalid", f"scheme {name} {params}: {exc.detail}") from None
    return scheme


def _fit(scheme: Scheme, rule: int, kind: str, shape: tuple[int, ...], kept: Scheme) -> Choice:
    """Apply the documented fallbacks to a rule's scheme for one tensor."""
    if scheme.is_passthrough:
        return Choice(scheme, rule)
    if kind not in _QUANT_KINDS:
        return Choice(kept, rule, f"{scheme.label()} applies to Linear/Embedding weights only: kept")
    if len(shape) != 2 or min(shape) < 1:
        return Choice(kept, rule, f"{scheme.label()} needs a 2-D tensor, shape is {list(shape)}: kept")
    cols = shape[1]
    notes = []
    if scheme.group_size is not None and cols < scheme.group_size:
        fitting = [g for g in SCHEMES[scheme.name]["group_sizes"] if g <= cols]
        if fitting:
            smaller = replace(scheme, group_size=max(fitting))
            notes.append(f"{cols} columns < group {scheme.group_size}: group {smaller.group_size}")
            scheme = smaller
        else:
            scheme = Scheme("int8_row", bits=8, transform=scheme.transform, transform_block=scheme.transform_block)
            notes.append(f"{cols} columns < smallest group: int8_row")
    block = scheme.transform_block
    if scheme.transform == "hadamard" and block is not None and cols % block:
        fitting = [b for b in HADAMARD_BLOCKS if b < block and cols % b == 0]
        if fitting:
            scheme = replace(scheme, transform_block=max(fitting))
            notes.append(f"{cols} columns are not whole blocks of {block}: block {scheme.transform_block}")
        else:
            scheme = replace(scheme, transform="none", transform_block=None)
            notes.append(f"{cols} columns are not whole blocks of {block} or any smaller block: no transform")
    return Choice(scheme, rule, "; ".join(notes) or None)


def _override_transform(rules: tuple[Rule, ...], transform: str | None, block: int | None) -> tuple[Rule, ...]:
    """``rules`` with the transform override applied to each quantized rule (see Policy.with_overrides)."""
    if transform is None and block is None:
        return rules
    if transform is not None and transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r} (use one of {', '.join(TRANSFORMS)})")
    if block is not None and (transform == "none" or block not in HADAMARD_BLOCKS or isinstance(block, bool)):
        raise ValueError(f"transform_block must be one of {list(HADAMARD_BLOCKS)} with the hadamard transform, found {block!r} with {transform!r}")
    if transform is None and not any(r.transform == "hadamard" for r in rules):
        raise ValueError("transform_block applies to hadamard rules, and this policy has none: give transform='hadamard' too")
    out = []
    for r in rules:
        if transform == "none":
            r = replace(r, transform=None, transform_block=None)
        elif r.quantized and (transform == "hadamard" or r.transform == "hadamard"):
            r = replace(r, transform="hadamard", transform_block=block or r.transform_block or DEFAULT_TRANSFORM_BLOCK)
        out.append(r)
    return tuple(out)


def _rule_from(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConvertError("policy_invalid", f"{where}: a rule must be a table/object")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConvertError("policy_invalid", f"{where}: unknown field(s) {sorted(unknown)} (rules take {sorted(_RULE_KEYS)})")
    match = raw.get("match", "*")
    patterns = (match,) if isinstance(match, str) else tuple(match) if isinstance(match, list) else None
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConvertError("policy_invalid", f"{where}: match must be a glob or a non-empty list of globs")
    kind = raw.get("kind")
    if kind is not None and kind not in KINDS:
        raise ConvertError("policy_invalid", f"{where}: kind must be one of {KINDS}, found {kind!r}")
    scheme = raw.get("scheme", "quant")
    if not isinstance(scheme, str) or (scheme not in ("quant", "keep") and scheme not in SCHEMES):
        raise ConvertError("policy_invalid", f"{where}: scheme must be quant, keep or one of {sorted(SCHEMES)}, found {scheme!r}")
    params = {k: raw.get(k) for k in ("bits", "group_size", "meta_bits")}
    if any(v is not None and (not isinstance(v, int) or isinstance(v, bool)) for v in params.values()):
        raise ConvertError("policy_invalid", f"{where}: bits, group_size and meta_bits must be integers")
    rule = Rule(match=patterns, kind=kind, scheme=scheme, **params)
    return replace(rule, **_transform_from(raw, where, rule.quantized))


def _transform_from(raw: dict[str, Any], where: str, quantized: bool) -> dict[str, Any]:
    """A rule's checked ``transform`` and ``transform_block`` (None, None when it has neither)."""
    transform, block = raw.get("transform"), raw.get("transform_block")
    if transform is not None and transform not in TRANSFORMS:
        raise ConvertError("policy_invalid", f"{where}: transform must be one of {list(TRANSFORMS)}, found {transform!r}")
    if block is not None and (transform != "hadamard" or not isinstance(block, int) or isinstance(block, bool) or block not in HADAMARD_BLOCKS):
        raise ConvertError("policy_invalid", f"{where}: transform_block must be one of {list(HADAMARD_BLOCKS)}, with transform = \"hadamard\"; found {block!r} with transform {transform!r}")
    if transform == "hadamard" and not quantized:
        raise ConvertError("policy_invalid", f"{where}: transform \"hadamard\" applies to quantized schemes, not {raw.get('scheme')!r}")
    return {"transform": transform, "transform_block": block}


def policy_from_dict(raw: Any, name: str) -> Policy:
    """Build a policy from parsed TOML/JSON (see the module docstring for the fields)."""
    if not isinstance(raw, dict):
        raise ConvertError("policy_invalid", f"{name}: a policy must be a table/object")
    for key, expected in _RECORD_KEYS.items():
        if expected is not None and raw.get(key, expected) != expected:
            raise ConvertError("policy_invalid", f"{name}: {key} must be {expected!r}, found {raw[key]!r}")
    unknown = set(raw) - _POLICY_KEYS - set(_RECORD_KEYS)
    if unknown:
        raise ConvertError("policy_invalid", f"{name}: unknown field(s) {sorted(unknown)} (a policy takes {sorted(_POLICY_KEYS)})")
    rules = raw.get("rules")
    if not isinstance(rules, list) or not rules:
        raise ConvertError("policy_invalid", f"{name}: rules must be a non-empty list")
    default = DEFAULT_SCHEME
    if "default" in raw:
        d = raw["default"]
        if not isinstance(d, dict) or set(d) - _SCHEME_KEYS or d.get("scheme") in (None, "quant", "keep") or d.get("transform", "none") != "none" or d.get("transform_block") is not None:
            raise ConvertError("policy_invalid", f"{name}: default must name a quantized scheme with its bits/group_size/meta_bits (a transform goes on the rules)")
        default = _concrete(d["scheme"], d.get("bits"), d.get("group_size"), d.get("meta_bits"), DEFAULT_SCHEME)
    keep_dtype = raw.get("keep_dtype", "source")
    if keep_dtype not in KEEP_DTYPES:
        raise ConvertError("policy_invalid", f"{name}: keep_dtype must be one of {KEEP_DTYPES}, found {keep_dtype!r}")
    parsed = tuple(_rule_from(r, f"{name}: rule {i}") for i, r in enumerate(rules))
    policy = Policy(str(raw.get("name", name)), parsed, default, keep_dtype, str(raw.get("description", "")))
    for rule in parsed:  # fail on a bad scheme now, not halfway through a model
        policy._scheme_of(rule, "f32")
    return policy


_QKV = ["*.q_proj.weight", "*.k_proj.weight", "*.v_proj.weight", "*.qkv_proj.weight", "*.query.weight", "*.key.weight", "*.value.weight"]
PRESETS: dict[str, dict[str, Any]] = {
    "qkvfp16": {
        "description": "the reference release: q/k/v projections in fp16, every other Linear and the embedding quantized",
        "rules": [
            {"match": _QKV, "kind": "linear", "scheme": "f16"},
            {"kind": "embedding", "scheme": "quant"},
            {"kind": "linear", "scheme": "quant"},
            {"scheme": "keep"},
        ],
    },
    "tiedq": {
        "description": "every Linear and the embedding quantized, q/k/v included",
        "rules": [{"kind": "embedding", "scheme": "quant"}, {"kind": "linear", "scheme": "quant"}, {"scheme": "keep"}],
    },
    "int8": {
        "description": "8-bit baseline: per-row int8 Linear weights, embeddings and the rest kept",
        "rules": [{"kind": "linear", "scheme": "int8_row"}, {"scheme": "keep"}],
    },
}


def preset(name: str) -> Policy:
    """A built-in policy by name: ``qkvfp16``, ``tiedq`` or ``int8``."""
    if name not in PRESETS:
        raise ValueError(f"unknown policy preset {name!r}; presets: {', '.join(PRESETS)} (or give a .toml/.json file)")
    return policy_from_dict({"name": name, **PRESETS[name]}, name)


def load_policy(spec: str | os.PathLike[str] | Policy) -> Policy:
    """A policy from a preset name, a ``.toml``/``.json`` file, or a :class:`Policy` as is."""
    if isinstance(spec, Policy):
        return spec
    text = str(spec)
    if text in PRESETS:
        return preset(text)
    path = Path(text)
    if path.suffix not in (".toml", ".json"):
        raise ValueError(f"unknown policy {text!r}: give a preset ({', '.join(PRESETS)}) or a .toml/.json file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConvertError("policy_invalid", f"cannot read policy file {text}: {exc.strerror or exc}") from exc
    try:
        raw = _parse_toml(data) if path.suffix == ".toml" else json.loads(data)
    except ValueError as exc:
        raise ConvertError("policy_invalid", f"{text}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    return policy_from_dict(raw, path.stem)


def _parse_toml(data: bytes) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConvertError("policy_invalid", "TOML policies need Python 3.11+ or the tomli package; use JSON") from None
    return tomllib.loads(data.decode("utf-8"))
