"""The compiled path gives the Python path's records.

:mod:`lsched.evaluator.compiled` ports the standard policies to numba and replays
a replica iteration by iteration; the Python engine calls the policy at events
and advances held stretches in closed form. On seeded random cases (the engine-
equivalence generator: tight KV, binding batch limits, block sizes 1 and 16,
piecewise and regime-switching iteration times, 1 or 3 replicas), both paths must
give every request the same admission, first-token and completion times (relative
1e-9), preemptions and recomputed tokens, the same iterations, busy time and KV
token-seconds, and fail alike. The engine-equivalence tests themselves run the
compiled path against the naive engine (``simulate`` takes it by default).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_engine_equivalence import RTOL, Case, random_case

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.evaluator.compiled import KERNELS, core, kernel_for, vllm_v0
from lsched.instance import Instance
from lsched.policies import (
    REGISTRY,
    PolicyError,
    PolicySpec,
    parse_policy,
    register_policy,
)
from lsched.policies.fcfs import Fcfs, FcfsParams
from lsched.profile import DeploymentProfile, load_profile

#: Every compiled policy with parameters that reach each branch of its port.
POLICIES = (
    "fcfs",
    "fcfs:chunked=false",
    "orca",
    "orca:reserve=predicted",
    "orca:max_model_len=60,max_batch=3",
    "vllm",
    "vllm:long_prefill_token_threshold=5",
    "sarathi",
    "sarathi:chunk=7",
    "sarathi:chunk=20,watermark=0",
    "vllm-v0",
    "vllm-v0:watermark=0.1,decode_context_cap=60",
    "vllm-v0:kv_limit=false,prefill_token_budget=50,decode_context_cap=60",
    "vllm-v0:back_pressure_tokens=40",
    "vllm-v0:kv_limit=false,prefill_token_budget=50,back_pressure_tokens=60",
)
#: Policies that reserve KV at admission (they preempt rarely, if ever) or apply
#: no KV limit (DistServe's mode: never).
RESERVING = (
    "orca",
    "orca:max_model_len=60,max_batch=3",
    "vllm-v0:kv_limit=false,prefill_token_budget=50,decode_context_cap=60",
    "vllm-v0:kv_limit=false,prefill_token_budget=50,back_pressure_tokens=60",
)
CASES = 100


def _run(case: Case, engine: str) -> Any:
    return simulate(
        case.instance,
        case.profile,
        case.policy,
        replicas=case.replicas,
        assignment=case.assignment,
        engine=engine,
    )


def assert_same_records(case: Case, python: Any, compiled: Any) -> None:
    """Both paths' per-request records and totals agree."""
    where = case.describe()
    for column in ("admitted_s", "first_token_s", "completion_s"):
        np.testing.assert_allclose(
            compiled.requests[column].to_numpy(),
            python.requests[column].to_numpy(),
            rtol=RTOL,
            atol=0,
            err_msg=f"{column}\n{where}",
        )
    for column in ("replica", "preemptions", "recomputed_tokens"):
        np.testing.assert_array_equal(
            compiled.requests[column].to_numpy(),
            python.requests[column].to_numpy(),
            err_msg=f"{column}\n{where}",
        )
    assert compiled.iterations == python.iterations, where
    for key in ("busy_fraction", "kv_utilization", "makespan_s"):
        assert compiled.metrics[key] == pytest.approx(python.metrics[key], rel=RTOL), (
            key,
            where,
        )


def test_every_compiled_policy_is_tested() -> None:
    assert {p.split(":")[0] for p in POLICIES} == set(KERNELS)


