"""What every fuzzer of nanofmt checks, and the inputs it starts from.

The contract (SPEC.md, "Reading untrusted files"): any bytes given to the reader, the
validator or ``nanofmt inspect/verify`` give a result or a :class:`nanofmt.NanoError` whose
reason is listed in ``spec/format.json``; never another exception, a hang, or an allocation
far beyond the file's size. :func:`exercise_bytes` runs every entry point on one input and
raises ``AssertionError`` (or lets the foreign exception through) when the contract breaks.

Used by the atheris harnesses in this folder and by the hypothesis fuzzers in ``tests/fuzz``.
It imports nanofmt lazily, so a harness can instrument the import first.
"""

from __future__ import annotations

import functools
import json
import math
import random
import struct
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "vectors"
PREFIX = struct.Struct("<Q")
ALLOC_FACTOR, ALLOC_SLACK = 64, 8 << 20  # peak traced allocation allowed: 64 x file size + 8 MiB


# --- seeds -----------------------------------------------------------------------------------


def _seed_tensors() -> Iterator[tuple[str, dict[str, Any]]]:
    """(file stem, {name: QuantizedTensor | tie target}) for one small file per scheme setting."""
    from nanofmt import Scheme, quantize
    from nanofmt._spec import SCHEMES

    rng = np.random.default_rng(7)

    def values(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols)).astype(np.float32)

    for name in ("f32", "f16", "bf16"):
        yield name, {"w": quantize(values(2, 3), Scheme(name)), "empty": quantize(np.zeros((0, 3), np.float32), Scheme(name))}
    yield "f16_scalar", {"s": quantize(np.array(1.5, np.float16), Scheme("f16"))}
    yield "int8_row", {"w": quantize(values(3, 40), Scheme("int8_row", bits=8))}
    for bits in SCHEMES["affine"]["bits"]:
        yield f"affine_{bits}b", {"w": quantize(values(2, 44), Scheme("affine", bits=bits, group_size=32))}
    for bits in SCHEMES["affine_dq"]["bits"]:
        for meta in SCHEMES["affine_dq"]["meta_bits"]:
            yield (
                f"affine_dq_{bits}b_m{meta}",
                {"w": quantize(values(2, 300), Scheme("affine_dq", bits=bits, group_size=32, meta_bits=meta))},
            )
    embed = quantize(values(4, 64), Scheme("affine_dq", bits=4, group_size=32, meta_bits=6))
    yield "tied", {"embed": embed, "head": "embed", "norm": quantize(values(1, 64)[0], Scheme("f32"))}
    # format 1.1: the transform's field and its signs component, tied and beside a 1.0 tensor
    rotated = quantize(values(2, 64), Scheme("affine", bits=4, group_size=32, transform="hadamard", transform_block=16))
    yield "hadamard", {"w": rotated, "head": "w", "plain": quantize(values(2, 40), Scheme("int8_row", bits=8))}


@functools.cache
def seed_files() -> dict[str, bytes]:
    """Small valid Nano files, one per scheme setting (plus an empty tensor, a scalar and a tie)."""
    from nanofmt import write_file

    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stem, tensors in _seed_tensors():
            path = Path(tmp) / f"{stem}.safetensors"
            write_file(path, tensors, extra={"seed": stem})
            out[stem] = path.read_bytes()
    return out


def vector_files(root: Path = VECTORS) -> dict[str, bytes]:
    """Every ``*.safetensors`` under ``spec/vectors`` (valid, malformed and regression vectors)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors")) if p.is_file()}


# --- the contract ----------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The reason of a NanoError, after checking it is one the spec lists, in the right leaf."""
    from nanofmt._spec import REASONS
    from nanofmt.errors import MalformedError, NanoError, UnsupportedError

    if not isinstance(exc, NanoError):
        raise exc
    assert exc.reason in REASONS, exc.reason
    expected = UnsupportedError if REASONS[exc.reason] == "unsupported" else MalformedError
    assert type(exc) is expected, f"{exc.reason} raised as {type(exc).__name__}"
    assert str(exc) and len(str(exc)) < 4000, "error messages are short"
    return exc.reason


def _check_open_file(path: Path) -> tuple[list[str], bool]:
    """Open and read everything; returns (reasons hit, whether the file verified clean)."""
    from nanofmt import NanoError, dequantize, open_file
    from nanofmt.schemes import component_layout

    try:
        f = open_file(path)
    except NanoError as exc:
        return [_reason(exc)], False
    reasons: list[str] = []
    with f:
        problems = [_reason(p) for p in f.problems()]
        reasons += problems
        try:
            f.verify()
            assert not problems, "verify() passed although problems() found some"
        except NanoError as exc:
            assert problems and _reason(exc) == problems[0], "verify() raises the first problem"
        for name in f:
            qt = f.tensor(name)
            stored = f.stored_record(name)
            assert stored.scheme is not None
            layout = component_layout(stored.scheme, stored.shape, stored.name)
            for role, component in layout.items():
                view = qt.parts[role]
                assert view.shape == component.shape, f"{component.name}: view {view.shape}, layout {component.shape}"
                assert not view.flags.writeable, "views of the file are read-only"
            try:
                f.check_checksum(name)
            except NanoError as exc:
                reasons.append(_reason(exc))
            try:
                full = dequantize(qt, "f32")
                assert full.shape == qt.shape and full.dtype == np.float32
                if qt.shape and qt.shape[0]:
                    assert np.array_equal(dequantize(qt, "f32", rows=slice(0, 1)), full[:1], equal_nan=True)
            except NanoError as exc:
                assert problems, "a file that verifies clean decodes"
                reasons.append(_reason(exc))
    return reasons, not problems


