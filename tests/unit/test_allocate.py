"""converters/allocate.py: the bit-allocation knapsack, its error proxies and the policy it records."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from nanofmt import Scheme
from nanofmt.converters.allocate import (
    CANDIDATE_SCHEMES,
    Candidate,
    Option,
    allocate,
    budget_for_bpw,
    estimate_errors,
    heuristic_importance,
    solve,
    stored_bytes,
)
from nanofmt.converters.policy import policy_from_dict

F16 = Scheme("f16")
INT8 = Scheme("int8_row", bits=8)
DQ = {b: Scheme("affine_dq", bits=b, group_size=32, meta_bits=6) for b in (2, 3, 4, 5, 6, 8)}


def random_menu(rng: np.random.Generator, tensors: int, options: int) -> dict[str, list[Option]]:
    """Options with random sizes and errors; error falls with size as in real menus, plus noise."""
    menu = {}
    for t in range(tensors):
        sizes = np.sort(rng.choice(np.arange(1, 60), options, replace=False))
        errors = rng.uniform(0.5, 4.0) * np.exp(-sizes / rng.uniform(5, 30)) + rng.uniform(0, 0.05, options)
        menu[f"t{t}"] = [Option(F16, int(s), float(e)) for s, e in zip(sizes, errors, strict=True)]
    return menu


def exact(menu: dict[str, list[Option]], budget_bits: float) -> float:
    """The true optimum by enumeration (small menus only)."""
    best = np.inf
    for combo in itertools.product(*menu.values()):
        if 8 * sum(o.nbytes for o in combo) <= budget_bits:
            best = min(best, sum(o.error for o in combo))
    return best


def total(chosen: dict[str, Option]) -> tuple[int, float]:
    return sum(o.nbytes for o in chosen.values()), sum(o.error for o in chosen.values())


def test_solve_respects_the_budget_and_finds_the_optimum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        menu = random_menu(rng, tensors=4, options=4)
        cheapest = sum(min(o.nbytes for o in opts) for opts in menu.values())
        budget = 8 * (cheapest + rng.integers(0, 120))
        nbytes, err = total(solve(menu, budget))
        assert 8 * nbytes <= budget
        assert err == pytest.approx(exact(menu, budget), abs=1e-12)  # sizes this small need no rounding


def test_solve_rounds_sizes_up_so_a_coarse_budget_still_fits() -> None:
    rng = np.random.default_rng(1)
    for _ in range(40):
        menu = random_menu(rng, tensors=4, options=4)
        cheapest = sum(min(o.nbytes for o in opts) for opts in menu.values())
        budget = 8 * (cheapest + rng.integers(0, 120))
        nbytes, err = total(solve(menu, budget, resolution=16))  # units of several bytes
        assert 8 * nbytes <= budget
        assert err >= exact(menu, budget) - 1e-12


def test_solve_error_is_monotone_in_budget() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        menu = random_menu(rng, tensors=6, options=5)
        cheapest = sum(min(o.nbytes for o in opts) for opts in menu.values())
        errors = [total(solve(menu, 8 * (cheapest + extra)))[1] for extra in range(0, 300, 3)]
        assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:], strict=False))


def test_solve_rejects_a_budget_below_the_cheapest_choice() -> None:
    menu = {"a": [Option(F16, 10, 0.0), Option(INT8, 5, 1.0)]}
    assert total(solve(menu, 40))[0] == 5
    with pytest.raises(ValueError, match="below the smallest choice"):
        solve(menu, 39)


def test_solve_ignores_dominated_options() -> None:
    # the middle option costs more than the cheap one and is no better: never chosen
    menu = {"a": [Option(DQ[2], 10, 5.0), Option(DQ[3], 20, 5.0), Option(DQ[4], 30, 1.0)]}
    assert solve(menu, 8 * 29)["a"].scheme == DQ[2]
    assert solve(menu, 8 * 30)["a"].scheme == DQ[4]


def toy(importance: float = 1.0) -> tuple[list[Candidate], dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    arrays = {n: rng.standard_normal((64, 256)).astype(np.float32) for n in ("a", "b")}
    return [Candidate("a", (64, 256), importance), Candidate("b", (64, 256))], arrays


def test_allocate_gives_the_important_tensor_more_bits() -> None:
    tensors, arrays = toy(importance=16.0)
    schemes = [DQ[b] for b in (2, 3, 4, 5, 6)]
    plan = allocate(tensors, schemes, lambda c, s: estimate_errors(arrays[c.name], s)["relative"], budget_for_bpw(tensors, 4.5))
    assert plan.choices["a"].bits > plan.choices["b"].bits  # type: ignore[operator]
    assert plan.bits_per_weight <= 4.5
    assert plan.nbytes == sum(stored_bytes(s, (64, 256)) for s in plan.choices.values())


def test_allocate_treats_equal_tensors_alike_and_uses_the_budget() -> None:
    tensors, arrays = toy()
    schemes = [DQ[b] for b in (2, 3, 4, 5, 6)]
    plan = allocate(tensors, schemes, lambda c, s: estimate_errors(arrays[c.name], s)["relative"], budget_for_bpw(tensors, 4.5))
    assert plan.choices == {"a": DQ[4], "b": DQ[4]}
    assert plan.bits_per_weight == 4.5


def test_allocate_extremes_of_the_budget() -> None:
    tensors, arrays = toy()

    def error(c: Candidate, s: Scheme) -> float:
        return estimate_errors(arrays[c.name], s)["relative"]

    rich = allocate(tensors, CANDIDATE_SCHEMES, error, budget_for_bpw(tensors, 16))
    assert set(rich.choices.values()) == {F16}  # f16 only rounds the float32 test values
    assert rich.predicted_error < 0.01 * error(tensors[0], Scheme("affine_dq", bits=8, group_size=32, meta_bits=6))
    poor = allocate(tensors, CANDIDATE_SCHEMES, error, budget_for_bpw(tensors, 2.375))  # the cheapest scheme on 256 columns
    assert {s.label() for s in poor.choices.values()} == {"affine_dq:2b/g32/m4"}
    with pytest.raises(ValueError, match="below the smallest"):
        allocate(tensors, CANDIDATE_SCHEMES, error, budget_for_bpw(tensors, 2.37))


def test_allocate_leaves_out_schemes_that_do_not_fit_a_shape() -> None:
    narrow = [Candidate("n", (4, 16))]  # fewer columns than any group
    plan = allocate(narrow, [DQ[4], INT8, F16], lambda c, s: 0.0 if s == F16 else 1.0, budget_for_bpw(narrow, 16))
    assert plan.choices == {"n": F16}
    with pytest.raises(ValueError, match="no candidate scheme fits"):
        allocate(narrow, [DQ[4]], lambda c, s: 0.0, 1e9)


def test_allocate_rejects_duplicate_names_and_bad_errors() -> None:
    with pytest.raises(ValueError, match="unique"):
        allocate([Candidate("a", (4, 32)), Candidate("a", (4, 32))], [F16], lambda c, s: 0.0, 1e9)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite"):
            allocate([Candidate("a", (4, 32))], [F16, INT8], lambda c, s, e=bad: e if s == INT8 else 0.0, 1e9)


def test_allocation_policy_resolves_every_tensor_to_its_choice() -> None:
    tensors = [Candidate("model.layers.0.mlp.down_proj.weight", (64, 256), 4.0), Candidate("odd[name]*?.weight", (64, 256))]
    plan = allocate(tensors, [DQ[3], DQ[5]], lambda c, s: 2.0**-s.bits, budget_for_bpw(tensors, 4.5))  # type: ignore[operator]
    policy = plan.policy()
    for t in tensors:
        assert policy.resolve(t.name, "linear", t.shape, "bf16").scheme == plan.choices[t.name]
    assert policy.resolve("model.norm.weight", "other", (64,), "bf16").scheme == Scheme("bf16")
    assert policy.resolve("odd[name]x?.weight", "linear", (64, 256), "bf16").scheme == Scheme("bf16")  # patterns are exact
    assert plan.resolved()["odd[name]*?.weight"]["bits"] == plan.choices["odd[name]*?.weight"].bits
    recorded = policy_from_dict(json.loads(json.dumps(policy.to_json())), "auto")  # as config.json keeps it
    assert all(recorded.resolve(t.name, "linear", t.shape, "bf16").scheme == plan.choices[t.name] for t in tensors)


def test_estimate_errors_from_sampled_rows_track_the_whole_tensor() -> None:
    x = np.random.default_rng(4).standard_normal((2048, 128)).astype(np.float32)
    whole = estimate_errors(x, DQ[4], max_rows=None)
    sampled = estimate_errors(x, DQ[4], max_rows=256)
    assert abs(sampled["sse"] / whole["sse"] - 1) < 0.05
    assert whole["relative"] == pytest.approx(whole["sse"] / float(np.square(x, dtype=np.float64).mean()))
    assert estimate_errors(x, DQ[3])["sse"] > whole["sse"] > estimate_errors(x, DQ[5])["sse"]
    assert estimate_errors(x, DQ[4], weights=np.ones_like(x), max_rows=None)["weighted"] == pytest.approx(whole["sse"])
    assert estimate_errors(np.zeros((4, 32), np.float32), DQ[4]) == {"sse": 0.0, "relative": 0.0}


def test_estimate_errors_find_the_rows_that_carry_the_weight() -> None:
    # a Fisher diagonal of an embedding: almost all mass in a few rows a strided sample would miss
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4096, 64)).astype(np.float32)
    weights = np.full_like(x, 1e-6)
    weights[rng.choice(4096, 20, replace=False)] = 1.0
    exact = estimate_errors(x, DQ[3], weights=weights, max_rows=None)["weighted"]
    assert estimate_errors(x, DQ[3], weights=weights, max_rows=64)["weighted"] == pytest.approx(exact, rel=0.02)
    weights[:] = 1.0  # no heavy rows: the strided half still stands for the rest
    assert estimate_errors(x, DQ[3], weights=weights, max_rows=256)["weighted"] == pytest.approx(
        estimate_errors(x, DQ[3], max_rows=None)["sse"], rel=0.05
    )


def test_heuristic_importance_favours_values_down_shared_kv_edges_and_head() -> None:
    assert heuristic_importance("model.layers.15.self_attn.q_proj.weight", 30) == 1.0
    assert heuristic_importance("model.layers.15.mlp.down_proj.weight", 30) == 2.0
    assert heuristic_importance("model.layers.15.self_attn.k_proj.weight", 30, kv_groups=3) == 3.0
    assert heuristic_importance("model.layers.29.self_attn.v_proj.weight", 30, kv_groups=3) == 9.0
    assert heuristic_importance("model.layers.0.mlp.up_proj.weight", 30) == 1.5
    assert heuristic_importance("encoder.layer.2.output.dense.weight", 6) == 2.0
    assert heuristic_importance("encoder.layer.2.attention.output.dense.weight", 6) == 1.0
    assert heuristic_importance("model.embed_tokens.weight", 30) == 2.0
    assert heuristic_importance("model.embed_tokens.weight", 30, tied_head=False) == 1.0
    assert heuristic_importance("lm_head.weight", 30, tied_head=False) == 2.0


def test_allocate_menu_with_transform_rotates_only_quantized_schemes():
    from nanofmt.converters.allocate import CANDIDATE_SCHEMES, fits, with_transform

    menu = with_transform(CANDIDATE_SCHEMES, "hadamard", 64)
    rotated = [s for s in menu if s.transform == "hadamard"]
    assert len(rotated) == sum(not s.is_passthrough for s in CANDIDATE_SCHEMES)
    assert all(s.transform_block == 64 for s in rotated)
    # a row that is not whole blocks of 64 cannot take the rotated schemes
    assert not fits(rotated[0], (8, 96)) and fits(rotated[0], (8, 128))


def test_estimate_menu_reads_the_sampled_rows_once_for_every_scheme() -> None:
    from nanofmt.converters.allocate import estimate_menu

    x = np.random.default_rng(3).standard_normal((600, 64)).astype(np.float32)
    reads = []

    class Rows:
        shape = x.shape

        def __getitem__(self, pick):
            reads.append(len(pick))
            return x[pick]

    schemes = [Scheme("affine_dq", bits=b, group_size=32, meta_bits=6) for b in (3, 4, 5)]
    menu = estimate_menu(Rows(), schemes, max_rows=64)
    assert reads == [64]
    for s in schemes:  # the same figures as measuring each scheme alone on the array
        assert menu[s] == estimate_errors(x, s, max_rows=64)
    assert menu[schemes[0]]["sse"] > menu[schemes[1]]["sse"] > menu[schemes[2]]["sse"]
