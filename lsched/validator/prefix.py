"""The ``prefix-cache`` rule: cached tokens come from blocks an earlier request
computed and that were still resident, and the evictable blocks count in
``kv-capacity``.

Restated from the docstrings of :mod:`lsched.evaluator.prefix` (rules 1-4) and
:mod:`lsched.prefix.cache` (the cache's operations and eviction rules), with the
validator's own cache: nothing is shared with either.

The log of a run with a prefix cache says, for each admission, the cached tokens
``x`` it took (the ``processed_before`` of its first prefill member; the walk of
:mod:`lsched.validator.replay` takes them as the KV it holds from that run), and
in its ``evictions`` table (run, blocks) the unreferenced blocks evicted to make
room for each run. The validator replays each replica's cache from the log, in
run order:

1. before a run, its preempted requests release their blocks (table order);
2. each admission in the run (member order) must take ``x <= want = min(h B,
   s_i, T - 1)``, ``h`` the leading run of its hashes resident now (the blocks
   were computed by an earlier request and not evicted since), and ``x`` either
   ``want`` or whole hash blocks; it pins its first ``ceil(x / B)`` blocks;
3. the run's logged evictions remove that many evictable blocks, least recently
   used first; no more than there are;
4. during the run the evictable blocks take ``g = ceil(B / b)`` KV blocks each,
   counted against the capacity in ``kv-capacity`` (not in ``kv_tokens``);
5. after the run each prefill member pins the hash blocks it completed (the
   first ``n_i`` once ``processed >= s_i``, else ``floor(processed / B)``):
   resident ones are pinned, missing ones inserted (a cache with a capacity of
   its own evicts its least recently used evictable block when full, and stops
   at a full cache of pinned blocks: that request caches nothing more until it
   is released; the blocks the first pass took back go to the evictable end);
   then the run's completing requests release theirs, in request order.

A block is pinned while a request that pinned it holds it; released, it becomes
evictable, most recently used (``lru``: a request's blocks in prefix order;
``lru_tail_first``: reversed). Metrics: ``prefill_tokens_saved`` (``sum x``) and
``prefix_hit_ratio`` (over ``sum T`` of the admissions); records:
``cached_tokens`` per request.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lsched.instance import Instance
from lsched.profile import DeploymentProfile
from lsched.validator.replay import _Log, _Replay
from lsched.validator.report import _PREFILL, IntArray, _Collector
from lsched.validator.schema import _integral

#: The metrics a run with a prefix cache adds (lsched.evaluator.result).
PREFIX_METRICS: tuple[str, ...] = ("prefix_hit_ratio", "prefill_tokens_saved")


@dataclass(frozen=True)
class _PrefixKV:
    """What the replay gives the other checks: per run position the KV blocks
    the evictable blocks take during it, and the metrics."""

    charged: IntArray
    metrics: dict[str, float]


class _Cache:
    """One replica's cache as the log rebuilds it (module docstring)."""

    def __init__(self, capacity: int | None, tail_first: bool) -> None:
        self.capacity = capacity
        self.tail_first = tail_first
        self.refs: dict[int, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict()  # least recent first

    def leading(self, hashes: list[int]) -> int:
        for k, h in enumerate(hashes):
            if h not in self.refs and h not in self.free:
                return k
        return len(hashes)

    def pin(self, hashes: list[int]) -> int:
        for h in hashes:
            if h in self.free:
                del self.free[h]
                self.refs[h] = 0
        for k, h in enumerate(hashes):
            if h not in self.refs:
                if self.capacity is not None and (
                    len(self.refs) + len(self.free) >= self.capacity
                ):
                    if not self.free:
                        for rest in hashes[k:]:
                            if self.refs.get(rest) == 0:
                                del self.refs[rest]
                                self.free[rest] = None
                        return k
                    self.free.popitem(last=False)
                self.refs[h] = 0
            self.refs[h] += 1
        return len(hashes)

    def unpin(self, hashes: list[int]) -> None:
        for h in reversed(hashes) if self.tail_first else hashes:
            self.refs[h] -= 1
            if not self.refs[h]:
                del self.refs[h]
                self.free[h] = None


def _evictions_by_position(
    evictions: pd.DataFrame | None, log: _Log, out: _Collector
) -> dict[int, int]:
    """Blocks evicted before each run position (``schema`` for a bad table)."""
    if evictions is None or not len(evictions):
        return {}
    if not {"run", "blocks"} <= set(evictions.columns) or not (
        _integral(evictions["run"]) and _integral(evictions["blocks"])
    ):
        out.add("schema", "evictions: expected integer columns run, blocks")
        return {}
    pos = log.runs.index.get_indexer(evictions["run"])
    by_pos: dict[int, int] = defaultdict(int)
    for p, k, run in zip(pos.tolist(), evictions["blocks"].tolist(),
                         evictions["run"].tolist(), strict=True):  # fmt: skip
        if p < 0 or k < 0:
            out.add("schema", f"evictions: run {run} with {k} blocks is not valid")
            continue
        by_pos[p] += int(k)
    return by_pos


class _PrefixReplay:
    """The replay of every replica's cache, run position by position."""

    def __init__(self, instance: Instance, profile: DeploymentProfile, log: _Log,
                 replay: _Replay, spec: Any, out: _Collector) -> None:  # fmt: skip
        self.log, self.replay, self.out = log, replay, out
        self.block = int(
            instance.params.get("prefix_block_tokens", profile.block_tokens)
        )
        self.charge = -(-self.block // profile.block_tokens)
        capacity = spec.capacity_tokens
        self.capacity = None if capacity is None else capacity // self.block
        self.tail_first = spec.eviction == "lru_tail_first"
        offsets, values = instance.prefix_hash_offsets, instance.prefix_hash_values
        flat = [] if values is None else values.tolist()
        bounds = [0] * (len(instance) + 1) if offsets is None else offsets.tolist()
        self.hashes = [flat[bounds[i] : bounds[i + 1]] for i in range(len(instance))]
        self.prompt = instance.prompt_tokens.tolist()
        self.pins = [0] * len(instance)
        self.stopped = [False] * len(instance)
        self.caches: dict[int, _Cache] = {}

    def cache(self, replica: int) -> _Cache:
        if replica not in self.caches:
            self.caches[replica] = _Cache(self.capacity, self.tail_first)
        return self.caches[replica]

    def release(self, cache: _Cache, i: int) -> None:
        cache.unpin(self.hashes[i][: self.pins[i]])
        self.pins[i], self.stopped[i] = 0, False

    def admit(self, cache: _Cache, row: int, run: int) -> None:
        """Rule 2 for the admission at member row ``row``."""
        i = int(self.log.m_req[row])
        x, target = int(self.replay.hits[row]), int(self.replay.admits[row])
        h = cache.leading(self.hashes[i])
        want = min(h * self.block, self.prompt[i], target - 1)
        if x > want:
            self.out.add(
                "prefix-cache",
                f"takes {x} cached tokens at admission; {h} leading hash blocks "
                f"of {self.block} tokens are resident: at most {want}",
                run=run,
                request=i,
            )
        elif x != want and x % self.block:
            self.out.add(
                "prefix-cache",
                f"takes {x} cached tokens; expected its offer of {want} or whole "
                f"hash blocks of {self.block} tokens",
                run=run,
                request=i,
            )
        if x > 0:
            self.pins[i] = cache.pin(self.hashes[i][: -(-min(x, want) // self.block)])

    def evict(self, cache: _Cache, blocks: int, run: int) -> None:
        """Rule 3: the run's logged evictions."""
        if blocks > len(cache.free):
            self.out.add(
                "prefix-cache",
                f"evicts {blocks} blocks; {len(cache.free)} are evictable",
                run=run,
            )
        for _ in range(min(blocks, len(cache.free))):
            cache.free.popitem(last=False)

    def computed(self, cache: _Cache, row: int) -> None:
        """Rule 5: the blocks a prefill member completed."""
        i = int(self.log.m_req[row])
        if self.stopped[i]:
            return
        hashes, processed = self.hashes[i], int(self.replay.after[row])
        done = len(hashes)
        if processed < self.prompt[i]:
            done = min(done, processed // self.block)
        if done > self.pins[i]:
            got = cache.pin(hashes[self.pins[i] : done])
            self.stopped[i] = got < done - self.pins[i]
            self.pins[i] += got


def _check_prefix(
    instance: Instance,
    profile: DeploymentProfile,
    log: _Log,
    replay: _Replay,
    spec: Any,
    evictions: pd.DataFrame | None,
    out: _Collector,
) -> _PrefixKV:
    """Replay the caches (module docstring); the evictable blocks' KV per run
    and the cache's metrics. ``spec``: the pool's cache (``eviction``,
    ``capacity_tokens``)."""
    walk = _PrefixReplay(instance, profile, log, replay, spec, out)
    evicted = _evictions_by_position(evictions, log, out)
    members: dict[int, list[int]] = defaultdict(list)
    for row, p in enumerate(log.m_pos.tolist()):
        members[p].append(row)
    preempted: dict[int, list[int]] = defaultdict(list)
    for row, p in enumerate(log.p_pos.tolist()):
        preempted[p].append(row)
    charged = np.zeros(len(log.run_ids), dtype=np.int64)
    for p, run in enumerate(log.run_ids):
        cache = walk.cache(int(log.replica[p]))
        for row in preempted[p]:
            walk.release(cache, int(log.p_req[row]))
        rows = members[p]
        for row in rows:
            if replay.admits[row] > 0:
                walk.admit(cache, row, run)
        walk.evict(cache, evicted.get(p, 0), run)
        charged[p] = walk.charge * len(cache.free)
        for row in rows:
            if log.m_kind[row] == _PREFILL:
                walk.computed(cache, row)
        done = sorted(int(log.m_req[row]) for row in rows if replay.completes[row])
        for i in done:
            walk.release(cache, i)
    saved, needed = int(replay.hits.sum()), int(replay.admits.sum())
    metrics = {
        "prefix_hit_ratio": saved / needed if needed else 0.0,
        "prefill_tokens_saved": float(saved),
    }
    return _PrefixKV(charged, metrics)
