"""The prefix cache alone (no engine): hand-derived cases, and Mooncake's synthetic
trace replayed through one cache against an independent replay and the figures
of the issue (65.1 % unbounded, 31.5 % at 3,000,000 tokens, 14.2 % at 1,000,000).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsched.errors import InputError
from lsched.instance import Instance
from lsched.prefix import PrefixCache, replay, skipped_tokens
from lsched.traces import read_trace

DATA = Path(__file__).resolve().parent / "data" / "traces"
MOONCAKE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "traces"
    / "mooncake_synthetic.jsonl"
)


def _filled(cache: PrefixCache, *requests: list[int]) -> PrefixCache:
    """Each request's blocks acquired and released at once, in order."""
    for hashes in requests:
        assert cache.acquire(hashes) == len(hashes)
        cache.release(hashes)
    return cache


# -- hand-derived cases ---------------------------------------------------------


def test_lookup_is_the_leading_run_of_cached_hashes() -> None:
    cache = _filled(PrefixCache(None, 4), [1, 2, 3])
    assert cache.lookup([1, 2, 4, 3]) == 2  # 3 is cached but follows a miss
    assert cache.lookup([9, 1]) == 0
    assert cache.lookup([1, 2, 3]) == 3
    assert cache.lookup([]) == 0
    assert len(cache) == 3 and cache.evictable_blocks == 3


def test_skipped_tokens_leave_one_token_to_compute() -> None:
    assert skipped_tokens(2, 512, 1030) == 1024
    assert skipped_tokens(3, 512, 1030) == 1029  # a full hit still computes one
    assert skipped_tokens(1, 512, 512) == 511
    assert skipped_tokens(0, 512, 7) == 0


@pytest.mark.parametrize(
    ("rule", "kept", "gone"),
    # [1, 2] then [3] released into 3 blocks; [4] evicts one of [1, 2]: the head
    # under plain LRU (touched first), the tail under vLLM's tail-first order
    [("lru", [2, 3, 4], [1]), ("lru_tail_first", [1, 3, 4], [2])],
)
def test_eviction_order_within_a_request(
    rule: str, kept: list[int], gone: list[int]
) -> None:
    cache = _filled(PrefixCache(7, 2, rule), [1, 2], [3], [4])  # 7 // 2 = 3 blocks
    assert cache.capacity_blocks == 3
    assert all(b in cache for b in kept) and not any(b in cache for b in gone)


def test_pinned_blocks_are_never_evicted() -> None:
    cache = PrefixCache(6, 2)  # 3 blocks
    assert cache.acquire([1, 2, 3]) == 3
    assert cache.acquire([4]) == 0  # full of pinned blocks: nothing inserted
    assert 4 not in cache and cache.pinned_blocks == 3
    assert cache.evict(5) == 0
    cache.release([1, 2, 3])
    assert cache.acquire([4]) == 1  # now 1, the least recently used, goes
    assert [b for b in (1, 2, 3, 4) if b in cache] == [2, 3, 4]


def test_partial_acquire_pins_a_prefix_and_releases_the_rest() -> None:
    cache = _filled(PrefixCache(6, 2), [7])  # 3 blocks; 7 evictable
    cache.acquire([1, 2])
    # 7 is evicted for 3, then the cache is full of pinned blocks
    assert cache.acquire([3, 4]) == 1
    assert (3 in cache, 4 in cache, 7 in cache) == (True, False, False)
    cache.release([3])
    assert cache.references(3) == 0 and cache.evictable_blocks == 1


def test_a_request_never_evicts_its_own_cached_blocks() -> None:
    # eviction order 2, 3, 1; [4, 2] pins 2 first, so 4 evicts 3, not 2
    cache = _filled(PrefixCache(6, 2), [2, 3], [1])
    assert cache.acquire([4, 2]) == 2
    assert [b for b in (1, 2, 3, 4) if b in cache] == [1, 2, 4]


