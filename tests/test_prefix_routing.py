"""Cache-aware routing: ``random``, ``prefix`` and the prefix cache on the
prefill replicas of a disaggregated cluster, against the naive engine.

``tests/reference_engine.py`` routes ``random`` (``default_rng([seed,
i]).integers(E)``), ``prefix`` (longest run of the request's hashes a replica
holds itself: GPU, host tier, or its share of a KV pool; ties to
least-outstanding) and ``conductor`` with a TTFT and a TBT SLO (its own copy
and prefill prediction, queue ledger and decode-step prediction) with its own
cache (``_NaiveCache``) on each prefill or colocated replica, its own host
tiers and its own KV pool (``_NaivePool``: homes, writes due at their
iteration's end, copies from another replica over the pool's link). On
Hypothesis-drawn small clusters of ``tests/test_disagg_equivalence.py``
(prefill, decode and sometimes colocated pools; pushing and pulling decode
pools; ideal, fifo and shared links), arrivals sometimes spread out, whose
requests share prefixes (prompts of 1 to 8 tokens in hash blocks of 2, each
request's first blocks, often all, shared with one of two families) and whose
prefill and colocated pools have an ``lru`` or ``lru_tail_first`` cache (a
prefill pool's on the GPU alone, with a host tier, or with a KV pool shared by
two replicas or more over a drawn link to itself, tiers of 2 to 8 blocks), both
engines must give every request the same times, replicas and cached tokens and
the same ``host_hit_tokens``, ``host_copy_s`` and ``remote_hit_tokens``, the
validator must find the fast log valid (without a KV pool), and the drawn runs
must show copies from the host or the own share, copies from another
replica's, evictions from full tiers and rejections on either SLO.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
from cli_helpers import assert_router_refused
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prefix_helpers import hashed_instance
from reference_engine import simulate_naive_cluster
from test_disagg_equivalence import Scenario, _differences, _run_both, scenarios

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import simulate, simulate_cluster
from lsched.instance import Instance
from lsched.prefix import PrefixCacheSpec
from lsched.profile import FEATURES, DeploymentProfile, IterationTime, load_profile
from lsched.routers import parse_router
from lsched.validator import validate_cluster

BLOCK = 2  # tokens per hash block
UNIT = load_profile("unit-slot")


def _hashes(draw: st.DrawFn, prompts: list[int]) -> list[list[int]]:
    """Chained hashes of ``ceil(s / BLOCK)`` blocks per prompt, the first ones
    shared with one of two families (a hash names its whole prefix)."""
    names: dict[tuple[tuple[int, int], ...], int] = {}
    out = []
    for i, s in enumerate(prompts):
        count = -(-s // BLOCK)
        family = draw(st.integers(0, 1))
        shared = draw(st.integers(0, count) | st.just(count))
        content = [(family, k) for k in range(shared)]
        content += [(2 + i, k) for k in range(shared, count)]
        out.append([names.setdefault(tuple(content[: k + 1]), len(names) + 1)
                    for k in range(count)])  # fmt: skip
    return out


@st.composite
def cached_scenarios(draw: st.DrawFn) -> Scenario:
    """A scenario of test_disagg_equivalence with shared prefixes, arrivals
    sometimes spread out, a cache on its prefill and colocated pools (a
    prefill pool's sometimes with a host tier or a KV pool) and a cache-aware,
    round-robin or random router."""
    case = draw(scenarios())
    inst = case.instance
    hashes = _hashes(draw, inst.prompt_tokens.tolist())
    # spread out, later requests find earlier ones' blocks in a tier
    spread = draw(st.sampled_from([1.0, 4.0]))
    instance = hashed_instance(
        inst.arrival_s * spread, inst.prompt_tokens, inst.output_tokens, hashes, BLOCK
    )
    eviction = draw(st.sampled_from(["lru", "lru_tail_first"]))
    pools, links = [], list(case.cluster.links)
    longest = int(inst.prompt_tokens.max())
    for p in case.cluster.pools:
        if p.role == "prefill":
            p, own = _prefill_pool(draw, p, eviction, longest)
            links += own
        elif p.role == "colocated":
            p = dataclasses.replace(p, prefix_cache=PrefixCacheSpec(eviction, None))
        pools.append(p)
    routers = ["prefix", "prefix", "random:seed=0", "random:seed=7", "round-robin",
               "conductor", "conductor:ttft_slo_s=1.5", "conductor:ttft_slo_s=1.5",
               "conductor:ttft_slo_s=2.5", "conductor:tbt_slo_s=0.6",
               "conductor:ttft_slo_s=2.5,tbt_slo_s=1.05"]  # fmt: skip
    router = parse_router(draw(st.sampled_from(routers)))
    cluster = dataclasses.replace(
        case.cluster, pools=tuple(pools), links=tuple(links), router=router
    )
    return Scenario(instance, cluster)


def _prefill_pool(
    draw: st.DrawFn, pool: Pool, eviction: str, longest: int
) -> tuple[Pool, list[Link]]:
    """``pool`` with a prefix cache on the GPU alone, with a host tier, or with
    a KV pool shared by its replicas (two at least), the tiers of a few hash
    blocks (so that they evict); the GPU of a host tier's replica, and
    sometimes of a KV pool's, holds the longest prompt alone (so that blocks
    leave it and are copied back from the tier); and the KV pool's link to
    itself, none (ideal) or a drawn one."""
    tier = draw(st.sampled_from(["gpu", "host", "pool", "pool"]))
    if tier == "gpu":
        return dataclasses.replace(pool, prefix_cache=PrefixCacheSpec(eviction)), []
    tokens = draw(st.sampled_from([4, 8, 16]))
    spec = PrefixCacheSpec(eviction, **{f"{tier}_capacity_tokens": tokens})
    profile, replicas, links = pool.profile, pool.replicas, []
    if tier == "host" or draw(st.booleans()):
        b = profile.block_tokens
        profile = profile.replace(kv_capacity_tokens=-(-longest // b) * b)
    if tier == "pool":
        replicas = max(replicas, 2)
        if draw(st.booleans()):
            bandwidth = draw(st.sampled_from([math.inf, 1.0, 4.0]))
            latency = draw(st.sampled_from([0.0, 0.3, 0.5]))
            links.append(Link(pool.name, pool.name, bandwidth, latency))
    pool = dataclasses.replace(
        pool, profile=profile, replicas=replicas, prefix_cache=spec
    )
    return pool, links


def _check(case: Scenario, seen: Counter[str]) -> None:
    """Compare ``case`` on both engines and count what it showed into ``seen``."""
    event(case.cluster.router.label)
    fast, naive = _run_both(case.instance, case.cluster)
    if fast is None:
        return
    problems = _differences(fast, naive)
    cached = fast.requests["cached_tokens"].to_numpy()
    np.testing.assert_array_equal(cached, naive.cached_tokens)
    assert not problems, "\n".join(problems[:20])
    for metric in ("host_hit_tokens", "host_copy_s", "remote_hit_tokens"):
        mine, theirs = fast.metrics.get(metric, 0.0), getattr(naive, metric)
        assert math.isclose(mine, theirs, rel_tol=1e-9), (metric, mine, theirs)
    reasons = fast.requests["rejected"]
    happened = {
        "a hit": cached.sum() > 0,
        "a local copy": naive.host_hit_tokens > naive.remote_hit_tokens,
        "a remote copy": naive.remote_hit_tokens > 0,
        "a tier eviction": naive.tier_evictions > 0,
        "a TTFT rejection": reasons.str.startswith("conductor: predicted TTFT").any(),
        "a TBT rejection": reasons.str.startswith("conductor: predicted TBT").any(),
    }
    for what, yes in happened.items():
        if yes:
            seen[what] += 1
            event(what)
    validate_cluster(case.instance, case.cluster, fast).raise_if_invalid()


def test_cached_clusters_route_and_agree() -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cached_scenarios())
    def check(case: Scenario) -> None:
        _check(case, seen)

    check()
    # not vacuous: copies from the host tier, from another replica's share of a
    # KV pool, evictions from full tiers, rejections on either SLO
    for what in ("a hit", "a local copy", "a remote copy", "a tier eviction",
                 "a TTFT rejection", "a TBT rejection"):  # fmt: skip
        assert seen[what] >= 1, seen


# -- hand-derived cases ---------------------------------------------------------------


def _instance(
    arrival_s: list[float],
    prompts: list[int],
    outputs: list[int],
    hashes: list[list[int]],
) -> Instance:
    return hashed_instance(arrival_s, prompts, outputs, hashes, BLOCK)


def _unit(weights: dict[str, float] | None = None) -> DeploymentProfile:
    """unit-slot with 1-token KV blocks, room for 200 tokens and, given
    ``weights``, an affine iteration time over phi's features."""
    profile = UNIT.replace(kv_capacity_tokens=200, block_tokens=1)
    if weights is None:
        return profile
    row = [weights.get(f, 0.0) for f in FEATURES]
    return profile.replace(iteration_time=IterationTime(regimes=(np.array([row]),)))


