"""Bounds and migration: every spec says whether it holds when requests move
between replicas, a report on runs that migrate skips those that do not, and a
hand-derived run with one move beats ``cluster.critical_path``."""

from __future__ import annotations

import numpy as np
import pytest

from lsched.cluster import Cluster, Pool
from lsched.errors import InputError
from lsched.formulations.bounds import registry
from lsched.formulations.bounds.cluster import cluster_bounds
from lsched.formulations.bounds.registry import Migration
from lsched.formulations.bounds.suite import bound_report, cluster_bound_report
from lsched.formulations.result import Reason
from lsched.instance import Instance
from lsched.profile import DeploymentProfile, IterationTime, load_profile

UNIT = load_profile("unit-slot")
#: The bounds that assume a request's decode stays on one pool (the registry's
#: docstring, "Migration").
ROUTED = {
    "cluster.critical_path",
    "cluster.work",
    "cluster.prefill_queue",
    "cluster.decode_work",
}
INSTANCE = Instance(
    arrival_s=[0.0, 0.0, 1.0, 2.0],
    prompt_tokens=[3, 1, 4, 2],
    output_tokens=[4, 6, 2, 3],
)


def _profile(name: str, weights: dict[int, float]) -> DeploymentProfile:
    """``unit-slot`` with one linear piece over ``[1, P, Q, D, K, H]``."""
    row = np.zeros(6)
    for feature, weight in weights.items():
        row[feature] = weight
    return UNIT.replace(name=name, iteration_time=IterationTime(regimes=(row[None],)))


#: 1 s an iteration, whatever it holds.
FLAT = _profile("flat", {0: 1.0})
#: 0.1 s per KV token read and per iteration with a prefill.
KV = _profile("kv", {4: 0.1, 5: 0.1})
TWO_POOLS = Cluster((Pool(FLAT, "fcfs", 1, name="a"), Pool(KV, "fcfs", 1, name="b")))


def test_every_spec_says_whether_it_holds_with_migration() -> None:
    for spec in registry.BOUNDS:
        expected = Migration.NONE if spec.name in ROUTED else Migration.ANY
        assert spec.schedules.migration is expected, spec.name
    assert Migration.ANY.covers(Migration.NONE)
    assert not Migration.NONE.covers(Migration.ANY)


def test_one_pool_keeps_every_bound_when_requests_migrate() -> None:
    plain = bound_report(INSTANCE, UNIT, replicas=2, lp_time_limit=0)
    moving = bound_report(INSTANCE, UNIT, replicas=2, lp_time_limit=0, migrates=True)
    assert [(b.name, b.value) for b in moving.bounds] == [
        (b.name, b.value) for b in plain.bounds
    ]
    assert moving.skipped == plain.skipped
    assert all(b.migration == "any" for b in moving.bounds)


def test_a_cluster_skips_its_routed_bounds_when_requests_migrate() -> None:
    plain = cluster_bound_report(INSTANCE, TWO_POOLS, lp_time_limit=0)
    moving = cluster_bound_report(INSTANCE, TWO_POOLS, lp_time_limit=0, migrates=True)
    assert {b.name for b in plain.bounds} == ROUTED
    assert all(b.migration == "none" for b in plain.bounds)
    assert moving.bounds == []
    skipped = {s.name: s for s in moving.skipped}
    for name in ROUTED:
        assert skipped[name].reason is Reason.OUT_OF_SCOPE
        assert "migrate" in skipped[name].detail
    others = {s.name for s in plain.skipped}
    assert set(skipped) == ROUTED | others


def test_a_move_between_pools_beats_the_cluster_critical_path() -> None:
    """One request, ``s = 1``, ``o = 21``, at 0. The decode step that emits token
    ``j`` reads ``j`` KV tokens: 1 s on pool ``a`` (FLAT), ``0.1 j`` s on pool
    ``b`` (KV). Unmoved: ``a`` takes 1 + 20 = 21 s, ``b`` 0.1 + 0.1 (2 + ... +
    21) = 23.1 s, so ``cluster.critical_path`` is 21 s. Prefilled on ``b`` and
    decoded there up to token 10 (0.1 + 0.1 x 54 = 5.5 s), then moved to ``a``
    for tokens 11 to 21 (11 s), it completes at 16.5 s plus the move's downtime:
    below the bound unless the downtime of 10 tokens' KV exceeds 4.5 s."""
    instance = Instance(arrival_s=[0.0], prompt_tokens=[1], output_tokens=[21])
    bound = cluster_bounds(instance, TWO_POOLS, "latency")["critical_path"]
    assert bound == pytest.approx(21.0, abs=1e-12)
    on_b = 0.1 + sum(0.1 * j for j in range(2, 11))
    on_a = sum(1.0 for _ in range(11, 22))
    assert on_b + on_a == pytest.approx(16.5, abs=1e-12)
    assert bound - (on_b + on_a) == pytest.approx(4.5, abs=1e-12)


def test_migrates_must_be_a_bool() -> None:
    with pytest.raises(InputError) as error:
        bound_report(INSTANCE, UNIT, lp_time_limit=0, migrates="yes")
    assert error.value.field == "migrates"


def test_compare_on_a_migrating_cluster_scores_no_run_against_routed_bounds() -> None:
    """``compare_cluster`` with a router that migrates (``llumnix``) passes
    ``migrates`` to the bound suite: the routed bounds are listed as skipped,
    and the runs' gaps are taken to none of them."""
    from lsched.comparison import compare_cluster

    cluster = Cluster(TWO_POOLS.pools, "llumnix")
    got = compare_cluster(INSTANCE, cluster, policies=["fcfs"], lp_time_limit=0)
    assert not {b.name for b in got.bounds} & ROUTED
    skipped = {s.name: s for s in got.not_computed}
    assert all("migrate" in skipped[name].detail for name in ROUTED)
    plain = compare_cluster(INSTANCE, TWO_POOLS, policies=["fcfs"], lp_time_limit=0)
    assert {b.name for b in plain.bounds} >= ROUTED
