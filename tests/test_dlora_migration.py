"""dLoRA's co-migration in the simulator: adapters on replicas that receive
requests while they run, the ``dlora`` router and its migrator, a case derived
by hand, the triggers, and bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from cli_helpers import assert_router_refused
from test_migration_equivalence import run_both

from lsched.adapters import AdapterSpec
from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import simulate_cluster
from lsched.evaluator.cluster import ClusterSim
from lsched.instance import Instance
from lsched.migrators import AdapterLoad, DLoraMigrator, RequestLoad, adoptable
from lsched.profile import load_profile
from lsched.tiers import HostTier
from lsched.validator import validate_cluster

#: unit-slot (1 s per iteration, 1 token per block, 1 byte of KV per token)
#: with 1,000 tokens of KV and 100 bytes/s from host to device
UNIT = load_profile("unit-slot").replace(
    kv_capacity_tokens=1000,
    host=HostTier(memory_bytes=10**6, h2d_bytes_per_s=100.0, d2h_bytes_per_s=100.0),
)
#: 10-byte adapters (a load takes 0.1 s), two at once
SPEC = AdapterSpec(size_bytes=10, max_loras=2, slots=2)
#: 10 blocks per second between the replicas, no latency
LINK = Link("a", "a", bandwidth_bytes_per_s=10.0, latency_s=0.0)


def _random(rng: np.random.Generator) -> tuple[Instance, AdapterSpec]:
    """6-12 requests over 2 s of 4 adapters and the base model."""
    n = int(rng.integers(6, 13))
    names = rng.choice(["", "a", "b", "c", "d"], size=n)
    instance = Instance(
        np.sort(rng.uniform(0, 2, n)).round(2),
        rng.integers(1, 13, n),
        rng.integers(1, 7, n),
        adapter=names,
    )
    max_loras = int(rng.integers(1, 3))
    spec = AdapterSpec(size_bytes=int(rng.integers(10, 40)), max_loras=max_loras,
                       slots=max_loras + int(rng.integers(0, 2)))  # fmt: skip
    return instance, spec


def test_joint_round_robin_with_adapters_equals_the_stateless_run() -> None:
    """The joint loop (requests added one at a time, each with its adapter code)
    gives bit-for-bit the stateless path's times and loads."""
    rng = np.random.default_rng(1919)
    for _ in range(8):
        instance, spec = _random(rng)
        policy = str(rng.choice(["vllm", "dlora"]))
        cluster = Cluster.colocated(UNIT, policy, 2, adapters=spec)
        fast = simulate_cluster(instance, cluster, engine="python")
        sim = ClusterSim(instance, cluster, joint=True)
        sim.run()
        engines = [e for e in sim.outcome().engines if e is not None]
        for engine in engines:
            ids = np.array(engine.ids, dtype=np.int64)
            for column in ("admitted_s", "first_token_s", "completion_s"):
                expected = fast.requests[column].to_numpy()[ids]
                np.testing.assert_array_equal(
                    getattr(engine, column)[: len(ids)], expected, column
                )
        loads = sum(len(e.adapters.loads) for e in engines)
        assert loads == fast.metrics["adapter_loads"]


@pytest.mark.parametrize("router", ["least-outstanding", "llumnix:interval_s=0.5"])
def test_state_reading_routers_serve_adapters_and_validate(router: str) -> None:
    rng = np.random.default_rng(7)
    loads = 0
    for _ in range(4):
        instance, spec = _random(rng)
        cluster = Cluster((Pool(UNIT, "vllm", 2, name="a", adapters=spec),), router,
                          links=(LINK,))  # fmt: skip
        got = simulate_cluster(instance, cluster, log=True)
        report = validate_cluster(instance, cluster, got)
        assert report.ok, report.violations[:3]
        loads += int(got.metrics["adapter_loads"])
    assert loads > 0


def _three_a_one_b(router: str):
    """Requests 0-2 (adapter a, prompt 4, output 10) at 0, request 3 (adapter
    b, prompt 2, output 10) at 0.5, on two unit-slot replicas under vLLM."""
    instance = Instance([0.0, 0.0, 0.0, 0.5], [4, 4, 4, 2], [10] * 4,
                        adapter=np.array(["a", "a", "a", "b"]))  # fmt: skip
    cluster = Cluster((Pool(UNIT, "vllm", 2, name="a", adapters=SPEC),), router,
                      links=(LINK,))  # fmt: skip
    return instance, cluster, simulate_cluster(instance, cluster, log=True)