def test_prefix_routes_to_the_longest_cached_run_then_the_least_loaded() -> None:
    """Two colocated unit-slot replicas (one time unit per iteration), hash
    blocks of 2 tokens, vllm, an LRU cache on each:

    * r0 (t=0, 4 tokens, hashes [1, 2]): nothing cached, nothing outstanding:
      the lowest id, **0**. Prefilled in [0, 1], it completes there (one
      token); 1 and 2 stay cached on 0.
    * r1 (t=0, [3, 4]): nothing cached; replica 0 has r0 outstanding: **1**,
      which caches 3 and 4.
    * r2 (t=2, 6 tokens, [1, 2, 5]): a run of 2 on replica 0, 0 on 1: **0**,
      with min(2 x 2, 6 - 1) = **4** cached tokens.
    * r3 (t=2, 4 tokens, [3, 9]): a run of 1 on replica 1 (0 on replica 0,
      which has r2 outstanding as 1 has nothing): **1**, with **2** cached
      tokens.
    * r4 (t=2, 2 tokens, [7]): no run anywhere; one outstanding on each: the
      lowest id, **0**.
    """
    instance = _instance(
        [0.0, 0.0, 2.0, 2.0, 2.0],
        [4, 4, 6, 4, 2],
        [1, 1, 1, 1, 1],
        [[1, 2], [3, 4], [1, 2, 5], [3, 9], [7]],
    )
    got = simulate(
        instance, _unit(), "vllm", replicas=2, dispatch="prefix", prefix_cache="lru"
    )
    assert got.requests["replica"].tolist() == [0, 1, 0, 1, 0]
    assert got.requests["cached_tokens"].tolist() == [0, 0, 4, 2, 0]
    # r2 and r3 swap prefixes: r2 ([3, 4, 5]) finds a run of 2 on replica 1,
    # r3 ([1, 9]) a run of 1 on replica 0; r4 still goes to the lowest id
    swapped = instance.replace(
        prefix_hash_values=np.array([1, 2, 3, 4, 3, 4, 5, 1, 9, 7])
    )
    got = simulate(
        swapped, _unit(), "vllm", replicas=2, dispatch="prefix", prefix_cache="lru"
    )
    assert got.requests["replica"].tolist() == [0, 1, 1, 0, 0]
    assert got.requests["cached_tokens"].tolist() == [0, 0, 4, 2, 0]
    # least-outstanding ignores the caches: the first order, no hit for r2, r3
    plain = simulate(swapped, _unit(), "vllm", replicas=2,
                     dispatch="least-outstanding", prefix_cache="lru")  # fmt: skip
    assert plain.requests["replica"].tolist() == [0, 1, 0, 1, 0]
    assert plain.requests["cached_tokens"].tolist() == [0, 0, 0, 0, 0]


