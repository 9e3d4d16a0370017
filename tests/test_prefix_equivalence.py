"""Prefix caching: the fast evaluator agrees with the naive reference engine.

The fast engine runs a per-replica prefix cache (:mod:`lsched.evaluator.prefix`:
hits at admission cut to what fits, blocks cached as prefills complete them,
released at preemption and completion, unreferenced blocks evicted only when the
KV needs the room). ``tests/reference_engine.py`` restates those rules from the
docstrings alone (:class:`reference_engine._NaiveCache`: its own reference
counts, eviction list and block arithmetic), one iteration at a time with the
policy called at every boundary.

On Hypothesis-drawn small instances with shared prefixes (2 to 20 requests in
one to three bursts; prompts of 1 to 8 hash blocks of 2 to 4 tokens, each
request's first blocks shared with one of three families, so that hits,
partial last blocks and prompts found whole happen; KV blocks of 1 or 2 tokens,
so an evictable block takes 1 to 4 of them; a KV capacity between the largest
peak and three times it, so that evictions and preemptions happen; ``lru`` or
``lru_tail_first``, sometimes with a capacity of the cache's own, sometimes
with a host tier of 1 to 100 hash blocks whose host-to-device copy of one token
takes a quarter of a typical iteration, so that host hits happen and their
copies weigh on the times;
``unit-slot`` and ``opt-13b-a100-tp1-vllm``; 1 or 2 replicas, one sometimes
under ``least-outstanding`` so that the fast engine takes its joint path) both
engines must give every request the same admission, first-token and completion
times (relative error <= 1e-9), preemptions, recomputed tokens and cached
tokens, and the same ``prefix_hit_ratio`` and ``prefill_tokens_saved`` (and
``host_hit_tokens`` and ``host_copy_s`` with a host tier); every
third example also passes the validator with the same evictions. Policies:
``vllm`` (chunked prefill), ``sarathi:chunk=8`` (small chunks, so that hits are
cut to fit) and ``vllm-v0`` (whole prompts). Each policy's test fails if too
few examples hit the cache, evicted or preempted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prefix_helpers import hashed_instance
from reference_engine import NaiveResult, simulate_naive
from test_engine_equivalence import assert_same as assert_records_same

from lsched.cluster import Cluster, Pool
from lsched.evaluator import SimulationResult, simulate
from lsched.instance import Instance
from lsched.policies import PolicyError
from lsched.prefix import PrefixCacheSpec
from lsched.profile import DeploymentProfile, load_profile
from lsched.tiers import HostTier
from lsched.validator import validate_cluster

RTOL = 1e-9
POLICIES = ("vllm", "sarathi:chunk=8", "vllm-v0")
#: base profiles and a typical iteration time of each, seconds
BASES = {
    "unit-slot": (load_profile("unit-slot"), 1.0),
    "opt-13b-a100-tp1-vllm": (load_profile("opt-13b-a100-tp1-vllm"), 0.03),
}
EXAMPLES = 40


@dataclass(frozen=True)
class Case:
    """One random simulation set-up."""

    instance: Instance
    profile: DeploymentProfile
    policy: str
    replicas: int
    cache: PrefixCacheSpec
    dispatch: str | None = None  # least-outstanding: the fast engine's joint path

    def describe(self) -> str:
        """Everything needed to reproduce the case, for failure messages."""
        p, inst = self.profile, self.instance
        assert inst.prefix_hash_offsets is not None
        assert inst.prefix_hash_values is not None
        return (
            f"profile={p.name} block_tokens={p.block_tokens} "
            f"kv_capacity_tokens={p.kv_capacity_tokens} "
            f"max_num_seqs={p.max_num_seqs} "
            f"max_num_batched_tokens={p.max_num_batched_tokens} "
            f"policy={self.policy!r} replicas={self.replicas} "
            f"dispatch={self.dispatch} cache={self.cache} params={inst.params}"
            f"\narrival_s={inst.arrival_s.tolist()}"
            f"\nprompt_tokens={inst.prompt_tokens.tolist()}"
            f"\noutput_tokens={inst.output_tokens.tolist()}"
            f"\noffsets={inst.prefix_hash_offsets.tolist()}"
            f"\nhashes={inst.prefix_hash_values.tolist()}"
        )


def _blocks(tokens: int, block: int) -> int:
    return -(-tokens // block)


@st.composite
def _prompts(draw: st.DrawFn, n: int, block: int) -> tuple[list[int], list[list[int]]]:
    """``n`` prompts and their chained block hashes: each shares its first
    blocks with one of three families (a hash names its whole prefix)."""
    names: dict[tuple[int, ...], int] = {}  # a prefix of block contents -> hash
    prompts, hashes = [], []
    for i in range(n):
        count = draw(st.integers(1, 8))
        family = draw(st.integers(0, 2))
        shared = draw(st.integers(0, count))
        # contents: the family's blocks, then this request's own
        content = [(family, k) for k in range(shared)]
        content += [(3 + i, k) for k in range(shared, count)]
        own = [names.setdefault(tuple(content[: k + 1]), len(names) + 1)
               for k in range(count)]  # fmt: skip
        prompts.append((count - 1) * block + draw(st.integers(1, block)))
        hashes.append(own)
    return prompts, hashes


@st.composite
def cases(draw: st.DrawFn, policy: str) -> Case:
    """A few to 20 requests with shared prefixes in one to three bursts."""
    name = draw(st.sampled_from(sorted(BASES)))
    base, scale = BASES[name]
    n = draw(st.integers(2, 20))
    big = draw(st.sampled_from([2, 3, 4]))  # tokens per hash block
    prompts, hashes = draw(_prompts(n, big))
    outputs = draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
    bursts = draw(st.integers(1, 3))
    if name == "unit-slot":  # integer boundaries: ties are exact
        starts = draw(st.lists(st.integers(0, 30), min_size=bursts, max_size=bursts))
        jitters = st.sampled_from([0.0, 0.0, 0.5])
    else:
        starts = draw(
            st.lists(st.floats(0, 30 * scale), min_size=bursts, max_size=bursts)
        )
        jitters = st.floats(0, 2 * scale)
    arrivals = sorted(
        starts[draw(st.integers(0, bursts - 1))] + draw(jitters) for _ in range(n)
    )
    instance = hashed_instance(arrivals, prompts, outputs, hashes, big)
    block = draw(st.sampled_from([1, 2]))
    peak = max(_blocks(s + o - 1, block) for s, o in zip(prompts, outputs, strict=True))
    kv_blocks = draw(st.integers(peak, 3 * peak))
    profile = base.replace(
        block_tokens=block,
        kv_capacity_tokens=kv_blocks * block,
        max_num_seqs=draw(st.sampled_from([2, 3, 4, 256])),
        max_num_batched_tokens=draw(st.sampled_from([64, 2048])),
    )
    own = draw(st.sampled_from([None, None, None, 2, 5]))  # blocks of its own
    # at least one hash block, at most the replica's KV
    capacity = None if own is None else min(own * big, kv_blocks * block)
    if capacity is not None and capacity < big:
        capacity = None
    host = None
    # a host tier (rule 5), two times in three: a host hit needs a GPU eviction
    # and a later request for the evicted blocks, so hits are rarer than tiers
    if capacity is None and draw(st.sampled_from([False, True, True])):
        host = draw(st.sampled_from([1, 3, 10, 100])) * big
        # one token's copy: a quarter of a typical iteration
        rate = profile.kv_bytes_per_token * 4 / scale
        profile = profile.replace(host=HostTier(2**40, rate, rate))
    rule = draw(st.sampled_from(["lru", "lru_tail_first"]))
    cache = PrefixCacheSpec(rule, capacity, host)
    replicas = draw(st.sampled_from([1, 1, 2]))
    joint = replicas == 1 and draw(st.booleans())
    dispatch = "least-outstanding" if joint else None
    return Case(instance, profile, policy, replicas, cache, dispatch)


def run_both(
    case: Case, validate: bool
) -> tuple[NaiveResult | None, SimulationResult | None]:
    """Both engines' results (None, None where the naive one raises
    PolicyError, after checking the fast one does too); with ``validate`` the
    fast run also passes the validator."""
    spec = case.cache
    cache = (spec.eviction, spec.capacity_tokens, spec.host_capacity_tokens)
    try:
        naive = simulate_naive(
            case.instance,
            case.profile,
            case.policy,
            replicas=case.replicas,
            prefix_cache=cache,
        )
    except PolicyError:
        with pytest.raises(PolicyError):
            simulate(case.instance, case.profile, case.policy,
                     replicas=case.replicas, dispatch=case.dispatch,
                     prefix_cache=case.cache)  # fmt: skip
        return None, None
    fast = simulate(case.instance, case.profile, case.policy, replicas=case.replicas,
                    dispatch=case.dispatch, prefix_cache=case.cache,
                    log=validate)  # fmt: skip
    if validate:
        pool = Pool(case.profile, case.policy, case.replicas, prefix_cache=case.cache)
        validate_cluster(case.instance, Cluster((pool,)), fast).raise_if_invalid()
        assert fast.evictions is not None
        assert int(fast.evictions["blocks"].sum()) == naive.evicted_blocks
    return naive, fast


def assert_same(case: Case, naive: NaiveResult, fast: SimulationResult) -> None:
    """Every per-request record, the schedule totals and the cache's metrics."""
    assert_records_same(case, naive, fast)
    where = case.describe()
    assert naive.cached_tokens is not None
    np.testing.assert_array_equal(
        fast.requests["cached_tokens"].to_numpy(),
        naive.cached_tokens,
        err_msg=f"cached_tokens\n{where}",
    )
    m = fast.metrics
    assert m["prefill_tokens_saved"] == naive.cached_tokens.sum(), where
    assert m["prefix_hit_ratio"] == pytest.approx(naive.prefix_hit_ratio, rel=RTOL)
    if case.cache.host_capacity_tokens is not None:
        assert m["host_hit_tokens"] == naive.host_hit_tokens, where
        assert m["host_copy_s"] == pytest.approx(naive.host_copy_s, rel=RTOL), where
    if fast.runs is not None:  # the log: every token's time, Mooncake's TBT
        assert naive.tbt_s is not None
        np.testing.assert_allclose(
            fast.requests["tbt_s"].to_numpy(), naive.tbt_s, rtol=RTOL,
            err_msg=f"tbt_s\n{where}",
        )  # fmt: skip


