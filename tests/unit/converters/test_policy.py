"""Policies: presets, first-match precedence, overrides, fallbacks, policy files."""

from __future__ import annotations

import json

import pytest

from nanofmt import Scheme
from nanofmt.converters import ConvertError, load_policy, preset
from nanofmt.converters.policy import DEFAULT_SCHEME, policy_from_dict

Q = "model.layers.3.self_attn.q_proj.weight"
OPROJ = "model.layers.3.self_attn.o_proj.weight"
UP = "model.layers.3.mlp.up_proj.weight"
EMBED = "model.embed_tokens.weight"
NORM = "model.layers.3.input_layernorm.weight"
BIAS = "model.layers.3.self_attn.q_proj.bias"


def scheme(policy, name, kind, shape=(128, 64), dtype="bf16"):
    return policy.resolve(name, kind, shape, dtype).scheme


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("qkvfp16", {Q: "f16", OPROJ: "affine_dq:4b/g32/m6", UP: "affine_dq:4b/g32/m6", EMBED: "affine_dq:4b/g32/m6"}),
        ("tiedq", {Q: "affine_dq:4b/g32/m6", OPROJ: "affine_dq:4b/g32/m6", UP: "affine_dq:4b/g32/m6", EMBED: "affine_dq:4b/g32/m6"}),
        ("int8", {Q: "int8_row", OPROJ: "int8_row", UP: "int8_row", EMBED: "bf16"}),
    ],
)
def test_policy_presets_choose_documented_schemes(policy, expected):
    p = preset(policy)
    kinds = {EMBED: "embedding"}
    for name, label in expected.items():
        assert scheme(p, name, kinds.get(name, "linear")).label() == label, name
    assert scheme(p, NORM, "other", (64,)).label() == "bf16"  # small tensors stay in the source dtype
    assert scheme(p, BIAS, "other", (64,), "f32").label() == "f32"


def test_policy_default_scheme_is_4_5_bits_per_weight():
    assert DEFAULT_SCHEME.bits_per_weight((4096, 4096)) == 4.5


def test_policy_first_match_wins_in_list_order():
    rules = [{"match": "*.mlp.*", "scheme": "keep"}, {"kind": "linear", "scheme": "quant"}]
    keep_first = policy_from_dict({"rules": rules}, "a")
    quant_first = policy_from_dict({"rules": rules[::-1]}, "b")
    assert scheme(keep_first, UP, "linear").name == "bf16"
    assert scheme(quant_first, UP, "linear").name == "affine_dq"  # the broader rule, listed first, wins
    choice = keep_first.resolve(OPROJ, "linear", (64, 64), "bf16")
    assert choice.rule == 1 and choice.fallback is None


def test_policy_kind_restricts_a_rule():
    p = policy_from_dict({"rules": [{"match": "*.weight", "kind": "embedding", "scheme": "int8_row"}, {"scheme": "keep"}]}, "k")
    assert scheme(p, EMBED, "embedding").name == "int8_row"
    assert scheme(p, UP, "linear").name == "bf16"


def test_policy_unmatched_tensor_is_kept():
    p = policy_from_dict({"rules": [{"match": "nothing", "scheme": "quant"}]}, "n")
    choice = p.resolve(UP, "linear", (64, 64), "f16")
    assert choice.scheme == Scheme("f16") and choice.rule is None


def test_policy_keep_override_takes_precedence():
    p = preset("qkvfp16").with_overrides(keep=["*.q_proj.weight", "*.mlp.*"])
    assert scheme(p, Q, "linear").name == "bf16"  # over the preset's own f16 rule
    assert scheme(p, UP, "linear").name == "bf16"
    assert scheme(p, OPROJ, "linear").name == "affine_dq"
    assert p.to_json()["rules"][0] == {"match": "*.q_proj.weight", "scheme": "keep"}
    assert p.to_json()["overrides"] == {"keep": ["*.q_proj.weight", "*.mlp.*"]}


def test_policy_bits_and_group_overrides_change_the_default_scheme_only():
    p = policy_from_dict({"rules": [{"match": "*.mlp.*", "scheme": "affine", "bits": 3}, {"kind": "linear", "scheme": "quant"}]}, "o")
    p = p.with_overrides(bits=8, group_size=128)
    assert scheme(p, OPROJ, "linear", (64, 256)) == Scheme("affine_dq", bits=8, group_size=128, meta_bits=6)
    assert scheme(p, UP, "linear", (64, 256)) == Scheme("affine", bits=3, group_size=128)  # explicit bits stay; group from default
    with pytest.raises(ConvertError, match="policy_invalid"):
        preset("tiedq").with_overrides(bits=7)


