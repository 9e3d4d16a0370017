"""Disaggregated clusters: the fast evaluator agrees with the naive reference engine.

:func:`lsched.evaluator.simulate_cluster` replays a cluster with prefill and decode
pools event by event (:mod:`lsched.evaluator.disagg`, held decode stretches in
closed form, decode replicas advanced lazily); ``simulate_naive_cluster``
(``tests/reference_engine.py``) restates the semantics of that module's docstring
with one global clock, one iteration at a time, the policy called at every
boundary, its own block arithmetic and its own links (a shared link in exact
rational arithmetic). On Hypothesis-drawn small clusters (1-3 prefill and 1-3
decode replicas in one or two pools each, sometimes a colocated pool beside them;
unit-slot-like profiles with small KV capacities, so that pinned prefill blocks
hold admissions back and decode replicas drop KV that does not fit, and decode
replicas with 2 to 4 sequence slots or many; decode pools that push or pull with
DistServe's threshold 0.05, 0.3 or 1; ideal, fifo and shared links with and
without latency; fcfs, vllm, sarathi and vllm-v0 on either side; round-robin and
least-outstanding routers; and, in a second test, one decode replica with room for
all the KV and 2 to 4 slots, so that slots bind) both engines must give
every request the same times (admission, first token, completion, transfer start
and end, decode admission; relative error <= 1e-9), decode replica, transferred
bytes, preemptions, recomputed tokens and rejection, the same iterations and busy
time, and fail alike where a policy cannot run a case; and
:func:`lsched.validator.validate_cluster` must find the fast engine's log valid.

The hand-derived tests pin the semantics on cases worked out in their comments,
for both engines, pull and the sequence slot an adoption needs among them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference_engine import NaiveDisaggResult, simulate_naive_cluster

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import SimulationResult, simulate_cluster
from lsched.instance import Instance
from lsched.policies import PolicyError
from lsched.policies.fcfs import Fcfs
from lsched.profile import FEATURES, DeploymentProfile, IterationTime, load_profile
from lsched.validator import validate_cluster

RTOL = 1e-9
UNIT = load_profile("unit-slot")
#: the per-request columns both engines give, as the fast engine's records name them
TIMES = (
    "admitted_s",
    "first_token_s",
    "completion_s",
    "transfer_start_s",
    "transfer_end_s",
    "decode_admitted_s",
    "transferred_bytes",
)
COUNTS = ("replica", "decode_replica", "preemptions", "recomputed_tokens")
POLICIES = ("fcfs", "fcfs:chunked=false", "vllm", "sarathi:chunk=4", "vllm-v0")
#: a decode pool pushes (None) or pulls with DistServe's threshold theta
PULLS = (None, None, 0.05, 0.3, 1.0)


def _weights(**per_feature: float) -> list[float]:
    return [per_feature.get(f, 0.0) for f in FEATURES]


#: iteration times: one unit (the slot model), affine in the batch, a convex max
ITERATION_TIMES = (
    UNIT.iteration_time,
    IterationTime(
        regimes=(
            np.array(
                [
                    _weights(
                        const=0.5,
                        prefill_tokens=0.1,
                        decode_steps=0.05,
                        kv_read_tokens=0.01,
                    )
                ]
            ),
        )
    ),
    IterationTime(
        regimes=(
            np.array(
                [
                    _weights(const=1.0),
                    _weights(const=0.3, prefill_tokens=0.25, kv_read_tokens=0.03),
                ]
            ),
        )
    ),
)


@dataclass(frozen=True)
class Scenario:
    instance: Instance
    cluster: Cluster


def _profile(
    draw: st.DrawFn,
    name: str,
    blocks: int,
    block: int,
    *,
    decode: bool,
    few_slots: bool = False,
) -> DeploymentProfile:
    seqs = [2, 3, 4] if few_slots else [2, 3, 4, 1000] if decode else [2, 3, 1000]
    return UNIT.replace(
        name=name,
        kv_capacity_tokens=blocks * block,
        block_tokens=block,
        kv_bytes_per_token=draw(st.sampled_from([1, 2])),
        # few sequence slots on a decode replica: adoptions dropped for want of
        # one, and pulling replicas that stop taking at max_num_seqs
        max_num_seqs=draw(st.sampled_from(seqs)),
        max_num_batched_tokens=draw(st.sampled_from([16, 1000])),
        iteration_time=draw(st.sampled_from(ITERATION_TIMES)),
    )


def _split(draw: st.DrawFn, total: int, parts: int) -> list[int]:
    """``total`` replicas over ``parts`` pools, at least one each."""
    if parts == 1:
        return [total]
    cuts = draw(
        st.sets(st.integers(1, total - 1), min_size=parts - 1, max_size=parts - 1)
    )
    bounds = [0, *sorted(cuts), total]
    return [b - a for a, b in itertools.pairwise(bounds)]


@st.composite
def scenarios(draw: st.DrawFn, *, few_slots: bool = False) -> Scenario:
    """Up to 8 requests on a small disaggregated cluster with tight KV; with
    ``few_slots``, 3 to 8 requests that move to one decode replica with room for
    all of their KV and 2 to 4 sequence slots."""
    n = draw(st.integers(3 if few_slots else 1, 8))
    prompts = np.array(draw(st.lists(st.integers(1, 8), min_size=n, max_size=n)))
    outputs = np.array(
        draw(st.lists(st.integers(2 if few_slots else 1, 8), min_size=n, max_size=n))
    )
    shape = draw(st.sampled_from(["burst", "integer", "float"]))
    if shape == "burst":
        arrivals = np.zeros(n)
    elif shape == "integer":
        arrivals = np.sort(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    else:
        gaps = draw(st.lists(st.floats(0, 3), min_size=n, max_size=n))
        arrivals = np.cumsum(gaps) - gaps[0]
    instance = Instance(np.asarray(arrivals, dtype=float), prompts, outputs)
    peaks = prompts + outputs - 1
    block = draw(st.sampled_from([1, 2, 4]))

    def blocks(tokens: int) -> int:
        return -(-int(tokens) // block)

    pools = []
    prefill_blocks = draw(st.integers(blocks(prompts.max()), blocks(prompts.max()) + 4))
    total = draw(st.integers(1, 3))
    split = _split(draw, total, draw(st.integers(1, min(2, total))))
    for k, replicas in enumerate(split):
        profile = _profile(draw, f"pp{k}", prefill_blocks, block, decode=False)
        policy = draw(st.sampled_from(POLICIES))
        pools.append(Pool(profile, policy, replicas, name=f"p{k}", role="prefill"))
    # every decode pool has one capacity: a request fits all of them or none (none:
    # rejected at arrival)
    decode_blocks = draw(st.integers(blocks(peaks.min()), blocks(peaks.max()) + 4))
    if few_slots or draw(st.integers(0, 3)) == 0:  # room for all: slots may bind
        decode_blocks = sum(blocks(peak) for peak in peaks)
    total = 1 if few_slots else draw(st.integers(1, 3))
    split = _split(draw, total, draw(st.integers(1, min(2, total))))
    for k, replicas in enumerate(split):
        profile = _profile(
            draw, f"dp{k}", decode_blocks, block, decode=True, few_slots=few_slots
        )
        policy = draw(st.sampled_from(POLICIES))
        pull = draw(st.sampled_from(PULLS))
        pools.append(
            Pool(profile, policy, replicas, name=f"d{k}", role="decode", pull=pull)
        )
    if draw(st.integers(0, 3)) == 0:  # a colocated pool beside them
        profile = _profile(draw, "cc", blocks(peaks.max()) + 2, block, decode=False)
        at = draw(st.integers(0, len(pools)))
        policy = draw(st.sampled_from(POLICIES))
        pools.insert(at, Pool(profile, policy, 1, name="c", role="colocated"))
    links = []
    pairs = [(p, d) for p in pools for d in pools
             if p.role == "prefill" and d.role == "decode"]  # fmt: skip
    for p, d in pairs:
        if draw(st.integers(0, 4)) == 0:
            continue  # no [[link]]: an ideal one
        bandwidth = draw(st.sampled_from([math.inf, 0.7, 1.0, 2.0, 3.0, 4.0]))
        latency = draw(st.sampled_from([0.0, 0.3, 0.5]))
        sharing = draw(st.sampled_from(["fifo", "share"]))
        links.append(Link(p.name, d.name, bandwidth, latency, sharing))
    routers = st.sampled_from(["round-robin", "least-outstanding"])
    cluster = Cluster(
        tuple(pools), draw(routers), tuple(links), decode_router=draw(routers)
    )
    return Scenario(instance, cluster)


def _differences(fast: SimulationResult, naive: NaiveDisaggResult) -> list[str]:
    """What differs between the two engines' records."""
    requests = fast.requests
    found = []
    for column in TIMES:
        mine = requests[column].to_numpy(dtype=np.float64)
        theirs = np.asarray(getattr(naive, column), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            close = (mine == theirs) | (np.abs(mine - theirs) <= RTOL * np.abs(theirs))
        close |= np.isnan(mine) & np.isnan(theirs)
        for i in np.flatnonzero(~close).tolist():
            found.append(f"request {i} {column}: fast {mine[i]!r}, naive {theirs[i]!r}")
    for column in COUNTS:
        mine = requests[column].to_numpy(dtype=np.int64)
        theirs = np.asarray(getattr(naive, column))
        for i in np.flatnonzero(mine != theirs).tolist():
            found.append(f"request {i} {column}: fast {mine[i]}, naive {theirs[i]}")
    rejected = requests["rejected"].to_numpy(dtype=str)
    for i, (mine, theirs) in enumerate(zip(rejected, naive.rejected, strict=True)):
        if bool(mine) != bool(theirs):
            found.append(f"request {i} rejected: fast {mine!r}, naive {theirs!r}")
    if fast.iterations != naive.iterations:
        found.append(f"iterations: fast {fast.iterations}, naive {naive.iterations}")
    total = float(np.sum(naive.transferred_bytes))
    if not math.isclose(fast.metrics["transferred_bytes"], total, rel_tol=RTOL):
        found.append("transferred_bytes metric")
    return found


def _run_both(instance: Instance, cluster: Cluster) -> tuple[Any, Any]:
    """Both engines' results, or the same PolicyError type from both (None, None)."""
    try:
        naive = simulate_naive_cluster(instance, cluster)
    except PolicyError:
        with pytest.raises(PolicyError):
            simulate_cluster(instance, cluster)
        return None, None
    return simulate_cluster(instance, cluster, log=True), naive


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_random_disaggregated_clusters_agree(case: Scenario) -> None:
    _agree(case)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios(few_slots=True))
