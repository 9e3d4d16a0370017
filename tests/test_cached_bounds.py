"""Bounds that see a prefix cache: hand-derived computations, equal to the
uncached bounds without sharing, and below every serial schedule with an
unbounded cache (each one replayed here, apart from lsched) on small instances
with shared prefixes, where the uncached bounds are not."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from lsched.errors import InputError
from lsched.formulations.bounds import registry
from lsched.formulations.bounds.cached import (
    cached_computations,
    cached_work_bounds,
    chain_start,
    first_prefill,
)
from lsched.formulations.bounds.registry import Cache, bound_spec
from lsched.formulations.bounds.suite import best_bound, bound_report
from lsched.formulations.bounds.work import work_bounds
from lsched.instance import Instance
from lsched.prefix import PrefixCache, replay
from lsched.profile import DeploymentProfile, load_profile
from lsched.traces import read_trace

PROFILES = ("llama2-70b-a100-tp4", "opt-13b-a100-tp1-distserve")
MOONCAKE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "traces"
    / "mooncake_synthetic.jsonl"
)


def _instance(arrival, prompt, output, hashes, block) -> Instance:
    return Instance(
        arrival_s=np.asarray(arrival, dtype=float),
        prompt_tokens=np.asarray(prompt),
        output_tokens=np.asarray(output),
        prefix_hash_offsets=np.cumsum([0, *map(len, hashes)]),
        prefix_hash_values=np.array([h for row in hashes for h in row], dtype=np.int64),
        params={"prefix_block_tokens": block},
    )


def test_computations_by_hand() -> None:
    # blocks of 4: r0 [1 | 2 | 3] over 10 tokens, r1 [1 | 5] over 7, r2 [1 | 7] over 5
    instance = _instance(
        [0, 0, 1], [10, 7, 5], [3, 2, 4], [[1, 2, 3], [1, 5], [1, 7]], 4
    )
    tokens, sums = cached_computations(instance, 4)
    # r0: hash 1 at 1..4, hash 2 at 5..8, hash 3 (holds r0's final token) at 9,
    # final 10; r1: hash 5 at 5, 6, final 7; r2: hash 7 is its final token only
    assert tokens.tolist() == [10, 3, 1]
    assert sums.tolist() == [10 + 26 + 9 + 10, 5 + 6 + 7, 5]
    # first prefills: each finds at most hash 1 (shared) cached: 4 tokens
    computed, position_sums = first_prefill(instance, 4)
    assert computed.tolist() == [6, 3, 1]
    assert position_sums.tolist() == [sum(range(5, 11)), 18, 5]
    # every chain starts with hash 1, first held by r0 (arrival 0)
    assert chain_start(instance, 4).tolist() == [0.0, 0.0, 0.0]


def test_hashes_past_the_prompt_and_missing_ones() -> None:
    # r0: 5 tokens, 3 hashes of 2 tokens, the third covers nothing; r1: 6 tokens
    # and one hash (tokens 3..6 unhashed); the shared hash 9 covers 1..2
    instance = _instance([0, 0], [5, 6], [1, 1], [[9, 8, 7], [9]], 2)
    tokens, sums = cached_computations(instance, 2)
    # r0: 9 at 1, 2; 8 at 3, 4; final 5 (7 ignored); r1: 3, 4, 5 unhashed, final 6
    assert tokens.tolist() == [5, 4]
    assert sums.tolist() == [15, 18]


@pytest.mark.parametrize("objective", ["latency", "makespan"])
def test_without_shared_hashes_the_bounds_are_the_uncached_ones(
    objective: str,
) -> None:
    rng = np.random.default_rng(5)
    n, block = 6, 8
    prompt = rng.integers(1, 60, n)
    counts = -(-prompt // block)
    hashes = np.split(np.arange(int(counts.sum())), np.cumsum(counts)[:-1])
    instance = _instance(
        np.sort(rng.uniform(0, 0.2, n)), prompt, rng.integers(1, 5, n), hashes, block
    )
    profile = load_profile(PROFILES[0])
    cached = cached_work_bounds(instance, profile, objective, replicas=2)
    plain = work_bounds(instance, profile, objective, replicas=2)
    assert cached["cached_work"] == pytest.approx(plain["work"], rel=1e-12)
    if objective == "latency":
        assert cached["cached_prefill_queue"] == pytest.approx(
            plain["prefill_queue"], rel=1e-12
        )


# -- below every serial schedule with an unbounded cache ------------------------


def _serial_objectives(
    instance: Instance, profile: DeploymentProfile, order: tuple[int, ...]
) -> tuple[float, float]:
    """Latency and makespan of serving ``order`` one request at a time, with an
    unbounded cache: ``h`` leading cached hashes, ``x = min(h B, s - 1)``, one
    prefill iteration of ``c = s - x`` tokens (``Q = c (x + c)``), then its
    ``o - 1`` decode steps alone (``K = s + j - 1``)."""
    block = instance.params["prefix_block_tokens"]
    cached: set[int] = set()
    t, completion = 0.0, {}
    for i in order:
        a, s = float(instance.arrival_s[i]), int(instance.prompt_tokens[i])
        hashes = instance.prefix_hashes(i).tolist()
        h = 0
        while h < len(hashes) and hashes[h] in cached:
            h += 1
        x = min(h * block, s - 1)
        c = s - x
        t = max(t, a) + float(profile.iteration_time_s([1, c, c * (x + c), 0, 0, 1]))
        cached.update(hashes)
        for j in range(2, int(instance.output_tokens[i]) + 1):
            t += float(profile.iteration_time_s([1, 0, 0, 1, s + j - 1, 0]))
        completion[i] = t
    done = np.array([completion[i] for i in range(len(instance))])
    latency = float((done - instance.arrival_s).sum())
    return latency, float(done.max() - instance.arrival_s.min())


def _shared_prefix_instance(rng: np.random.Generator, block: int) -> Instance:
    """Requests that share a leading run of blocks with an earlier one."""
    n = int(rng.integers(3, 6))
    rows: list[list[int]] = []
    prompts = []
    fresh = itertools.count(100)
    for _ in range(n):
        blocks = int(rng.integers(1, 6))
        shared: list[int] = []
        if rows and rng.random() < 0.8:
            parent = rows[int(rng.integers(len(rows)))]
            shared = parent[: int(rng.integers(1, len(parent) + 1))]
        row = shared + [next(fresh) for _ in range(blocks - len(shared))]
        rows.append(row)
        last = block if rng.random() < 0.5 else int(rng.integers(1, block + 1))
        prompts.append((len(row) - 1) * block + last)
    arrival = np.sort(rng.uniform(0, 0.3, n))
    return _instance(arrival, prompts, rng.integers(1, 4, n), rows, block)


@pytest.mark.parametrize("seed", range(8))
def test_below_every_serial_schedule_with_a_cache(seed: int) -> None:
    rng = np.random.default_rng(seed)
    instance = _shared_prefix_instance(rng, int(rng.choice([16, 64])))
    profile = load_profile(PROFILES[seed % 2])
    schedules = [
        _serial_objectives(instance, profile, order)
        for order in itertools.permutations(range(len(instance)))
    ]
    for k, objective in enumerate(("latency", "makespan")):
        best = min(values[k] for values in schedules)
        found = cached_work_bounds(instance, profile, objective, replicas=1)
        assert max(found.values()) <= best * (1 + 1e-9), (objective, found, best)


def test_the_uncached_bounds_do_not_hold_with_a_cache() -> None:
    # two 2048-token prompts, the same 4 blocks of 512, both at 0: with a cache
    # the second computes one token, which seconds.work does not allow for
    instance = _instance([0, 0], [2048, 2048], [1, 1], [[1, 2, 3, 4]] * 2, 512)
    profile = load_profile(PROFILES[0])
    latency, _ = _serial_objectives(instance, profile, (0, 1))
    assert work_bounds(instance, profile, "latency")["work"] > latency
    cached = cached_work_bounds(instance, profile, "latency")["cached_work"]
    # the second's first token waits for the shared prefix (the chain), so the
    # bound is within 10 % of this schedule
    assert 0.9 * latency <= cached <= latency


def test_mooncake_computations_are_what_an_unbounded_cache_misses() -> None:
    """In arrival order an unbounded cache computes each distinct block once, at
    its earliest request, plus each fully cached request's final token: exactly
    the computations the bound counts on Mooncake's consistent hashes."""
    if not MOONCAKE.exists():
        pytest.skip(f"{MOONCAKE} is absent (the shared folder ../shared is not here)")
    instance, _ = read_trace(MOONCAKE)
    tokens, _ = cached_computations(instance, 512)
    hits = replay(instance, PrefixCache(None, 512))
    assert int(tokens.sum()) == hits.prompt_tokens - hits.hit_tokens