def test_policy_keep_dtype():
    p = preset("qkvfp16").with_overrides(keep_dtype="f16")
    assert scheme(p, NORM, "other", (64,), "bf16").name == "f16"
    assert scheme(p, NORM, "other", (64,), "f32").name == "f16"


@pytest.mark.parametrize(
    ("kind", "shape", "expected", "why"),
    [
        ("other", (64, 64), "bf16", "Linear/Embedding weights only"),
        ("linear", (4, 8, 64), "bf16", "needs a 2-D tensor"),
        ("linear", (64,), "bf16", "needs a 2-D tensor"),
        ("linear", (64, 48), "affine_dq:4b/g32/m6", None),  # a short last group is fine
        ("linear", (64, 16), "int8_row", "smallest group: int8_row"),
    ],
)
def test_policy_fallbacks_are_reported(kind, shape, expected, why):
    quantize_everything = policy_from_dict({"rules": [{"scheme": "quant"}]}, "all")
    choice = quantize_everything.resolve("x.weight", kind, shape, "bf16")
    assert choice.scheme.label() == expected
    assert (choice.fallback is None) if why is None else why in choice.fallback


def test_policy_fallback_to_a_smaller_group():
    p = preset("tiedq").with_overrides(group_size=128)
    choice = p.resolve(UP, "linear", (64, 96), "bf16")
    assert choice.scheme.group_size == 64 and "group 64" in choice.fallback


TOML = """
name = "files"
description = "from a file"
keep_dtype = "f16"

[default]
scheme = "affine"
bits = 5
group_size = 64

[[rules]]
match = ["*.q_proj.weight", "*.k_proj.weight"]
scheme = "keep"

[[rules]]
kind = "linear"
scheme = "quant"

[[rules]]
scheme = "keep"
"""


def test_policy_toml_and_json_files_agree(tmp_path):
    import tomllib

    (tmp_path / "p.toml").write_text(TOML)
    (tmp_path / "p.json").write_text(json.dumps(tomllib.loads(TOML)))
    from_toml, from_json = load_policy(tmp_path / "p.toml"), load_policy(tmp_path / "p.json")
    assert from_toml == from_json
    assert scheme(from_toml, UP, "linear") == Scheme("affine", bits=5, group_size=64)
    assert scheme(from_toml, Q, "linear").name == "f16"  # keep_dtype f16
    assert from_toml.description == "from a file"


def test_policy_recorded_form_loads_back(tmp_path):
    original = preset("qkvfp16").with_overrides(bits=8, keep=["lm_head.weight"])
    recorded = {**original.to_json(), "resolved": {"x": {"scheme": "f16"}}}
    (tmp_path / "recorded.json").write_text(json.dumps(recorded))
    again = load_policy(tmp_path / "recorded.json")
    assert (again.rules, again.default, again.keep_dtype) == (original.rules, original.default, original.keep_dtype)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"rules": []}, "non-empty list"),
        ({"rules": [{"scheme": "quant"}], "colour": 1}, "unknown field"),
        ({"rules": [{"pattern": "*"}]}, "unknown field"),
        ({"rules": [{"scheme": "q4_k"}]}, "scheme must be"),
        ({"rules": [{"kind": "conv"}]}, "kind must be"),
        ({"rules": [{"match": []}]}, "match must be"),
        ({"rules": [{"scheme": "affine", "bits": 7}]}, "bits"),
        ({"rules": [{"scheme": "affine", "bits": "4"}]}, "integers"),
        ({"rules": [{"scheme": "quant"}], "default": {"scheme": "keep"}}, "default must"),
        ({"rules": [{"scheme": "quant"}], "keep_dtype": "int8"}, "keep_dtype"),
        ({"rules": [{"scheme": "quant"}], "pattern_syntax": "regex"}, "pattern_syntax"),
        (["not", "a", "table"], "table/object"),
    ],
)
def test_policy_invalid_files_are_rejected(raw, message):
    with pytest.raises(ConvertError, match=message) as info:
        policy_from_dict(raw, "bad")
    assert info.value.reason == "policy_invalid"


def test_policy_unparsable_file(tmp_path):
    (tmp_path / "p.toml").write_text("rules = [")
    with pytest.raises(ConvertError, match="not valid TOML"):
        load_policy(tmp_path / "p.toml")
    with pytest.raises(ConvertError, match="cannot read"):
        load_policy(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown policy"):
        load_policy("q4")