def test_random_clusters_with_few_decode_slots_agree(case: Scenario) -> None:
    # one decode replica with room for every request's KV: its sequence slots
    # bind, dropping KV delivered to a full replica or holding a pulling one back
    _agree(case)


def _agree(case: Scenario) -> None:
    """Both engines agree on ``case``, and the validator finds the log valid."""
    fast, naive = _run_both(case.instance, case.cluster)
    if fast is None:
        return
    problems = _differences(fast, naive)
    assert not problems, "\n".join(problems[:20])
    requests = fast.requests
    for happened, what in (
        ((requests["rejected"] != "").any(), "a rejection"),
        ((requests["recomputed_tokens"] > 0).any(), "recomputed tokens"),
        ((requests["decode_admitted_s"] > requests["transfer_end_s"]).any(),
         "a request waiting on its decode replica"),
        ((requests["transfer_start_s"] > requests["first_token_s"]).any(),
         "a transfer waiting for its link or to be taken"),
        (any(p.pull is not None for p in case.cluster.pools), "a pulling pool"),
        ((naive.taken_s > naive.first_token_s).any(),
         "a prefilled request waiting to be taken"),
        (naive.seatless_drops > 0, "KV dropped for want of a sequence slot"),
        *((count > 0, f"a pulling replica held back by its {rule} rule")
          for rule, count in naive.pull_stopped_by.items()),
    ):  # fmt: skip
        if happened:
            event(what)
    busy = float(fast.runs["end_s"].sub(fast.runs["start_s"]).sum())
    assert busy == pytest.approx(naive.busy_s, rel=RTOL)
    # and the validator, which shares no code with either, finds the log valid
    validate_cluster(case.instance, case.cluster, fast).raise_if_invalid()


