"""KV blocks: the one place of the engine and the policies that turns tokens into
blocks.

A replica holds ``capacity_blocks`` blocks of ``b = block_tokens`` tokens
(DESIGN.md, "The iteration model"). A request holding ``x`` tokens of KV uses
``ceil(x / b)`` blocks; a step that takes it from ``x`` to ``x + w`` tokens opens

    growth(x, w) = ceil((x + w) / b) - ceil(x / b)

blocks, so a decode step (``w = 1``) opens one block exactly when ``x % b == 0``.
After ``n`` decode steps a request has opened at most ``ceil(n / b)`` blocks; the
ledger uses that bound to advance a held decode stretch without touching each
request, and makes its count exact only where a check against the capacity could
fail.

Two objects share the arithmetic:

- :class:`KVBlocks`, immutable: capacity and block size, and the pure functions
  (``blocks``, ``growth``, ``decode_growth``, ``watermark_blocks``,
  ``decode_steps_that_fit``). Policies read it as ``view.kv``.
- :class:`KVLedger`, one per replica engine: the KV tokens of every request and
  the blocks held (admit/grow/free, the exact count on demand, snapshot/restore).

A policy reads the ledger's totals through :class:`KVHeld` (``view.kv_held``), so
that knowing the KV held costs it no pass over the running requests.

The validator and the naive reference engine of the tests keep their own
arithmetic on purpose, so that they check this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class KVBlocks:
    """The block arithmetic of one replica: ``capacity_blocks`` blocks of
    ``block_tokens`` tokens."""

    capacity_blocks: int
    block_tokens: int

    @property
    def capacity_tokens(self) -> int:
        """Tokens the blocks hold: ``capacity_blocks * block_tokens``."""
        return self.capacity_blocks * self.block_tokens

    @overload
    def blocks(self, tokens: int) -> int: ...
    @overload
    def blocks(self, tokens: npt.ArrayLike) -> IntArray: ...
    def blocks(self, tokens: Any) -> Any:
        """Blocks that hold ``tokens`` tokens, ``ceil(tokens / block_tokens)``
        (an int for an int, an array otherwise)."""
        b = self.block_tokens
        try:  # ints and arrays (never negative), the hot path: no type checks
            return (tokens + (b - 1)) // b
        except TypeError:  # a list or a tuple
            return (np.asarray(tokens, dtype=np.int64) + (b - 1)) // b

    def growth(self, before: Any, work: Any) -> Any:
        """Blocks opened by taking ``before`` tokens to ``before + work``."""
        b = self.block_tokens
        return (-before // b) - (-(before + work) // b)

    def blocks_after_step(self, processed: Any) -> Any:
        """Blocks held after one decode step of each request holding
        ``processed`` tokens: ``blocks(processed + 1) = (processed + b) // b``."""
        b = self.block_tokens
        return (processed + b) // b

    def decode_growth(self, processed: IntArray) -> int:
        """Blocks opened by one decode step of each request holding ``processed``
        tokens (a step opens one where ``processed % b == 0``)."""
        if self.block_tokens == 1:
            return len(processed)
        return int(np.count_nonzero(processed % self.block_tokens == 0))

    def fits(self, used_blocks: int, extra_blocks: int = 0) -> bool:
        """Whether ``used_blocks + extra_blocks`` is within the capacity."""
        return used_blocks + extra_blocks <= self.capacity_blocks

    def watermark_blocks(self, fraction: float) -> int:
        """Blocks in a share ``fraction`` of the capacity, ``int(fraction *
        capacity_blocks)`` (truncated, not rounded): the blocks an admission must
        leave free under a watermark (vLLM's ``int(watermark * num_gpu_blocks)``),
        or the capacity a planning check keeps to (MC-SF's ``kv_fraction``)."""
        return int(fraction * self.capacity_blocks)

    def decode_steps_that_fit(
        self, other_blocks: int, processed: IntArray, limit: int
    ) -> int:
        """How many of the next ``limit`` decode steps of every request holding
        ``processed`` tokens fit beside ``other_blocks`` held by the rest (at least
        1: the caller has checked the first).

        Bisection on the monotone total ``sum_i ceil((p_i + k + 1) / b)``.
        """

        def fits(k: int) -> bool:  # step k (0-based) leaves p + k + 1 tokens
            after = int(self.blocks(processed + (k + 1)).sum())
            return other_blocks + after <= self.capacity_blocks

        if fits(limit - 1):
            return limit
        lo, hi = 1, limit - 1  # fits(lo - 1) holds, fits(hi) does not
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid + 1
            else:
                hi = mid
        return lo