def test_a_co_migration_computed_by_hand() -> None:
    """``dlora:interval_s=2.5,imbalance=1``.

    - Dispatch: request 0 has no replica with adapter a: the fewest requests,
      replica 0 (ties to the lowest id); 1 and 2 follow a there. Request 3
      (adapter b, mapped nowhere) goes to replica 1, which has none.
    - Replica 0 prefills 0-2 in one iteration that loads a: [0, 1.1], token
      1; decodes at 2.1 and 3.1. Replica 1: [0.5, 1.6] (loads b), decodes at
      2.6, 3.6, ...
    - The tick at 2.5 reads replica 0 at 3.1 and replica 1 at 2.6: 3 and 1
      unfinished requests, mean 2, 3 - 2 >= 1: the ILP over {0, 1}. Nothing
      finished: e = 5 s each. Staying: T_0 = 15. Moving one a request:
      T_0 = 10, T_1 = 5 + 5 + 0.05 + 0.1 (a's load) = 10.15; two: T_1 >=
      15.2; request 3 to replica 0: T_0 >= 20. One of 0-2, the same
      request by their symmetry, moves 0 -> 1.
    - It holds 6 tokens (4 + 2 decoded) = 6 blocks <= 16: one stop-and-copy
      stage [3.1, 3.7] (6 bytes at 10 B/s), downtime 0.6. Replica 1 adopts it
      at its first boundary at or after 3.7, 4.6; its first batch there loads
      a: [4.6, 5.7] emits token 4, then 1 s per token: done at 5.7 + 6 = 11.7.
    - The other two finish on replica 0 at 1.1 + 9 = 10.1; request 3's
      iteration [4.6, 5.7] is 0.1 s longer: 10.7 (10.6 without the move).
    - Later ticks see 2 and 2 requests: nothing more moves. Loads: a on 0, b
      and a on 1: 0.3 s.
    """
    instance, cluster, got = _three_a_one_b("dlora:interval_s=2.5,imbalance=1")
    rows = got.requests
    (moved,) = np.flatnonzero(rows["migrations"].to_numpy() == 1)
    assert moved in (0, 1, 2)
    expected = np.array([10.1, 10.1, 10.1, 10.7])
    expected[moved] = 11.7
    np.testing.assert_allclose(rows["completion_s"], expected, rtol=1e-12)
    np.testing.assert_allclose(rows["first_token_s"], [1.1, 1.1, 1.1, 1.6],
                               rtol=1e-12)  # fmt: skip
    assert rows["migration_downtime_s"][moved] == pytest.approx(0.6, rel=1e-12)
    assert rows["migrated_bytes"][moved] == 6.0
    stages = got.migrations
    assert stages[["source", "target", "blocks"]].values.tolist() == [[0, 1, 6]]
    assert stages["start_s"].tolist() == pytest.approx([3.1], rel=1e-12)
    loads = got.adapter_loads
    replica = got.runs.loc[loads["run"], "replica"]
    assert sorted(zip(replica, loads["adapter"], strict=True)) == [
        (0, "a"), (1, "a"), (1, "b")
    ]  # fmt: skip
    assert got.metrics["adapter_load_s"] == pytest.approx(0.3, rel=1e-12)
    assert validate_cluster(instance, cluster, got).ok


def test_no_move_below_the_thresholds() -> None:
    """The same case with ``imbalance=2``: 3 - 2 < 2, and no replica's KV is
    near 0.9 full: nothing moves; request 3 completes at 0.5 + 1.1 + 9."""
    _, _, got = _three_a_one_b("dlora:interval_s=2.5,imbalance=2")
    assert got.metrics["migrations"] == 0
    np.testing.assert_allclose(got.requests["completion_s"],
                               [10.1, 10.1, 10.1, 10.6], rtol=1e-12)  # fmt: skip


def _load(capacity: int, *requests: tuple[int, int, int, bool]) -> AdapterLoad:
    return AdapterLoad(capacity, 1.0, 256, 2, (), (0.0,),
                       tuple(RequestLoad(*q) for q in requests), ())  # fmt: skip


def test_the_two_triggers_pick_their_pairs() -> None:
    """KV, by blocks held (dLoRA compares counts, then each one's capacity):
    replica 1 holds 9 + 1 = 10 >= 0.9 x 10 blocks, the most, and replica 2
    none, the fewest: pair (1, 2) although replica 0 has the most requests (5
    blocks of 100). Requests: 24 on replica 0, none on 1 and 2: mean 8, 24 - 8
    >= 16 with no KV trigger: (0, 1) (the fewest, ties to the lowest id); 23
    requests: 23 - 7.67 < 16. With replica 0's 24 requests holding 24 blocks
    it holds the most, not near full: no KV trigger, and 24 - 26 / 3 < 16."""
    many = [(i, 0, 5 if i == 0 else 0, True) for i in range(24)]
    migrator = DLoraMigrator()
    full = [_load(100, *many), _load(10, (20, 0, 9, True), (21, 0, 1, False)),
            _load(10)]  # fmt: skip
    assert migrator.pair(full) == (1, 2)
    assert migrator.pair([_load(100, *many), _load(10), _load(10)]) == (0, 1)
    assert migrator.pair([_load(100, *many[:23]), _load(10), _load(10)]) is None
    held = [(i, 0, 1, True) for i in range(24)]
    assert migrator.pair([_load(100, *held), *full[1:]]) is None


