"""Hugging Face folder -> Nano folder conversion (``nanofmt.converters``).

The converting process itself needs only numpy (and safetensors headers); torch and
transformers are used to read the model architecture (in a child process unless already
loaded), to read ``pytorch_model*.bin`` sources, and by the shipped runtime.

Example::

    from nanofmt.converters import convert, dequantize_folder
    report = convert("models/smollm2-135m", "out/smollm2-nano", policy="qkvfp16")
    print(report.totals()["bits_per_weight"])
    dequantize_folder("out/smollm2-nano", "out/smollm2-f16", dtype="f16")
"""

from .convert import convert
from .dequantize import dequantize_folder
from .errors import ConvertError
from .policy import PRESETS, Policy, Rule, load_policy, preset
from .report import ConversionReport, format_report
from .stream import ProgressEvent

__all__ = [
    "convert",
    "dequantize_folder",
    "ConversionReport",
    "ConvertError",
    "ProgressEvent",
    "Policy",
    "Rule",
    "PRESETS",
    "preset",
    "load_policy",
    "format_report",
]