class KVLedger:
    """The KV of one replica: tokens per request, blocks held.

    ``tokens[r]`` is the KV request ``r`` holds (its processed tokens; 0 unless it
    runs). ``held_tokens`` is their sum. ``held_blocks`` is the blocks held: exact
    while ``exact``, else an upper bound (a held decode stretch of ``n`` steps adds
    at most ``ceil(n / b)`` per request) made exact by :meth:`exact_blocks`.

    ``pinned_blocks`` are blocks no running request holds but that stay taken: the
    KV of a request prefilled on a prefill replica, kept until its transfer to a
    decode replica ends (:meth:`pin`, :meth:`unpin`), or of a request swapping out
    asynchronously until its copy ends; or blocks a decode replica reserved for KV
    on its way, or a request swapping in asynchronously (:meth:`reserve`). They count in
    ``held_blocks`` (so in every capacity check), not in ``held_tokens`` (the
    running requests' KV, which policies read).

    Parameters
    ----------
    kv
        The block arithmetic.
    size
        Number of requests (local ids ``0..size-1``).
    """

    __slots__ = ("exact", "held_blocks", "held_tokens", "kv", "pinned_blocks", "tokens")

    def __init__(self, kv: KVBlocks, size: int) -> None:
        self.kv = kv
        self.tokens = np.zeros(size, dtype=np.int64)
        self.held_tokens = 0
        self.held_blocks = 0
        self.pinned_blocks = 0
        self.exact = True

    # -- reading ------------------------------------------------------------------

    def exact_blocks(self, holders: list[int]) -> int:
        """Make :attr:`held_blocks` exact (``holders``: every request holding KV)
        and return it."""
        if not self.exact:
            held = self.tokens[np.array(holders, dtype=np.int64)]
            self.held_blocks = int(self.kv.blocks(held).sum()) + self.pinned_blocks
            self.exact = True
        return self.held_blocks

    def fits(self, grow: int, holders: list[int]) -> bool:
        """Whether ``grow`` more blocks fit, checking exactly only if the bound
        does not settle it."""
        capacity = self.kv.capacity_blocks
        return (
            self.held_blocks + grow <= capacity
            or self.exact_blocks(holders) + grow <= capacity
        )

    def decode_steps_that_fit(
        self, ids: IntArray, processed: IntArray, limit: int, holders: list[int]
    ) -> int:
        """How many of the next ``limit`` decode steps of ``ids`` (holding
        ``processed``) fit in the capacity (at least 1)."""
        kv = self.kv
        # each request opens at most ceil(limit / b) blocks in `limit` steps: with
        # that much room there is nothing to search
        most = len(ids) * -(-limit // kv.block_tokens)
        if self.held_blocks + most <= kv.capacity_blocks:
            return limit
        others = self.exact_blocks(holders) - int(kv.blocks(processed).sum())
        return kv.decode_steps_that_fit(others, processed, limit)

    # -- changes ------------------------------------------------------------------

    def grow(self, blocks: int, tokens: int) -> None:
        """Account ``tokens`` more tokens in ``blocks`` more blocks (a caller
        that counts an upper bound sets :attr:`exact` false)."""
        self.held_blocks += blocks
        self.held_tokens += tokens

    def decode(self, ids: IntArray, processed: IntArray, steps: int) -> None:
        """``steps`` decode steps of ``ids`` (holding ``processed``): an upper
        bound on the blocks, ``ceil(steps / b)`` per request."""
        d = len(ids)
        self.tokens[ids] = processed + steps
        self.held_blocks += d * -(-steps // self.kv.block_tokens)
        self.held_tokens += d * steps
        self.exact = False

    def free(self, r: int) -> int:
        """Free every block of request ``r``; return the tokens it held."""
        held = int(self.tokens[r])
        self.held_blocks -= -(-held // self.kv.block_tokens)
        self.held_tokens -= held
        self.tokens[r] = 0
        return held

    def place(self, r: int, tokens: int) -> None:
        """Request ``r`` (holding nothing) holds ``tokens`` tokens again: its KV
        swapped back in from the host tier."""
        self.tokens[r] = tokens
        self.held_tokens += tokens
        self.held_blocks += -(-tokens // self.kv.block_tokens)

    def pin(self, r: int) -> int:
        """Keep the blocks of request ``r`` (which stops running) taken as pinned
        blocks; return how many."""
        held = int(self.tokens[r])
        blocks = -(-held // self.kv.block_tokens)
        self.held_tokens -= held
        self.tokens[r] = 0
        self.pinned_blocks += blocks
        return blocks

    def reserve(self, blocks: int) -> None:
        """Take ``blocks`` more blocks as pinned (KV on its way here)."""
        self.pinned_blocks += blocks
        self.held_blocks += blocks

    def unpin(self, blocks: int) -> None:
        """Free ``blocks`` pinned blocks."""
        self.pinned_blocks -= blocks
        self.held_blocks -= blocks

    # -- state --------------------------------------------------------------------

    def snapshot(self) -> tuple[IntArray, int, int, int, bool]:
        """The ledger's state, for :meth:`restore`."""
        return (
            self.tokens.copy(),
            self.held_tokens,
            self.held_blocks,
            self.pinned_blocks,
            self.exact,
        )

    def restore(self, state: tuple[IntArray, int, int, int, bool]) -> None:
        """Put the ledger back in a :meth:`snapshot` (``tokens`` in place, so
        read-only views of it stay valid)."""
        tokens, self.held_tokens, self.held_blocks, self.pinned_blocks, self.exact = (
            state
        )
        np.copyto(self.tokens, tokens)


class KVHeld:
    """The KV a replica's running requests hold, read from its ledger: what a
    policy sees as ``view.kv_held`` (:class:`lsched.policies.base.ReplicaView`).

    Valid during the decision it is shown to only: the engine changes the ledger
    afterwards.

    Parameters
    ----------
    ledger
        The replica's ledger.
    holders
        Every request holding KV (the engine's running list).
    """

    __slots__ = ("_holders", "_ledger")

    def __init__(self, ledger: KVLedger, holders: list[int]) -> None:
        self._ledger = ledger
        self._holders = holders

    @property
    def tokens(self) -> int:
        """KV tokens held (the running requests' processed tokens, summed)."""
        return self._ledger.held_tokens

    @property
    def blocks(self) -> int:
        """KV blocks the running requests hold, exact (pinned blocks apart: a
        policy sees them as capacity it lacks). Where the ledger holds an upper
        bound it counts them once (:meth:`KVLedger.exact_blocks`, which only
        makes its cache exact: no outcome depends on it)."""
        ledger = self._ledger
        return ledger.exact_blocks(self._holders) - ledger.pinned_blocks