def exercise_file(path: Path) -> list[str]:
    """Every reader entry point on one file; returns the reasons hit (empty: a valid file)."""
    from nanofmt._spec import REASONS
    from nanofmt.container import parse_header
    from nanofmt.errors import NanoError
    from nanofmt.inspect import inspect_path, verify_path

    data = path.read_bytes()
    reasons: list[str] = []
    if len(data) >= 8:
        (length,) = PREFIX.unpack(data[:8])
        if length <= len(data) - 8:
            try:
                parse_header(data[8 : 8 + length], len(data) - 8 - length)
            except NanoError as exc:
                reasons.append(_reason(exc))
            else:  # differential: a container nanofmt accepts is one the Rust safetensors reader accepts
                import safetensors

                try:
                    safetensors.deserialize(data)
                except Exception as exc:
                    raise AssertionError(f"nanofmt accepts a header that safetensors refuses: {exc}") from exc
    found, clean = _check_open_file(path)
    reasons += found
    try:
        summary = inspect_path(path)
        json.dumps(summary, default=str)  # what `nanofmt inspect --json` prints
        assert all(math.prod(t["shape"]) >= 0 for t in summary["tensors"])
    except NanoError as exc:
        reasons.append(_reason(exc))
    problems = verify_path(path)
    assert all(problem.reason in REASONS for problem in problems), [p.reason for p in problems]
    assert (not problems) == clean, f"verify_path found {[p.reason for p in problems]}, the reader clean={clean}"
    return reasons


def exercise_bytes(data: bytes, workdir: Path, *, trace: bool = False) -> list[str]:
    """Write ``data`` to a fresh file in ``workdir`` and run :func:`exercise_file` on it.

    With ``trace``, also checks the peak traced allocation (numpy reports its buffers to
    tracemalloc) against ALLOC_FACTOR x the input size + ALLOC_SLACK.
    """
    path = workdir / "input.safetensors"
    path.unlink(missing_ok=True)  # a new inode: never truncate a file an old map may still see
    path.write_bytes(data)
    if not trace:
        return exercise_file(path)
    tracemalloc.start()
    try:
        reasons = exercise_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= ALLOC_FACTOR * len(data) + ALLOC_SLACK, f"peak allocation {peak} bytes for a {len(data)}-byte input"
    return reasons


def check_unpack(data: bytes) -> None:
    """The unpacker on arbitrary bytes of a valid shape: codes fit, and pack inverts it up to padding."""
    from nanofmt.bits import pack_rows, packed_row_bytes, padding_is_zero, unpack_rows

    if len(data) < 3:
        return
    bits, n = 1 + data[0] % 8, int.from_bytes(data[1:3], "little") % 2048
    body = data[3:]
    width = packed_row_bytes(n, bits)
    rows = len(body) // width if width else data[0] // 8
    packed = np.frombuffer(body[: rows * width], np.uint8).reshape(rows, width)
    codes = unpack_rows(packed, bits, n)
    assert codes.shape == (rows, n) and codes.dtype == np.uint8
    assert not (codes >> bits).any(), "every code fits in its bits"
    repacked = pack_rows(codes, bits)
    assert repacked.shape == packed.shape
    assert np.array_equal(unpack_rows(repacked, bits, n), codes)
    assert padding_is_zero(packed, bits, n) == np.array_equal(repacked, packed), "only padding bits are lost"


# --- structured mutation ---------------------------------------------------------------------
# Raw byte mutation rarely gets past the JSON parser, and almost never reaches the record JSON,
# which is escaped inside a header string. These edits keep the length prefix consistent and
# replace one JSON value (in the header or in the records) by an interesting one.

INTERESTING = [
    "0",
    "-0",
    "1",
    "-1",
    "8",
    "2147483647",
    "2147483648",
    "4294967296",
    "1099511627777",
    "9223372036854775807",
    "18446744073709551616",
    "1" * 5000,
    "1.0",
    "-0.0",
    "1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    "true",
    "false",
    "null",
    '""',
    '"x"',
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '"1.0\\n"',
    '"2.0"',
    '"0.9"',
    '"F32"',
    '"F16"',
    '"BF16"',
    '"U8"',
    '"I8"',
    '"F64"',
    '"f16"',
    '"bf16"',
    '"affine"',
    '"affine_dq"',
    '"int8_row"',
    '"none"',
    '"crc32:00000000"',
    '"crc32:0000000"',
    "[]",
    "[0]",
    "[0, 0]",
    "[1, 1]",
    "[0, 2147483647, 2147483647, 2147483647]",
    "[-1]",
    "[1.5]",
    "[true]",
    "[1,1,1,1,1,1,1,1,1]",
    "{}",
    "[" * 70 + "]" * 70,
    "[" * 3000 + "]" * 3000,
    '"' + "a" * 1100 + '"',
    '{"tie": "w"}',
]
_SENTINEL = "\x00nanofmt-fuzz\x00"


