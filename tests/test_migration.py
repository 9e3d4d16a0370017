"""Live migration (lsched.evaluator.migration) and the ``llumnix`` router: a case
derived by hand, an abort, Llumnix's pairing, and bad input."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_refused, assert_router_refused, run

import lsched
from lsched.cluster import Cluster, Link, Pool, load_cluster
from lsched.errors import InputError
from lsched.evaluator import SimulationResult, simulate_cluster
from lsched.instance import Instance
from lsched.migrators import LlumnixMigrator, MigrationView, ReplicaLoad
from lsched.profile import load_profile
from lsched.validator import validate_cluster

LLAMA = load_profile("llama2-70b-a100-tp4")
#: one 16-token block of Llama-2-70B's KV (327,680 B per token) per millisecond
BLOCK_BYTES = 16 * 327_680
LINK = Link("a", "a", bandwidth_bytes_per_s=BLOCK_BYTES * 1000.0, latency_s=0.001)


@dataclass
class _MoveOnce:
    """A migrator that moves request 0 from replica 0 to 1 at its first tick
    where request 0 decodes there."""

    interval_s: float = 0.05
    last_stage_blocks: int = 1
    max_stages: int = 3
    moved: list[float] = field(default_factory=list)

    def decide(self, view: MigrationView) -> list[tuple[int, int, int]]:
        if self.moved or not any(i == 0 for i, _ in view.loads[0].candidates):
            return []
        self.moved.append(view.now_s)
        return [(0, 0, 1)]


class _FirstReplica:
    """Every arrival to replica 0; its migrator is :class:`_MoveOnce`."""

    migrates = True

    def __init__(self, params: object) -> None:
        self.migrator = _MoveOnce(max_stages=_STAGES[0])

    def route(self, view: object) -> int:
        return 0


_STAGES = [3]


def _decode_s(kv_read: int) -> float:
    """One decode step of one request reading ``kv_read`` KV tokens."""
    return LLAMA.iteration_time_s((1.0, 0.0, 0.0, 1.0, float(kv_read), 0.0))


def _run(max_stages: int) -> SimulationResult:
    _STAGES[0] = max_stages
    lsched.register_router("test-move-once", _FirstReplica, replace=True)
    cluster = Cluster((Pool(LLAMA, "fcfs", 2, name="a"),), "test-move-once",
                      links=(LINK,))  # fmt: skip
    return simulate_cluster(Instance([0.0], [40], [6]), cluster, log=True)


def test_a_migration_computed_by_hand() -> None:
    """Request 0 (prompt 40, output 6) alone on replica 0 of two
    ``llama2-70b-a100-tp4`` replicas (16-token blocks of 5,242,880 B); the link
    moves one block per ms after 1 ms of latency; ``last_stage_blocks = 1``.

    - Replica 0: prefill [0, b1] (token 1, 40 tokens of KV: 3 blocks), b1 =
      0.0420 + 40 x 1.894e-4 + 1600 x 9.17e-9 = 0.0496 s; decode steps emitting
      token j read ``K = 40 + j - 1`` tokens and last ``d(K) = 0.0420 + 7.96e-5
      + 6.25e-7 K`` (about 0.04215 s): b2 = b1 + d(41), b3 = b2 + d(42).
    - The migrator ticks at 0.05; replica 0's first boundary at or after it is
      b2 (41 tokens, 3 blocks, none copied: 3 > 1): stage 1 is live, copies 3 - 1
      = 2 blocks (10,485,760 B) over [b2, b2 + 0.001 + 0.002].
    - It ends before b3; at b3 the request holds 42 tokens, 3 blocks, 1 not
      copied (<= 1): replica 0 stops it at b3 (3 tokens emitted) and the last
      stage copies 1 block (5,242,880 B) over [b3, b3 + 0.002]: downtime 0.002 s.
    - Replica 1 (idle) adopts it at e = b3 + 0.002 with 40 + 3 - 1 = 42 tokens of
      KV and decodes tokens 4, 5, 6: completion e + d(43) + d(44) + d(45), the
      run without migration's completion plus the 0.002 s of downtime.
    """
    got = _run(max_stages=3)
    b1 = LLAMA.iteration_time_s((1.0, 40.0, 1600.0, 0.0, 0.0, 1.0))
    b2 = b1 + _decode_s(41)
    b3 = b2 + _decode_s(42)
    e = b3 + 0.002
    done = e + _decode_s(43) + _decode_s(44) + _decode_s(45)
    row = got.requests.iloc[0]
    assert row["replica"] == 0
    assert row["first_token_s"] == pytest.approx(b1, rel=1e-12)
    assert row["completion_s"] == pytest.approx(done, rel=1e-12)
    assert row["migrations"] == 1 and row["migration_aborts"] == 0
    assert row["migrated_bytes"] == 3 * BLOCK_BYTES
    assert row["migration_downtime_s"] == pytest.approx(0.002, rel=1e-9)
    stages = got.migrations
    assert stages["blocks"].tolist() == [2, 1]
    assert stages["bytes"].tolist() == [2 * BLOCK_BYTES, BLOCK_BYTES]
    assert stages["last"].tolist() == [False, True]
    assert stages["outcome"].tolist() == ["", "migrated"]
    np.testing.assert_allclose(stages["start_s"], [b2, b3], rtol=1e-12)
    np.testing.assert_allclose(stages["end_s"], [b2 + 0.003, e], rtol=1e-12)
    # tokens 1-3 on replica 0, 4-6 on replica 1, never both at once
    members = got.members.merge(got.runs, left_on="run", right_index=True)
    decode = members["kind"] == "decode"
    members["work"] = np.where(decode, members["iterations"], members["tokens"])
    on = members.groupby("replica")
    assert on["work"].sum().to_dict() == {0: 42, 1: 3}  # prefill 40 + 2 decodes
    assert on["end_s"].max()[0] <= on["start_s"].min()[1]
    assert got.metrics["migrations"] == 1
    assert got.metrics["migration_downtime_s"] == pytest.approx(0.002, rel=1e-9)


def test_a_migration_past_its_stages_aborts_and_the_request_stays() -> None:
    """``max_stages = 1``: stage 1 copies 2 blocks live; where stage 2 would start
    (b3) the migration aborts, replica 1 frees its reservation and the request
    completes on replica 0 as without migration, at b3 + d(43) + d(44) + d(45)."""
    got = _run(max_stages=1)
    b1 = LLAMA.iteration_time_s((1.0, 40.0, 1600.0, 0.0, 0.0, 1.0))
    done = b1 + sum(_decode_s(k) for k in range(41, 46))
    row = got.requests.iloc[0]
    assert row["completion_s"] == pytest.approx(done, rel=1e-12)
    assert row["migrations"] == 0 and row["migration_aborts"] == 1
    assert row["migrated_bytes"] == 2 * BLOCK_BYTES
    assert row["migration_downtime_s"] == 0
    assert got.migrations["outcome"].tolist() == ["aborted"]
    assert set(got.runs["replica"]) == {0}


def _load(free: int, running: int, candidates: tuple = (), preempted: int = 0,
          head: int = 0) -> ReplicaLoad:  # fmt: skip
    """A replica with one waiting request of ``head`` blocks (none if 0)."""
    return ReplicaLoad(free, head, running, int(head > 0), head, preempted,
                       candidates, 16)  # fmt: skip


def test_llumnix_pairs_the_most_loaded_with_the_least_loaded() -> None:
    """Freeness: replica 0 (8 free, a waiting head of 2 blocks, 3 running)
    (8 - 2) / (3 + 1) = 1.5, replica 1 10 / 1 = 10, replica 2 100 / 2 = 50,
    replica 3 40 / 20 = 2 but nothing to move. Sources by freeness: 0, 3;
    destinations: 2, 1. Pair (0, 2): ``last`` moves request 7 (admitted last,
    20 tokens = 2 blocks): the gap 50 - 1.5 = 48.5 becomes |(100 - 2) / 3 -
    (8 + 2 - 2) / 3| = 30, smaller: kept; ``shortest`` moves request 5 (5
    tokens). Pair (3, 1): replica 3 has no candidate."""
    loads = (
        _load(8, 3, ((5, 5), (6, 30), (7, 20)), head=2),
        _load(10, 1),
        _load(100, 2),
        _load(40, 20),
    )
    view = MigrationView(1.0, loads)
    assert LlumnixMigrator().decide(view) == [(7, 0, 2)]
    assert LlumnixMigrator(select="shortest").decide(view) == [(5, 0, 2)]


def test_llumnix_keeps_a_move_only_if_the_gap_shrinks() -> None:
    """Replica 0: 1 free block, 1 running request of 64 tokens (4 blocks): F = 1;
    replica 1: 4 free blocks, 1 running: F = 4. Moving it: the source has no
    running request (inf), the target 0 / 2 = 0: the gap grows (inf > 3)."""
    loads = (_load(1, 1, ((0, 64),)), _load(4, 1))
    assert LlumnixMigrator().decide(MigrationView(0.0, loads)) == []
    # a preempted request waiting makes a source even with freeness above 3:
    # (20 - 1) / 3 = 6.3 and 40; after the move (20 + 1 - 1) / 2 = 10 and
    # (40 - 1) / 2 = 19.5
    loads = (_load(20, 2, ((0, 16), (1, 16)), preempted=1, head=1), _load(40, 1))
    assert LlumnixMigrator().decide(MigrationView(0.0, loads)) == [(1, 0, 1)]


def test_the_llumnix_router_sends_an_arrival_to_the_freest_replica() -> None:
    """Two unit-slot replicas of 8 tokens: request 0 (prompt 6) goes to replica
    0 (both inf, lowest id); request 1 at 0.5 to replica 1 (inf against (8 - 6) /
    1); request 2 at 1.5 sees replica 0 at its boundary 2 (7 tokens: freeness
    (8 - 7) / 1 = 1) and replica 1 at its boundary 1.5, its prefill just done
    (6 tokens: freeness 2): replica 1. Nothing moves: no replica has freeness
    above 3."""
    unit = load_profile("unit-slot").replace(kv_capacity_tokens=8)
    cluster = Cluster((Pool(unit, "fcfs", 2, name="a"),), "llumnix:interval_s=0.25")
    got = simulate_cluster(Instance([0.0, 0.5, 1.5], [6, 6, 1], [3, 3, 1]), cluster)
    assert got.requests["replica"].tolist() == [0, 1, 1]
    assert got.metrics["migrations"] == 0


def test_llumnix_headroom_makes_a_replica_with_an_urgent_request_a_source() -> None:
    """Replica 0: 10 free blocks, requests 0 (priority 0, 16 tokens = 1 block)
    and 1 (priority 5, 32 tokens = 2 blocks) running; replica 1: 40 free, one
    running. Without headroom F = 10 / 2 = 5 and 40: no source. With 8 blocks of
    headroom for priority <= 0, replica 0 has F = (10 - 8) / 2 = 1: a source.
    ``last`` moves request 1 (normal): the gap 40 - 1 = 39 becomes |(40 - 2) / 2
    - (10 + 2 - 8) / 1| = 15, kept. Moving request 0 instead (``shortest``)
    takes the headroom along: |(40 - 1 - 8) / 2 - (10 + 1) / 1| = 4.5, kept too."""
    loads = (
        ReplicaLoad(10, 0, 2, 0, 0, 0, ((0, 16), (1, 32)), 16,
                    priorities=((0, 0), (1, 5))),
        ReplicaLoad(40, 0, 1, 0, 0, 0, (), 16, priorities=((2, 5),)),
    )  # fmt: skip
    view = MigrationView(0.0, loads)
    assert LlumnixMigrator().decide(view) == []
    assert LlumnixMigrator(headroom_blocks=8).decide(view) == [(1, 0, 1)]
    shortest = LlumnixMigrator(select="shortest", headroom_blocks=8)
    assert shortest.decide(view) == [(0, 0, 1)]
    # nothing is urgent at high_priority = -1: no headroom, no source
    assert LlumnixMigrator(headroom_blocks=8, high_priority=-1).decide(view) == []


def test_llumnix_dispatch_keeps_headroom_beside_an_urgent_request() -> None:
    """Two unit-slot replicas of 16 tokens, 1 s iterations. Request 0 (priority
    0, prompt 2) goes to replica 0; request 1 (prompt 4) at 0.5 s to replica 1
    (idle: inf against 14 / 1). Request 2 at 1.5 s sees replica 0 at its
    boundary 2 holding 3 tokens (dispatch freeness 13 / 1) and replica 1 at its
    boundary 1.5 holding 4 (12 / 1), so it joins replica 0; with 4 blocks of
    headroom replica 0 counts (13 - 4) / 1 = 9 and it joins replica 1. No
    replica's freeness falls below 3: nothing migrates."""
    unit = load_profile("unit-slot").replace(kv_capacity_tokens=16)
    instance = Instance([0.0, 0.5, 1.5], [2, 4, 1], [8, 8, 1], priority=[0, 5, 5])
    for router, replica in (("llumnix", 0), ("llumnix:headroom_blocks=4", 1)):
        got = simulate_cluster(instance, Cluster((Pool(unit, "fcfs", 2),), router))
        assert got.requests["replica"].tolist() == [0, 1, replica], router
        assert got.metrics["migrations"] == 0