def _check(case: Case, seen: Counter[str]) -> None:
    """Compare ``case`` on both engines and count what it did into ``seen``."""
    naive, fast = run_both(case, validate=seen["examples"] % 3 == 0)
    seen["examples"] += 1
    if naive is None or fast is None:
        seen["both refused"] += 1
        event("both engines refused")
        return
    assert_same(case, naive, fast)
    assert naive.cached_tokens is not None
    happened = {
        "compared": True,
        "hit": naive.cached_tokens.sum() > 0,
        "evicted": naive.evicted_blocks > 0,
        "preempted": naive.preemptions.sum() > 0,
        "hit cut to fit": naive.cut_hits > 0,
        "own capacity": case.cache.capacity_tokens is not None,
        "host hit": naive.host_hit_tokens > 0,
        "opt profile": case.profile.name.startswith("opt"),
        "joint path": case.dispatch is not None,
    }
    for what, yes in happened.items():
        if yes:
            seen[what] += 1
            event(what)


@pytest.mark.parametrize("policy", POLICIES)
def test_random_cached_instances_agree(policy: str) -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases(policy))
    def check(case: Case) -> None:
        _check(case, seen)

    check()
    # not vacuous: most examples compare, many hit, some evict and preempt
    compared = seen["compared"]
    assert compared >= seen["examples"] // 2, seen
    assert seen["hit"] >= compared // 3, seen
    assert seen["evicted"] >= 1 and seen["preempted"] >= 1, seen
    assert seen["host hit"] >= 1, seen


