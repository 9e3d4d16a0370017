"""The bucket LP (issue 22, part 3): below the timed model's optima (brute force
and MILP), below every recompute-only policy run, and a value derived by hand."""

from __future__ import annotations

import numpy as np
import pytest
from test_timed_model import THRESHOLD, brute_force, random_case

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.formulations.bounds import registry
from lsched.formulations.bounds.bucket import bucket_lp, serial_horizon_s
from lsched.formulations.bounds.suite import bound_report
from lsched.formulations.result import Status
from lsched.formulations.timed import TimedProblem
from lsched.formulations.timed import milp as timed_milp
from lsched.generators import Poisson, jaillet
from lsched.instance import Instance
from lsched.policies import REGISTRY
from lsched.predictors import oracle
from lsched.profile import load_profile

UNIT = load_profile("unit-slot")
REAL = load_profile("llama2-70b-a100-tp4")
#: Policies whose runs leave the bucket LP's scope (a host tier) or need tenants.
OUT_OF_SCOPE = {"infinigen", "vtc"}


def _bound(instance, profile, buckets=60):
    horizon = serial_horizon_s(instance, profile)
    delta = (horizon - instance.arrival_s.min()) / buckets
    found = bucket_lp(instance, profile, delta_s=delta, horizon_s=horizon)
    assert found.model_status == "Optimal"
    return found.value


def test_hand_derived_two_requests_one_token_per_iteration() -> None:
    """Two requests at 0, ``s = 1``, ``o = 2``, every iteration 1 s and one token
    (budget 1), ``Delta = 1``: the serial horizon is 4 (each request alone: a
    prefill and a decode step), so buckets end at 1, 2, 3, 4, and the critical
    path (2 s) drops the credit of bucket 0. Each bucket holds at most one
    iteration (time row: ``n_b <= 1``) and one unit of work (budget row). With
    ``D_i <= F_i`` the work done by ``e_b`` is at least ``2 sum_i D_ib``, so
    ``sum_i D_ib <= (b + 1) / 2``: credit at most 1 + 1.5 + 2 = 4.5 over buckets
    1 to 3, reached by prefilling A in bucket 0, decoding it in 1, then half of B's
    prefill and decode in 2 and the rest in 3. Bound ``2 x 4 - 4.5 = 3.5``; the
    optimum is 2 + 4 = 6."""
    instance = Instance(
        arrival_s=[0.0, 0.0], prompt_tokens=[1, 1], output_tokens=[2, 2]
    )
    profile = UNIT.replace(max_num_batched_tokens=1, kv_capacity_tokens=100,
                           block_tokens=1)  # fmt: skip
    assert serial_horizon_s(instance, profile) == pytest.approx(4.0)
    found = bucket_lp(instance, profile, delta_s=1.0)
    assert found.buckets == 4
    assert found.value == pytest.approx(3.5, abs=1e-7)


@pytest.mark.parametrize("seed", range(16))
def test_below_the_brute_force_optimum(seed: int) -> None:
    """Tiny instances on a roofline with overheads (and threshold regimes for
    seeds >= 12): the bound <= the timed optimum found by enumeration."""
    profile_time = THRESHOLD if seed >= 12 else None
    if profile_time is None:
        instance, profile, _ = random_case(seed)
    else:
        instance, profile, _ = random_case(100 + seed, THRESHOLD, min_n=3)
    optimum = brute_force(instance, profile)["latency"][0]
    value = _bound(instance, profile)
    assert np.isfinite(value)
    assert value <= optimum + 1e-6 * max(1.0, optimum)


@pytest.mark.parametrize("seed", range(8))
def test_below_the_timed_milp_on_a_real_profile(seed: int) -> None:
    """Jaillet's requests on llama2-70b-a100-tp4: the bound <= the MILP's proven
    optimum of the timed model, and above zero."""
    rate = None if seed % 2 == 0 else 20.0
    arrivals = None if rate is None else Poisson(rate_per_s=rate)
    instance = jaillet(4, seed=seed, arrivals=arrivals)
    profile = REAL.replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"], block_tokens=1
    )
    result = timed_milp.solve(TimedProblem(instance, profile), time_limit=20)
    assert result.status == Status.OPTIMAL
    value = _bound(instance, profile, buckets=80)
    assert 0.0 < value <= result.objective + 1e-6 * result.objective


@pytest.mark.parametrize("seed", range(3))
def test_below_every_recompute_only_policy(seed: int) -> None:
    """Every registered policy run without a host tier, chunked or preemptive,
    scores at least the bound (small KV: the runs preempt)."""
    instance = oracle(jaillet(8, seed=seed, arrivals=Poisson(rate_per_s=4.0)))
    profile = REAL.replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"], block_tokens=1
    )
    value = _bound(instance, profile)
    preempted = 0
    for name in REGISTRY:
        if name in OUT_OF_SCOPE:
            continue
        result = simulate(instance, profile, name)
        completion = result.requests["completion_s"].to_numpy()
        total = float((completion - instance.arrival_s).sum())
        assert value <= total + 1e-6 * total, name
        preempted += int(result.metrics["preemptions"])
    assert value > 0.0
    assert preempted > 0  # the class covered includes recompute preemption


def test_in_the_suite_for_one_replica_only() -> None:
    instance = jaillet(5, seed=0)
    report = bound_report(instance, REAL, "latency")
    found = {b.name: b for b in report.bounds}
    assert found["seconds.bucket_lp"].scope == "recompute"
    skipped = {s.name: s for s in bound_report(instance, REAL, "latency",
                                               replicas=2).skipped}  # fmt: skip
    assert "2 replicas" in skipped["seconds.bucket_lp"].detail
    makespan = {s.name for s in bound_report(instance, REAL, "makespan").skipped}
    assert "seconds.bucket_lp" in makespan
    assert registry.Preemption.RECOMPUTE.covers(registry.Preemption.NON_PREEMPTIVE)
    assert not registry.Preemption.RECOMPUTE.covers(registry.Preemption.ANY)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"delta_s": 0.0}, "delta_s"), ({"delta_s": 1.0, "replicas": 2}, "replicas"),
     ({"delta_s": 1.0, "window_end_s": [1.0]}, "window_end_s")],
)  # fmt: skip
def test_bad_input(kwargs, field) -> None:
    instance = jaillet(3, seed=0)
    with pytest.raises(InputError) as error:
        bucket_lp(instance, REAL, **kwargs)
    assert error.value.field == field
