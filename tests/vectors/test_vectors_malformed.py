"""Every malformed vector is refused with exactly its reason, at its stage; every reason has a vector."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import nanofmt
from nanofmt._spec import LIMITS, REASONS


def _refusal(path: Path) -> tuple[str, nanofmt.NanoError | None, list[str]]:
    """(stage reached, the error raised at open if any, reasons full verification reports)."""
    try:
        f = nanofmt.open_file(path)
    except nanofmt.NanoError as exc:
        return "open", exc, []
    with f:
        return "verify", None, [p.reason for p in f.problems()]


def test_malformed_vector_file_matches_manifest_sha256(malformed_vector: dict[str, Any], vectors: Path) -> None:
    assert hashlib.sha256((vectors / malformed_vector["file"]).read_bytes()).hexdigest() == malformed_vector["sha256"]


def test_malformed_vector_is_refused_with_its_reason(malformed_vector: dict[str, Any], vectors: Path) -> None:
    stage, exc, problems = _refusal(vectors / malformed_vector["file"])
    assert stage == malformed_vector["stage"]
    if stage == "open":
        assert exc is not None and exc.reason == malformed_vector["reason"], str(exc)
        leaf = nanofmt.UnsupportedError if malformed_vector["category"] == "unsupported" else nanofmt.MalformedError
        assert isinstance(exc, leaf)
    else:
        assert problems == [malformed_vector["reason"]]
        with nanofmt.open_file(vectors / malformed_vector["file"]) as f, pytest.raises(nanofmt.NanoError) as raised:
            f.verify()
        assert raised.value.reason == malformed_vector["reason"]


def test_malformed_vectors_cover_every_reason(manifest: dict[str, Any]) -> None:
    covered = {b["reason"] for b in manifest["malformed"]} | set(manifest["not_shipped"])
    assert covered == set(REASONS)
    assert {b["category"] for b in manifest["malformed"] if b["reason"] in REASONS} <= {"malformed", "unsupported"}
    assert all(b["category"] == REASONS[b["reason"]] for b in manifest["malformed"])


def test_metadata_too_large_is_refused(tmp_path: Path, make_vectors: ModuleType) -> None:
    """The one reason whose file is too big to commit (see spec/vectors/README.md)."""
    limit = LIMITS["max_metadata_bytes"]
    text = json.dumps({"format_version": "1.0", "tensors": {}, "pad": ""}, separators=(",", ":"))
    text = text.replace('"pad":""', '"pad":"' + "x" * (limit - len(text) + 1) + '"')
    path = tmp_path / "big.safetensors"
    path.write_bytes(make_vectors.file_bytes(make_vectors.container([], text)[0], b""))
    stage, exc, _ = _refusal(path)
    assert stage == "open" and exc is not None and exc.reason == "metadata_too_large"


@pytest.mark.parametrize("make", [lambda p: p / "missing.safetensors", lambda p: p])
def test_unreadable_path_is_file_unreadable(tmp_path: Path, make: Any) -> None:
    with pytest.raises(nanofmt.NanoError) as raised:
        nanofmt.open_file(make(tmp_path))
    assert raised.value.reason == "file_unreadable"
