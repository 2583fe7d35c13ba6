"""Coverage-guided fuzzing of the bit unpacker (``nanofmt.bits``) with atheris.

Input: byte 0 picks the code width (1..8), bytes 1-2 the codes per row, the rest are packed
rows. The oracle (``oracle.check_unpack``) checks that every code fits its width and that
packing the codes again gives the input back with only the padding bits cleared.

    python fuzz/fuzz_unpack.py -max_total_time=600 fuzz-corpus/unpack
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["nanofmt"]):
    import nanofmt.bits  # noqa: F401

import oracle  # noqa: E402  (this folder; imported after nanofmt is instrumented)


def main() -> None:
    argv = list(sys.argv)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs or all(Path(d).is_dir() for d in dirs):
        seeds = Path(tempfile.mkdtemp(prefix="nanofmt-fuzz-unpack-"))
        for bits in range(1, 9):
            for n in (1, 7, 8, 9, 40, 300):
                (seeds / f"b{bits}_n{n}").write_bytes(
                    bytes([bits - 1]) + n.to_bytes(2, "little") + bytes(range(256))[: 3 * bits * -(-n // 8)]
                )
        if not dirs:
            argv.append(str(seeds.parent / (seeds.name + "-corpus")))
            Path(argv[-1]).mkdir()
        argv.append(str(seeds))
    atheris.Setup(argv, oracle.check_unpack)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
