"""Replica dispatch: round-robin, static, least-outstanding, least-kv,
least-queued.

Hand-built cases whose dispatch is derived in the comments (unit-slot profile,
1 s per iteration); the joint simulation with round-robin dispatch reproduces the
one-replica-at-a-time path bit for bit; state-dependent dispatch gives schedules
that the naive reference engine reproduces from the chosen assignment and that
the validator accepts; bad arguments and the CLI option.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reference_engine import simulate_naive
from test_engine_equivalence import (
    PROFILES,
    TIME_SCALE_S,
    Case,
    assert_same,
    random_instance,
    tight_profile,
)

from lsched import predictors
from lsched.cli import main
from lsched.cluster import Cluster
from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.evaluator.cluster import ClusterSim
from lsched.instance import Instance
from lsched.policies import parse_policy
from lsched.validator import validate_schedule

UNIT = PROFILES["unit-slot"]
ROOT = Path(__file__).resolve().parents[1]


def _replicas(instance: Instance, dispatch: str, policy: str = "fcfs") -> list[int]:
    got = simulate(instance, UNIT, policy, replicas=2, dispatch=dispatch)
    return got.requests["replica"].tolist()


def test_least_outstanding_sends_the_arrival_to_the_idle_replica() -> None:
    """R0 (o=10) and R1 (o=1) at 0 go to replicas 0 and 1 (the tie at 0 to the
    lower id). R1 completes at 1; at t=2 replica 0 still runs R0 and replica 1 is
    idle: R2 goes to 1 under least-outstanding and least-kv, to 0 (2 mod 2) under
    round robin."""
    inst = Instance([0, 0, 2], [1, 1, 1], [10, 1, 1])
    assert _replicas(inst, "round-robin") == [0, 1, 0]
    assert _replicas(inst, "least-outstanding") == [0, 1, 1]
    assert _replicas(inst, "least-kv") == [0, 1, 1]
    got = simulate(inst, UNIT, "fcfs", replicas=2, dispatch="least-outstanding")
    assert got.requests["completion_s"].tolist() == [10.0, 1.0, 3.0]


def test_least_kv_reads_the_kv_held_and_spreads_a_burst() -> None:
    """A burst of 4 at 0 holds no KV yet: ties go to fewer unfinished, then the
    lower id: 0, 1, 0, 1. Both replicas prefill in [0, 1) and decode after: at
    t=3 replica 0 holds R0 (8 + 2 tokens) and R2 (1 + 2) = 13, replica 1 holds
    3 + 3 = 6, so R4 goes to 1 under least-kv; least-outstanding sees 2 and 2 and
    picks 0."""
    inst = Instance([0, 0, 0, 0, 3], [8, 1, 1, 1, 1], [9, 9, 9, 9, 1])
    assert _replicas(inst, "least-kv") == [0, 1, 0, 1, 1]
    assert _replicas(inst, "least-outstanding") == [0, 1, 0, 1, 0]


def test_least_queued_does_not_count_the_iteration_in_flight() -> None:
    """R0 (o=10) at 0 goes to replica 0 (tie), prefilled in [0, 1). At 0.5
    replica 0 has R0 in flight, nothing queued, and replica 1 is idle: a tie,
    so R1 goes to 0 under least-queued (1 under least-outstanding, which counts
    R0). R1 waits there, queued: R2 at 0.5 goes to 1 (least-outstanding sees 1
    and 1 and picks 0)."""
    inst = Instance([0, 0.5, 0.5], [1, 1, 1], [10, 2, 2])
    assert _replicas(inst, "least-queued") == [0, 0, 1]
    assert _replicas(inst, "least-outstanding") == [0, 1, 0]
    got = simulate(inst, UNIT, "fcfs", replicas=2, dispatch="least-queued")
    # R1 is prefilled with R0's step at 1 (fcfs), done at 3; R2 at 0.5 to 2.5
    assert got.requests["completion_s"].tolist() == [10.0, 3.0, 2.5]


def _random(rng: np.random.Generator) -> tuple[Instance, object]:
    name = str(rng.choice(list(PROFILES)))
    instance = random_instance(
        rng,
        int(rng.integers(1, 16)),
        TIME_SCALE_S[name],
        exact_clock=name == "unit-slot",
    )
    return instance, tight_profile(rng, PROFILES[name], instance)


POLICIES = ["fcfs", "sarathi", "wait:threshold=3,max_wait_s=0.5", "hybrid", "srpt"]


def test_joint_round_robin_equals_the_fast_path_exactly() -> None:
    rng = np.random.default_rng(20250711)
    for _ in range(60):
        instance, profile = _random(rng)
        policy = str(rng.choice(POLICIES))
        replicas = int(rng.choice([2, 3]))
        fast = simulate(instance, profile, policy, replicas=replicas, engine="python")
        cluster = Cluster.colocated(profile, parse_policy(policy), replicas)
        sim = ClusterSim(instance, cluster, joint=True)
        sim.run()
        joint = sim.outcome()
        where, engines = joint.where, [e for e in joint.engines if e is not None]
        assert where.tolist() == fast.requests["replica"].tolist()
        for engine in engines:
            ids = np.array(engine.ids, dtype=np.int64)
            for column, got in (
                ("admitted_s", engine.admitted_s),
                ("first_token_s", engine.first_token_s),
                ("completion_s", engine.completion_s),
                ("preemptions", engine.preemptions),
            ):
                expected = fast.requests[column].to_numpy()[ids]
                np.testing.assert_array_equal(got[: len(ids)], expected, column)
        assert sum(e.iterations for e in engines) == fast.iterations


@pytest.mark.parametrize("dispatch", ["least-outstanding", "least-kv", "least-queued"])
def test_state_dependent_dispatch_replays_and_validates(dispatch: str) -> None:
    """The reference engine, given the chosen replicas as a static assignment,
    reproduces every record; each replica's log passes the validator."""
    rng = np.random.default_rng([20250712, len(dispatch)])
    for _ in range(40):
        instance, profile = _random(rng)
        instance = predictors.oracle(instance)
        policy = str(rng.choice([*POLICIES, "nested-wait:segments=4/16"]))
        replicas = int(rng.choice([2, 3]))
        got = simulate(
            instance, profile, policy, replicas=replicas, dispatch=dispatch, log=True
        )
        where = got.requests["replica"].to_numpy()
        case = Case(instance, profile, policy, replicas, where)
        naive = simulate_naive(
            instance, profile, policy, replicas=replicas, assignment=where
        )
        assert_same(case, naive, got)
        report = validate_schedule(
            instance,
            profile,
            got.runs,
            got.members,
            got.preemptions,
            replicas=replicas,
            requests=got.requests,
            metrics=got.metrics,
        )
        assert report.ok, f"{report}\n{case.describe()}"


