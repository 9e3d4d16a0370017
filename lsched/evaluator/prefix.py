"""A replica's prefix cache as the engine runs it: hits at admission, blocks
cached as prefills compute them, evicted only when the KV needs the room.

The cache is a :class:`~lsched.prefix.cache.PrefixCache` per replica (a pool's
``prefix_cache``, :class:`~lsched.prefix.spec.PrefixCacheSpec`), keyed by the
requests' prefix block hashes. ``B`` is the hash block size (the instance's
``params["prefix_block_tokens"]``, 512 for Mooncake traces; else the replica's
KV block size ``b``, as vLLM hashes its KV blocks). Request ``r`` has hashes
``H_r[0..n_r-1]`` (``n_r <= ceil(s_r / B)``); block ``k`` holds prompt tokens
``k B + 1 .. min((k + 1) B, s_r)``.

Rules (DESIGN.md, "Clusters"; vLLM's automatic prefix caching)
--------------------------------------------------------------
1. **Admission.** A waiting request ``r`` that a batch gives a first chunk of
   ``c`` tokens (prefill target ``T = s_r + e_r``) is admitted after the batch's
   preemptions, in the batch's order. Its leading run of resident hashes ``h``
   (:meth:`~lsched.prefix.cache.PrefixCache.lookup`) offers ``want = min(h B,
   s_r, T - 1)`` cached tokens: never past the prompt, and at least one token is
   computed. The policy planned the batch with ``r`` holding ``c`` tokens after
   the iteration and unreferenced cached blocks counted free; taking ``x``
   cached tokens, ``r`` holds ``min(x + c, T)``: ``extra(x) = blocks(min(x + c,
   T)) - blocks(c)`` blocks more than planned. With ``S`` the blocks free after
   the iteration as planned (capacity less pinned blocks and the running
   requests' blocks after the planned iteration), less the extras of the batch's
   earlier admissions, ``r`` takes ``x = want`` if ``extra(want) <= S``, else
   the most whole hash blocks that fit, ``x = B floor(((blocks(c) + S) b - c) /
   B)`` (at most ``want``; so ``extra(x) <= S``, and ``x = 0`` always fits). It
   starts with ``processed = x`` (its *cached tokens*), pins its first ``ceil(x
   / B)`` hash blocks, and its chunk is ``c' = min(c, T - x)``: the iteration
   charges ``P = c'`` and ``Q = c' (x + c')``, attention over the cached context
   included.
2. **Blocks computed.** After an iteration each of its prefill members, in the
   batch's order, pins the hash blocks its KV now completes and it has not
   pinned: the first ``n_r`` once ``processed >= s_r``, else the first
   ``floor(processed / B)`` (at most ``n_r``). A block not resident is inserted
   (:meth:`~lsched.prefix.cache.PrefixCache.acquire`: with a capacity of the
   cache's own, a full cache evicts its least recently used unreferenced block,
   and if every block is pinned the request caches no more blocks until it is
   released).
3. **Release.** A preempted request (in the batch's order, before the
   admissions) and the requests that complete at the end of an iteration (in
   the order of their local ids, which is arrival order) release every block
   they pinned; a block no request references becomes *evictable*, most
   recently used (the eviction rule orders one request's blocks).
4. **Capacity.** An evictable block takes ``g = ceil(B / b)`` of the replica's
   KV blocks; a pinned one takes none of its own (its requests hold its tokens
   in their blocks). Policies see evictable blocks as free: the capacity and
   ``kv_blocks_held`` they read leave them out. Before an iteration runs (after
   its admissions pinned their hits), if the running requests' blocks after the
   iteration, the pinned blocks and ``g`` per evictable block exceed the
   capacity, the fewest evictable blocks in eviction order are evicted that
   make them fit, ``ceil(excess / g)``. A held decode stretch evicts at once
   what its last iteration needs (nothing looks the cache up in between). A
   release evicts nothing: a replica over capacity after one (a partial block
   charged ``g``) evicts before its next iteration.

5. **Host tier** (a spec with ``host_capacity_tokens = M``: Mooncake's KV pool
   in the replica's DRAM, :mod:`lsched.tiers`). A second
   :class:`~lsched.prefix.cache.PrefixCache` of ``M // B`` blocks and the same
   eviction rule holds blocks no request pins: a *write* of blocks
   (:meth:`~lsched.prefix.cache.PrefixCache.acquire` then
   :meth:`~lsched.prefix.cache.PrefixCache.release`) makes a resident one most
   recently used and inserts a missing one, evicting the least recently used
   when full.

   - *Write-through*, lsched's reading of Mooncake's flow (Qin et al., FAST
     2025; ``../shared/reference/serving-systems.md``, "Mooncake": the prefill
     node loads the cached prefix from the DRAM pool and prefills the rest; the
     pool then holds the new blocks for later requests): after rule 2,
     each prefill member writes the hash blocks it completed past those it
     has written since its admission (its cached blocks count as written),
     whether or not the GPU cache took them. Writes take no time: Mooncake
     streams KV layer by layer, overlapped with the prefill.
   - *Hits.* Rule 1's ``h`` is the leading run of hashes resident in the GPU
     cache **or** the host cache. Of the ``ceil(x / B)`` blocks an admission
     takes, those not resident in the GPU cache are copied from the host:
     ``y = sum_k (min((k + 1) B, x) - k B)`` over those blocks ``k`` (tokens),
     a copy of ``y * kv_bytes_per_token / h2d_bytes_per_s`` seconds; the copied
     blocks are written (touched) in the host cache, in prefix order, then
     pinned in the GPU cache as any hit (they land in GPU blocks).
   - *Timing.* The copies are blocking, as ``lsched.tiers``' blocking swaps:
     the iteration that admits the request is longer by the copies of its
     admissions, which run one after the other before its forward pass; so the
     request's prefill starts when its copy ends, and a lone request's TTFT
     grows by exactly ``y * kv_bytes_per_token / h2d_bytes_per_s`` while its
     prefill computes only ``T - x`` tokens.

   Bounds: a host hit is a hit (its blocks were computed by an earlier request)
   and its copy only lengthens an iteration, so every bound valid for any cache
   (``seconds.cached_*``) holds for a run with a host tier, and with a KV pool.

6. **KV pool** (a spec with ``pool_capacity_tokens = M``, on a prefill pool of
   a disaggregated cluster: Mooncake's KV pool, Mooncake Store, spread over the
   DRAM of the pool's replicas). The replicas share one :class:`KVPool`, a
   :class:`~lsched.prefix.cache.PrefixCache` of ``M // B`` blocks with the
   eviction rule, in place of rule 5's host caches. Each resident block has a
   *home*, the replica whose write inserted it (whose DRAM holds it); a write of
   a resident block makes it most recently used and keeps its home.

   - *Writes* are rule 5's write-through, but the writes of an iteration that
     ends at ``e`` take effect at ``e``: the pool applies writes in the order
     of their times, then of their making. Every decision of a replica at a
     boundary ``t`` (its policy's view, its admissions) and every router's read
     at ``t`` sees exactly the writes with time ``<= t``. This is exact because
     the disaggregated loop steps its prefill replicas one at a time, earliest
     boundary first, ties to the lower replica id
     (:mod:`lsched.evaluator.disagg`): a write at ``e`` is made by a step that
     started before ``e``, so before any decision at ``e`` or later.
   - *Hits.* Rule 1's ``h`` is the leading run of hashes resident in the GPU
     cache or the pool. Of the ``ceil(x / B)`` blocks an admission takes, those
     not resident on the GPU are copied: the tokens within ``x`` of those homed
     at the admitting replica, ``y_l``, over its host-to-device bandwidth; those
     homed at another replica, ``y_r``, over the cluster's link from the pool
     to itself (Mooncake's transfer engine, GPUDirect RDMA into the GPU; an
     ideal link if the cluster lists none): ``y_l * kv_bytes_per_token /
     h2d_bytes_per_s + [y_r > 0] (latency_s + y_r * kv_bytes_per_token /
     bandwidth_bytes_per_s)`` seconds, blocking as rule 5's copies. The copied
     blocks are then written (most recently used, homes kept) at ``t`` and
     pinned in the GPU cache as any hit. The copies do not contend for the link
     (nor with the KV transfers to decode pools, which use other links).
   - Mooncake's Conductor copies a prefix from its best holder only past a
     balancing threshold; here an admission always takes every block the pool
     holds, and :class:`~lsched.routers.Conductor` predicts exactly that.

Swapping policies are refused with a cache (:class:`~lsched.cluster.Pool`), so
the host tier's memory holds the host cache alone.

Records: per request its cached tokens (``x`` summed over its admissions);
metrics ``prefill_tokens_saved`` (their sum) and ``prefix_hit_ratio`` (saved
over ``sum T`` over admissions: ``sum_i x_i / sum_i s_i`` without preemption);
with a host tier or a KV pool ``host_hit_tokens`` (``sum y``, or ``sum y_l +
y_r``) and ``host_copy_s`` (the copies' seconds); with a KV pool
``remote_hit_tokens`` (``sum y_r``); the log's ``evictions`` table (run, blocks
evicted before it).

Cost: a lookup, an admission, a release and an insertion are O(blocks they
touch); the capacity check is O(1) unless the replica is over its capacity
counting the evictable blocks, when the running requests' blocks are counted
exactly (as a capacity check that could fail does without a cache).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import numpy as np

from lsched.kv import KVBlocks
from lsched.prefix.cache import PrefixCache
from lsched.prefix.spec import PrefixCacheSpec


class KVPool:
    """The KV pool a prefill pool's replicas share (rule 6 of the module
    docstring): one cache with a home per block, and the writes not yet due.

    Parameters
    ----------
    spec
        The pool's cache (``pool_capacity_tokens``).
    block_tokens
        ``B``, tokens per hash block.
    latency_s, bandwidth_bytes_per_s
        The link from the pool to itself, for copies between replicas.
    """

    __slots__ = ("_made", "_pending", "cache", "home", "latency_s", "seconds_per_byte")

    def __init__(self, spec: PrefixCacheSpec, block_tokens: int, latency_s: float,
                 bandwidth_bytes_per_s: float) -> None:  # fmt: skip
        assert spec.pool_capacity_tokens is not None
        self.cache = PrefixCache(spec.pool_capacity_tokens, block_tokens, spec.eviction)
        self.home: dict[int, int] = {}  # a resident block's replica (stale if not)
        self.latency_s = latency_s
        self.seconds_per_byte = 1.0 / bandwidth_bytes_per_s
        self._pending: list[tuple[float, int, int, list[int]]] = []
        self._made = itertools.count()

    def write(self, replica: int, hashes: list[int], at_s: float) -> None:
        """``replica`` writes ``hashes``, taking effect at ``at_s``."""
        heapq.heappush(self._pending, (at_s, next(self._made), replica, hashes))

    def sync(self, t: float) -> None:
        """Apply the writes due by ``t``, by time, then in the order made."""
        pending = self._pending
        while pending and pending[0][0] <= t:
            _, _, replica, hashes = heapq.heappop(pending)
            self.put(replica, hashes)

    def put(self, replica: int, hashes: list[int]) -> None:
        """Write ``hashes`` now: each most recently used; a missing one is
        inserted (evicting the least recently used when full), homed at
        ``replica``."""
        cache = self.cache
        new = [b for b in hashes if b not in cache]
        cache.release(hashes[: cache.acquire(hashes)])
        for b in new:
            if b in cache:
                self.home[b] = replica


def _leading(hashes: list[int], held: Callable[[int], bool]) -> int:
    """The length of the leading run of ``hashes`` for which ``held`` holds."""
    return next((k for k, b in enumerate(hashes) if not held(b)), len(hashes))


class ReplicaPrefix:
    """The prefix cache of one replica and what its requests pin (module
    docstring).

    Parameters
    ----------
    spec
        The pool's cache.
    block_tokens
        ``B``, tokens per hash block.
    kv_block_tokens
        ``b``, the replica's KV block size.
    size
        Local requests the replica has room for.
    hashes
        Each local request's block hashes (a list a joint engine appends to).
    log
        Keep the evictions, as ``(run, blocks)``.
    kv_bytes_per_token, h2d_bytes_per_s
        The replica's KV bytes per token and host-to-device bandwidth (bytes
        per second), for the host tier's copies.
    pool, replica
        The KV pool the replica shares (rule 6) and its replica id there, or
        ``None``.
    """

    __slots__ = (
        "block_tokens", "cache", "cached", "capped", "charge", "copied",
        "copy_s", "evictions", "h2d", "hashes", "host", "needed",
        "pinned", "pool", "remote", "replica", "tier", "written",
    )  # fmt: skip

    def __init__(
        self,
        spec: PrefixCacheSpec,
        block_tokens: int,
        kv_block_tokens: int,
        size: int,
        hashes: list[list[int]],
        log: bool,
        kv_bytes_per_token: int = 0,
        h2d_bytes_per_s: float = 1.0,
        pool: KVPool | None = None,
        replica: int = 0,
    ) -> None:
        self.cache = PrefixCache(spec.capacity_tokens, block_tokens, spec.eviction)
        host = spec.host_capacity_tokens
        self.host = (
            None if host is None else PrefixCache(host, block_tokens, spec.eviction)
        )
        self.pool, self.replica = pool, replica
        #: the cache off the GPU that hits are copied from (rules 5 and 6)
        self.tier = self.host if pool is None else pool.cache
        self.h2d = (kv_bytes_per_token, h2d_bytes_per_s)
        self.written = [0] * size  # leading hash blocks written off the GPU
        self.copied = 0  # tokens copied from the host tier or the pool
        self.remote = 0  # of those, tokens copied from another replica
        self.copy_s = 0.0  # seconds of those copies
        self.block_tokens = block_tokens
        self.charge = -(-block_tokens // kv_block_tokens)
        self.hashes = hashes
        self.pinned = [0] * size  # leading hash blocks each request pins
        self.capped = [False] * size  # a full cache stopped its insertions
        self.cached = np.zeros(size, dtype=np.int64)  # cached tokens taken
        self.needed = 0  # prefill targets over admissions
        self.evictions: list[tuple[int, int]] | None = [] if log else None

    @property
    def charged_blocks(self) -> int:
        """KV blocks the evictable blocks take, ``g`` each."""
        return self.charge * self.cache.evictable_blocks

    def offer(self, r: int, prompt: int, target: int) -> int:
        """Cached tokens request ``r`` (``prompt`` tokens, prefill ``target``)
        finds at its admission, ``min(h B, s, T - 1)``; counts its target."""
        self.needed += target
        return min(self.resident(r) * self.block_tokens, prompt, target - 1)

    def resident(self, r: int) -> int:
        """Request ``r``'s leading run of hash blocks resident in the cache (in
        either tier with a host tier or a pool, rules 5 and 6); read-only,
        O(its blocks)."""
        hashes, cache, tier = self.hashes[r], self.cache, self.tier
        if tier is None:  # the common case, in the cache's own loop
            return cache.lookup(hashes)
        return _leading(hashes, lambda b: b in cache or b in tier)

    def _run(self, hashes: list[int], on_gpu: Callable[[int], bool]) -> int:
        """The leading run of ``hashes`` resident on the GPU (``on_gpu``) or
        in the tier."""
        tier = self.tier
        if tier is None:
            return _leading(hashes, on_gpu)
        return _leading(hashes, lambda b: on_gpu(b) or b in tier)

    def sync(self, t: float) -> None:
        """A decision at ``t``: the pool's writes due by then take effect."""
        if self.pool is not None:
            self.pool.sync(t)

    def hit(
        self, hashes: list[int], prompt: int, evicted: int = 0
    ) -> tuple[int, int, float]:
        """What a request of ``hashes`` and ``prompt`` tokens would find at an
        admission now, the first ``evicted`` evictable GPU blocks gone
        (read-only, O(its blocks + evicted)): the leading run of blocks the
        replica holds itself (GPU, host tier, or pool blocks homed here), the
        cached tokens ``min(h B, s - 1)`` it would take and their copy's
        seconds (rules 1, 5 and 6)."""
        cache, gone = self.cache, self.cache.first_evictable(evicted)

        def on_gpu(b: int) -> bool:
            return b in cache and b not in gone

        run = self._run(hashes, on_gpu)
        local = run  # the pool's blocks homed elsewhere are not held here
        if self.pool is not None:
            pool, me = self.pool, self.replica
            local = _leading(
                hashes, lambda b: on_gpu(b) or (b in pool.cache and pool.home[b] == me)
            )
        x = min(run * self.block_tokens, prompt - 1)
        local_tokens, remote_tokens = self._copied(hashes, x, on_gpu)
        return local, x, self._copy_s(local_tokens, remote_tokens)

    def usable(self, want: int, chunk: int, kv: KVBlocks, slack: int) -> int:
        """Cached tokens an admission offered ``want`` takes with its policy's
        ``chunk`` where ``want``'s extra blocks exceed the ``slack`` free beside
        the batch: the most whole hash blocks whose extra blocks fit (rule 1)."""
        most = (kv.blocks(chunk) + slack) * kv.block_tokens - chunk
        return min(want, most // self.block_tokens * self.block_tokens)

    def take(self, r: int, tokens: int) -> float:
        """Request ``r`` starts with ``tokens`` cached tokens: it pins the hash
        blocks they reach into (all resident in a tier); the seconds of its
        copy from the host tier or the pool (rules 5 and 6; 0 without one)."""
        self.cached[r] += tokens
        k = -(-tokens // self.block_tokens)
        hashes = self.hashes[r][:k]
        seconds = 0.0
        if self.tier is not None:
            local, remote = self._copied(hashes, tokens, self.cache.__contains__)
            seconds = self._copy_s(local, remote)
            self.copied += local + remote
            self.remote += remote
            self.copy_s += seconds
            self._write([b for b in hashes if b not in self.cache])
            self.written[r] = k
        self.pinned[r] = self.cache.acquire(hashes)
        return seconds

    def _copied(
        self, hashes: list[int], tokens: int, on_gpu: Callable[[int], bool]
    ) -> tuple[int, int]:
        """The tokens of the first ``tokens`` of ``hashes`` not on the GPU,
        copied from this replica's host memory and from another replica's
        (rules 5 and 6)."""
        big = self.block_tokens
        local = remote = 0
        home = None if self.pool is None else self.pool.home
        for k, b in enumerate(hashes[: -(-tokens // big)]):
            if on_gpu(b):
                continue
            size = min((k + 1) * big, tokens) - k * big
            if home is None or home[b] == self.replica:
                local += size
            else:
                remote += size
        return local, remote

    def _copy_s(self, local: int, remote: int) -> float:
        """Seconds to copy ``local`` tokens over the host-to-device link and
        ``remote`` ones from another replica (rule 6)."""
        per_token, h2d = self.h2d
        seconds = local * per_token / h2d
        if remote:
            assert self.pool is not None
            pool = self.pool
            seconds += pool.latency_s + remote * per_token * pool.seconds_per_byte
        return seconds

    def _write(self, hashes: list[int], at_s: float | None = None) -> None:
        """Write ``hashes`` off the GPU, each most recently used, inserted if
        missing: to the host cache (rule 5), or to the pool at ``at_s``
        (``None``: now; rule 6)."""
        if self.pool is not None:
            if at_s is None:
                self.pool.put(self.replica, hashes)
            else:
                self.pool.write(self.replica, hashes, at_s)
            return
        assert self.host is not None
        self.host.release(hashes[: self.host.acquire(hashes)])

    def computed(self, r: int, processed: int, prompt: int, end_s: float) -> None:
        """Request ``r`` holds ``processed`` tokens of its ``prompt``-token
        prefill after the iteration that ends at ``end_s``: pin (insert) the
        blocks it completed (rule 2), write them through to the host tier or
        the pool (rules 5 and 6)."""
        hashes = self.hashes[r]
        done = len(hashes)
        if processed < prompt:
            done = min(done, processed // self.block_tokens)
        if self.tier is not None and done > self.written[r]:
            self._write(hashes[self.written[r] : done], end_s)
            self.written[r] = done
        if self.capped[r]:
            return
        k = self.pinned[r]
        if done > k:
            got = self.cache.acquire(hashes[k:done])
            self.pinned[r] = k + got
            self.capped[r] = got < done - k

    def release(self, r: int) -> None:
        """Request ``r`` stops running: its blocks are released (rule 3)."""
        k = self.pinned[r]
        if k:
            self.cache.release(self.hashes[r][:k])
            self.pinned[r] = 0
        self.capped[r] = False
        self.written[r] = 0

    def evict(self, over: int, run: int) -> None:
        """Evict the fewest evictable blocks that free ``over`` KV blocks,
        before run ``run`` (rule 4)."""
        blocks = self.cache.evict(-(-over // self.charge))
        if self.evictions is not None:
            self.evictions.append((run, blocks))

    def snapshot(self) -> tuple:
        """The state, for :meth:`restore` (a shared pool is the cluster's, not
        the replica's: not in it)."""
        return (
            self.cache.snapshot(),
            list(self.pinned),
            list(self.capped),
            self.cached.copy(),
            self.needed,
            None if self.evictions is None else len(self.evictions),
            None if self.host is None else self.host.snapshot(),
            list(self.written),
            self.copied,
            self.remote,
            self.copy_s,
        )

    def restore(self, state: tuple) -> None:
        """Put the cache back in a :meth:`snapshot`."""
        (cache, pinned, capped, cached, self.needed, logged, host, written,
         self.copied, self.remote, self.copy_s) = state  # fmt: skip
        self.cache.restore(cache)
        if self.host is not None:
            self.host.restore(host)
        self.written[:] = written
        self.pinned[:] = pinned
        self.capped[:] = capped
        np.copyto(self.cached, cached)
        if self.evictions is not None:
            del self.evictions[logged:]


__all__ = ["KVPool", "ReplicaPrefix"]
