"""Cache-aware routing: ``random``, ``prefix`` and the prefix cache on the
prefill replicas of a disaggregated cluster, against the naive engine.

``tests/reference_engine.py`` routes ``random`` (``default_rng([seed,
i]).integers(E)``) and ``prefix`` (longest run of the request's hashes resident
in a replica's cache, ties to least-outstanding) with its own cache
(``_NaiveCache``) on each prefill or colocated replica. On Hypothesis-drawn
small clusters of ``tests/test_disagg_equivalence.py`` (prefill, decode and
sometimes colocated pools; pushing and pulling decode pools; ideal, fifo and
shared links) whose requests share prefixes (prompts of 1 to 8 tokens in hash
blocks of 2, each request's first blocks shared with one of two families) and
whose prefill and colocated pools have an ``lru`` or ``lru_tail_first`` cache,
both engines must give every request the same times, replicas and cached
tokens, and the validator must find the fast log valid.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_disagg_equivalence import Scenario, _differences, _run_both, scenarios

from lsched.instance import Instance
from lsched.prefix import PrefixCacheSpec
from lsched.routers import parse_router
from lsched.validator import validate_cluster

BLOCK = 2  # tokens per hash block


def _hashes(draw: st.DrawFn, prompts: list[int]) -> list[list[int]]:
    """Chained hashes of ``ceil(s / BLOCK)`` blocks per prompt, the first ones
    shared with one of two families (a hash names its whole prefix)."""
    names: dict[tuple[tuple[int, int], ...], int] = {}
    out = []
    for i, s in enumerate(prompts):
        count = -(-s // BLOCK)
        family = draw(st.integers(0, 1))
        shared = draw(st.integers(0, count))
        content = [(family, k) for k in range(shared)]
        content += [(2 + i, k) for k in range(shared, count)]
        out.append([names.setdefault(tuple(content[: k + 1]), len(names) + 1)
                    for k in range(count)])  # fmt: skip
    return out


@st.composite
def cached_scenarios(draw: st.DrawFn) -> Scenario:
    """A scenario of test_disagg_equivalence with shared prefixes, a cache on
    its prefill and colocated pools and a cache-aware or random router."""
    case = draw(scenarios())
    inst = case.instance
    hashes = _hashes(draw, inst.prompt_tokens.tolist())
    instance = Instance(
        inst.arrival_s,
        inst.prompt_tokens,
        inst.output_tokens,
        prefix_hash_offsets=np.concatenate([[0], np.cumsum([len(h) for h in hashes])]),
        prefix_hash_values=np.array([h for own in hashes for h in own]),
        params={"prefix_block_tokens": BLOCK},
    )
    eviction = draw(st.sampled_from(["lru", "lru_tail_first"]))
    pools = tuple(
        p if p.role == "decode"
        else dataclasses.replace(p, prefix_cache=PrefixCacheSpec(eviction, None))
        for p in case.cluster.pools
    )  # fmt: skip
    routers = ["prefix", "prefix", "random:seed=0", "random:seed=7"]
    router = parse_router(draw(st.sampled_from(routers)))
    cluster = dataclasses.replace(case.cluster, pools=pools, router=router)
    return Scenario(instance, cluster)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cached_scenarios())
def test_cached_clusters_route_and_agree(case: Scenario) -> None:
    fast, naive = _run_both(case.instance, case.cluster)
    if fast is None:
        return
    problems = _differences(fast, naive)
    cached = fast.requests["cached_tokens"].to_numpy()
    np.testing.assert_array_equal(cached, naive.cached_tokens)
    assert not problems, "\n".join(problems[:20])
    if cached.sum():
        event("a hit")
    validate_cluster(case.instance, case.cluster, fast).raise_if_invalid()
