"""Scheme parameters and the stored layout each scheme implies (SPEC.md, "Schemes").

A :class:`Scheme` is the choice made for one logical tensor (name plus bits, group size, ...).
:func:`component_layout` turns a scheme and a logical shape into the stored component tensors:
their names, dtypes and shapes, evaluated from the shape formulas in ``spec/format.json`` so
that no size is retyped here.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ._spec import SCHEMES, SOURCE_DTYPES, TRANSFORM_SPECS, TRANSFORMS
from .errors import error

__all__ = ["Scheme", "Component", "component_layout", "stored_name", "PASSTHROUGH_DTYPES"]

# source dtype name -> passthrough scheme that stores it unchanged
PASSTHROUGH_DTYPES = {name: name for name, s in SCHEMES.items() if s["kind"] == "passthrough"}
assert set(PASSTHROUGH_DTYPES) == set(SOURCE_DTYPES), "every source dtype needs a passthrough scheme"


@dataclass(frozen=True)
class Scheme:
    """How one logical tensor is stored.

    Args:
        name: a scheme name from SPEC.md (``"f16"``, ``"int8_row"``, ``"affine"``, ``"affine_dq"``...).
        bits: code width, for quantized schemes.
        group_size: elements per group along a row, for the affine schemes.
        meta_bits: width of the per-group scale and offset codes, for ``affine_dq``.
        transform: ``"none"``, or ``"hadamard"`` (format 1.1): a randomized Hadamard rotation of
            each row, in blocks of ``transform_block`` columns (SPEC.md 6.2).
        transform_block: 16, 64, 256, 1024 or 4096 for ``"hadamard"``; None otherwise.

    Example:
        >>> Scheme("affine_dq", bits=4, group_size=32, meta_bits=6).bits_per_weight((4096, 4096))
        4.5
        >>> Scheme("affine_dq", bits=4, group_size=32, meta_bits=6, transform="hadamard", transform_block=64).label()
        'affine_dq:4b/g32/m6+h64'
    """

    name: str
    bits: int | None = None
    group_size: int | None = None
    meta_bits: int | None = None
    transform: str = "none"
    transform_block: int | None = None

    @property
    def kind(self) -> str:
        return str(SCHEMES[self.name]["kind"]) if self.name in SCHEMES else "unknown"

    @property
    def is_passthrough(self) -> bool:
        return self.kind == "passthrough"

    def label(self) -> str:
        """Short human name, e.g. ``affine_dq:4b/g32/m6``."""
        parts = [f"{self.bits}b"] if self.bits is not None and self.kind != "int8_row" else []
        parts += [f"g{self.group_size}"] if self.group_size is not None else []
        parts += [f"m{self.meta_bits}"] if self.meta_bits is not None else []
        base = f"{self.name}:{'/'.join(parts)}" if parts else self.name
        return base + (f"+h{self.transform_block}" if self.transform == "hadamard" else "")

    @property
    def min_version(self) -> tuple[int, int]:
        """The lowest format version that has this scheme's transform (SPEC.md 5)."""
        return _since(self.transform) if self.transform in TRANSFORMS else (1, 0)

    def check(self, shape: tuple[int, ...], *, tensor: str | None = None, version: tuple[int, int] | None = None) -> None:
        """Raise a NanoError unless this scheme's parameters are allowed and fit ``shape``.

        ``version`` is the format version of the file the record comes from: a transform newer
        than that is unknown to it (SPEC.md 5), whatever this reader implements.
        """
        spec = SCHEMES.get(self.name)
        if spec is None:
            raise error("scheme_unknown", f"unknown scheme {self.name!r}", tensor=tensor, field="scheme")
        if self.transform not in TRANSFORMS:
            raise error("transform_unknown", f"unknown transform {self.transform!r}", tensor=tensor, field="transform")
        if version is not None and version < _since(self.transform):
            since = TRANSFORM_SPECS[self.transform]["since"]
            raise error(
                "transform_unknown",
                f"transform {self.transform!r} is a format {since} feature, the file declares {version[0]}.{version[1]}",
                tensor=tensor,
                field="transform",
            )
        for field, allowed_key in (("bits", "bits"), ("group_size", "group_sizes"), ("meta_bits", "meta_bits")):
            value = getattr(self, field)
            allowed = spec.get(allowed_key)
            if allowed is None and value is not None:
                raise error("scheme_params_invalid", f"{self.name} takes no {field}, found {value}", tensor=tensor, field=field)
            if allowed is not None and value not in allowed:
                raise error(
                    "scheme_params_invalid",
                    f"{self.name} needs {field} in {allowed}, found {value!r}",
                    tensor=tensor,
                    field=field,
                )
        if not self.is_passthrough and (len(shape) != 2 or min(shape) < 1):
            raise error(
                "scheme_params_invalid",
                f"{self.name} stores 2-D tensors with at least one row and column, found shape {list(shape)}",
                tensor=tensor,
                field="shape",
            )
        self._check_transform(shape, tensor)

    def _check_transform(self, shape: tuple[int, ...], tensor: str | None) -> None:
        blocks = TRANSFORM_SPECS[self.transform].get("transform_blocks")
        block = self.transform_block
        if blocks is None:
            if block is not None:
                raise error("transform_params_invalid", f"transform {self.transform!r} takes no transform_block, found {block}", tensor=tensor, field="transform_block")
            return
        if block is None or block not in blocks:
            raise error("transform_params_invalid", f"transform {self.transform!r} needs transform_block in {blocks}, found {block!r}", tensor=tensor, field="transform_block")
        if self.is_passthrough:
            raise error("transform_params_invalid", f"transform {self.transform!r} applies to quantized schemes, not {self.name}", tensor=tensor, field="transform")
        if shape[1] % block:
            raise error("transform_params_invalid", f"cols {shape[1]} is not a multiple of transform_block {block}", tensor=tensor, field="transform_block")

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        """Stored bits per logical element, all metadata included."""
        n = math.prod(shape)
        stored = sum(c.nbytes for c in component_layout(self, shape, "x").values())
        return 8 * stored / n if n else 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.name}
        for field in ("bits", "group_size", "meta_bits"):
            if getattr(self, field) is not None:
                out[field] = getattr(self, field)
        out["transform"] = self.transform
        if self.transform_block is not None:
            out["transform_block"] = self.transform_block
        return out


