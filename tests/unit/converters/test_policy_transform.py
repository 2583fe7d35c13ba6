"""Policies with the ``hadamard`` transform: rule fields, overrides, the block fallback, the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanofmt import Scheme
from nanofmt.converters import ConvertError, load_policy, preset
from nanofmt.converters.policy import policy_from_dict

UP = "model.layers.3.mlp.up_proj.weight"
DOWN = "model.layers.3.mlp.down_proj.weight"
Q = "model.layers.3.self_attn.q_proj.weight"
EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
TOML = """
name = "rotated"
[[rules]]
match = "*.mlp.*"
scheme = "affine"
bits = 3
transform = "hadamard"
transform_block = 256
[[rules]]
kind = "embedding"
transform = "hadamard"
[[rules]]
kind = "linear"
[[rules]]
scheme = "keep"
"""


def resolve(policy, name, kind="linear", shape=(128, 1024)):
    return policy.resolve(name, kind, shape, "bf16")


def test_policy_transform_rule_fields_from_toml_and_json(tmp_path: Path) -> None:
    path = tmp_path / "rotated.toml"
    path.write_text(TOML)
    p = load_policy(path)
    assert resolve(p, UP).scheme == Scheme("affine", bits=3, group_size=32, transform="hadamard", transform_block=256)
    assert resolve(p, EMBED, "embedding").scheme.label() == "affine_dq:4b/g32/m6+h64"  # block 64 unless told
    assert resolve(p, Q).scheme.transform == "none"
    assert resolve(p, NORM, "other", (64,)).scheme == Scheme("bf16")
    recorded = p.to_json()
    assert recorded["rules"][0]["transform"] == "hadamard" and recorded["rules"][0]["transform_block"] == 256
    assert "transform" not in recorded["rules"][2]
    again = policy_from_dict(json.loads(json.dumps(recorded)), "again")  # config.json's copy loads back the same
    assert again.rules == p.rules
    (tmp_path / "rotated.json").write_text(json.dumps(recorded))
    assert load_policy(tmp_path / "rotated.json").rules == p.rules


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"transform": "givens"}, "transform must be one of"),
        ({"transform": "hadamard", "transform_block": 48}, "transform_block must be one of"),
        ({"transform": "hadamard", "transform_block": "64"}, "transform_block must be one of"),
        ({"transform": "hadamard", "transform_block": True}, "transform_block must be one of"),
        ({"transform_block": 64}, "transform_block must be one of"),
        ({"transform": "none", "transform_block": 64}, "transform_block must be one of"),
        ({"scheme": "keep", "transform": "hadamard"}, "applies to quantized schemes"),
        ({"scheme": "f16", "transform": "hadamard"}, "applies to quantized schemes"),
    ],
)
def test_policy_transform_bad_rule_is_named(rule: dict, message: str) -> None:
    with pytest.raises(ConvertError, match=message) as caught:
        policy_from_dict({"rules": [{"kind": "linear"}, rule]}, "bad")
    assert caught.value.reason == "policy_invalid" and "rule 1" in str(caught.value)


def test_policy_transform_is_not_a_default_field() -> None:
    default = {"scheme": "affine", "bits": 4, "group_size": 32, "transform": "hadamard", "transform_block": 64}
    with pytest.raises(ConvertError, match="a transform goes on the rules"):
        policy_from_dict({"default": default, "rules": [{"kind": "linear"}]}, "bad")
    plain = policy_from_dict({"default": {"scheme": "affine", "bits": 4, "group_size": 32, "transform": "none"}, "rules": [{"kind": "linear"}]}, "ok")
    assert plain.default.transform == "none"


def test_policy_transform_overrides_apply_to_quantized_rules() -> None:
    p = preset("qkvfp16").with_overrides(transform="hadamard", keep=["*.mlp.down_proj.*"])
    assert resolve(p, UP).scheme.label() == "affine_dq:4b/g32/m6+h64"
    assert resolve(p, EMBED, "embedding").scheme.transform == "hadamard"
    assert resolve(p, Q).scheme == Scheme("f16")  # an f16 rule takes no transform
    assert resolve(p, DOWN).scheme == Scheme("bf16")  # nor do the keep rules the overrides add
    assert p.to_json()["overrides"] == {"transform": "hadamard", "keep": ["*.mlp.down_proj.*"]}
    bigger = p.with_overrides(transform_block=1024)
    assert resolve(bigger, UP).scheme.transform_block == 1024 and bigger.overrides["transform_block"] == 1024
    int8 = preset("int8").with_overrides(transform="hadamard", transform_block=16)
    assert resolve(int8, UP).scheme == Scheme("int8_row", bits=8, transform="hadamard", transform_block=16)
    off = bigger.with_overrides(transform="none")
    assert all(r.transform is None for r in off.rules) and resolve(off, UP).scheme.transform == "none"
    assert preset("tiedq").with_overrides(transform=None, transform_block=None).rules == preset("tiedq").rules


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transform": "rotate"}, "unknown transform"),
        ({"transform": "hadamard", "transform_block": 32}, "transform_block must be one of"),
        ({"transform": "none", "transform_block": 64}, "transform_block must be one of"),
        ({"transform_block": 64}, "has none"),
    ],
)
def test_policy_transform_bad_overrides_are_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preset("tiedq").with_overrides(**kwargs)


@pytest.mark.parametrize(
    ("shape", "block", "expected", "fallback"),
    [
        ((64, 1536), 256, 256, None),
        ((64, 576), 256, 64, "576 columns are not whole blocks of 256: block 64"),
        ((64, 96), 64, 16, "96 columns are not whole blocks of 64: block 16"),
        ((64, 40), 16, None, "40 columns are not whole blocks of 16 or any smaller block: no transform"),
        ((64, 16), 64, 16, "16 columns < smallest group: int8_row; 16 columns are not whole blocks of 64: block 16"),
    ],
)
def test_policy_transform_block_falls_back_and_says_so(shape: tuple[int, int], block: int, expected: int | None, fallback: str | None) -> None:
    p = preset("tiedq").with_overrides(transform="hadamard", transform_block=block)
    choice = resolve(p, UP, shape=shape)
    assert choice.scheme.transform_block == expected and choice.scheme.transform == ("hadamard" if expected else "none")
    assert choice.fallback == fallback
    choice.scheme.check(shape)  # what the converter will write is a valid record
    assert choice.to_json().get("transform_block") == expected
