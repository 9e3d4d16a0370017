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

Swapping policies are refused with a cache (:class:`~lsched.cluster.Pool`).

Records: per request its cached tokens (``x`` summed over its admissions);
metrics ``prefill_tokens_saved`` (their sum) and ``prefix_hit_ratio`` (saved
over ``sum T`` over admissions: ``sum_i x_i / sum_i s_i`` without preemption);
the log's ``evictions`` table (run, blocks evicted before it).

Cost: a lookup, an admission, a release and an insertion are O(blocks they
touch); the capacity check is O(1) unless the replica is over its capacity
counting the evictable blocks, when the running requests' blocks are counted
exactly (as a capacity check that could fail does without a cache).
"""

from __future__ import annotations

import numpy as np

from lsched.kv import KVBlocks
from lsched.prefix.cache import PrefixCache
from lsched.prefix.spec import PrefixCacheSpec


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
    """

    __slots__ = (
        "block_tokens", "cache", "cached", "capped", "charge", "evictions",
        "hashes", "needed", "pinned",
    )  # fmt: skip

    def __init__(
        self,
        spec: PrefixCacheSpec,
        block_tokens: int,
        kv_block_tokens: int,
        size: int,
        hashes: list[list[int]],
        log: bool,
    ) -> None:
        self.cache = PrefixCache(spec.capacity_tokens, block_tokens, spec.eviction)
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
        h = self.cache.lookup(self.hashes[r])
        return min(h * self.block_tokens, prompt, target - 1)

    def usable(self, want: int, chunk: int, kv: KVBlocks, slack: int) -> int:
        """Cached tokens an admission offered ``want`` takes with its policy's
        ``chunk`` where ``want``'s extra blocks exceed the ``slack`` free beside
        the batch: the most whole hash blocks whose extra blocks fit (rule 1)."""
        most = (kv.blocks(chunk) + slack) * kv.block_tokens - chunk
        return min(want, most // self.block_tokens * self.block_tokens)

    def take(self, r: int, tokens: int) -> None:
        """Request ``r`` starts with ``tokens`` cached tokens: it pins the hash
        blocks they reach into (all resident)."""
        self.cached[r] += tokens
        k = -(-tokens // self.block_tokens)
        self.pinned[r] = self.cache.acquire(self.hashes[r][:k])

    def computed(self, r: int, processed: int, prompt: int) -> None:
        """Request ``r`` holds ``processed`` tokens of its ``prompt``-token
        prefill: pin (insert) the blocks it completed (rule 2)."""
        if self.capped[r]:
            return
        hashes = self.hashes[r]
        done = len(hashes)
        if processed < prompt:
            done = min(done, processed // self.block_tokens)
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

    def evict(self, over: int, run: int) -> None:
        """Evict the fewest evictable blocks that free ``over`` KV blocks,
        before run ``run`` (rule 4)."""
        blocks = self.cache.evict(-(-over // self.charge))
        if self.evictions is not None:
            self.evictions.append((run, blocks))

    def snapshot(self) -> tuple:
        """The state, for :meth:`restore`."""
        return (
            self.cache.snapshot(),
            list(self.pinned),
            list(self.capped),
            self.cached.copy(),
            self.needed,
            None if self.evictions is None else len(self.evictions),
        )

    def restore(self, state: tuple) -> None:
        """Put the cache back in a :meth:`snapshot`."""
        cache, pinned, capped, cached, self.needed, logged = state
        self.cache.restore(cache)
        self.pinned[:] = pinned
        self.capped[:] = capped
        np.copyto(self.cached, cached)
        if self.evictions is not None:
            del self.evictions[logged:]


__all__ = ["ReplicaPrefix"]
