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

A cache with a host tier (``host_capacity_tokens``, rule 5 of
:mod:`lsched.evaluator.prefix`) adds per replica a host cache of
``host_capacity_tokens // B`` blocks that nothing pins (a *write* makes a block
most recently used, inserting it, and evicting the least recently used when
full):

- in step 2, ``h`` is the leading run resident in the GPU cache or the host
  cache; of the admission's first ``ceil(x / B)`` blocks those not resident on
  the GPU must be resident in the host cache (``prefix-cache``: so a hit never
  outlives the host capacity), are written there in prefix order, and are
  copied: their tokens within ``x``, ``y``, take ``y * kv_bytes_per_token /
  h2d_bytes_per_s`` seconds, added to the run's duration (``run-duration``: the
  copies run before the forward pass, so the prefill starts after they end);
- in step 5, before the GPU pins, each prefill member writes the blocks it
  completed past those written since its admission (its cached blocks);
- metrics ``host_hit_tokens`` (``sum y``) and ``host_copy_s`` (their seconds).
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
from lsched.validator.report import _PREFILL, FloatArray, IntArray, _Collector
from lsched.validator.schema import _integral

#: The metrics a run with a prefix cache adds (lsched.evaluator.result).
PREFIX_METRICS: tuple[str, ...] = ("prefix_hit_ratio", "prefill_tokens_saved")


@dataclass(frozen=True)
class _PrefixKV:
    """What the replay gives the other checks: per run position the KV blocks
    the evictable blocks take during it and the seconds of its host-tier
    copies, and the metrics."""

    charged: IntArray
    copy_s: FloatArray
    metrics: dict[str, float]


class _Cache:
    """One replica's cache as the log rebuilds it (module docstring)."""

    def __init__(self, capacity: int | None, tail_first: bool) -> None:
        self.capacity = capacity
        self.tail_first = tail_first
        self.refs: dict[int, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict()  # least recent first

    def __contains__(self, h: int) -> bool:
        return h in self.refs or h in self.free

    def leading(self, hashes: list[int]) -> int:
        for k, h in enumerate(hashes):
            if h not in self.refs and h not in self.free:
                return k
        return len(hashes)

    def write(self, hashes: list[int]) -> None:
        """Each of ``hashes`` most recently used, inserted if missing (a host
        cache, which nothing pins)."""
        self.unpin(hashes[: self.pin(hashes)])

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
        host = getattr(spec, "host_capacity_tokens", None)
        self.host_capacity = None if host is None else host // self.block
        self.hosts: dict[int, _Cache] = {}
        self.written = [0] * len(instance)
        self.s_per_token = (profile.kv_bytes_per_token, profile.host.h2d_bytes_per_s)
        self.copy_s = np.zeros(len(log.run_ids))
        self.copied = 0

    def cache(self, replica: int) -> _Cache:
        if replica not in self.caches:
            self.caches[replica] = _Cache(self.capacity, self.tail_first)
            if self.host_capacity is not None:
                self.hosts[replica] = _Cache(self.host_capacity, self.tail_first)
        return self.caches[replica]

    def release(self, cache: _Cache, i: int) -> None:
        cache.unpin(self.hashes[i][: self.pins[i]])
        self.pins[i], self.stopped[i], self.written[i] = 0, False, 0

    def _leading(self, cache: _Cache, host: _Cache | None, hashes: list[int]) -> int:
        """The leading run of ``hashes`` resident on the GPU or, with a host
        tier, in the host cache."""
        if host is None:
            return cache.leading(hashes)
        for k, h in enumerate(hashes):
            if h not in cache and h not in host:
                return k
        return len(hashes)

    def _copy(self, caches: tuple[_Cache, _Cache], i: int, k: int, x: int,
              run: int) -> float:  # fmt: skip
        """The seconds of the host-tier copy of the admission of request ``i``
        taking ``x`` tokens in ``k`` blocks in run ``run`` (module docstring)."""
        cache, host = caches
        hashes, big = self.hashes[i][:k], self.block
        missing = [j for j, h in enumerate(hashes) if h not in cache]
        absent = [hashes[j] for j in missing if hashes[j] not in host]
        if absent:
            self.out.add(
                "prefix-cache",
                f"copies hash blocks {absent} from the host tier, where they are "
                "not resident",
                run=run,
                request=i,
            )
        host.write([hashes[j] for j in missing])
        y = sum(min((j + 1) * big, x) - j * big for j in missing)
        self.copied += y
        self.written[i] = k
        return y * self.s_per_token[0] / self.s_per_token[1]

    def admit(self, cache: _Cache, row: int, run: int) -> None:
        """Rule 2 for the admission at member row ``row``."""
        i = int(self.log.m_req[row])
        x, target = int(self.replay.hits[row]), int(self.replay.admits[row])
        host = self.hosts.get(int(self.log.replica[self.log.m_pos[row]]))
        h = self._leading(cache, host, self.hashes[i])
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
            k = -(-min(x, want) // self.block)
            if host is not None:
                seconds = self._copy((cache, host), i, k, min(x, want), run)
                self.copy_s[self.log.m_pos[row]] += seconds
            self.pins[i] = cache.pin(self.hashes[i][:k])

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
        hashes, processed = self.hashes[i], int(self.replay.after[row])
        done = len(hashes)
        if processed < self.prompt[i]:
            done = min(done, processed // self.block)
        host = self.hosts.get(int(self.log.replica[self.log.m_pos[row]]))
        if host is not None and done > self.written[i]:
            host.write(hashes[self.written[i] : done])
            self.written[i] = done
        if self.stopped[i]:
            return
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
    if walk.host_capacity is not None:
        metrics["host_hit_tokens"] = float(walk.copied)
        metrics["host_copy_s"] = float(walk.copy_s.sum())
    return _PrefixKV(charged, walk.copy_s, metrics)
