"""Generate the code constants and SPEC.md tables from spec/format.json.

    python spec/gen.py           # rewrite nanofmt/_spec.py and the generated blocks of SPEC.md
    python spec/gen.py --check   # exit 1 if either is out of date (run in CI)

format.json is the one source of truth for format numbers: scheme ids, bit widths, component
layouts, limits and error reasons. Nothing downstream retypes them.
"""

from __future__ import annotations

import argparse
import json
import pprint
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMAT_JSON = ROOT / "spec" / "format.json"
CONSTANTS_PY = ROOT / "nanofmt" / "_spec.py"
SPEC_MD = ROOT / "SPEC.md"
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n)(.*?)(<!-- END GENERATED: \2 -->)", re.S)


def render_constants(spec: dict) -> str:
    """The Python module holding every format number, as plain literals."""
    schemes = {s["name"]: {k: v for k, v in s.items() if not k.startswith("$")} for s in spec["schemes"]}
    values = {
        "FORMAT_NAME": spec["format"]["name"],
        "METADATA_KEY": spec["format"]["metadata_key"],
        "VERSIONS_READABLE": tuple(tuple(int(p) for p in v.split(".")) for v in spec["format"]["versions_readable"]),
        "VERSION_WRITTEN": tuple(int(p) for p in spec["format"]["version_written"].split(".")),
        "DTYPE_SIZES": {k: v for k, v in spec["dtypes"].items() if not k.startswith("$")},
        "SOURCE_DTYPES": tuple(spec["source_dtypes"]),
        "SCHEMES": schemes,
        "TRANSFORMS": {t["name"]: t["id"] for t in spec["transforms"]},
        "TRANSFORM_SPECS": {t["name"]: {k: v for k, v in t.items() if not k.startswith("$")} for t in spec["transforms"]},
        "LIMITS": {k: v["value"] for k, v in spec["limits"].items()},
        "REASONS": {k: v["category"] for k, v in spec["errors"].items() if not k.startswith("$")},
        "CHECKSUM_ALGORITHM": spec["checksum"]["algorithm"],
    }
    lines = [
        '"""Format constants. GENERATED from spec/format.json by spec/gen.py: do not edit."""',
        "",
        "from typing import Any",
        "",
    ]
    for name, value in values.items():
        text = pprint.pformat(value, width=100, sort_dicts=False)
        annotation = ": Any" if isinstance(value, dict) else ""
        lines.append(f"{name}{annotation} = {text}")
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def render_blocks(spec: dict) -> dict[str, str]:
    """Markdown for each generated block of SPEC.md, keyed by block name."""
    schemes = []
    for s in spec["schemes"]:
        params = []
        if "bits" in s:
            params.append("bits " + ", ".join(map(str, s["bits"])))
        if "group_sizes" in s:
            params.append("group_size " + ", ".join(map(str, s["group_sizes"])))
        if "meta_bits" in s:
            params.append("meta_bits " + ", ".join(map(str, s["meta_bits"])))
            params.append(f"block_groups {s['block_groups']} (fixed)")
        schemes.append([str(s["id"]), f"`{s['name']}`", s["kind"], "; ".join(params) or "-"])
    components = []
    for s in spec["schemes"]:
        for c in s.get("components", [{"role": "(the logical name itself)", "dtype": s.get("stored_dtype", ""), "shape": "the logical shape"}]):
            role = c["role"] if c["role"].startswith("(") else f"`{c['role']}`"
            components.append([f"`{s['name']}`", role, f"`{c['dtype']}`", f"`{c['shape']}`"])
    for t in spec["transforms"]:
        for c in t.get("components", []):
            components.append([f"any quantized + `{t['name']}`", f"`{c['role']}`", f"`{c['dtype']}`", f"`{c['shape']}`"])
    transforms = []
    for t in spec["transforms"]:
        params = "transform_block " + ", ".join(map(str, t["transform_blocks"])) if "transform_blocks" in t else "-"
        transforms.append([str(t["id"]), f"`{t['name']}`", t["since"], params])
    limits = [[f"`{k}`", f"{v['value']:,}", v["why"]] for k, v in spec["limits"].items()]
    errors = [[f"`{k}`", v["category"], v["doc"]] for k, v in spec["errors"].items() if not k.startswith("$")]
    dtypes = [[f"`{k}`", str(v)] for k, v in spec["dtypes"].items() if not k.startswith("$")]
    return {
        "schemes": _table(["id", "scheme", "kind", "parameters"], schemes),
        "components": _table(["scheme", "component role", "dtype", "stored shape"], components),
        "limits": _table(["limit", "value", "why"], limits),
        "errors": _table(["reason", "category", "meaning"], errors),
        "dtypes": _table(["safetensors dtype", "bytes per element"], dtypes),
        "transforms": _table(["id", "transform", "since", "parameters"], transforms),
    }


def render_spec_md(text: str, blocks: dict[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in blocks:
            raise SystemExit(f"SPEC.md: unknown generated block {name!r}")
        return m.group(1) + blocks[name] + m.group(4)

    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated files are stale")
    args = parser.parse_args(argv)
    spec = json.loads(FORMAT_JSON.read_text())
    wanted = {CONSTANTS_PY: render_constants(spec)}
    if SPEC_MD.exists():
        wanted[SPEC_MD] = render_spec_md(SPEC_MD.read_text(), render_blocks(spec))
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run python spec/gen.py", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
