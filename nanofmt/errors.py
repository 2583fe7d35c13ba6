"""The nanofmt exception tree.

Every problem with a file's bytes is a :class:`NanoError` carrying a stable ``reason`` code
from ``spec/format.json`` (listed in SPEC.md), so callers and fuzzers can branch on the code
rather than parse messages. Two leaves say whose fault it is:

- :class:`MalformedError`: the bytes break the format.
- :class:`UnsupportedError`: the bytes are well formed but use a version or feature this
  reader does not implement (a newer major version, an unknown scheme).

Both are also ``ValueError``. A caller's bad *arguments* (not file contents) raise plain
``TypeError``/``ValueError``.
"""

from __future__ import annotations

from ._spec import REASONS

__all__ = ["NanoError", "MalformedError", "UnsupportedError", "error"]


class NanoError(Exception):
    """Base of every error about a Nano file's contents.

    Attributes:
        reason: stable reason code, one of the keys of ``REASONS``.
        path: the file concerned, when known.
        tensor: the logical or stored tensor concerned, when known.
        field: the record or header field concerned, when known.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        path: str | None = None,
        tensor: str | None = None,
        field: str | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        self.reason = reason
        self.path = path
        self.tensor = tensor
        self.field = field
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = [f"{self.path}" if self.path else None]
        where.append(f"tensor {self.tensor!r}" if self.tensor is not None else None)
        where.append(f"field {self.field!r}" if self.field else None)
        prefix = ": ".join(w for w in where if w)
        return f"{prefix}: {self.detail} [{self.reason}]" if prefix else f"{self.detail} [{self.reason}]"

    def with_context(self, *, path: str | None = None, tensor: str | None = None, field: str | None = None) -> NanoError:
        """Return the same error with the file, tensor and field filled in where they were unknown."""
        return type(self)(
            self.reason,
            self.detail,
            path=self.path or path,
            tensor=self.tensor if self.tensor is not None else tensor,
            field=self.field or field,
        )


class MalformedError(NanoError, ValueError):
    """The bytes violate the Nano format (or the safetensors container under it)."""


class UnsupportedError(NanoError, ValueError):
    """Well-formed input that uses a version or feature this reader does not implement."""


def error(reason: str, message: str, **where: str | None) -> NanoError:
    """Build the right leaf for ``reason`` (its category comes from the spec)."""
    cls = UnsupportedError if REASONS[reason] == "unsupported" else MalformedError
    return cls(reason, message, **where)