LPM = "sglang:schedule_policy=lpm"


def _out_of_arrival_order(case: Case, naive: NaiveResult) -> bool:
    """Whether some replica admitted a request before one that arrived earlier
    and was waiting at the time (what the lpm order can do)."""
    admitted = naive.admitted_s
    arrival = case.instance.arrival_s
    for i in range(len(arrival)):
        for j in range(i + 1, len(arrival)):
            same = naive.replica[i] == naive.replica[j]
            waited = arrival[j] <= admitted[j] < admitted[i]
            if same and waited:
                return True
    return False


def test_random_cached_instances_agree_under_sglang_lpm() -> None:
    """SGLang's ``lpm`` reads the cache through the view (the fast engine's
    :class:`~lsched.prefix.cache.PrefixCache`, the naive engine's own
    ``_NaiveCache.lookup``): both engines agree, and the order is not vacuous
    (some admissions overtake an earlier arrival)."""
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases(LPM))
    def check(case: Case) -> None:
        naive, fast = run_both(case, validate=seen["examples"] % 3 == 0)
        seen["examples"] += 1
        if naive is None or fast is None:
            return
        assert_same(case, naive, fast)
        assert naive.cached_tokens is not None
        seen["compared"] += 1
        seen["hit"] += int(naive.cached_tokens.sum() > 0)
        if _out_of_arrival_order(case, naive):
            seen["reordered"] += 1
            event("lpm reordered")

    check()
    assert seen["compared"] >= seen["examples"] // 2, seen
    assert seen["hit"] >= seen["compared"] // 3, seen
    assert seen["reordered"] >= 1, seen
