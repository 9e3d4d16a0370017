"""The bound suite: every bound <= the brute-force optimum of its class."""

from __future__ import annotations

import math

import numpy as np
import pytest
from slot_brute import brute_force
from test_timed_model import brute_force as timed_brute_force

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.formulations.bounds.suite import best_bound, bound_suite
from lsched.instance import Instance
from lsched.profile import load_profile

UNIT = load_profile("unit-slot")


def small_case(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    prompt = rng.integers(1, 4, n)
    output = rng.integers(1, 5 if n < 5 else 4, n)
    arrival = np.sort(rng.choice([0.0, 0.0, 1.0, 2.0], size=n))
    block = int(rng.choice([1, 2]))
    peak = int((-(-(prompt + output - 1) // block)).max())
    blocks = peak + int(rng.integers(0, peak + 1))
    seqs = int(rng.integers(1, 4)) if seed % 4 == 1 else 10**6
    budget = int(prompt.max() + rng.integers(0, 3)) if seed % 5 == 2 else 10**6
    instance = Instance(arrival_s=arrival, prompt_tokens=prompt, output_tokens=output)
    profile = UNIT.replace(
        kv_capacity_tokens=blocks * block,
        block_tokens=block,
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
    )
    return instance, profile


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("objective", ["latency", "makespan"])
def test_every_bound_below_the_slot_optimum(seed: int, objective: str) -> None:
    instance, profile = small_case(seed)
    bounds = bound_suite(instance, profile, objective)
    names = {b.name for b in bounds}
    assert {"seconds.work", "slot.energy", "slot.sawtooth", "slot.lp"} <= names
    seqs = None if profile.max_num_seqs >= 10**6 else profile.max_num_seqs
    budget = profile.max_num_batched_tokens
    optimum = brute_force(
        instance.arrival_s,
        instance.prompt_tokens,
        instance.output_tokens,
        np.ones(len(instance), dtype=np.int64),
        profile.kv_capacity_blocks,
        profile.block_tokens,
        seqs,
        None if budget >= 10**6 else budget,
        objective,
    )
    for bound in bounds:
        assert bound.value <= optimum + 1e-6, (bound, optimum)
    # the bounds for any schedule also hold for a preemptive policy
    result = simulate(instance, profile, "fcfs")
    if objective == "latency":
        value = float((result.requests["completion_s"] - instance.arrival_s).sum())
    else:
        value = float(result.metrics["makespan_s"])
    assert best_bound(bounds, "any") <= value + 1e-6


def test_slot_bounds_only_where_slots_are_seconds() -> None:
    instance, profile = small_case(0)
    real = load_profile("llama2-70b-a100-tp4")
    # on a real profile the slot class is bounded by the timed model's LP alone,
    # below the timed optimum (brute force)
    optima = timed_brute_force(instance, real)
    for objective in ("latency", "makespan"):
        bounds = bound_suite(instance, real, objective)
        assert [b.name for b in bounds if b.scope == "slot"] == ["timed.lp"]
        assert best_bound(bounds, "slot") <= optima[objective][0] * (1 + 1e-9)
    # a prompt over the token budget: no non-preemptive schedule, no timed LP
    long_prompt = Instance(
        arrival_s=np.zeros(2), prompt_tokens=[10, 3], output_tokens=[2, 2]
    )
    chunked = real.replace(max_num_batched_tokens=8)
    # (the bucket LP covers chunked schedules: scope "recompute")
    scopes = {b.scope for b in bound_suite(long_prompt, chunked)}
    assert scopes == {"any", "recompute"}
    # two replicas: the slot and timed models have one
    assert {b.scope for b in bound_suite(instance, real, replicas=2)} == {"any"}
    assert {b.scope for b in bound_suite(instance, profile, replicas=2)} == {"any"}
    shifted = instance.replace(arrival_s=instance.arrival_s + 0.5)
    # fractional arrivals: slots are not seconds, the timed model still applies
    names = {b.name.split(".")[0] for b in bound_suite(shifted, profile)}
    assert names == {"seconds", "timed"}


def test_best_bound_by_scope() -> None:
    instance, profile = small_case(3)
    bounds = bound_suite(instance, profile)
    assert best_bound(bounds, "slot") == max(b.value for b in bounds)
    assert best_bound(bounds, "any") == max(b.value for b in bounds if b.scope == "any")
    assert best_bound([], "any") == -math.inf
    with pytest.raises(InputError, match="scope"):
        best_bound(bounds, "everything")
