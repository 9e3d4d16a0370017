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
  cache (so a hit never outlives the host capacity); of the admission's first
  ``ceil(x / B)`` blocks those not resident on the GPU, all in the host cache
  since ``x <= h B``, are written there in prefix order, and are copied:
  their tokens within ``x``, ``y``, take ``y * kv_bytes_per_token /
  h2d_bytes_per_s`` seconds, added to the run's duration (``run-duration``:
  the copies run before the forward pass, so the prefill starts after they
  end);
- in step 5, before the GPU pins, each prefill member writes the blocks it
  completed past those written since its admission (its cached blocks);
- metrics ``host_hit_tokens`` (``sum y``) and ``host_copy_s`` (their seconds).

A KV pool (``pool_capacity_tokens``, rule 6 of :mod:`lsched.evaluator.prefix`:
Mooncake's KV pool, on a prefill pool of a disaggregated cluster) takes the
place of the host caches: the pool's replicas share one cache of
``pool_capacity_tokens // B`` blocks that nothing pins, written as a host
cache is, each resident block with a *home* (the replica whose write inserted
it; a write of a resident block keeps it). Its writes take effect at a time:

- the replay walks the pool's runs in time order (by start, then replica);
  before a run that starts at ``t`` it applies the writes due by ``t``, by due
  time, then in the order they were made (the walk's order, then member
  order): a replica's decisions at ``t`` see exactly those (the engine steps
  its prefill replicas earliest boundary first, ties to the lower replica);
- in step 2, ``h`` is the leading run resident on the GPU or in the pool; of
  the admission's first ``ceil(x / B)`` blocks those not on the GPU are
  copied, their tokens within ``x`` homed at the admitting replica, ``y_l``,
  over its host-to-device bandwidth and those homed at another, ``y_r``, over
  the pool's link to itself (``cluster.link(p, p)``; an ideal link if none):
  ``y_l * kv_bytes_per_token / h2d_bytes_per_s + [y_r > 0] (latency_s + y_r *
  kv_bytes_per_token / bandwidth_bytes_per_s)`` seconds, added to the run's
  duration (``run-duration``) as a host tier's copies are; the copied blocks
  are written at once, in prefix order (the copies contend for no link);
- in step 5, each prefill member's write of the blocks it completed is due at
  the run's end;
