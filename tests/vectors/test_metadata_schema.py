"""spec/metadata.schema.json accepts every valid vector's metadata and agrees with spec/format.json."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "spec" / "metadata.schema.json").read_text())
FORMAT = json.loads((ROOT / "spec" / "format.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _nanofmt_metadata(path: Path) -> Any:
    """The parsed __metadata__["nanofmt"] object, read with nothing but the standard library."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return json.loads(header["__metadata__"]["nanofmt"])


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_valid_vector_metadata_satisfies_the_schema(valid_vector: dict[str, Any], vectors: Path) -> None:
    VALIDATOR.validate(_nanofmt_metadata(vectors / valid_vector["file"]))


def test_malformed_vector_metadata_gets_the_expected_schema_verdict(schema_vector: dict[str, Any], vectors: Path) -> None:
    errors = list(VALIDATOR.iter_errors(_nanofmt_metadata(vectors / schema_vector["file"])))
    assert (not errors) == schema_vector["schema_valid"], [e.message for e in errors]


def test_schema_rejects_some_malformed_metadata(manifest: dict[str, Any]) -> None:
    """Guard: the verdicts above are not all 'valid'."""
    assert any(e["schema_valid"] is False for e in manifest["malformed"])


def _then(scheme: str) -> dict[str, Any]:
    rules = SCHEMA["$defs"]["stored"]["allOf"]
    return next(r["then"] for r in rules if r["if"]["properties"]["scheme"].get("const") == scheme)


def test_schema_enumerations_match_format_json() -> None:
    schemes = {s["name"]: s for s in FORMAT["schemes"]}
    stored = SCHEMA["$defs"]["stored"]["properties"]
    assert stored["scheme"]["enum"] == list(schemes)
    assert stored["transform"]["enum"] == [t["name"] for t in FORMAT["transforms"]]
    hadamard = SCHEMA["$defs"]["stored"]["then"]["properties"]
    assert hadamard["transform_block"]["enum"] == next(t for t in FORMAT["transforms"] if t["name"] == "hadamard")["transform_blocks"]
    assert hadamard["scheme"]["enum"] == [n for n, s in schemes.items() if s["kind"] != "passthrough"]
    assert SCHEMA["$defs"]["dtype"]["enum"] == FORMAT["source_dtypes"]
    passthrough = SCHEMA["$defs"]["stored"]["allOf"][0]["if"]["properties"]["scheme"]["enum"]
    assert passthrough == [n for n, s in schemes.items() if s["kind"] == "passthrough"]
    for name in ("int8_row", "affine", "affine_dq"):
        props = _then(name)["properties"]
        assert props["bits"]["enum"] == schemes[name]["bits"], name
        for field, key in (("group_size", "group_sizes"), ("meta_bits", "meta_bits")):
            assert props.get(field, {}).get("enum") == schemes[name].get(key), (name, field)
    limits = {k: v["value"] for k, v in FORMAT["limits"].items()}
    assert SCHEMA["properties"]["tensors"]["maxProperties"] == limits["max_tensors"]
    assert SCHEMA["properties"]["tensors"]["propertyNames"]["maxLength"] == limits["max_name_bytes"]
    assert SCHEMA["$defs"]["shape"]["maxItems"] == limits["max_rank"]
    assert SCHEMA["$defs"]["shape"]["items"]["maximum"] == limits["max_dim"]