def test_random_draws_each_request_from_its_own_seeded_generator() -> None:
    """``random:seed=s`` sends request i to default_rng([s, i]).integers(C), on
    the stateless path (every replica alone) and in a disaggregated cluster."""
    instance = _instance([0.0] * 6, [4] * 6, [2] * 6, [[k] for k in range(6)])
    want = [int(np.random.default_rng([5, i]).integers(3)) for i in range(6)]
    got = simulate(instance, _unit(), "vllm", replicas=3, dispatch="random:seed=5")
    assert got.requests["replica"].tolist() == want
    other = simulate(instance, _unit(), "vllm", replicas=3, dispatch="random:seed=6")
    assert other.requests["replica"].tolist() != want  # the seed matters
    pools = (
        Pool(_unit(), "vllm", 3, name="p", role="prefill", prefix_cache="lru"),
        Pool(_unit(), "vllm", 1, name="d", role="decode"),
    )
    cluster = Cluster(pools, router=parse_router("random:seed=5"))
    assert simulate_cluster(instance, cluster).requests["replica"].tolist() == want


def _conductor_cluster(router: str, decode: DeploymentProfile) -> Cluster:
    """Two prefill replicas with an LRU cache, iteration time 1 + 0.1 P, and one
    decode replica of ``decode``; an ideal link."""
    prefill = _unit({"const": 1.0, "prefill_tokens": 0.1})
    pools = (
        Pool(prefill, "vllm", 2, name="p", role="prefill", prefix_cache="lru"),
        Pool(decode, "vllm", 1, name="d", role="decode"),
    )
    return Cluster(pools, router=parse_router(router))


