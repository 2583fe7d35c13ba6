"""Structured fuzzing of the reader: mutated valid files give a result or a NanoError, never more.

Each test starts from small valid files (one per scheme setting, ``fuzz/oracle.py``) and
changes one aspect: header JSON values, record JSON values, raw header bytes, data bytes,
offsets, truncation, appended bytes. :func:`oracle.exercise_bytes` then runs every entry point
(``parse_header``, ``open_file`` and all ``NanoFile`` accessors, ``dequantize``,
``inspect_path``, ``verify_path``) and checks the contract, allocations included.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import nanofmt_fuzz_oracle as oracle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SEEDS = oracle.seed_files()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seed_names = st.sampled_from(sorted(SEEDS))


def _records(data: bytes) -> tuple[dict, dict, bytes]:
    parts = oracle.split_file(data)
    assert parts is not None
    header, body = parts
    return header, json.loads(header["__metadata__"]["nanofmt"]), body


@FUZZ
@given(data=st.binary(max_size=600))
def test_reader_arbitrary_bytes_keep_the_contract(workdir: Path, data: bytes) -> None:
    oracle.exercise_bytes(data, workdir, trace=True)


@FUZZ
@given(name=seed_names, fragment=st.sampled_from(oracle.INTERESTING), pick=st.integers(0, 10**6))
def test_reader_header_value_replaced_keeps_the_contract(workdir: Path, name: str, fragment: str, pick: int) -> None:
    header, _, body = _records(SEEDS[name])
    paths = list(oracle._paths(header))
    text = oracle.splice(header, paths[pick % len(paths)], fragment)
    oracle.exercise_bytes(oracle.join_file(text.encode("utf-8", "surrogatepass"), body), workdir, trace=True)


@FUZZ
@given(name=seed_names, fragment=st.sampled_from(oracle.INTERESTING), pick=st.integers(0, 10**6))
def test_reader_record_value_replaced_keeps_the_contract(workdir: Path, name: str, fragment: str, pick: int) -> None:
    header, records, body = _records(SEEDS[name])
    paths = list(oracle._paths(records))
    header["__metadata__"]["nanofmt"] = oracle.splice(records, paths[pick % len(paths)], fragment)
    oracle.exercise_bytes(oracle.join_file(json.dumps(header).encode(), body), workdir, trace=True)


@FUZZ
@given(name=seed_names, seed=st.integers(0, 2**32), steps=st.integers(1, 4))
def test_reader_random_structured_mutations_keep_the_contract(workdir: Path, name: str, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    data = SEEDS[name]
    for _ in range(steps):
        data = oracle.structured_mutation(data, rng, oracle.byte_mutation(rng))
    oracle.exercise_bytes(data, workdir, trace=True)


@FUZZ
@given(name=seed_names, cut=st.integers(0, 10**6))
def test_reader_truncated_file_is_file_too_short(workdir: Path, name: str, cut: int) -> None:
    data = SEEDS[name]
    truncated = data[: cut % len(data)]
    assert oracle.exercise_bytes(truncated, workdir)[-1:] == ["file_too_short"]


@FUZZ
@given(name=seed_names, extra=st.binary(min_size=1, max_size=64))
def test_reader_appended_bytes_are_trailing_bytes(workdir: Path, name: str, extra: bytes) -> None:
    assert set(oracle.exercise_bytes(SEEDS[name] + extra, workdir)) == {"trailing_bytes"}


@FUZZ
@given(name=seed_names, pick=st.integers(0, 10**6), delta=st.sampled_from([-9, -8, -2, -1, 1, 2, 8, 2**32, 2**64]))
def test_reader_shifted_offset_is_refused(workdir: Path, name: str, pick: int, delta: int) -> None:
    header, _, body = _records(SEEDS[name])
    entries = [k for k in header if k != "__metadata__"]
    entry = header[entries[pick % len(entries)]]
    entry["data_offsets"][pick % 2] += delta
    reasons = oracle.exercise_bytes(oracle.join_file(json.dumps(header).encode(), body), workdir)
    assert reasons and set(reasons) <= {"data_offsets_invalid", "header_entry_invalid", "file_too_short"}


@FUZZ
@given(name=seed_names, pick=st.integers(0, 10**6), dtype=st.sampled_from(["F32", "F16", "BF16", "U8", "I8", "F64", "f32", ""]))
def test_reader_changed_dtype_is_refused(workdir: Path, name: str, pick: int, dtype: str) -> None:
    header, _, body = _records(SEEDS[name])
    entries = [k for k in header if k != "__metadata__"]
    entry = header[entries[pick % len(entries)]]
    same = entry["dtype"] == dtype
    entry["dtype"] = dtype
    reasons = oracle.exercise_bytes(oracle.join_file(json.dumps(header).encode(), body), workdir)
    assert (not reasons) if same else reasons


@FUZZ
@given(name=seed_names, pick=st.integers(0, 10**6), shape=st.lists(st.integers(0, 2**31), max_size=9))
def test_reader_changed_stored_shape_keeps_the_contract(workdir: Path, name: str, pick: int, shape: list[int]) -> None:
    header, records, body = _records(SEEDS[name])
    entries = [k for k in header if k != "__metadata__"]
    entry = header[entries[pick % len(entries)]]
    entry["shape"] = shape
    if entries[pick % len(entries)] in records["tensors"]:  # a passthrough tensor: let the record agree
        records["tensors"][entries[pick % len(entries)]]["shape"] = shape
        header["__metadata__"]["nanofmt"] = json.dumps(records)
    oracle.exercise_bytes(oracle.join_file(json.dumps(header).encode(), body), workdir, trace=True)
