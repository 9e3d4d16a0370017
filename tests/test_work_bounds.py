"""Closed-form bounds in seconds: hand-derived values, and <= every schedule."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_equivalence import PROFILES, random_instance, tight_profile
from test_timed_model import ROOFLINE, THRESHOLD
from test_timed_model import brute_force as timed_brute_force
from test_timed_model import random_case as timed_case

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.formulations.bounds.work import under_estimators, work_bounds
from lsched.formulations.slot import SlotProblem, cpsat
from lsched.formulations.timed import TimedProblem
from lsched.formulations.timed import milp as timed_milp
from lsched.instance import Instance
from lsched.profile import load_profile

POLICIES = ("fcfs", "sarathi:chunk=8", "srpt", "mc-sf", "sjf")
UNIT = load_profile("unit-slot")


def objective_of(result, instance: Instance, objective: str) -> float:
    if objective == "makespan":
        return float(result.metrics["makespan_s"])
    return float((result.requests["completion_s"] - instance.arrival_s).sum())


def make(arrival, prompt, output) -> Instance:
    return Instance(
        arrival_s=np.asarray(arrival, dtype=float),
        prompt_tokens=np.asarray(prompt),
        output_tokens=np.asarray(output),
    )


def test_one_request_alone_is_exact_on_unit_slots() -> None:
    # one prefill slot and o - 1 decode slots: latency o, the critical path
    instance = make([2.0], [5], [7])
    bounds = work_bounds(instance, UNIT, "latency")
    assert bounds["critical_path"] == pytest.approx(7.0)
    result = simulate(instance, UNIT, "fcfs")
    assert objective_of(result, instance, "latency") == pytest.approx(7.0)


def test_kv_volume_hand_derived() -> None:
    # two requests s=3, o=2 hold 3 then 4 tokens; with M = 4 they run one after
    # the other (latency 2 + 4 = 6). Fluid: areas 7/4 each -> SRPT 1.75, 3.5;
    # critical paths 2, 2 -> sum of maxima 2 + 3.5 = 5.5.
    instance = make([0.0, 0.0], [3, 3], [2, 2])
    profile = UNIT.replace(kv_capacity_tokens=4)
    bounds = work_bounds(instance, profile, "latency")
    assert bounds["work"] == pytest.approx(5.5)
    assert bounds["critical_path"] == pytest.approx(4.0)
    # makespan: fluid 3.5 over the critical path 2
    assert work_bounds(instance, profile, "makespan")["work"] == pytest.approx(3.5)
    result = simulate(instance, profile, "fcfs")
    assert objective_of(result, instance, "latency") == pytest.approx(6.0)


def test_prefill_queue_hand_derived() -> None:
    # time = 1 s per prefill token (and nothing else): prompts of 4 and 2 tokens
    # at 0, one output token each. Prefill-only SRPT: 2, 6 -> latency >= 8,
    # reached by serving the short prompt first (or both together: 6 + 6 = 12).
    from lsched.profile import IterationTime

    weights = np.zeros(6)
    weights[1] = 1.0
    weights[3] = 1e-9  # a decode step takes a positive time (or the profile is refused)
    profile = UNIT.replace(iteration_time=IterationTime(regimes=(weights[None, :],)))
    instance = make([0.0, 0.0], [4, 2], [1, 1])
    bounds = work_bounds(instance, profile, "latency")
    assert bounds["prefill_queue"] == pytest.approx(8.0)
    assert bounds["critical_path"] == pytest.approx(6.0)


def test_negative_prefill_weight_is_folded_into_the_constant() -> None:
    # DistServe's fit has a negative has_prefill weight in its small-batch regime
    profile = load_profile("opt-13b-a100-tp1-distserve")
    u = under_estimators(profile)
    assert len(u) > 0
    assert np.all(u >= 0)
    rng = np.random.default_rng(3)
    phi = np.column_stack(
        [
            np.ones(500),
            rng.integers(0, 2000, 500),
            rng.integers(0, 10**6, 500),
            rng.integers(0, 200, 500),
            rng.integers(0, 10**5, 500),
            rng.integers(0, 2, 500),
        ]
    ).astype(float)
    times = profile.iteration_time_s(phi)
    assert np.all(phi @ u.T <= times[:, None] + 1e-12)


@pytest.mark.parametrize("seed", range(24))
def test_bounds_below_every_policy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = list(PROFILES.values())[seed % len(PROFILES)]
    if seed % 3 == 0:
        base = load_profile("llama-65b-pang2025")  # max of two pieces
    instance = random_instance(rng, int(rng.integers(2, 14)), 0.5)
    # limits that bind, with room for every prompt (whole-prompt policies)
    profile = tight_profile(rng, base, instance, limits=False).replace(
        max_num_seqs=int(rng.choice([2, 3, 1000])),
        max_num_batched_tokens=int(instance.prompt_tokens.max() + rng.integers(0, 30)),
    )
    replicas = int(rng.integers(1, 3))
    for objective in ("latency", "makespan"):
        bounds = work_bounds(instance, profile, objective, replicas=replicas)
        assert set(bounds) >= {"critical_path", "work"}
        best = max(bounds.values())
        for policy in POLICIES:
            result = simulate(instance, profile, policy, replicas=replicas)
            value = objective_of(result, instance, objective)
            assert best <= value * (1 + 1e-9), (objective, policy, bounds, value)


@pytest.mark.parametrize("seed", range(6))
def test_bounds_below_the_slot_optimum(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 7
    instance = make(
        np.zeros(n), rng.integers(1, 6, n), rng.integers(1, 12, n)
    )  # all at 0: the slot model's objective is the evaluator's
    peak = int((instance.prompt_tokens + instance.output_tokens - 1).max())
    profile = UNIT.replace(kv_capacity_tokens=peak + int(rng.integers(0, 10)))
    for objective in ("latency", "makespan"):
        problem = SlotProblem.from_instance(instance, profile, objective=objective)
        result = cpsat.solve(problem, time_limit=20, seed=0)
        assert result.status == "optimal"
        best = max(work_bounds(instance, profile, objective).values())
        assert best <= result.objective + 1e-9


def test_bad_input() -> None:
    instance = make([0.0], [1], [1])
    with pytest.raises(InputError, match="objective"):
        work_bounds(instance, UNIT, "ttft-ish")
    with pytest.raises(InputError, match="replicas"):
        work_bounds(instance, UNIT, "latency", replicas=0)


@pytest.mark.parametrize("seed", range(30))
def test_bounds_below_the_timed_optimum(seed: int) -> None:
    # the timed model's brute-force optimum (its own test helper, from DESIGN.md's
    # rules), on a two-piece roofline or a two-regime cost model
    iteration_time = ROOFLINE if seed % 2 else THRESHOLD
    instance, profile, _ = timed_case(seed, iteration_time)
    optima = timed_brute_force(instance, profile)
    for objective in ("latency", "makespan"):
        bounds = work_bounds(instance, profile, objective)
        assert bounds, "no under-estimator for the cost model"
        problem = TimedProblem(instance, profile, objective=objective)
        bounds["timed.lp"] = timed_milp.lp_bound(problem, time_limit=20)
        assert np.isfinite(bounds["timed.lp"])
        for name, value in bounds.items():
            assert value <= optima[objective][0] * (1 + 1e-9), (name, objective)