def split_file(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(header object, data buffer) of a file whose header is a JSON object; None otherwise."""
    if len(data) < 8:
        return None
    (length,) = PREFIX.unpack(data[:8])
    if length > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + length])
    except (ValueError, RecursionError):
        return None
    return (header, data[8 + length :]) if isinstance(header, dict) else None


def join_file(header_text: bytes, body: bytes) -> bytes:
    return PREFIX.pack(len(header_text)) + header_text + body


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _paths(value, (*prefix, i))


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        tree = tree[step]
    return tree


def splice(tree: Any, path: tuple[Any, ...], fragment: str) -> str:
    """JSON text of ``tree`` with the value at ``path`` replaced by the raw text ``fragment``."""
    if not path:
        return fragment
    parent = _get(tree, path[:-1])
    old = parent[path[-1]]
    parent[path[-1]] = _SENTINEL
    try:
        text = json.dumps(tree)
    finally:
        parent[path[-1]] = old
    return text.replace(json.dumps(_SENTINEL), fragment, 1)


def _edit_json(tree: Any, rng: random.Random) -> str:
    """One random edit of a JSON value: replace a value, drop or duplicate a key, or add one."""
    paths = list(_paths(tree))
    path = paths[rng.randrange(len(paths))]
    node = _get(tree, path)
    action = rng.randrange(4)
    if isinstance(node, dict) and node and action == 0:  # duplicate a key
        key = rng.choice(list(node))
        return splice(tree, path, "{" + json.dumps(key) + ":" + json.dumps(node[key]) + "," + json.dumps(node)[1:])
    if isinstance(node, dict) and node and action == 1:  # drop a key
        key = rng.choice(list(node))
        return splice(tree, path, json.dumps({k: v for k, v in node.items() if k != key}))
    if isinstance(node, dict) and action == 2:  # add a key
        return splice(tree, path, json.dumps({**node, rng.choice(["x", "tie", "bits", "checksum", "__metadata__"]): 1}))
    return splice(tree, path, rng.choice(INTERESTING))


def structured_mutation(data: bytes, rng: random.Random, raw: Callable[[bytes, int], bytes]) -> bytes:
    """One structure-aware mutation of a Nano file; ``raw(bytes, max_size)`` mutates plain bytes."""
    parts = split_file(data)
    if parts is None:
        return raw(data, max(len(data) * 2, 64))
    header, body = parts
    records_text = header.get("__metadata__", {}).get("nanofmt") if isinstance(header.get("__metadata__"), dict) else None
    records = None
    if isinstance(records_text, str):
        try:
            records = json.loads(records_text)
        except (ValueError, RecursionError):
            records = None
    choice = rng.randrange(8)
    if choice == 0:  # edit a header value
        return join_file(_edit_json(header, rng).encode("utf-8", "surrogatepass"), body)
    if choice in (1, 2) and records is not None:  # edit a record value
        header["__metadata__"]["nanofmt"] = _edit_json(records, rng)
        return join_file(json.dumps(header).encode(), body)
    if choice == 3 and isinstance(records_text, str):  # raw bytes of the record JSON
        mutated = raw(records_text.encode("utf-8", "surrogatepass"), max(2 * len(records_text), 64))
        header["__metadata__"]["nanofmt"] = mutated.decode("utf-8", "replace")
        return join_file(json.dumps(header).encode(), body)
    if choice == 4:  # raw bytes of the header JSON, prefix kept consistent
        return join_file(raw(data[8 : len(data) - len(body)], max(2 * len(data), 64)), body)
    if choice == 5 and body:  # one bit of the data buffer
        at = rng.randrange(8 * len(body))
        flipped = bytearray(body)
        flipped[at // 8] ^= 1 << (at % 8)
        return data[: len(data) - len(body)] + bytes(flipped)
    if choice == 6:  # truncate or append
        return data[: rng.randrange(len(data))] if rng.random() < 0.5 else data + rng.randbytes(rng.randrange(1, 9))
    return raw(data, max(len(data) * 2, 64))


def byte_mutation(rng: random.Random) -> Callable[[bytes, int], bytes]:
    """A plain random byte mutator (flip, set, insert, delete), for runs without libFuzzer."""

    def mutate(data: bytes, max_size: int) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(len(out) + 1)
            kind = rng.randrange(4)
            if kind == 0 and at < len(out):
                out[at] ^= 1 << rng.randrange(8)
            elif kind == 1 and at < len(out):
                out[at] = rng.choice(b'\x00\xff"{}[],:\\0-9eEn.')
            elif kind == 2:
                out[at:at] = rng.randbytes(rng.randrange(1, 4))
            else:
                del out[at : at + rng.randrange(1, 4)]
        return bytes(out[:max_size])

    return mutate