def test_conductor_weighs_the_queue_against_the_cache_and_rejects_late() -> None:
    """``conductor:ttft_slo_s=4.5`` on two prefill replicas p0, p1 whose
    iteration takes 1 + 0.1 P (one chunk: prompts under
    max_num_batched_tokens), hash blocks of 2 tokens:

    * r0 (t=0, 20 tokens, hashes 1..10): both predict 0 + (1 + 0.1 x 20) = 3:
      the lowest id, **p0**; busy(p0) = 3. Its prefill runs in [0, 3].
    * r1 (t=1, the same 20 tokens): p0 holds all 10 blocks (computed by the
      iteration in flight), x = min(20, 19) = 19: queue 3 - 1 = 2 plus 1 +
      0.1 x 1 = 3.1; p1: 0 + 3 = 3.0. **p1**, the load over the cache (the
      ``prefix`` router would take p0); busy(p1) = 1 + 3 = 4. TTFT 3.
    * r2 (t=5, the same prompt): both hold the blocks, both queues are empty:
      1.1 on each, **p0**, 19 cached tokens, TTFT 1.1; busy(p0) = 6.1.
    * r3 (t=5, 40 tokens, new hashes): p0 predicts 1.1 + (1 + 4) = 6.1, p1 0 +
      5 = 5.0; the best, 5.0 s, is over 4.5 s: **rejected**, counted.
    """
    hashes = list(range(1, 11))
    instance = _instance(
        [0.0, 1.0, 5.0, 5.0],
        [20, 20, 20, 40],
        [2, 2, 2, 2],
        [hashes, hashes, hashes, list(range(11, 31))],
    )
    cluster = _conductor_cluster("conductor:ttft_slo_s=4.5", _unit())
    got = simulate_cluster(instance, cluster, log=True)
    requests = got.requests
    assert requests["replica"].tolist() == [0, 1, 0, -1]
    assert requests["cached_tokens"].tolist() == [0, 0, 19, 0]
    ttft = (requests["first_token_s"] - instance.arrival_s)[:3].to_numpy()
    np.testing.assert_allclose(ttft, [3.0, 3.0, 1.1], rtol=1e-12)
    reason = requests["rejected"].iloc[3]
    assert reason == "conductor: predicted TTFT 5.000 s > SLO 4.5 s (best replica 1)"
    assert got.metrics["num_rejected"] == 1
    validate_cluster(instance, cluster, got).raise_if_invalid()
    # the longest-prefix router takes p0 for r1 and serves every request
    greedy = simulate_cluster(instance, _conductor_cluster("prefix", _unit()))
    assert greedy.requests["replica"].tolist()[:2] == [0, 0]
    assert greedy.metrics["num_rejected"] == 0