def _room(
    profile: DeploymentProfile, instance: Instance, policy: str, k: int
) -> DeploymentProfile:
    """``vllm-v0`` prefills whole prompts, and a prompt (or a recomputed
    ``s + e``) over the token budget stalls: every other case gets a budget that
    takes them, so that most cases compare and the rest stall alike. DistServe's
    mode has no KV limit (room for every peak) nor preemption (a budget that takes
    every prompt)."""
    if not policy.startswith("vllm-v0"):
        return profile
    peaks = instance.prompt_tokens + instance.output_tokens - 1
    if "kv_limit=false" in policy:
        b = profile.block_tokens
        return profile.replace(
            kv_capacity_tokens=int((-(-peaks // b)).sum()) * b,
            max_num_batched_tokens=max(
                profile.max_num_batched_tokens, int(instance.prompt_tokens.max())
            ),
        )
    if k % 2:
        budget = max(profile.max_num_batched_tokens, int(peaks.max()))
        return profile.replace(max_num_batched_tokens=budget)
    return profile


@pytest.mark.parametrize("policy", POLICIES)
def test_random_cases_agree_with_the_python_path(policy: str) -> None:
    rng = np.random.default_rng([20261205, POLICIES.index(policy)])
    compared = preempted = 0
    for k in range(CASES):
        case = random_case(rng)
        instance = case.instance
        if rng.random() < 0.5:  # predictions too small: reservations overflow
            low = rng.uniform(0.2, 1.0, size=len(instance)) * instance.output_tokens
            predicted = np.maximum(1, low.astype(np.int64))
            instance = instance.replace(predicted_output_tokens=predicted)
        profile = _room(case.profile, instance, policy, k)
        case = Case(instance, profile, policy, case.replicas, None)
        try:
            python = _run(case, "python")
        except PolicyError:
            with pytest.raises(PolicyError):
                _run(case, "compiled")
            continue
        compiled = _run(case, "compiled")
        assert compiled.engine == "compiled", compiled.engine
        assert_same_records(case, python, compiled)
        compared += 1
        preempted += int(python.metrics["preemptions"] > 0)
    assert compared >= CASES // 3  # the cases mostly compare, not stall
    if policy not in RESERVING:
        assert preempted >= 5  # the preemption branches are reached


def test_the_python_path_runs_where_the_compiled_one_cannot() -> None:
    profile = load_profile("unit-slot")
    instance = random_case(np.random.default_rng(7)).instance

    def path(policy: str = "fcfs", inst: Any = instance, **kwargs: Any) -> str:
        kwargs.setdefault("engine", "compiled")
        return simulate(inst, profile, policy, **kwargs).engine

    assert path() == "compiled"
    assert path(log=True) == "python: the iteration log was asked for"
    assert path("sjf") == "python: policy sjf has no compiled kernel"
    joint = path(replicas=2, dispatch="least-kv")
    assert joint == "python: the router reads replica state"
    assert path(engine="python") == "python"
    # auto: the kernels' loading pays only on enough requests per replica
    assert path(engine="auto").startswith("python: under 1,000 requests")
    many = Instance(np.arange(1000.0), np.ones(1000, int), np.ones(1000, int))
    assert path(inst=many, engine="auto") == "compiled"
    assert path(inst=many, engine="auto", replicas=2).startswith("python: under")
    # vllm's priority queues read the instance's priority column: not ported
    ranked = instance.replace(priority=np.arange(len(instance)) % 3)
    assert path("vllm", ranked) == "compiled"
    assert path("vllm:priority=true", ranked) == (
        "python: policy vllm:priority=true has no compiled kernel"
    )
    with pytest.raises(InputError, match="engine"):
        path(engine="numba")


def test_a_rule_that_is_not_the_ported_one_runs_in_python() -> None:
    """A subclass of a compiled policy's params, or the name registered to another
    class, is not the ported rule: only lsched's own class takes the compiled
    path."""
    spec = parse_policy("fcfs")
    assert kernel_for(spec) == "fcfs"

    class MyParams(FcfsParams):
        pass

    assert kernel_for(PolicySpec("fcfs", MyParams())) is None
    original = REGISTRY["fcfs"]

    class MyFcfs(Fcfs):
        pass

    register_policy("fcfs", MyFcfs, FcfsParams, replace=True)
    try:
        assert kernel_for(parse_policy("fcfs")) is None
    finally:
        register_policy(
            "fcfs", original.build, original.params, original.summary, replace=True
        )
    assert kernel_for(parse_policy("fcfs")) == "fcfs"


def test_the_vllm_v0_ring_keeps_its_live_entries_in_order() -> None:
    """Compacting the decode queue drops a finished request's entry, a preempted
    one's and the old entry of a request admitted again, and keeps the rest in
    order (here across the ring's wrap-around)."""
    m = 5
    size = vllm_v0.ring_slots(m)
    ps = np.zeros(vllm_v0.LIVE + m + size, dtype=np.int64)
    live, ring = ps[vllm_v0.LIVE : vllm_v0.LIVE + m], ps[vllm_v0.LIVE + m :]
    head = size - 3
    order = [3, 1, 0, 2, 4, 0]  # 1 finished, 2 preempted, 0 admitted again
    for k, r in enumerate(order):
        ring[(head + k) % size] = r
    live[:] = [head + 5, head + 1, -1, head, head + 4]
    ps[vllm_v0.HEAD], ps[vllm_v0.TAIL] = head, head + len(order)
    req = np.zeros((core.REQ_ROWS, m), dtype=np.int64)
    req[core.STATUS] = core.RUNNING
    req[core.STATUS, 1] = core.DONE_STATUS
    req[core.STATUS, 2] = core.WAITING
    vllm_v0._compact(req, ps, live, ring)
    assert ps[vllm_v0.TAIL] == head + 3
    assert [ring[(head + k) % size] for k in range(3)] == [3, 4, 0]
    assert live[[3, 4, 0]].tolist() == [head, head + 1, head + 2]