def test_reference_counts() -> None:
    cache = PrefixCache(None, 16)
    cache.acquire([5])
    cache.acquire([5, 6])
    assert cache.references(5) == 2 and cache.pinned_blocks == 2
    cache.release([5, 6])
    assert cache.references(5) == 1 and cache.evictable_blocks == 1  # 6
    cache.release([5])
    assert cache.pinned_blocks == 0 and cache.evictable_blocks == 2
    with pytest.raises(ValueError, match="not pinned"):
        cache.release([5])
    assert cache.evict(1) == 1 and 6 not in cache and 5 in cache  # 6 freed first


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((None, 16, "fifo"), "eviction"),
        ((None, 16, None), "eviction"),
        ((100, 512), "capacity_tokens"),  # less than one block
        ((0, 16), "capacity_tokens"),
        ((True, 16), "capacity_tokens"),
        ((1000, 0), "block_tokens"),
        ((1000, 2.0), "block_tokens"),
    ],
)
def test_bad_arguments(args: tuple[object, ...], field: str) -> None:
    with pytest.raises(InputError) as info:
        PrefixCache(*args)  # type: ignore[arg-type]
    assert info.value.field == field and len(str(info.value).splitlines()) == 1


def test_replay_of_the_hand_made_mooncake_sample() -> None:
    # [0, 1, 2] 1030 tokens, [0, 3] 600, [4] 10, [5] 512: only the second request
    # hits, its first block: min(1 * 512, 600 - 1) = 512 of 2152 prompt tokens
    instance, _ = read_trace(DATA / "mooncake_sample.jsonl")
    hits = replay(instance, PrefixCache(None, 512))
    assert (hits.hit_tokens, hits.prompt_tokens) == (512, 2152)
    with pytest.raises(InputError, match="cache's 16") as info:
        replay(instance, PrefixCache(None, 16))
    assert info.value.field == "prefix_block_tokens"
    with pytest.raises(InputError) as info:
        replay(Instance([0.0], [3], [1]), PrefixCache(None, 16))
    assert info.value.field == "prefix_hashes"


# -- Mooncake's synthetic trace ---------------------------------------------------


def _independent_hit_tokens(
    records: list[dict[str, object]], capacity_blocks: int | None
) -> tuple[int, int]:
    """Hit and prompt tokens of the replay, written apart from lsched.prefix.

    A plain dict in recency order (re-inserting a key moves it last): each
    request counts its leading run ``h`` of cached hashes, ``min(512 h, s - 1)``
    hit tokens, touches its hashes first to last, then the least recent are
    dropped down to the capacity.
    """
    recency: dict[int, None] = {}
    hit = total = 0
    for record in records:
        hashes, s = record["hash_ids"], record["input_length"]
        assert isinstance(hashes, list) and isinstance(s, int)
        h = 0
        while h < len(hashes) and hashes[h] in recency:
            h += 1
        hit += min(512 * h, s - 1)
        total += s
        for block in hashes:
            recency.pop(block, None)
            recency[block] = None
        while capacity_blocks is not None and len(recency) > capacity_blocks:
            del recency[next(iter(recency))]
    return hit, total


@pytest.fixture(scope="module")
def mooncake() -> tuple[list[dict[str, object]], Instance]:
    if not MOONCAKE.exists():
        pytest.skip(f"{MOONCAKE} is absent (the shared folder ../shared is not here)")
    with open(MOONCAKE, encoding="utf-8") as stream:
        records = [json.loads(line) for line in stream if line.strip()]
    return records, read_trace(MOONCAKE)[0]


@pytest.mark.parametrize(
    ("capacity_tokens", "percent"),
    [(None, 65.1), (3_000_000, 31.5), (1_000_000, 14.2)],
)
def test_mooncake_hit_ratio_in_arrival_order(
    mooncake: tuple[list[dict[str, object]], Instance],
    capacity_tokens: int | None,
    percent: float,
) -> None:
    records, instance = mooncake
    hits = replay(instance, PrefixCache(capacity_tokens, 512))
    blocks = None if capacity_tokens is None else capacity_tokens // 512
    assert (hits.hit_tokens, hits.prompt_tokens) == _independent_hit_tokens(
        records, blocks
    )
    assert round(100 * hits.ratio, 1) == percent