def test_conductor_rejects_what_the_decode_pool_would_serve_too_slowly() -> None:
    """``conductor:tbt_slo_s=0.8`` with a decode replica whose iteration takes
    0.5 + 0.01 K. The predicted TBT is one decode iteration of the decode
    replica's u unfinished requests plus this one, reading its K KV tokens
    plus u + s + 1:

    * r0 (t=0, 20 tokens): an empty decode replica, 0.5 + 0.01 x 21 = 0.71
      <= 0.8: served (p0).
    * r1 (t=0, 40 tokens): r0 is not on the decode replica yet (still in its
      prefill), so again u = K = 0: 0.5 + 0.01 x 41 = 0.91 > 0.8:
      **rejected**.
    * r2 (t=20, 20 tokens): r0 is done: 0.71, served.
    """
    instance = _instance([0.0, 0.0, 20.0], [20, 40, 20], [2, 2, 2], [[1], [2], [3]])
    decode = _unit({"const": 0.5, "kv_read_tokens": 0.01})
    cluster = _conductor_cluster("conductor:tbt_slo_s=0.8", decode)
    got = simulate_cluster(instance, cluster, log=True)
    assert got.requests["replica"].tolist() == [0, -1, 0]
    assert got.requests["rejected"].iloc[1] == (
        "conductor: predicted TBT 0.9100 s > SLO 0.8 s"
    )
    assert got.metrics["num_rejected"] == 1
    validate_cluster(instance, cluster, got).raise_if_invalid()


def _pool_cluster(router: str) -> Cluster:
    """Two prefill replicas p0, p1 (iteration 1 + 0.1 P, 1 KV byte per token)
    sharing a KV pool of 100 tokens over a link of 0.5 s and 10 bytes/s, and
    one decode replica."""
    prefill = _unit({"const": 1.0, "prefill_tokens": 0.1}).replace(kv_bytes_per_token=1)
    spec = PrefixCacheSpec("lru", pool_capacity_tokens=100)
    pools = (
        Pool(prefill, "vllm", 2, name="p", role="prefill", prefix_cache=spec),
        Pool(_unit(), "vllm", 1, name="d", role="decode"),
    )
    return Cluster(
        pools, router=parse_router(router), links=(Link("p", "p", 10.0, 0.5),)
    )