@pytest.mark.parametrize("dispatch", ["least-outstanding", "least-kv"])
def test_vtc_runs_under_state_dependent_dispatch(dispatch: str) -> None:
    """vtc reads a tenant only once its request has arrived, so it runs on a
    replica whose requests are routed to it one by one; the reference engine,
    given the chosen replicas, reproduces every record."""
    rng = np.random.default_rng([20251205, len(dispatch)])
    for _ in range(20):
        instance, profile = _random(rng)
        tenants = rng.choice(["a", "b", "c"], size=len(instance))
        instance = instance.replace(tenant=tenants.tolist())
        got = simulate(instance, profile, "vtc", replicas=2, dispatch=dispatch)
        where = got.requests["replica"].to_numpy()
        naive = simulate_naive(instance, profile, "vtc", replicas=2, assignment=where)
        assert_same(Case(instance, profile, "vtc", 2, where), naive, got)


def test_bad_dispatch_arguments() -> None:
    inst = Instance([0.0, 0.0], [1, 1], [1, 1])
    with pytest.raises(InputError, match="dispatch"):
        simulate(inst, UNIT, "fcfs", replicas=2, dispatch="nearest")
    with pytest.raises(InputError, match="needs an assignment"):
        simulate(inst, UNIT, "fcfs", replicas=2, dispatch="static")
    with pytest.raises(InputError, match="assignment too"):
        simulate(inst, UNIT, "fcfs", replicas=2, dispatch="least-kv", assignment=[0, 1])
    with pytest.raises(InputError, match="replicas"):
        simulate(inst, UNIT, "fcfs", replicas=0, dispatch="least-kv")
    got = simulate(inst, UNIT, "fcfs", replicas=2, dispatch="static", assignment=[1, 1])
    assert got.requests["replica"].tolist() == [1, 1]


def test_cli_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    default = str(ROOT / "instances" / "default.csv")
    args = ["simulate", default, "--model", "unit-slot", "--replicas", "2", "--json"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--dispatch", "least-kv"])
    out, _ = capsys.readouterr()
    assert int(info.value.code or 0) == 0 and '"policies"' in out
    with pytest.raises(SystemExit) as info:
        main([*args, "--dispatch", "static"])
    _, err = capsys.readouterr()
    assert info.value.code == 2 and "dispatch" in err
