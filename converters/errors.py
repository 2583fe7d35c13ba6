"""The converter's one exception: a conversion that cannot go on, with a stable reason slug.

A :class:`ConvertError` is about the *inputs of a conversion* (the source folder, the policy
file, the destination), not about a Nano file's bytes (that is ``nanofmt.NanoError``). It is a
``ValueError`` so callers that only know the standard tree still catch it; the CLI prints its
message as one line and exits 1.

Reasons:
    config_missing        the source folder has no config.json
    weights_missing       no model.safetensors / shards / pytorch_model*.bin in the source
    source_unreadable     a source file cannot be opened or read
    source_malformed      a source weight file or index is not what it claims to be
    hub_unavailable       a hub id could not be downloaded (offline, unknown repo, no access)
    architecture_unknown  transformers does not know the model type, so Linear weights cannot be found
    no_linear_weights     the model has no nn.Linear weights in the source: nothing a Nano scheme applies to
    dtype_unsupported     a floating-point source dtype Nano cannot record (e.g. float8)
    nonfinite_weights     a tensor holds NaN or infinity
    value_out_of_range    a tensor's values do not fit the scheme chosen for it (fp16 range)
    policy_invalid        a policy file or rule that does not parse or names an unknown field/scheme
    dst_exists            the destination exists and is not empty (use force)
    dst_is_source         the destination is the source folder or contains it
    dst_unwritable        the destination's parent cannot hold a new folder
    write_failed          writing the output failed (full disk, I/O error)
    budget_too_small      --target-bpw / --max-size below the cheapest scheme for every tensor
    calibration_invalid   a calibration text or statistics file that cannot be used
    quality_gate_failed   --quality-gate: the result is further from the 8-bit baseline than allowed
"""

from __future__ import annotations

__all__ = ["ConvertError", "REASONS"]

REASONS = frozenset(
    line.split()[0]
    for line in (__doc__ or "").split("Reasons:")[1].splitlines()
    if line.startswith("    ") and line.split()
)


class ConvertError(ValueError):
    """A conversion cannot proceed.

    Attributes:
        reason: a slug from :data:`REASONS` callers can branch on.
        tensor: the source tensor concerned, when there is one.
    """

    def __init__(self, reason: str, message: str, *, tensor: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.reason = reason
        self.tensor = tensor
        self.detail = message
        prefix = f"tensor {tensor!r}: " if tensor else ""
        super().__init__(f"{prefix}{message} [{reason}]")

    def __reduce__(self) -> tuple[object, tuple[str, str, str | None]]:
        # raised in worker processes too: rebuild from the fields, not from the rendered message
        return _rebuild, (self.reason, self.detail, self.tensor)


def _rebuild(reason: str, message: str, tensor: str | None) -> ConvertError:
    return ConvertError(reason, message, tensor=tensor)