# -- hand-derived cases -----------------------------------------------------------


def _pd(
    prefill: DeploymentProfile,
    decode: DeploymentProfile,
    *,
    policy: Any = "fcfs",
    prefill_replicas: int = 1,
    decode_replicas: int = 1,
    link: Link | None = None,
    router: str = "round-robin",
) -> Cluster:
    return Cluster(
        (
            Pool(prefill, policy, prefill_replicas, name="p", role="prefill"),
            Pool(decode, policy, decode_replicas, name="d", role="decode"),
        ),
        router,
        () if link is None else (link,),
    )


def _both(instance: Instance, cluster: Cluster) -> list[tuple[str, Any]]:
    """Each engine's per-request columns, as (name, getter)."""
    fast = simulate_cluster(instance, cluster).requests
    naive = simulate_naive_cluster(instance, cluster)
    return [
        ("fast", lambda c: fast[c].to_numpy()),
        ("naive", lambda c: np.asarray(getattr(naive, c))),
    ]


def _expect(instance: Instance, cluster: Cluster, **columns: list[float]) -> None:
    for name, get in _both(instance, cluster):
        for column, expected in columns.items():
            np.testing.assert_allclose(
                np.asarray(get(column), dtype=float),
                expected,
                rtol=RTOL,
                err_msg=f"{name} engine, {column}",
            )