def test_a_kv_pool_copies_a_prefix_from_another_replica() -> None:
    """Mooncake's KV pool (rule 6 of ``lsched.evaluator.prefix``) on two
    prefill replicas p0, p1 whose iteration takes 1 + 0.1 P, hash blocks of 2
    tokens, 1 KV byte per token, a pool of 100 tokens (50 blocks: nothing is
    evicted), the pool's link 0.5 s + bytes / 10 bytes/s; ``round-robin``
    sends r0 and r2 to p0, r1 and r3 to p1; each emits one token (done on its
    prefill replica):

    * r0 (t=0, 20 tokens, hashes 1..10), p0: nothing cached; prefill [0, 3]
      (1 + 0.1 x 20). Its 10 blocks are written to the pool due at t=3, homed
      at p0.
    * r1 (t=2, 2 tokens, hash 1), p1: the pool has applied the writes due by
      t=2, none: **0** cached tokens (block 1 would give it min(2, 2 - 1) = 1).
      Prefill [2, 3.2], TTFT 1.2. Its block 1, on p1's GPU, is written at 3.2:
      already in the pool, touched, its home kept (p0).
    * r2 (t=5, r0's prompt), p0: all 10 blocks on its GPU: x = min(10 x 2, 20
      - 1) = **19**, no copy; a 1-token prefill of 1.1 s: TTFT 1.1.
    * r3 (t=5, r0's prompt), p1: block 1 on its GPU, 2..10 in the pool homed
      at p0: a run of 10, x = **19**; blocks 2..10 are copied from p0's share,
      2 x 8 + 1 = 17 tokens: 0.5 + 17 / 10 = 2.2 s, then 1.1 s: TTFT **3.3**.

    So 17 tokens copied, all remote, in 2.2 s. The ``prefix`` router sends
    every request to p0 instead (r1: p0's GPU holds block 1, in the iteration
    in flight; r2, r3: the run p0 holds itself is 10, p1's at most 1): no copy.
    """
    hashes = list(range(1, 11))
    instance = _instance(
        [0.0, 2.0, 5.0, 5.0], [20, 2, 20, 20], [1, 1, 1, 1],
        [hashes, [1], hashes, hashes],
    )  # fmt: skip
    cluster = _pool_cluster("round-robin")
    got = simulate_cluster(instance, cluster)
    naive = simulate_naive_cluster(instance, cluster)
    for replicas, cached, first, metrics in (
        (got.requests["replica"], got.requests["cached_tokens"],
         got.requests["first_token_s"], got.metrics),
        (naive.replica, naive.cached_tokens, naive.first_token_s, vars(naive)),
    ):  # fmt: skip
        assert list(replicas) == [0, 1, 0, 1]
        assert list(cached) == [0, 0, 19, 19]
        ttft = np.asarray(first) - instance.arrival_s
        np.testing.assert_allclose(ttft, [3.0, 1.2, 1.1, 3.3], rtol=1e-12)
        assert metrics["remote_hit_tokens"] == metrics["host_hit_tokens"] == 17
        assert math.isclose(metrics["host_copy_s"], 2.2, rel_tol=1e-12)
    greedy = simulate_cluster(instance, _pool_cluster("prefix"))
    assert greedy.requests["replica"].tolist() == [0, 0, 0, 0]
    assert greedy.metrics["remote_hit_tokens"] == 0


@pytest.mark.parametrize(
    ("router", "needles"),
    [
        ("conductor:ttft_slo_s=-1", ["ttft_slo_s=-1", "expected seconds > 0"]),
        ("conductor:tbt_slo_s=0", ["tbt_slo_s=0", "expected seconds > 0"]),
        ("conductor:ttft_slo_s=soon", ["'soon'", "expected a number"]),
        ("conductor:slo=1", ["slo=1", "ttft_slo_s, tbt_slo_s"]),
        ("random:seed=-3", ["seed=-3", ">= 0"]),
    ],
)  # fmt: skip
def test_cli_bad_router_params_exit_2(
    router: str, needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_router_refused(router, needles, capsys)


def test_a_run_whose_every_request_is_rejected_reports_them_all() -> None:
    """``conductor:ttft_slo_s=0.5`` where every prefill takes 1 + 0.1 x 20 = 3 s:
    both requests are rejected, counted, and the run still validates (no replica
    ran, so the cached-token column is all zeros rather than missing)."""
    hashes = list(range(1, 11))
    instance = _instance([0.0, 1.0], [20, 20], [2, 2], [hashes, hashes])
    cluster = _conductor_cluster("conductor:ttft_slo_s=0.5", _unit())
    got = simulate_cluster(instance, cluster, log=True)
    assert got.metrics["num_rejected"] == 2
    assert got.metrics["num_completed"] == 0
    assert got.requests["replica"].tolist() == [-1, -1]
    assert got.requests["cached_tokens"].tolist() == [0, 0]
    reasons = got.requests["rejected"]
    assert reasons.str.startswith("conductor: predicted TTFT 3.000 s").all()
    validate_cluster(instance, cluster, got).raise_if_invalid()
