"""A prefix cache keyed by block hashes: KV blocks reused across requests.

Requests name their prompt's KV by block hashes (the trace's ``hash_ids``:
Mooncake hashes 512-token blocks, Qin et al., "Mooncake: A KVCache-centric
disaggregated architecture for LLM serving", FAST 2025; or lsched's own
``prefix_hashes`` column). Block ``k`` (0-based) of a request of ``s`` prompt
tokens holds tokens ``k B + 1 .. min((k + 1) B, s)``, ``B`` = ``block_tokens``,
so a request has ``ceil(s / B)`` hashes and its last block may be partial.
Hashes are chained (a block's hash names its whole prefix), so only a leading
run of cached hashes is usable.

State
-----
A block is *resident* or not. A resident block is *pinned* (referenced by ``r
>= 1`` running requests: its reference count) or *evictable* (``r = 0``: still
cached, in eviction order). ``resident = pinned + evictable <= capacity_blocks =
capacity_tokens // B``: a block takes ``B`` tokens of capacity whatever its fill,
as the KV ledger charges whole blocks. A pinned block is never evicted.

Operations (``n``: the hashes passed)
-------------------------------------
``lookup(hashes)``
    ``h``, the length of the leading run of resident hashes. At admission a
    request whose first ``h`` blocks are cached skips ``min(h B, s - 1)`` tokens
    (:func:`skipped_tokens`; at least one token is always computed).
``acquire(hashes)``
    Pin every block of a request: first the resident ones, then each missing one
    is inserted, evicting the evictable block first in eviction order when the
    cache is full. Pinning the resident ones first means a request never evicts
    its own blocks. If every resident block is pinned, insertion stops: the
    return value is how many leading hashes are now pinned by this call (``n``
    unless the cache is full of pinned blocks); the caller releases exactly
    those. The resident blocks past that point that the first pass took from
    the evictable ones go back to them, most recently used, in hash order.
``release(hashes)``
    Unpin; a block whose count drops to 0 becomes evictable, most recently used.
``evict(blocks)``
    Evict up to ``blocks`` evictable blocks, eviction order first: the engine's
    way to make room in the replica's KV before it preempts (below).

Eviction rules (:data:`EVICTION_RULES`)
---------------------------------------
Blocks become evictable in the order of their release and are evicted oldest
first (least recently used: a block's last use is the release of its last
referencing request). The rules differ only in the order of one request's blocks
within its release:

``lru`` (the default)
    Prefix order: the request's first block is the least recently used of them,
    as if its blocks were touched first to last. This is plain LRU over block
    accesses, and the rule that reproduces issue 18's figures for Mooncake's
    synthetic trace (:func:`replay`: 65.1 % unbounded, 31.5 % at 3,000,000
    tokens, 14.2 % at 1,000,000; ``tests/test_prefix_cache.py``).
``lru_tail_first``
    Reverse order, as vLLM's v1 engine frees a request's blocks
    (``vllm/v1/core/single_type_kv_cache_manager.py``, ``free``: "Free blocks in
    reverse order so that the tail blocks are freed first"): a chain is evicted
    from its tail, so what stays is still a usable prefix (on the same trace at
    1,000,000 tokens: 14.5 %).

Cost
----
Every operation is O(blocks it touches): ``lookup`` O(h + 1), ``acquire`` and
``release`` O(n), ``evict`` O(blocks evicted); none depends on the cache's size.
The reference counts are a dict; the evictable blocks are an
:class:`~collections.OrderedDict` in eviction order, a hash table threaded by a
doubly linked list, so removing a block by its hash (an evictable block pinned
again), appending the most recently used and popping the least recently used
are each O(1). A plain list would make removal O(size), and a heap of
last-use times O(log size) per operation with stale entries.

How the engine charges cached blocks (one replica, vLLM's sharing)
-------------------------------------------------------------------
On a replica's GPU the cache shares the KV capacity with the running requests
(DESIGN.md, "Clusters"; vLLM's prefix caching: a freed block keeps its hash
until its memory is reused); :mod:`lsched.evaluator.prefix` states the engine's
rules. The engine's :class:`~lsched.kv.KVLedger` stays the one place that turns
a request's tokens into blocks of ``b`` tokens:

- a running request holds its processed tokens in its own ledger blocks,
  the ``min(h B, s - 1)`` tokens it found cached included (the issue: "the KV
  ledger holds them in its own blocks"); its hash blocks are pinned here and
  are **not** charged again;
- an *evictable* block takes ``ceil(B / b)`` of the replica's KV blocks beside
  the ledger's; policies see that room as free (as vLLM counts cached free
  blocks in its free pool), so the engine, not the policy, makes room:
- where the KV held, the evictable blocks included, would exceed the capacity
  in an iteration, the engine evicts (:meth:`evict`) before the iteration, each
  evicted block freeing ``ceil(B / b)`` blocks; a policy preempts only for
  what eviction cannot free.

So the GPU cache needs no capacity of its own (``capacity_tokens=None``): the
replica's capacity bounds it. A host-tier cache or Mooncake's global pool is the
same class with that tier's capacity in tokens (e.g. 3,000,000); the transfers
a hit there costs belong to the engine, not to this class.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lsched.checks import check_choice, check_int, check_optional_int
from lsched.errors import InputError
from lsched.instance import Instance

#: How evictable blocks are ordered (module docstring); the first is the default.
EVICTION_RULES: tuple[str, ...] = ("lru", "lru_tail_first")


def skipped_tokens(hits: int, block_tokens: int, prompt_tokens: int) -> int:
    """Prompt tokens a request need not compute: ``min(h B, s - 1)``.

    Its first ``hits`` blocks are cached, but at least one token is computed
    (the one that emits the first output token).
    """
    return min(hits * block_tokens, prompt_tokens - 1)


class PrefixCache:
    """KV blocks by hash, pinned while referenced, evicted in rule order.

    Parameters
    ----------
    capacity_tokens
        Tokens the cache holds (``capacity_tokens // block_tokens`` blocks), or
        ``None`` for no limit of its own (unbounded, or bounded by the replica's
        KV ledger: module docstring).
    block_tokens
        Tokens per hash block (512 in Mooncake traces).
    eviction
        One of :data:`EVICTION_RULES`.

    Raises
    ------
    InputError
        A capacity below one block, a block size below 1, or an unknown rule.
    """

    __slots__ = ("_evictable", "_refs", "block_tokens", "capacity_blocks", "eviction")

    def __init__(
        self,
        capacity_tokens: int | None,
        block_tokens: int,
        eviction: str = EVICTION_RULES[0],
    ) -> None:
        self.block_tokens = check_int(block_tokens, "block_tokens", 1)
        capacity = check_optional_int(capacity_tokens, "capacity_tokens", 1)
        if capacity is not None and capacity < self.block_tokens:
            raise InputError(
                f"got {capacity}; expected at least one block of "
                f"{self.block_tokens} tokens",
                field="capacity_tokens",
            )
        self.capacity_blocks = None if capacity is None else capacity // block_tokens
        self.eviction = check_choice(eviction, "eviction", EVICTION_RULES)
        self._refs: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Resident blocks, pinned and evictable."""
        return len(self._refs) + len(self._evictable)

    def __contains__(self, block: int) -> bool:
        return block in self._refs or block in self._evictable

    @property
    def pinned_blocks(self) -> int:
        """Resident blocks referenced by at least one request."""
        return len(self._refs)

    @property
    def evictable_blocks(self) -> int:
        """Resident blocks no request references."""
        return len(self._evictable)

    def references(self, block: int) -> int:
        """Requests referencing ``block`` (0 if evictable or not resident)."""
        return self._refs.get(block, 0)

    def lookup(self, hashes: Sequence[int]) -> int:
        """The length of the leading run of resident hashes."""
        refs, evictable = self._refs, self._evictable
        for k, block in enumerate(hashes):
            if block not in refs and block not in evictable:
                return k
        return len(hashes)

    def first_evictable(self, blocks: int) -> set[int]:
        """The first ``blocks`` evictable blocks in eviction order (what
        :meth:`evict` would remove), read-only; O(blocks)."""
        return set(itertools.islice(self._evictable, blocks))

    # -- changes ----------------------------------------------------------------------

    def acquire(self, hashes: Sequence[int]) -> int:
        """Pin every block of ``hashes``, inserting the missing ones.

        Returns
        -------
        int
            How many leading hashes this call pinned: ``len(hashes)`` unless
            the cache filled with pinned blocks (module docstring).
        """
        refs, evictable = self._refs, self._evictable
        for block in hashes:  # the resident ones first: never evicted for this call
            if block in evictable:
                del evictable[block]
                refs[block] = 0
        capacity = self.capacity_blocks
        for k, block in enumerate(hashes):
            count = refs.get(block)
            if count is None:
                if capacity is not None and len(refs) + len(evictable) >= capacity:
                    if not evictable:
                        self._unpin_unused(hashes[k:])
                        return k
                    evictable.popitem(last=False)
                count = 0
            refs[block] = count + 1
        return len(hashes)

    def _unpin_unused(self, hashes: Sequence[int]) -> None:
        """Return to the evictable blocks those of ``hashes`` the first pass of
        :meth:`acquire` took but the second did not reach (count 0)."""
        for block in hashes:
            if self._refs.get(block) == 0:
                del self._refs[block]
                self._evictable[block] = None

    def release(self, hashes: Sequence[int]) -> None:
        """Unpin ``hashes`` (as many as :meth:`acquire` pinned); a block no longer
        referenced becomes evictable, most recently used.

        Raises
        ------
        ValueError
            A block that is not pinned (a caller's bug, not bad input).
        """
        refs, evictable = self._refs, self._evictable
        order = reversed(hashes) if self.eviction == "lru_tail_first" else hashes
        for block in order:
            count = refs.get(block)
            if count is None:
                raise ValueError(f"block {block} is not pinned")
            if count == 1:
                del refs[block]
                evictable[block] = None
            else:
                refs[block] = count - 1

    def evict(self, blocks: int) -> int:
        """Evict up to ``blocks`` evictable blocks, eviction order first; return
        how many were evicted."""
        evictable = self._evictable
        done = min(blocks, len(evictable))
        for _ in range(done):
            evictable.popitem(last=False)
        return done

    # -- state ------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[int, int], OrderedDict[int, None]]:
        """The reference counts and the evictable blocks in order, copied (O(size):
        for an engine's snapshot, not per operation)."""
        return dict(self._refs), OrderedDict(self._evictable)

    def restore(self, state: tuple[dict[int, int], OrderedDict[int, None]]) -> None:
        """Put the cache back in a :meth:`snapshot` (which stays reusable)."""
        self._refs = dict(state[0])
        self._evictable = OrderedDict(state[1])


@dataclass(frozen=True)
class Hits:
    """Prompt tokens found cached in a replay.

    Attributes
    ----------
    hit_tokens
        ``sum_i min(h_i B, s_i - 1)`` (:func:`skipped_tokens`).
    prompt_tokens
        ``sum_i s_i``.
    """

    hit_tokens: int
    prompt_tokens: int

    @property
    def ratio(self) -> float:
        """The token-weighted hit ratio, ``hit_tokens / prompt_tokens``."""
        return self.hit_tokens / self.prompt_tokens


def replay(instance: Instance, cache: PrefixCache) -> Hits:
    """Replay ``instance``'s requests in arrival order through ``cache``.

    Each request looks up its leading run of cached blocks ``h_i``, then
    acquires all its blocks and releases them at once (no two requests hold
    blocks at the same time: the cache alone, no engine). Its hit tokens are
    ``min(h_i B, s_i - 1)``, so a partial last block counts its own tokens and
    a request found whole still computes one.

    Raises
    ------
    InputError
        If ``instance`` has no prefix hashes, or its block size
        (``params["prefix_block_tokens"]``) is not the cache's.
    """
    offsets, values = instance.prefix_hash_offsets, instance.prefix_hash_values
    if offsets is None or values is None:
        raise InputError("expected prefix block hashes", field="prefix_hashes")
    block = instance.params.get("prefix_block_tokens", cache.block_tokens)
    if block != cache.block_tokens:
        raise InputError(
            f"got {block}; expected the cache's {cache.block_tokens}",
            field="prefix_block_tokens",
        )
    all_hashes = values.tolist()  # Python ints hash faster than NumPy scalars
    bounds = offsets.tolist()
    hit = 0
    for i, prompt in enumerate(instance.prompt_tokens.tolist()):
        hashes = all_hashes[bounds[i] : bounds[i + 1]]
        hit += skipped_tokens(cache.lookup(hashes), block, prompt)
        cache.release(hashes[: cache.acquire(hashes)])
    return Hits(hit, int(np.sum(instance.prompt_tokens)))


__all__ = ["EVICTION_RULES", "Hits", "PrefixCache", "replay", "skipped_tokens"]
