"""Coverage-guided fuzzing of the Nano reader with atheris (libFuzzer for Python).

Every input is written to a file and run through every entry point (``parse_header``,
``open_file`` and all ``NanoFile`` accessors, ``dequantize``, ``inspect_path``,
``verify_path``, plus a differential check against the Rust safetensors reader); see
``oracle.py`` for the contract. A structure-aware mutator edits header and record JSON
values, keeps the length prefix consistent and flips data bits, so inputs get past the
JSON parser. Seeds: one small valid file per scheme setting and every file in spec/vectors/.

    python fuzz/fuzz_reader.py -max_total_time=3600 fuzz-corpus/reader   # libFuzzer flags and corpus dirs
    python fuzz/fuzz_reader.py crash-1234abcd                            # replay one input

``fuzz/run.sh`` runs this and ``fuzz_unpack.py`` for a bounded time (CI). Any crash it finds
becomes a regression vector in spec/vectors/regressions/ (see fuzz/README.md).
"""

from __future__ import annotations

import collections
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["nanofmt"]):
    import nanofmt  # noqa: F401
    import nanofmt.bits  # noqa: F401
    import nanofmt.container  # noqa: F401
    import nanofmt.inspect  # noqa: F401
    import nanofmt.records  # noqa: F401

import oracle  # noqa: E402  (this folder; imported after nanofmt is instrumented)

WORK = Path(tempfile.mkdtemp(prefix="nanofmt-fuzz-reader-"))
# libFuzzer ends the process without running Python's exit hooks, so the reasons hit so far
# are written out every few seconds (--reasons-to=FILE) for run.sh to report.
_reasons: collections.Counter[str] = collections.Counter()
_reasons_file: list[Path] = []
_last_dump = [0.0]


def test_one_input(data: bytes) -> None:
    reasons = oracle.exercise_bytes(data, WORK)
    _reasons.update(set(reasons) or {"(valid)"})
    if _reasons_file and time.monotonic() - _last_dump[0] > 5:
        _reasons_file[0].write_text(json.dumps(dict(_reasons.most_common()), indent=1) + "\n")
        _last_dump[0] = time.monotonic()


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    try:
        out = oracle.structured_mutation(data, rng, atheris.Mutate)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        out = atheris.Mutate(data, max_size)
    return out[:max_size]


def _seed_dir() -> Path:
    seeds = WORK / "seeds"
    seeds.mkdir()
    for name, data in {**oracle.seed_files(), **oracle.vector_files()}.items():
        (seeds / (name.replace("/", "_") + ".seed")).write_bytes(data)
    return seeds


def main() -> None:
    argv = list(sys.argv)
    for arg in list(argv):
        if arg.startswith("--reasons-to="):
            _reasons_file.append(Path(arg.split("=", 1)[1]))
            argv.remove(arg)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs or all(Path(d).is_dir() for d in dirs):  # fuzzing (not replaying files): add the seeds
        if not dirs:
            (WORK / "corpus").mkdir()
            argv.append(str(WORK / "corpus"))
        argv.append(str(_seed_dir()))
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