@pytest.mark.parametrize(
    ("router", "needles"),
    [
        ("llumnix:interval_s=0", ["interval_s=0", "finite seconds > 0"]),
        ("llumnix:interval_s=-1", ["interval_s=-1", "finite seconds > 0"]),
        ("llumnix:interval_s=inf", ["interval_s=inf", "finite seconds > 0"]),
        ("llumnix:last_stage_blocks=0", ["last_stage_blocks=0", ">= 1"]),
        ("llumnix:headroom_blocks=-1", ["headroom_blocks=-1", "blocks >= 0"]),
        ("llumnix:max_stages=0", ["max_stages=0", ">= 1"]),
        ("llumnix:select=first", ["select='first'", "last or shortest"]),
    ],
)  # fmt: skip
def test_bad_llumnix_params_exit_2(
    router: str, needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_router_refused(router, needles, capsys)


def test_a_bad_migrator_is_refused_at_construction() -> None:
    """A plug-in migrator is checked too: one line naming the field."""

    class Bad(_FirstReplica):
        def __init__(self, params: object) -> None:
            self.migrator = _MoveOnce(last_stage_blocks=0)

    lsched.register_router("test-bad-migrator", Bad, replace=True)
    cluster = Cluster((Pool(LLAMA, "fcfs", 2, name="a"),), "test-bad-migrator")
    with pytest.raises(InputError, match="last_stage_blocks") as info:
        simulate_cluster(Instance([0.0], [4], [2]), cluster)
    assert "\n" not in str(info.value)
    Bad.__init__ = lambda self, params: setattr(  # type: ignore[method-assign]
        self, "migrator", _MoveOnce(interval_s=math.nan)
    )
    with pytest.raises(InputError, match="interval_s"):
        simulate_cluster(Instance([0.0], [4], [2]), cluster)


MIGRATION_TOML = """
router = "{router}"

[[pool]]
name = "a"
model = "unit-slot"
replicas = 2
set = {{ kv_capacity_tokens = 64 }}

[[link]]
from = "a"
to = "a"
bandwidth_bytes_per_s = 8.0
latency_s = 0.5
"""


def test_a_cluster_file_with_a_migration_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A colocated pool's link to itself carries its migrations; the router key
    parses as ``--router`` does, and a bad value exits 2 naming it."""
    path = tmp_path / "llumnix.toml"
    path.write_text(MIGRATION_TOML.format(router="llumnix:interval_s=0.5"))
    cluster = load_cluster(path)
    assert cluster.link("a", "a") == Link("a", "a", 8.0, 0.5)
    assert cluster.router.label == "llumnix:interval_s=0.5"
    trace = Path(__file__).resolve().parents[1] / "instances" / "default.csv"
    code, out, _ = run(["simulate", str(trace), "--cluster", str(path), "--json"],
                       capsys)  # fmt: skip
    assert code == 0 and '"migrations"' in out
    path.write_text(MIGRATION_TOML.format(router="llumnix:max_stages=0"))
    args = ["simulate", str(trace), "--cluster", str(path)]
    assert_refused(*run(args, capsys), "max_stages=0", ">= 1")


def test_the_validator_passes_the_case_by_hand_and_catches_broken_logs() -> None:
    """The migration above validates; each way of breaking its log or its
    records breaks the rule that checks it."""
    got = _run(max_stages=3)
    cluster = Cluster((Pool(LLAMA, "fcfs", 2, name="a"),), "round-robin",
                      links=(LINK,))  # fmt: skip
    instance = Instance([0.0], [40], [6])
    assert validate_cluster(instance, cluster, got).ok
    late = got.migrations.assign(end_s=got.migrations["end_s"] + 0.5)
    broken = {
        "migration-downtime": replace(got, migrations=late),
        "migration-overlap": replace(
            got, runs=got.runs.assign(start_s=got.runs["start_s"] - 0.01)
        ),
        "migration-tokens": replace(got, members=got.members.iloc[:-1]),
    }
    for rule, result in broken.items():
        assert rule in validate_cluster(instance, cluster, result).rules, rule
    # replicas of 2 blocks cannot hold the request's 3 blocks
    small = LLAMA.replace(kv_capacity_tokens=16 * 2)
    tight = Cluster((Pool(small, "fcfs", 2, name="a"),), "round-robin",
                    links=(LINK,))  # fmt: skip
    assert "migration-kv" in validate_cluster(instance, tight, got).rules
