"""The validator's prefix-cache rule: real cached logs pass, forged ones fail.

Hand-made logs on ``unit-slot`` (1 s iterations, KV blocks of 1 token) with hash
blocks of 2 tokens, so that an evictable block takes ``g = 2`` KV blocks:

- A (prompt 4, hashes [1, 2], one output token) runs [0, 1] and completes: its
  two blocks become evictable (4 KV blocks);
- C (prompt 2, hash [9], one output token) runs [2, 3];
- B (prompt 4, hashes [1, 2]) arrives at 5 and finds both blocks cached:
  ``min(2 x 2, 4, 4 - 1) = 3`` cached tokens, so it computes one token.

With a KV of 5 tokens, C's run holds its 2 tokens and A's 2 evictable blocks (4):
6 > 5, so one block is evicted before it. ``lru`` evicts A's first block (B then
finds nothing: the chain starts there); ``lru_tail_first`` its last (B finds the
first: 2 tokens). C's block is evictable after its run; B's run holds its 4
tokens, so it evicts again: under ``lru`` A's last block and C's (4 + 2 x 3 = 10
-> 4 + 2 x 1 = 6 > 5 -> 4), under ``lru_tail_first`` C's (B pinned A's first: 4
+ 2 = 6 -> 4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prefix_helpers import hashed_instance

from lsched.cluster import Cluster, Pool
from lsched.evaluator import SimulationResult, simulate
from lsched.instance import Instance
from lsched.profile import load_profile
from lsched.validator import ValidationReport, validate_cluster, validate_schedule


def _abc() -> Instance:
    """A at 0, C at 2, B at 5 (module docstring)."""
    hashes = [[1, 2], [9], [1, 2]]
    return hashed_instance(
        np.array([0.0, 2.0, 5.0]),
        np.array([4, 2, 4]),
        np.array([1, 1, 2]),
        hashes,
        2,
    )


def _run(kv_tokens: int, cache: str) -> tuple[SimulationResult, Cluster]:
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=kv_tokens)
    result = simulate(_abc(), profile, "fcfs", prefix_cache=cache, log=True)
    return result, Cluster((Pool(profile, "fcfs", prefix_cache=cache),))


def _check(
    result: SimulationResult, cache: str, **forged: pd.DataFrame
) -> ValidationReport:
    """Validate ``result``'s log with some tables replaced by ``forged`` ones."""
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=5)
    pool = Pool(profile, "fcfs", prefix_cache=cache)
    tables = {
        "runs": result.runs,
        "members": result.members,
        "preemptions": result.preemptions,
        "evictions": result.evictions,
    } | forged
    return validate_schedule(
        _abc(), profile, replicas=1, prefix_cache=pool.prefix_cache, **tables
    )


def test_hits_evictions_and_both_rules_by_hand() -> None:
    """Roomy KV: B takes 3 cached tokens, nothing is evicted. KV of 5: one block
    is evicted before C's run; under lru B then computes its whole prompt, under
    lru_tail_first it takes 2 cached tokens (module docstring). Every log passes."""
    roomy, cluster = _run(20, "lru")
    assert roomy.requests["cached_tokens"].tolist() == [0, 0, 3]
    assert roomy.evictions is not None and roomy.evictions.empty
    validate_cluster(_abc(), cluster, roomy).raise_if_invalid()
    for cache, taken, again in (("lru", 0, 2), ("lru_tail_first", 2, 1)):
        tight, cluster = _run(5, cache)
        assert tight.requests["cached_tokens"].tolist() == [0, 0, taken], cache
        assert tight.evictions is not None  # before C's run, before B's
        assert tight.evictions.values.tolist() == [[1, 1], [2, again]], cache
        validate_cluster(_abc(), cluster, tight).raise_if_invalid()
        # B's prefill chunk is what it did not find cached
        prefill = tight.members[tight.members["request"] == 2].iloc[0]
        assert (prefill["processed_before"], prefill["tokens"]) == (taken, 4 - taken)


def test_a_hit_on_an_evicted_block_fails() -> None:
    """The roomy log with a forged eviction of both of A's blocks before C's run:
    B's 3 cached tokens were computed by A, but are no longer resident."""
    result, _ = _run(20, "lru")
    forged = pd.DataFrame({"run": [1], "blocks": [2]})
    report = _check(result, "lru", evictions=forged)
    messages = [str(v) for v in report.violations if v.rule == "prefix-cache"]
    assert messages == [
        "[prefix-cache] (run 2, request 2) takes 3 cached tokens at admission; 0 "
        "leading hash blocks of 2 tokens are resident: at most 0"
    ]


def test_an_eviction_left_out_breaks_the_kv_rule() -> None:
    """The tight lru log without its evictions: A's two evictable blocks (4 KV
    blocks) stay beside C's 2 tokens in a KV of 5 (run 1); with C's block beside
    B's 4 tokens (run 2: 4 + 6); then B has computed A's blocks again and pins
    them, C's stays beside its 5 tokens (run 3: 5 + 2)."""
    result, _ = _run(5, "lru")
    none = pd.DataFrame({"run": np.zeros(0, np.int64), "blocks": np.zeros(0, np.int64)})
    report = _check(result, "lru", evictions=none)
    kv = [str(v) for v in report.violations if v.rule == "kv-capacity"]
    assert len(kv) == 3
    assert kv[0] == (
        "[kv-capacity] (run 1) holds 6 KV blocks (4 pinned or reserved) after its "
        "last iteration; capacity 5 blocks of 1 tokens"
    )
    assert "(run 2) holds 10 KV blocks (6 " in kv[1]
    assert "(run 3) holds 7 KV blocks (2 " in kv[2]


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [
        (2, []),  # one whole block: a hit cut to fit
        (1, ["takes 1 cached tokens; expected its offer of 3 or whole hash blocks "
             "of 2 tokens"]),
        (4, ["takes 4 cached tokens at admission; 2 leading hash blocks of 2 tokens "
             "are resident: at most 3"]),
    ],
)  # fmt: skip
def test_a_claimed_hit_is_the_offer_or_whole_blocks(
    claimed: int, expected: list[str]
) -> None:
    """B's admission in the roomy log forged to claim other cached tokens (its
    chunk what is left of its prompt): 2, a whole block, is a hit cut to fit; 1
    is neither the offer of 3 nor whole blocks; 4 is more than the offer."""
    result, _ = _run(20, "lru")
    members = result.members.copy()
    row = members.index[members["request"] == 2][0]
    members.loc[row, "processed_before"] = claimed
    members.loc[row, "tokens"] = max(4 - claimed, 1)
    report = _check(result, "lru", members=members)
    assert [v.message for v in report.violations if v.rule == "prefix-cache"] == (
        expected
    )