@pytest.mark.parametrize("policy", ["fcfs", "vllm", "sarathi", "vllm-v0"])
def test_fifo_link_queues_transfers(policy: str) -> None:
    # both prefill in [0, 1]; request 0's 4 bytes hold the link [1, 3] (2 B/s) and
    # arrive at 3.5; request 1's 2 bytes wait for it, [3, 4], arriving at 4.5.
    # Decode: 0 adopted at 3.5, tokens 2 and 3 at 4.5 and 5.5; 1 adopted at the
    # boundary 4.5, token 2 at 5.5
    instance = Instance([0.0, 0.0], [4, 2], [3, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=2.0, latency_s=0.5)
    _expect(
        instance,
        _pd(UNIT, UNIT, policy=policy, link=link),
        first_token_s=[1.0, 1.0],
        transfer_start_s=[1.0, 3.0],
        transfer_end_s=[3.5, 4.5],
        decode_admitted_s=[3.5, 4.5],
        completion_s=[5.5, 5.5],
        transferred_bytes=[4.0, 2.0],
    )


def test_shared_link_splits_its_bandwidth() -> None:
    # both start at 1 at 1 B/s each; request 1's 2 bytes leave at 3 (arrive 3.5),
    # request 0's last 2 bytes then go at 2 B/s and leave at 4 (arrive 4.5)
    instance = Instance([0.0, 0.0], [4, 2], [3, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=2.0, latency_s=0.5, sharing="share")
    _expect(
        instance,
        _pd(UNIT, UNIT, link=link),
        transfer_start_s=[1.0, 1.0],
        transfer_end_s=[4.5, 3.5],
        decode_admitted_s=[4.5, 3.5],
        completion_s=[6.5, 4.5],
    )


@pytest.mark.parametrize("policy", ["fcfs", "vllm", "sarathi", "vllm-v0"])
def test_pinned_blocks_hold_admissions_back(policy: str) -> None:
    # prefill capacity 8 tokens: 0 and 1 prefill in [0, 1] and stay pinned until
    # their transfers end (1 B/s, fifo: [1, 5] and [5, 9]); request 2 fits only
    # once 0's blocks are freed at 5, prefills in [5, 6] and waits for the link
    # until 9. Without the pins counted, a policy would admit it at 1 and
    # overflow the 8 blocks
    instance = Instance([0.0, 0.0, 0.0], [4, 4, 4], [2, 2, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=1.0)
    _expect(
        instance,
        _pd(UNIT.replace(kv_capacity_tokens=8), UNIT, policy=policy, link=link),
        admitted_s=[0.0, 0.0, 5.0],
        first_token_s=[1.0, 1.0, 6.0],
        transfer_start_s=[1.0, 5.0, 9.0],
        transfer_end_s=[5.0, 9.0, 13.0],
        completion_s=[6.0, 10.0, 14.0],
    )


def test_a_decode_replica_drops_kv_that_does_not_fit() -> None:
    # ideal link: both arrive at 1. Decode capacity 6: 0 (4 tokens) is adopted,
    # 1 (3 more) is not: its KV is dropped (3 tokens recomputed) and it waits with
    # token 1 emitted. 0 decodes [1, 2], [2, 3] (done at 3, 6 tokens: nothing else
    # fits meanwhile); 1 prefills its 3 + 1 tokens in [3, 4], emitting token 2
    instance = Instance([0.0, 0.0], [4, 3], [3, 2])
    _expect(
        instance,
        _pd(UNIT, UNIT.replace(kv_capacity_tokens=6)),
        transfer_end_s=[1.0, 1.0],
        decode_admitted_s=[1.0, 3.0],
        completion_s=[3.0, 4.0],
        recomputed_tokens=[0.0, 3.0],
    )


def test_least_outstanding_counts_the_prefill_in_flight() -> None:
    # request 0 prefills on replica 0 in [0, 1]; at 0.5 that iteration is in
    # flight, so replica 0 has one unfinished request and 1 goes to replica 1; at
    # 0.6 both have one and 2 goes to replica 0 (ties to the lowest id)
    instance = Instance([0.0, 0.5, 0.6], [4, 4, 4], [3, 2, 2])
    _expect(
        instance,
        _pd(UNIT, UNIT, prefill_replicas=2, router="least-outstanding"),
        replica=[0, 1, 0],
        admitted_s=[0.0, 0.5, 1.0],
    )


def test_rejections_and_one_token_requests() -> None:
    # decode capacity 5: request 0's peak (4 + 3 - 1 = 6) fits no decode replica,
    # so it is rejected at arrival; request 1 emits one token and completes on
    # its prefill replica at 1, with no transfer; request 2 moves
    instance = Instance([0.0, 0.0, 0.0], [4, 4, 2], [3, 1, 2])
    for name, get in _both(instance, _pd(UNIT, UNIT.replace(kv_capacity_tokens=5))):
        assert get("replica").tolist() == [-1, 0, 0], name
        assert get("decode_replica").tolist() == [-1, -1, 1], name
        np.testing.assert_allclose(
            get("completion_s").astype(float), [np.nan, 1.0, 2.0], err_msg=name
        )
        np.testing.assert_allclose(
            get("transferred_bytes").astype(float), [0.0, 0.0, 2.0], err_msg=name
        )


class _Recording(Fcfs):
    """FCFS that records the ids it is told were adopted."""

    def __init__(self, calls: list[list[int]]) -> None:
        super().__init__()
        self.calls = calls

    def adopt(self, ids: list[int]) -> None:
        self.calls.append([int(r) for r in ids])


@dataclass
class _RecordingSpec:
    """A policy spec whose policies record their adopt calls per replica."""

    calls: dict[int, list[list[int]]]
    label: str = "recording"

    def make(self, context: Any) -> _Recording:
        return _Recording(self.calls.setdefault(context.replica, []))


def test_the_policy_hears_every_adoption() -> None:
    # 4 requests over 2 decode replicas (round robin by position: 0, 2 to replica
    # 2 and 1, 3 to replica 3): each adoption is announced once, at the boundary
    # it happens, with the local ids adopted there
    instance = Instance([0.0, 0.0, 1.0, 2.5], [3, 2, 2, 1], [3, 3, 2, 2])
    logs = []
    for engine in (simulate_cluster, simulate_naive_cluster):
        spec = _RecordingSpec({})
        cluster = Cluster(
            (
                Pool(UNIT, "fcfs", 1, name="p", role="prefill"),
                Pool(UNIT, spec, 2, name="d", role="decode"),  # type: ignore[arg-type]
            )
        )
        engine(instance, cluster)
        logs.append(spec.calls)
    assert logs[0] == logs[1]
    assert sorted(r for calls in logs[0].values() for ids in calls for r in ids) == [
        0,
        0,
        1,
        1,
    ]


def test_deliveries_may_overtake_each_other() -> None:
    # request 0 (8 bytes) goes on the shared 1 B/s link at 1; requests 1 and 2
    # prefill in [1, 2], and 2 (one token) completes there. 1's byte goes on the
    # link at 2 and leaves at 4 (0 has sent 2 bytes by then), 0 leaves at 10. The
    # decode replica receives 1 before 0; its metrics are still over requests 0
    # and 1 with their own times (end to end: 11 - 0 and 5 - 0.5)
    instance = Instance([0.0, 0.5, 0.6], [8, 1, 1], [2, 2, 1])
    link = Link("p", "d", bandwidth_bytes_per_s=1.0, sharing="share")
    cluster = _pd(UNIT, UNIT, link=link)
    _expect(
        instance,
        cluster,
        transfer_start_s=[1.0, 2.0, np.nan],
        transfer_end_s=[10.0, 4.0, np.nan],
        completion_s=[11.0, 5.0, 2.0],
    )
    decode = simulate_cluster(instance, cluster).replica_metrics.loc[1]
    assert decode["num_completed"] == 2
    assert decode["e2e_p90_s"] == pytest.approx(np.percentile([11.0, 4.5], 90))


# -- pull, and adoption's sequence slot ---------------------------------------------


def _pulling(
    decode: DeploymentProfile,
    pull: float,
    *,
    link: Link | None = None,
    prefill: DeploymentProfile = UNIT,
    prefill_replicas: int = 1,
    policy: str = "fcfs",
) -> Cluster:
    return Cluster(
        (
            Pool(prefill, policy, prefill_replicas, name="p", role="prefill"),
            Pool(decode, policy, 1, name="d", role="decode", pull=pull),
        ),
        links=() if link is None else (link,),
    )


@pytest.mark.parametrize("policy", ["fcfs", "vllm", "sarathi", "vllm-v0"])
def test_a_pulling_replica_takes_the_kv_when_it_has_room(policy: str) -> None:
    # tests/test_disagg.py's case: decode capacity 6, threshold 0.05, fifo at
    # 1 B/s. Both prefill in [0, 1]; the idle replica takes 0 at 1 (transfer
    # [1, 5]); 1 waits (0's blocks are on their way) and at 5 its 3 blocks are not
    # free beside 0's 4; 0 decodes [5, 6] and ends, and 1 is taken at 6
    instance = Instance([0.0, 0.0], [4, 3], [2, 2])
    cluster = _pulling(
        UNIT.replace(kv_capacity_tokens=6),
        0.05,
        link=Link("p", "d", bandwidth_bytes_per_s=1.0),
        policy=policy,
    )
    _expect(
        instance,
        cluster,
        transfer_start_s=[1.0, 6.0],
        transfer_end_s=[5.0, 9.0],
        decode_admitted_s=[5.0, 9.0],
        completion_s=[6.0, 10.0],
    )


def test_a_pulling_replica_adopts_before_it_takes() -> None:
    # decode capacity 4, threshold 1, ideal link: 0 (3 tokens) and 1 (2) prefill in
    # [0, 1]. The idle replica takes 0 at 1; its KV arrives at once, so the
    # replica has a boundary due at 1 and takes 1 there, after adopting 0: 1's 2
    # blocks are not free beside 0's 3. 0 decodes [1, 2] and ends; 1 is taken at
    # 2. (Taken before 0's adoption, on 0's released reservation, 1 would arrive
    # to find no room and be dropped.)
    instance = Instance([0.0, 0.0], [3, 2], [2, 2])
    _expect(
        instance,
        _pulling(UNIT.replace(kv_capacity_tokens=4), 1.0),
        transfer_start_s=[1.0, 2.0],
        decode_admitted_s=[1.0, 2.0],
        completion_s=[2.0, 3.0],
        recomputed_tokens=[0.0, 0.0],
    )


def test_a_pulling_replica_takes_at_the_end_of_its_iteration() -> None:
    # two prefill replicas; decode capacity 2, ideal link. 0 prefills [0, 1], is
    # taken by the idle replica at 1 and decodes [1, 2] (2 blocks). 1 prefills
    # [0.5, 1.5] and joins the queue at 1.5, inside that iteration: the replica
    # takes it at its boundary 2, when 0 ends and frees its blocks
    instance = Instance([0.0, 0.5], [1, 1], [2, 2])
    _expect(
        instance,
        _pulling(UNIT.replace(kv_capacity_tokens=2), 1.0, prefill_replicas=2),
        first_token_s=[1.0, 1.5],
        transfer_start_s=[1.0, 2.0],
        decode_admitted_s=[1.0, 2.0],
        completion_s=[2.0, 3.0],
    )


def test_a_waiting_request_stops_a_held_stretch_at_every_boundary() -> None:
    # decode capacity 8, threshold 0.05 (0.4 blocks: one taken at a time), ideal
    # link. 0 prefills [0, 1], is taken at 1 and decodes [1, 2]. 1 and 2 arrive at
    # 0.5, prefill [1, 2] and join at 2: at the boundary 2 the replica takes 1
    # (2 waits: 1's block is on its way), 1 arrives at once and is adopted there
    # to decode [2, 3], [3, 4]. At the boundary 3 (inside that held stretch) 1
    # has been admitted: the replica takes 2, whose KV arrives after the
    # decision at 3; adopted at 4, it decodes [4, 5]
    instance = Instance([0.0, 0.5, 0.5], [1, 1, 1], [2, 3, 2])
    _expect(
        instance,
        _pulling(UNIT.replace(kv_capacity_tokens=8), 0.05),
        transfer_start_s=[1.0, 2.0, 3.0],
        decode_admitted_s=[1.0, 2.0, 4.0],
        completion_s=[2.0, 4.0, 5.0],
    )


def test_adoption_needs_a_free_sequence_slot() -> None:
    # decode max_num_seqs 2, ideal link: 0, 1 and 2 prefill in [0, 1] and their KV
    # arrives at once. 0 and 1 are adopted at 1; 2's KV finds both slots taken:
    # dropped (1 token recomputed), it is prefilled again when 0 and 1 end at 5
    instance = Instance([0.0, 0.0, 0.0], [1, 1, 1], [5, 5, 5])
    _expect(
        instance,
        _pd(UNIT, UNIT.replace(max_num_seqs=2)),
        decode_admitted_s=[1.0, 1.0, 5.0],
        completion_s=[5.0, 5.0, 9.0],
        recomputed_tokens=[0.0, 0.0, 1.0],
    )


def test_a_pulling_replica_takes_no_more_than_its_free_slots() -> None:
    # the same requests pulled (threshold 1): the idle replica takes 0 at 1, whose
    # KV arrives at once; at the boundary 1 it adopts 0 and takes 1, but not 2 (it
    # runs one request and awaits another: max_num_seqs 2). 1's KV arrives after
    # the decision at 1 (0 decodes [1, 5]): adopted at 2, it decodes [2, 6]. At 5
    # 0 ends and 2 is taken; adopted at 6, it decodes [6, 10]. Nothing is dropped
    instance = Instance([0.0, 0.0, 0.0], [1, 1, 1], [5, 5, 5])
    _expect(
        instance,
        _pulling(UNIT.replace(max_num_seqs=2), 1.0),
        transfer_start_s=[1.0, 1.0, 5.0],
        decode_admitted_s=[1.0, 2.0, 6.0],
        completion_s=[5.0, 6.0, 10.0],
        recomputed_tokens=[0.0, 0.0, 0.0],
    )


def test_a_join_at_a_boundary_ends_a_held_stretch_there_despite_rounding() -> None:
    # 0 (20 tokens, 3 to emit) is taken by the idle decode replica at 1; its 20
    # bytes leave a fifo link of 3 B/s at s = 1 + 20/3 and it decodes [s, s + 1],
    # [s + 1, s + 2], held. 1 arrives at s, prefills [s, s + 1] and joins at s + 1,
    # the stretch's boundary (in floats s + 1 - s exceeds 1 by a rounding: the
    # join counts at that boundary within the arrival tolerance, as an arrival
    # does); taken there, its byte moves [s + 1, s + 4/3]; adopted at s + 2
    s = 1 + 20 / 3
    instance = Instance([0.0, s], [20, 1], [3, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=3.0)
    _expect(
        instance,
        _pulling(UNIT, 1.0, link=link),
        first_token_s=[1.0, s + 1],
        transfer_start_s=[1.0, s + 1],
        transfer_end_s=[s, s + 4 / 3],
        decode_admitted_s=[s, s + 2],
        completion_s=[s + 2, s + 3],
    )


def test_prefills_that_end_together_keep_the_order_their_replicas_stepped() -> None:
    # two prefill replicas (round robin), a fifo link of 1 B/s. Replica 1 runs
    # request 1 over [y, b], b = y + 1; requests 2 and 3 arrive at a, a float
    # after b (within the arrival tolerance): replica 1 takes 3 at its boundary b,
    # replica 0 (idle) takes 2 at a. Both prefills end at b + 1 (a + 1 rounds to
    # it), and the one whose replica stepped first, at b, reaches the link first
    y = 2.082076204412921
    b = y + 1
    a = math.nextafter(b, math.inf)
    assert a + 1 == b + 1
    instance = Instance([0.0, y, a, a], [1, 1, 1, 1], [1, 1, 2, 2])
    cluster = _pd(UNIT, UNIT, prefill_replicas=2, link=Link("p", "d", 1.0))
    _expect(
        instance,
        cluster,
        admitted_s=[0.0, y, a, b],
        first_token_s=[1.0, b, b + 1, b + 1],
        transfer_start_s=[np.nan, np.nan, b + 2, b + 1],
        transfer_end_s=[np.nan, np.nan, b + 3, b + 2],
    )
