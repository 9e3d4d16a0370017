"""`compare` and `lsched compare` / `lsched bound`: bound <= optimum <= policies.

The tiny trace of tests/test_cli_solve.py: two requests s = 1, o = 3 at 0 on
unit slots with M = 4. The non-preemptive optimum starts them at (0, 2):
latency 3 + 5 = 8, makespan 5. Preemption does better: ``fcfs`` starts both at
0 (KV 2, then 4); in slot 2 they would hold 3 + 3 > 4, so the newer one is
recompute-preempted after 2 tokens. The first completes at 3; the second
re-prefills its 1 + 2 tokens in slot 3, which emits its third token: done at 4,
latency 3 + 4 = 7.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run
from prefix_helpers import hashed_instance

from lsched.comparison import compare, is_slot_schedule, objective_value
from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.evaluator.fixed import replay_batch_table
from lsched.instance import Instance
from lsched.predictors import oracle
from lsched.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"
UNIT = load_profile("unit-slot")
POLICIES = ("fcfs", "sjf", "mc-sf", "sorted-f", "sarathi:chunk=2")


def two_requests() -> Instance:
    return Instance(
        arrival_s=np.zeros(2), prompt_tokens=np.ones(2), output_tokens=np.full(2, 3)
    )


@pytest.mark.parametrize(("objective", "optimum"), [("latency", 8), ("makespan", 5)])
def test_hand_derived_optimum(objective: str, optimum: float) -> None:
    profile = UNIT.replace(kv_capacity_tokens=4)
    result = compare(
        two_requests(),
        profile,
        objective=objective,
        policies=POLICIES,
        time_limit=10,
    )
    assert result.solve is not None and result.solve.status == "optimal"
    assert result.solve_objective == optimum
    assert result.best_bound <= optimum <= result.best_slot_bound + 1e-9
    for row in result.policies:
        assert row.objective_value >= result.best_bound - 1e-9
        if row.bound_scope == "slot":
            assert row.objective_value >= optimum


@pytest.mark.parametrize("seed", range(8))
def test_bound_below_optimum_below_policies(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    instance = Instance(
        arrival_s=np.sort(rng.integers(0, 4, n)).astype(float),
        prompt_tokens=rng.integers(1, 6, n),
        output_tokens=rng.integers(1, 10, n),
    )
    peak = int((instance.prompt_tokens + instance.output_tokens - 1).max())
    profile = UNIT.replace(kv_capacity_tokens=peak + int(rng.integers(0, 8)))
    objective = ("latency", "makespan")[seed % 2]
    result = compare(
        instance, profile, objective=objective, policies=POLICIES, time_limit=20
    )
    assert result.solve is not None and result.solve.status == "optimal"
    optimum = result.solve_objective
    assert optimum == pytest.approx(result.solve.objective)
    for bound in result.bounds:
        assert bound.value <= optimum + 1e-6, bound
    for row in result.policies:
        # every run is scored again here, outside compare
        again = simulate(oracle(instance), profile, row.policy)
        value = objective_value(again, instance, objective)
        assert value == pytest.approx(row.objective_value)
        assert row.objective_value >= result.best_bound - 1e-6
        if row.bound_scope == "slot":  # a non-preemptive, whole-prefill run
            assert row.objective_value >= optimum - 1e-6
            assert row.gap is not None and row.gap >= 0
    best = result.best_schedule()
    assert best["objective_value"] == min(
        [optimum, *(row.objective_value for row in result.policies)]
    )


def test_slot_schedule_detection() -> None:
    profile = UNIT.replace(kv_capacity_tokens=4)
    instance = two_requests()
    chunked = simulate(instance, profile, "sarathi:chunk=1", log=True)
    assert is_slot_schedule(chunked, instance)  # one-token prompts: one chunk each
    long = Instance(
        arrival_s=np.zeros(1), prompt_tokens=np.array([3]), output_tokens=np.ones(1)
    )
    chunked = simulate(long, UNIT, "sarathi:chunk=1", log=True)
    assert not is_slot_schedule(chunked, long)  # 3 prefill chunks
    # a table where request 1 holds its KV but skips iteration 1: not a slot run
    table = pd.DataFrame(
        {
            "iteration": [0, 0, 1, 2, 2],
            "request": [0, 1, 0, 0, 1],
            "kind": ["prefill", "prefill", "decode", "decode", "decode"],
            "tokens": [1, 1, 1, 1, 1],
        }
    )
    pair = Instance(
        arrival_s=np.zeros(2), prompt_tokens=np.ones(2), output_tokens=[3, 2]
    )
    paused = replay_batch_table(pair, UNIT, table, log=True)
    assert int(paused.requests["preemptions"].sum()) == 0
    assert not is_slot_schedule(paused, pair)
    assert is_slot_schedule(simulate(pair, UNIT, "fcfs", log=True), pair)
    with pytest.raises(InputError, match="log"):
        is_slot_schedule(simulate(instance, profile, "fcfs"), instance)


def test_real_profile_has_no_solver_and_bounds_every_policy() -> None:
    rng = np.random.default_rng(5)
    instance = Instance(
        arrival_s=np.sort(rng.uniform(0, 2, 12)),
        prompt_tokens=rng.integers(50, 400, 12),
        output_tokens=rng.integers(1, 60, 12),
    )
    profile = load_profile("llama2-70b-a100-tp4")
    # a generous LP limit: the bound must not depend on how busy the machine is
    result = compare(instance, profile, policies=POLICIES, lp_time_limit=600.0)
    assert result.solve is None
    # the timed model's LP bounds the non-preemptive runs
    assert [b.name for b in result.bounds if b.scope == "slot"] == ["timed.lp"]
    for row in result.policies:
        assert row.objective_value >= result.best_bound
    assert result.best_schedule()["source"] in {r.policy for r in result.policies}


def test_cli_compare_json_and_plot(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "gap.png"
    code, out, _ = run(
        [
            "compare", str(tiny), "--model", "unit-slot",
            "--set", "kv_capacity_tokens=4", "--policy", "fcfs",
            "--policy", "mc-sf", "--plot", str(plot), "--json",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {
        "objective",
        "bounds",
        "best_bound",
        "best_schedule",
        "policies",
    }
    assert data["objective"] == "latency"
    assert data["best_schedule"]["objective_value"] == 7
    assert data["best_schedule"]["source"] == "fcfs"
    assert data["solver"]["objective"] == 8
    assert data["best_bound"] <= 7
    assert [p["policy"] for p in data["policies"]] == ["fcfs", "mc-sf"]
    for row in data["policies"]:
        assert set(row) >= {"policy", "objective_value", "gap", "metrics"}
        assert row["objective_value"] >= data["best_bound"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare_table_on_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["compare", str(DEFAULT), "--model", "unit-slot", "--policy", "mc-sf"],
        capsys,
    )
    assert code == 0
    assert "optimal" in out and "mc-sf" in out and "slot.sawtooth" in out


def test_cli_bound(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        [
            "bound", str(tiny), "--model", "unit-slot",
            "--set", "kv_capacity_tokens=4", "--objective", "makespan", "--json",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"bounds", "best"}
    assert data["best"] == max(data["bounds"].values())
    assert 0 < data["best"] <= 5  # the optimum makespan


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "speed"], "objective"),
        (["--policy", "nosuch"], "nosuch"),
        (["--backend", "gurobi"], "backend"),
        (["--plot", "gap.svg"], "png"),
    ],
)
def test_cli_compare_bad_input(
    tiny: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(["compare", str(tiny), "--model", "unit-slot", *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("seed", range(3))
def test_real_profile_small_instance_uses_the_timed_model(seed: int) -> None:
    rng = np.random.default_rng(20 + seed)
    instance = Instance(
        arrival_s=np.sort(rng.uniform(0, 0.2, 4)),
        prompt_tokens=rng.integers(5, 60, 4),
        output_tokens=rng.integers(1, 6, 4),
    )
    peak = int((instance.prompt_tokens + instance.output_tokens - 1).max())
    profile = load_profile("llama2-70b-a100-tp4").replace(
        block_tokens=1, kv_capacity_tokens=peak + 20
    )
    result = compare(instance, profile, policies=POLICIES, time_limit=20)
    assert result.solve_model == "timed model"
    # CP-SAT proves its schedule optimal up to its rounding bound: the status is
    # "optimal" where that gap is within OPTIMALITY_RTOL, else "feasible"
    assert result.solve is not None and result.solve.info["cpsat_status"] == "OPTIMAL"
    assert result.solve.status in ("optimal", "feasible")
    optimum = result.solve_objective
    assert optimum == pytest.approx(result.solve.objective, rel=1e-6)
    assert result.best_bound <= optimum * (1 + 1e-9)
    for row in result.policies:
        assert row.objective_value >= result.best_bound * (1 - 1e-9)
        if row.bound_scope == "slot":  # non-preemptive whole prefills: the class
            # CP-SAT's optimum is exact up to its stated rounding bound
            slack = result.solve.info.get("rounding_bound_s", 0.0)
            assert row.objective_value >= optimum - slack - 1e-9


def _shared_prefix_instance() -> Instance:
    """Six 1,576-token prompts 0.5 s apart sharing their first three 512-token
    hash blocks (Mooncake's size), 8 output tokens each."""
    n, hashes = 6, [[1, 2, 3, 100 + i] for i in range(6)]
    return hashed_instance(
        np.arange(n) * 0.5,
        np.full(n, 3 * 512 + 40),
        np.full(n, 8),
        hashes,
        512,
    )


@pytest.mark.parametrize("objective", ["latency", "makespan"])
def test_cached_runs_are_scored_against_cache_valid_bounds(objective: str) -> None:
    """With a prefix cache, every gap is taken to a bound tagged for any cache
    and is >= 0, and the headline bound is one; the bounds from whole prompts
    would not hold: a cached latency run beats them (5 of 6 prompts find 1,536
    of their 1,576 tokens cached)."""
    instance = _shared_prefix_instance()
    profile = load_profile("llama2-70b-a100-tp4")
    policies = ["fcfs", "vllm", "sarathi"]
    cached = compare(instance, profile, objective=objective, policies=policies,
                     backend=None, lp_time_limit=0, prefix_cache="lru")  # fmt: skip
    assert cached.cache == "any"
    holding = [b.value for b in cached.bounds if b.cache == "any"]
    assert cached.best_bound == max(holding)
    for row in cached.policies:
        assert row.result.metrics["prefill_tokens_saved"] == 5 * 1536
        assert row.gap is not None and row.gap >= 0, row.policy
        bound = row.objective_value * (1 - row.gap)
        assert bound == pytest.approx(max(holding), rel=1e-9)
    if objective == "latency":
        whole = max(b.value for b in cached.bounds if b.cache == "none")
        assert min(r.objective_value for r in cached.policies) < whole