@dataclass(frozen=True)
class Component:
    """One stored tensor of a logical tensor."""

    role: str | None  # None for a passthrough tensor, stored under the logical name itself
    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        from ._spec import DTYPE_SIZES

        return math.prod(self.shape) * int(DTYPE_SIZES[self.dtype])


def stored_name(logical: str, role: str | None) -> str:
    """The stored tensor name of a component: ``<logical>_<role>`` (SPEC.md, "Component names")."""
    return logical if role is None else f"{logical}_{role}"


# --- shape formulas from format.json, e.g. "[rows, ceil(cols / 8) * bits]" --------------------

_ALLOWED_NODES = (ast.Expression, ast.List, ast.Load, ast.Name, ast.Constant, ast.BinOp, ast.Call, ast.Div, ast.Mult)


def _compile_shape(text: str) -> ast.Expression:
    tree = ast.parse(text, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise AssertionError(f"format.json shape formula {text!r} uses {type(node).__name__}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id == "ceil"):
            raise AssertionError(f"format.json shape formula {text!r} calls something other than ceil")
    return tree


def _evaluate(node: ast.AST, env: dict[str, int]) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.List):
        dims = [_evaluate(e, env) for e in node.elts]
        assert all(d.denominator == 1 for d in dims), "a shape formula left a fraction"  # e.g. cols / 8 needs cols % 8 == 0
        return tuple(int(d) for d in dims)
    if isinstance(node, ast.Name):
        return Fraction(env[node.id])
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int)
        return Fraction(node.value)
    if isinstance(node, ast.Call):
        return Fraction(math.ceil(_evaluate(node.args[0], env)))
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left, env), _evaluate(node.right, env)
    return left / right if isinstance(node.op, ast.Div) else left * right


_FORMULAS = {
    name: [(c["role"], c["dtype"], _compile_shape(c["shape"])) for c in spec.get("components", [])]
    for name, spec in SCHEMES.items()
}
_TRANSFORM_FORMULAS = {
    name: [(c["role"], c["dtype"], _compile_shape(c["shape"])) for c in spec.get("components", [])]
    for name, spec in TRANSFORM_SPECS.items()
}


def _since(transform: str) -> tuple[int, int]:
    major, minor = (int(p) for p in TRANSFORM_SPECS[transform]["since"].split("."))
    return major, minor


def component_layout(scheme: Scheme, shape: tuple[int, ...], logical: str) -> dict[str | None, Component]:
    """The stored components of ``logical`` under ``scheme``, keyed by role (None for passthrough).

    The scheme's components come first, then its transform's (``signs`` for ``hadamard``): this
    is the component order of SPEC.md 6.3, which the checksum follows. The scheme must already
    have passed :meth:`Scheme.check` for ``shape``.
    """
    spec = SCHEMES[scheme.name]
    if spec["kind"] == "passthrough":
        return {None: Component(None, logical, spec["stored_dtype"], tuple(shape))}
    rows, cols = shape
    env = {"rows": rows, "cols": cols, "bits": scheme.bits or 0}
    if scheme.group_size:
        env["group_size"] = scheme.group_size
        env["groups"] = -(-cols // scheme.group_size)
    if scheme.meta_bits:
        env["meta_bits"] = scheme.meta_bits
        env["block_groups"] = int(spec["block_groups"])
    formulas = _FORMULAS[scheme.name] + _TRANSFORM_FORMULAS[scheme.transform]
    return {role: Component(role, stored_name(logical, role), dtype, _evaluate(formula, env)) for role, dtype, formula in formulas}
