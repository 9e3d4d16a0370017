"""SGLang's ``lpm`` order (:mod:`lsched.policies.sglang`): the waiting request
with the longest cached prefix is admitted first, FCFS once more than
``lpm_queue_limit`` wait (SGLang's 128) or without a prefix cache; hand-derived
admission orders, and the view's read-only lookup."""

from __future__ import annotations

import numpy as np
import pytest
from prefix_helpers import hashed_instance

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.instance import Instance
from lsched.policies.sglang import SglangParams
from lsched.prefix import PrefixCacheSpec
from lsched.profile import load_profile

#: unit-slot (every iteration 1 s), one request running at a time
PROFILE = load_profile("unit-slot").replace(max_num_seqs=1)


def _instance() -> Instance:
    """Hash blocks of 2 tokens. R0 (hashes 1, 2) runs first and leaves both
    cached; R1 (3, 4) matches nothing, R2 (1, 5) one block (2 tokens), R3 (1, 2,
    6) two blocks (4 tokens)."""
    hashes = [[1, 2], [3, 4], [1, 5], [1, 2, 6]]
    return hashed_instance(
        np.array([0.0, 0.5, 0.6, 0.7]),
        np.array([4, 4, 4, 6]),
        np.array([2, 1, 1, 1]),
        hashes,
        2,
    )


def _admitted(policy: str, cache: bool = True) -> list[float]:
    spec = PrefixCacheSpec("lru") if cache else None
    result = simulate(_instance(), PROFILE, policy, prefix_cache=spec)
    return result.requests["admitted_s"].tolist()


def test_lpm_admits_the_longest_cached_prefix_first() -> None:
    """R0 runs over [0, 2] (prefill, one decode). At 2 R1, R2, R3 wait with
    matches 0, 2 and 4 tokens: lpm admits R3 (done at 3), then R2 (its block 1
    still cached, done at 4), then R1 at 4; fcfs admits them in arrival
    order."""
    assert _admitted("sglang:schedule_policy=lpm") == [0.0, 4.0, 3.0, 2.0]
    assert _admitted("sglang") == [0.0, 2.0, 3.0, 4.0]


def test_lpm_is_fcfs_past_the_queue_limit_and_without_a_cache() -> None:
    """With a limit of 2, three waiting at 2 is past it: R1 first (fcfs); at 3
    two wait, R3 (4 tokens) before R2 (2). Without a cache nothing matches."""
    limited = "sglang:schedule_policy=lpm,lpm_queue_limit=2"
    assert _admitted(limited) == [0.0, 2.0, 4.0, 3.0]
    assert _admitted("sglang:schedule_policy=lpm", cache=False) == [0.0, 2.0, 3.0, 4.0]


def test_unknown_schedule_policy_is_refused() -> None:
    with pytest.raises(InputError, match="schedule_policy"):
        SglangParams(schedule_policy="dfs-weight")
    with pytest.raises(InputError, match="lpm_queue_limit"):
        SglangParams(lpm_queue_limit=-1)


def test_lpm_counts_prefixes_held_in_the_host_tier() -> None:
    """SGLang's match counts host hits (``host_hit_length``). A KV of 8 tokens:
    R0 (hashes 1, 2) runs over [0, 2]; R1 (6 tokens, hashes 7, 8, 9) arrives at
    1.5 and runs over [2, 4], its prefill and decode evicting R0's two blocks
    from the GPU (runs 2 and 3: one block each), while the host tier keeps
    them (written through). At 4, R2 (hashes 5, 6) and R3 (1, 2, 10) wait:
    on the GPU neither matches (arrival order: R2 first), with the host tier R3
    matches 4 tokens and goes first, taking them from the host."""
    hashes = [[1, 2], [7, 8, 9], [5, 6], [1, 2, 10]]
    instance = hashed_instance(
        np.array([0.0, 1.5, 2.5, 2.6]),
        np.array([4, 6, 4, 6]),
        np.array([2, 2, 1, 1]),
        hashes,
        2,
    )
    profile = PROFILE.replace(kv_capacity_tokens=8)
    lpm = "sglang:schedule_policy=lpm"
    gpu = simulate(instance, profile, lpm, prefix_cache=PrefixCacheSpec("lru"))
    assert gpu.requests["admitted_s"].tolist() == [0.0, 2.0, 4.0, 5.0]
    host = PrefixCacheSpec("lru", host_capacity_tokens=100)
    tiered = simulate(instance, profile, lpm, prefix_cache=host)
    admitted = tiered.requests["admitted_s"].to_numpy()
    assert admitted[3] == 4.0 and admitted[2] > admitted[3]
    assert tiered.requests["cached_tokens"].tolist() == [0, 0, 0, 4]
    assert tiered.metrics["host_hit_tokens"] == 4
