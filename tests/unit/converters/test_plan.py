"""Planning: kinds from the skeleton, ties, skipped buffers, shard splitting, sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from nanofmt.converters import ConvertError, preset
from nanofmt.converters.plan import make_plan, parse_size, shard_names
from nanofmt.converters.skeleton import Skeleton
from nanofmt.converters.source import open_source

SKELETON = Skeleton(
    "TinyForCausalLM",
    "tiny",
    True,
    linear=frozenset({"model.layers.0.q.weight", "model.layers.0.up.weight", "lm_head.weight"}),
    embedding=frozenset({"model.embed.weight"}),
    tie=("lm_head.weight", "model.embed.weight"),
    prefix="model",
)


@pytest.fixture
def source(tmp_path, rng):
    tensors = {
        "model.embed.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "model.layers.0.q.weight": rng.standard_normal((32, 32)).astype(np.float32),
        "model.layers.0.up.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "model.layers.0.norm.weight": np.ones(32, np.float32),
        "lm_head.weight": rng.standard_normal((64, 32)).astype(np.float32),  # a tied head saved anyway
        "model.position_ids": np.arange(8, dtype=np.int64),
    }
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    save_file(tensors, tmp_path / "model.safetensors")
    with open_source(tmp_path) as src:
        yield src


def test_plan_kinds_ties_and_skips(source):
    plan = make_plan(source, SKELETON, preset("tiedq"))
    kinds = {j.name: j.kind for j in plan.jobs}
    assert kinds["model.embed.weight"] == "embedding" and kinds["model.layers.0.up.weight"] == "linear"
    assert kinds["model.layers.0.norm.weight"] == "other"
    names = [j.name for j in plan.jobs]
    assert names[names.index("model.embed.weight") + 1] == "lm_head.weight"
    head = plan.jobs[names.index("lm_head.weight")]
    assert head.tie == "model.embed.weight" and head.nbytes == 0
    assert {n for n, _ in plan.skipped} == {"lm_head.weight", "model.position_ids"}
    assert plan.resolved()["lm_head.weight"] == {"tie": "model.embed.weight"}


def test_plan_shards_are_greedy_and_keep_ties_with_their_target(source):
    whole = make_plan(source, SKELETON, preset("int8"))
    assert [s.filename for s in whole.shards] == ["model.safetensors"]
    split = make_plan(source, SKELETON, preset("int8"), max_shard_size=2100)
    assert len(split.shards) > 1 and [s.filename for s in split.shards] == shard_names(len(split.shards))
    for shard in split.shards:
        names = {j.name for j in shard.jobs}
        assert all(j.tie in names for j in shard.jobs if j.tie)
        assert shard.data_bytes <= 2100 or len([j for j in shard.jobs if not j.tie]) == 1
    assert sum(s.data_bytes for s in split.shards) == sum(s.data_bytes for s in whole.shards)


def test_plan_without_linear_weights_is_refused(source):
    empty = Skeleton("X", "x", False, frozenset({"other.weight"}), frozenset(), None, "")
    with pytest.raises(ConvertError) as info:
        make_plan(source, empty, preset("qkvfp16"))
    assert info.value.reason == "no_linear_weights"


def test_plan_skeleton_maps_prefixed_names():
    bert = Skeleton("BertModel", "bert", False, frozenset({"encoder.layer.0.dense.weight"}), frozenset({"embeddings.word_embeddings.weight"}), None, "bert")
    assert bert.kind("bert.encoder.layer.0.dense.weight") == "linear"
    assert bert.kind("embeddings.word_embeddings.weight") == "embedding"
    assert bert.kind("cls.predictions.bias") == "other"
    assert Skeleton.from_json(bert.to_json()) == bert


@pytest.mark.parametrize(("text", "expected"), [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1000", 1000), (64, 64), ("1.5kb", 1500)])
def test_plan_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-5MB", "0", "5 XB", 0])
def test_plan_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_plan_skeleton_disk_cache(tmp_path, monkeypatch):
    from nanofmt.converters import skeleton as skeleton_module

    calls = []
    monkeypatch.setenv("NANOFMT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(skeleton_module, "_CACHE", {})
    monkeypatch.setattr(skeleton_module, "_analyze_child", lambda folder: calls.append(folder) or SKELETON)
    (tmp_path / "config.json").write_text('{"model_type": "tiny"}')
    assert skeleton_module.analyze(tmp_path, isolated=True) == SKELETON
    monkeypatch.setattr(skeleton_module, "_CACHE", {})  # a new process: only the disk cache is left
    assert skeleton_module.analyze(tmp_path, isolated=True) == SKELETON
    assert len(calls) == 1
    (tmp_path / "config.json").write_text('{"model_type": "tiny", "hidden_size": 8}')
    skeleton_module.analyze(tmp_path, isolated=True)
    assert len(calls) == 2