def test_a_move_is_kept_only_if_its_target_can_adopt_it() -> None:
    """Replica 1 (max_loras 2) runs adapters 0 and 1, and a request of adapter 2
    waits there: a move of adapter 0 is kept, one of adapter 2 or 3 is not (a
    third running adapter, though the ILP's slots may allow 2), the base model
    always. With one running request and ``max_num_seqs = 2`` only the first
    move is kept."""
    source = _load(100, (0, 0, 1, True), (1, 2, 1, True), (2, 3, 1, True),
                   (3, -1, 1, True))  # fmt: skip
    target = _load(100, (10, 0, 1, True), (11, 1, 1, True), (12, 2, 1, False, False))
    moves = [(0, 0, 1), (1, 0, 1), (2, 0, 1), (3, 0, 1)]
    assert adoptable(moves, [source, target]) == [(0, 0, 1), (3, 0, 1)]
    narrow = replace(_load(100, (10, 0, 1, True)), max_num_seqs=2)
    assert adoptable(moves, [source, narrow]) == [(0, 0, 1)]


@pytest.mark.parametrize(
    ("router", "needles"),
    [
        ("dlora:interval_s=0", ["interval_s=0", "finite seconds > 0"]),
        ("dlora:interval_s=-1", ["interval_s=-1", "finite seconds > 0"]),
        ("dlora:kv_fraction=0", ["kv_fraction=0", "(0, 1]"]),
        ("dlora:kv_fraction=1.5", ["kv_fraction=1.5", "(0, 1]"]),
        ("dlora:imbalance=0.5", ["imbalance=0.5", ">= 1"]),
        ("dlora:backend=glpk", ["backend='glpk'", "milp or cpsat"]),
    ],
)
def test_bad_dlora_params_exit_2(
    router: str, needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_router_refused(router, needles, capsys, model="llama-7b-dlora")


def _migrating_case(seed: int) -> tuple[Instance, Cluster]:
    """A burst of 8-14 requests of 3 adapters on 2-3 unit-slot replicas of
    tight KV, under ``dlora`` with a short tick and a low request threshold."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 15))
    instance = Instance(
        np.sort(rng.uniform(0.0, 3.0, n)).round(2),
        rng.integers(1, 9, n),
        rng.integers(4, 16, n),
        adapter=rng.choice(["", "a", "b", "c"], size=n, p=[0.1, 0.5, 0.25, 0.15]),
    )
    spec = AdapterSpec(size_bytes=int(rng.integers(5, 30)), max_loras=2, slots=2)
    # 40 to 80 tokens of KV beside the two slots (1 byte of KV per token)
    kv = 2 * spec.size_bytes + int(rng.integers(40, 80))
    profile = UNIT.replace(kv_capacity_tokens=kv)
    router = (
        f"dlora:interval_s={rng.choice([0.5, 1.0])},imbalance=1,"
        f"kv_fraction={rng.choice([0.5, 0.9])},last_stage_blocks={rng.integers(1, 4)}"
    )
    link = Link("a", "a", bandwidth_bytes_per_s=float(rng.choice([4.0, 32.0])),
                latency_s=float(rng.choice([0.0, 0.25])))  # fmt: skip
    pool = Pool(profile, str(rng.choice(["vllm", "dlora"])), int(rng.integers(2, 4)),
                name="a", adapters=spec)  # fmt: skip
    return instance, Cluster((pool,), router, links=(link,))


def test_co_migration_agrees_with_the_naive_engine() -> None:
    """The naive engine replays the moves the fast run's migrator started, with
    its own adapter residency and loads: every time to 1e-9, loads and the
    validator."""
    moved = 0
    for seed in range(8):
        instance, cluster = _migrating_case(seed)
        got, naive = run_both(instance, cluster)
        for column in ("first_token_s", "completion_s", "migration_downtime_s"):
            np.testing.assert_allclose(
                got.requests[column], getattr(naive, column), rtol=1e-9,
                atol=1e-9, err_msg=column,
            )  # fmt: skip
        assert got.requests["migrations"].tolist() == naive.migrations.tolist()
        assert got.metrics["adapter_loads"] == naive.adapter_loads
        assert got.metrics["adapter_load_s"] == pytest.approx(
            naive.adapter_load_s, rel=1e-9
        )
        report = validate_cluster(instance, cluster, got)
        assert report.ok, report.violations[:3]
        moved += int(got.metrics["migrations"])
    assert moved > 0