# -- the table ---------------------------------------------------------------------


def test_registered_with_any_cache_and_the_others_without() -> None:
    cached = {"seconds.cached_work", "seconds.cached_prefill_queue"}
    for spec in registry.BOUNDS:
        expected = Cache.ANY if spec.name in cached else Cache.NONE
        assert spec.schedules.cache is expected, spec.name
    assert bound_spec("seconds.cached_prefill_queue").objectives == {"latency"}
    assert Cache.ANY.covers(Cache.NONE) and not Cache.NONE.covers(Cache.ANY)


def test_report_with_and_without_hashes() -> None:
    profile = load_profile(PROFILES[0])
    instance = _instance([0, 0], [2048, 2048], [1, 1], [[1, 2, 3, 4]] * 2, 512)
    report = bound_report(instance, profile, "latency", lp_time_limit=0.0)
    found = {b.name: b for b in report.bounds}
    assert found["seconds.cached_work"].cache == "any"
    assert found["seconds.work"].cache == "none"
    with_cache = best_bound(report.bounds, "any", cache="any")
    assert with_cache == max(
        found["seconds.cached_work"].value, found["seconds.cached_prefill_queue"].value
    )
    assert best_bound(report.bounds, "any") >= found["seconds.work"].value
    with pytest.raises(InputError) as info:
        best_bound(report.bounds, "any", cache="lru")
    assert info.value.field == "cache"
    plain = Instance([0.0, 0.0], [3, 4], [1, 1])
    skipped = {s.name: s for s in bound_report(plain, profile, "latency").skipped}
    assert "no prefix hashes" in skipped["seconds.cached_work"].detail
    with pytest.raises(InputError) as info:
        cached_work_bounds(plain, profile)
    assert info.value.field == "prefix_hashes"
