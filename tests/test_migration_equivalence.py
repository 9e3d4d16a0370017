"""Live migration against the naive reference engine: seeded random small
clusters (2-3 replicas, ``llumnix`` with a short tick) agree with the fast loop
to 1e-9, the naive engine replaying the moves the fast run's migrator started
and computing every stage, downtime and time itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reference_engine import simulate_naive_migration

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator.migration import MigrationSim
from lsched.evaluator.records import collect
from lsched.instance import Instance
from lsched.profile import load_profile
from lsched.validator import validate_cluster

UNIT = load_profile("unit-slot")
SEEDS = range(12)


def _case(seed: int) -> tuple[Instance, Cluster]:
    """A burst of 6-10 requests on 2-3 replicas whose KV is tight enough for
    Llumnix to move some; block size 1 for even seeds, 4 for odd ones."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 11))
    block = 1 if seed % 2 == 0 else 4
    capacity = int(rng.integers(10, 16)) * 4
    profile = UNIT.replace(kv_capacity_tokens=capacity, block_tokens=block)
    instance = Instance(
        np.sort(rng.uniform(0.0, 4.0, n)).round(2),
        rng.integers(1, 9, n),
        rng.integers(2, 16, n),
    )
    link = Link("a", "a", bandwidth_bytes_per_s=float(rng.choice([2.0, 8.0, 64.0])),
                latency_s=float(rng.choice([0.0, 0.25])))  # fmt: skip
    select = "last" if seed % 3 else "shortest"
    router = (
        f"llumnix:interval_s={rng.choice([0.25, 0.5, 1.0])},select={select},"
        f"last_stage_blocks={rng.integers(1, 4)},max_stages={rng.integers(1, 4)}"
    )
    replicas = int(rng.integers(2, 4))
    return instance, Cluster((Pool(profile, "fcfs", replicas, name="a"),), router,
                             links=(link,))  # fmt: skip


def run_both(instance: Instance, cluster: Cluster) -> tuple[Any, Any]:
    """The fast migration loop's result (with its log) and the naive engine's
    replay of the moves its migrator started."""
    sim = MigrationSim(instance, cluster, log=True)
    sim.run()
    got = collect(instance, cluster, sim.outcome(), True, 0.0)
    migrator = sim.migrator
    naive = simulate_naive_migration(
        instance, cluster, sim.where, sim.starts, migrator.last_stage_blocks,
        migrator.max_stages,
    )  # fmt: skip
    return got, naive


@pytest.mark.parametrize("seed", SEEDS)
def test_migration_agrees_with_the_naive_engine(seed: int) -> None:
    instance, cluster = _case(seed)
    got, naive = run_both(instance, cluster)
    requests = got.requests
    for column in ("first_token_s", "completion_s", "migrated_bytes",
                   "migration_downtime_s"):  # fmt: skip
        np.testing.assert_allclose(
            requests[column], getattr(naive, column), rtol=1e-9, atol=1e-9,
            err_msg=column,
        )  # fmt: skip
    for column in ("migrations", "migration_aborts"):
        assert requests[column].tolist() == getattr(naive, column).tolist(), column
    np.testing.assert_array_equal(naive.emitted_tokens, instance.output_tokens)
    report = validate_cluster(instance, cluster, got)
    assert report.ok, report.violations[:3]


def test_the_random_cases_move_requests() -> None:
    """The cases above exercise migration: moves completed, aborted, and more
    than one stage."""
    moved = aborted = multi = 0
    for seed in SEEDS:
        instance, cluster = _case(seed)
        sim = MigrationSim(instance, cluster)
        sim.run()
        moved += int(sim.migrations.sum())
        aborted += int(sim.aborts.sum())
        stages = [row[3] for row in sim.stage_rows]
        multi += sum(1 for k in stages if k >= 2)
    assert moved >= 5 and aborted >= 1 and multi >= 1, (moved, aborted, multi)