- metrics ``host_hit_tokens`` (``sum y_l + y_r``), ``host_copy_s`` (the
  copies' seconds) and ``remote_hit_tokens`` (``sum y_r``).
"""

from __future__ import annotations

import heapq
import math
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

#: The metrics a host tier adds (the first two) and a KV pool (all three): sums
#: over the admissions, which a cluster adds up over its pools.
TIER_METRICS: tuple[str, ...] = (
    "host_hit_tokens",
    "host_copy_s",
    "remote_hit_tokens",
)


@dataclass(frozen=True)
class _PrefixKV:
    """What the replay gives the other checks: per run position the KV blocks
    the evictable blocks take during it and the seconds of its copies from a
    host tier or a KV pool, and the metrics."""

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


class _Pool(_Cache):
    """A KV pool (module docstring): a cache nothing pins, the home of each
    resident block, the writes not yet due, and the link between its
    replicas (``None``: an ideal one)."""

    def __init__(self, capacity: int, tail_first: bool, link: Any) -> None:
        super().__init__(capacity, tail_first)
        self.home: dict[int, int] = {}
        self.pending: list[tuple[float, int, int, list[int]]] = []
        self.made = 0
        self.latency_s = 0.0 if link is None else float(link.latency_s)
        self.bandwidth = math.inf if link is None else float(link.bandwidth_bytes_per_s)

    def later(self, replica: int, hashes: list[int], due: float) -> None:
        """``replica`` writes ``hashes``, due at ``due``."""
        heapq.heappush(self.pending, (due, self.made, replica, hashes))
        self.made += 1

    def due(self, t: float) -> None:
        """Apply the writes due by ``t``: by due time, then in the order made."""
        while self.pending and self.pending[0][0] <= t:
            _, _, replica, hashes = heapq.heappop(self.pending)
            self.put(replica, hashes)

    def put(self, replica: int, hashes: list[int]) -> None:
        """``replica`` writes ``hashes`` now: the blocks it inserts are homed
        there, the resident ones keep their home."""
        new = [h for h in hashes if h not in self]
        self.write(hashes)
        for h in new:
            if h in self:
                self.home[h] = replica

    def due_at(self, h: int) -> float | None:
        """When the earliest write of ``h`` not yet applied is due (``None``:
        there is none)."""
        return min((due for due, _, _, hashes in self.pending if h in hashes),
                   default=None)  # fmt: skip

    def link_s(self, tokens: int, per_token: int) -> float:
        """Seconds to copy ``tokens`` from another replica's share (0 for
        none)."""
        if not tokens:
            return 0.0
        return self.latency_s + tokens * per_token / self.bandwidth


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
                 replay: _Replay, spec: Any, out: _Collector,
                 link: Any = None) -> None:  # fmt: skip
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
        shared = getattr(spec, "pool_capacity_tokens", None)
        self.pool = (
            None
            if shared is None
            else _Pool(shared // self.block, self.tail_first, link)
        )
        self.written = [0] * len(instance)
        self.s_per_token = (profile.kv_bytes_per_token, profile.host.h2d_bytes_per_s)
        self.copy_s = np.zeros(len(log.run_ids))
        self.copied = 0
        self.remote = 0

    def cache(self, replica: int) -> _Cache:
        if replica not in self.caches:
            self.caches[replica] = _Cache(self.capacity, self.tail_first)
            if self.host_capacity is not None:
                self.hosts[replica] = _Cache(self.host_capacity, self.tail_first)
        return self.caches[replica]

    def tier(self, pos: int) -> _Cache | None:
        """The cache off the GPU that the replica of run position ``pos``
        copies hits from: the KV pool, its host cache, or none."""
        if self.pool is not None:
            return self.pool
        return self.hosts.get(int(self.log.replica[pos]))

    def release(self, cache: _Cache, i: int) -> None:
        cache.unpin(self.hashes[i][: self.pins[i]])
        self.pins[i], self.stopped[i], self.written[i] = 0, False, 0

    def _leading(self, cache: _Cache, tier: _Cache | None, hashes: list[int]) -> int:
        """The leading run of ``hashes`` resident on the GPU or, with a host
        tier or a KV pool, there."""
        if tier is None:
            return cache.leading(hashes)
        for k, h in enumerate(hashes):
            if h not in cache and h not in tier:
                return k
        return len(hashes)

    def _copy(self, cache: _Cache, tier: _Cache, row: int, k: int, x: int) -> float:
        """The seconds of the copy of the admission at member row ``row``,
        taking ``x`` tokens in ``k`` blocks, resident on the GPU or in ``tier``
        (module docstring)."""
        i, pos = int(self.log.m_req[row]), int(self.log.m_pos[row])
        replica = int(self.log.replica[pos])
        hashes, big = self.hashes[i][:k], self.block
        missing = [j for j in range(k) if hashes[j] not in cache]
        size = {j: min((j + 1) * big, x) - j * big for j in missing}
        pool, remote = self.pool, 0
        if pool is not None:
            remote = sum(size[j] for j in missing if pool.home[hashes[j]] != replica)
            pool.put(replica, [hashes[j] for j in missing])
        else:
            tier.write([hashes[j] for j in missing])
        local = sum(size.values()) - remote
        self.copied += local + remote
        self.remote += remote
        self.written[i] = k
        per_token, h2d = self.s_per_token
        seconds = local * per_token / h2d
        return seconds + (0.0 if pool is None else pool.link_s(remote, per_token))

    def _not_due(self, i: int, h: int, pos: int) -> str:
        """Why the ``h``-th hash block of request ``i`` is not resident at run
        position ``pos``, when a write to the KV pool not yet due holds it
        (else nothing)."""
        due = None
        if self.pool is not None and h < len(self.hashes[i]):
            due = self.pool.due_at(self.hashes[i][h])
        if due is None:
            return ""
        return (
            f" (hash block {self.hashes[i][h]} is written to the KV pool at "
            f"{due!r} s, after the run starts at {float(self.log.start[pos])!r} s)"
        )

    def admit(self, cache: _Cache, row: int, run: int) -> None:
        """Rule 2 for the admission at member row ``row``."""
        i, pos = int(self.log.m_req[row]), int(self.log.m_pos[row])
        x, target = int(self.replay.hits[row]), int(self.replay.admits[row])
        tier = self.tier(pos)
        h = self._leading(cache, tier, self.hashes[i])
        want = min(h * self.block, self.prompt[i], target - 1)
        if x > want:
            self.out.add(
                "prefix-cache",
                f"takes {x} cached tokens at admission; {h} leading hash blocks "
                f"of {self.block} tokens are resident: at most {want}"
                + self._not_due(i, h, pos),
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
            if tier is not None:
                self.copy_s[pos] += self._copy(cache, tier, row, k, min(x, want))
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
        """Rule 5: the blocks a prefill member completed, written through to a
        host cache at once or to the KV pool at the run's end."""
        i, pos = int(self.log.m_req[row]), int(self.log.m_pos[row])
        hashes, processed = self.hashes[i], int(self.replay.after[row])
        done = len(hashes)
        if processed < self.prompt[i]:
            done = min(done, processed // self.block)
        tier = self.tier(pos)
        if tier is not None and done > self.written[i]:
            fresh = hashes[self.written[i] : done]
            if self.pool is not None:
                self.pool.later(int(self.log.replica[pos]), fresh,
                                float(self.log.end[pos]))  # fmt: skip
            else:
                tier.write(fresh)
            self.written[i] = done
        if self.stopped[i]:
            return
        if done > self.pins[i]:
            got = cache.pin(hashes[self.pins[i] : done])
            self.stopped[i] = got < done - self.pins[i]
            self.pins[i] += got

    def metrics(self) -> dict[str, float]:
        """The cache's metrics (module docstring)."""
        saved, needed = int(self.replay.hits.sum()), int(self.replay.admits.sum())
        metrics = {
            "prefix_hit_ratio": saved / needed if needed else 0.0,
            "prefill_tokens_saved": float(saved),
        }
        if self.host_capacity is not None or self.pool is not None:
            metrics["host_hit_tokens"] = float(self.copied)
            metrics["host_copy_s"] = float(self.copy_s.sum())
        if self.pool is not None:
            metrics["remote_hit_tokens"] = float(self.remote)
        return metrics


def _walk_order(log: _Log, shared: bool) -> list[int]:
    """The run positions in the order the replay walks them: by position, or
    with a KV pool the replicas ``shared`` by start time, then replica."""
    if not shared:
        return list(range(len(log.run_ids)))
    return np.lexsort((log.replica, log.start)).tolist()


def _check_prefix(
    instance: Instance,
    profile: DeploymentProfile,
    log: _Log,
    replay: _Replay,
    spec: Any,
    evictions: pd.DataFrame | None,
    out: _Collector,
    link: Any = None,
) -> _PrefixKV:
    """Replay the caches (module docstring); the evictable blocks' KV per run
    and the cache's metrics. ``spec``: the pool's cache (``eviction``,
    ``capacity_tokens``, ``host_capacity_tokens``, ``pool_capacity_tokens``);
    ``link``: with a KV pool, the pool's link to itself (``None``: ideal)."""
    walk = _PrefixReplay(instance, profile, log, replay, spec, out, link)
    evicted = _evictions_by_position(evictions, log, out)
    members: dict[int, list[int]] = defaultdict(list)
    for row, p in enumerate(log.m_pos.tolist()):
        members[p].append(row)
    preempted: dict[int, list[int]] = defaultdict(list)
    for row, p in enumerate(log.p_pos.tolist()):
        preempted[p].append(row)
    charged = np.zeros(len(log.run_ids), dtype=np.int64)
    for p in _walk_order(log, walk.pool is not None):
        run = log.run_ids[p]
        if walk.pool is not None:
            walk.pool.due(float(log.start[p]))
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
    return _PrefixKV(charged, walk.copy_s, walk.metrics())
