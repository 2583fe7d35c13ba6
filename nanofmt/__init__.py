"""nanofmt: an openly specified, quantized storage format for language models.

The core is pure numpy: quantize and dequantize every scheme of SPEC.md (with its transform:
``nanofmt.transforms`` holds the ``hadamard`` rotation's functions), pack bits, and read, write
and validate Nano files. The torch runtime lives in ``nanofmt.loaders`` and the Hugging
Face converter in ``nanofmt.converters``.

Example:
    >>> import numpy as np, nanofmt
    >>> w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    >>> qt = nanofmt.quantize(w, nanofmt.Scheme("affine_dq", bits=4, group_size=32, meta_bits=6))
    >>> nanofmt.dequantize(qt).shape
    (8, 64)
"""

from ._spec import VERSION_WRITTEN, VERSIONS_READABLE
from .codec import QuantizedTensor, dequantize, quantize
from .errors import MalformedError, NanoError, UnsupportedError
from .files import NanoFile, NanoWriter, TensorPlan, open_file, write_file
from .schemes import Scheme

__version__ = "0.1.0"
FORMAT_VERSION = f"{VERSION_WRITTEN[0]}.{VERSION_WRITTEN[1]}"

__all__ = [
    "FORMAT_VERSION",
    "VERSIONS_READABLE",
    "Scheme",
    "QuantizedTensor",
    "quantize",
    "dequantize",
    "NanoFile",
    "open_file",
    "write_file",
    "NanoWriter",
    "TensorPlan",
    "NanoError",
    "MalformedError",
    "UnsupportedError",
]
