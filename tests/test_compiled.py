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
from lsched.evaluator.compiled import KERNELS, kernel_for
from lsched.instance import Instance
from lsched.policies import (
    REGISTRY,
    PolicyError,
    PolicySpec,
    parse_policy,
    register_policy,
)
from lsched.policies.fcfs import Fcfs, FcfsParams
from lsched.profile import load_profile

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
)
#: Policies that reserve KV at admission: they preempt rarely, if ever.
RESERVING = ("orca", "orca:max_model_len=60,max_batch=3")
CASES = 150


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


@pytest.mark.parametrize("policy", POLICIES)
def test_random_cases_agree_with_the_python_path(policy: str) -> None:
    rng = np.random.default_rng([20261205, POLICIES.index(policy)])
    compared = preempted = 0
    for _ in range(CASES):
        case = random_case(rng)
        instance = case.instance
        if rng.random() < 0.5:  # predictions too small: reservations overflow
            low = rng.uniform(0.2, 1.0, size=len(instance)) * instance.output_tokens
            predicted = np.maximum(1, low.astype(np.int64))
            instance = instance.replace(predicted_output_tokens=predicted)
        case = Case(instance, case.profile, policy, case.replicas, None)
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
