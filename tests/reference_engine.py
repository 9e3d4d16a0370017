"""A naive reference engine: one iteration at a time, in plain Python, for tests.

This is the independent check of the fast evaluator (``lsched.evaluator``): it shares
no code with it (nothing from ``lsched.evaluator`` is imported) and takes no
shortcuts. Every replica calls its policy at *every* iteration boundary, ignoring
``Batch.hold``, so a policy's false promise to hold, or a closed-form stretch of the
fast engine that drifts from the per-iteration rules, shows up as a difference.

The rules are those of :mod:`lsched.policies.base` and DESIGN.md ("The iteration
model"); where the text leaves a choice open, the comment at that line says which
reading this engine takes.

:func:`simulate_naive_cluster` replays a disaggregated cluster (prefill and decode
pools, the links between them) the same way, with one global clock, from the
semantics stated in the docstring of :mod:`lsched.evaluator.disagg` (restated in
the comment above it); it keeps its own block arithmetic (nothing from
:mod:`lsched.kv` either) and its own links.

:func:`simulate_naive` also gives a replica its host-memory tier (swap preemption,
``Batch.swap_out`` / ``Batch.swap_in``) in both swap modes, restated from the
docstrings of :mod:`lsched.tiers`, :mod:`lsched.policies.base` and the "Swaps"
section of :mod:`lsched.evaluator.engine` (the comment above :class:`_Replica`),
with its own host-block arithmetic and its own copy links (nothing from
:mod:`lsched.tiers` but the :class:`~lsched.tiers.HostTier` data of the profile).

:func:`simulate_naive` gives each replica a prefix cache on request
(``prefix_cache``), restated from the docstrings of :mod:`lsched.evaluator.prefix`
and :mod:`lsched.prefix.cache` (the comment above :class:`_NaiveCache`), with its
own reference counts, eviction list and block arithmetic (nothing from
:mod:`lsched.prefix` or the engine); :func:`simulate_naive_cluster` gives the
replicas of a cluster's pools the same cache, with its host tier, and the
replicas of a prefill pool with ``pool_capacity_tokens`` one shared KV pool
(:class:`_NaivePool`: homes, writes due in time, copies between replicas).

:func:`simulate_naive` serves LoRA adapters on request (``adapters``, an
:class:`~lsched.adapters.AdapterSpec` read as plain data), restated from the
docstrings of :mod:`lsched.adapters` and :mod:`lsched.evaluator.adapters` (the
comment above :class:`_NaiveLora`), with its own adapter numbering, residency
list, eviction and load times, and its own KV capacity less the adapter slots.

Requests that do not fit ``max_model_len`` (``L``: the profile's, or on a cluster
the smallest over its pools), restated from DESIGN.md ("Rejection") and vLLM V0
rather than from :mod:`lsched.evaluator.length`: a request whose prompt has
``s_i > L`` tokens is rejected at arrival (``Scheduler._schedule_prefills``
ignores a prompt over its limit) and never reaches a replica; a served request
stops in the iteration where it emits a token that brings its sequence (prompt
plus the tokens emitted so far) past ``L`` (``StopChecker``: ``seq.get_len() >
max_model_len``), checked in the iteration loop like its own last token, with
nothing computed in advance. A prediction shown to a policy is capped at the
tokens the request can emit, ``L - s_i + 1`` (a predictor knows the engine's
cap), and a peak KV checked before the run is ``min(s_i + o_i - 1, L)``.
"""

from __future__ import annotations

import bisect
import heapq
import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.instance import Instance
from lsched.policies import (
    ARRIVAL_TOLERANCE_S,
    Batch,
    Policy,
    PolicyContext,
    PolicyError,
    PolicySpec,
    ReplicaLimits,
    ReplicaView,
    parse_policy,
)
from lsched.policies.base import swap_mode
from lsched.profile import DeploymentProfile

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: request states; _SWAPPED: its KV in the host tier, or on its way there or back
_WAITING, _RUNNING, _DONE, _SWAPPED = 0, 1, 2, 3
#: the direction of a host-tier copy
_OUT, _IN = 0, 1


@dataclass(frozen=True)
class NaiveResult:
    """What :func:`simulate_naive` returns.

    Per-request arrays are in global instance order (row ``i`` = request ``i``).

    Attributes
    ----------
    replica
        Replica that served each request.
    admitted_s
        Start of the iteration that first admitted the request.
    first_token_s
        End of the iteration that emitted output token 1.
    completion_s
        End of the iteration that emitted token ``o_i``.
    preemptions
        Recompute preemptions of each request.
    recomputed_tokens
        KV tokens each request lost to preemption.
    iterations
        Iterations run, all replicas together.
    busy_s
        Sum of iteration times, all replicas together.
    kv_token_seconds
        Sum over iterations of (KV tokens held at the end of the iteration, before
        completing requests free theirs) x (iteration time).
    max_kv_blocks_seen, max_kv_tokens_seen
        Per replica: the most KV blocks / tokens held at the end of any iteration
        (completing requests included), 0 for a replica that got no request.
    max_decode_steps
        Per replica: the largest D of any iteration (to tell which regime of a
        threshold cost model a test reached).
    swap_outs, swap_ins
        Times each request's KV went to the host tier, and came back.
    swap_out_bytes, swap_in_bytes
        KV bytes copied to the host tier and back, all replicas together (a
        swap-in counts when its copy has ended).
    swap_stall_s
        Seconds blocking copies added to iterations, all replicas together.
    recompute_avoided_tokens
        Tokens swapped out, all replicas together.
    max_host_blocks_seen
        Per replica: the most host blocks held at any boundary (after the swaps).
    async_waits
        Decisions, all replicas together, taken while an asynchronous copy was in
        flight (its request in no list, its GPU blocks pinned).
    emitted_tokens
        Tokens each request emitted (0 for a rejected one).
    rejected
        Per request, why it was rejected ("" if served; replica -1).
    cached_tokens, prefill_tokens_needed, evicted_blocks, cut_hits
        With a prefix cache: per request its cached tokens over its admissions;
        the prefill targets of every admission summed; blocks evicted; and
        admissions that took less than their cached prefix (it did not fit), all
        replicas together.
    host_hit_tokens, host_copy_s
        With a host tier: cached tokens copied from it, and those copies'
        seconds, all replicas together.
    tbt_s
        Per request, Mooncake's TBT from every token's time (NaN with one
        token).
    adapter_loads, adapter_load_s, adapter_switches
        With adapters: adapter loads and their seconds, and switches between
        merged and unmerged execution, all replicas together.
    """

    replica: IntArray
    admitted_s: FloatArray
    first_token_s: FloatArray
    completion_s: FloatArray
    preemptions: IntArray
    recomputed_tokens: IntArray
    iterations: int
    busy_s: float
    kv_token_seconds: float
    max_kv_blocks_seen: IntArray
    max_kv_tokens_seen: IntArray
    max_decode_steps: IntArray
    swap_outs: IntArray | None = None
    swap_ins: IntArray | None = None
    swap_out_bytes: float = 0.0
    swap_in_bytes: float = 0.0
    swap_stall_s: float = 0.0
    recompute_avoided_tokens: int = 0
    max_host_blocks_seen: IntArray | None = None
    async_waits: int = 0
    emitted_tokens: IntArray | None = None
    rejected: tuple[str, ...] | None = None
    cached_tokens: IntArray | None = None
    prefill_tokens_needed: int = 0
    evicted_blocks: int = 0
    cut_hits: int = 0
    host_hit_tokens: int = 0
    host_copy_s: float = 0.0
    tbt_s: FloatArray | None = None
    adapter_loads: int = 0
    adapter_load_s: float = 0.0
    adapter_switches: int = 0

    @property
    def prefix_hit_ratio(self) -> float:
        """Cached tokens over the prefill targets of the admissions."""
        assert self.cached_tokens is not None
        return int(self.cached_tokens.sum()) / self.prefill_tokens_needed


def _blocks(tokens: int, block_tokens: int) -> int:
    return -(-tokens // block_tokens)


def _frozen(values: list[Any], dtype: type) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.flags.writeable = False
    return array


def _ids(values: npt.ArrayLike, what: str) -> list[int]:
    """A batch field as a list of Python ints (PolicyError if not integers)."""
    array = np.asarray(values)
    if array.size == 0:
        return []
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise PolicyError(
            f"Batch.{what} must be a 1-D integer array, got {array.dtype} "
            f"shape {array.shape}"
        )
    return [int(v) for v in array]


def _length_capped(prompt: int, emitted: int, max_model_len: int) -> bool:
    """vLLM V0's ``StopChecker``: a sequence of ``prompt + emitted`` tokens is
    finished (``FINISHED_LENGTH_CAPPED``) once it is longer than
    ``max_model_len``."""
    return prompt + emitted > max_model_len


def _moves(prompt: int, output: int, max_model_len: int) -> bool:
    """Whether a request prefilled on a prefill replica goes on to a decode
    replica: it has tokens to emit after token 1, and token 1 did not stop it at
    ``max_model_len``."""
    return output > 1 and not _length_capped(prompt, 1, max_model_len)


def _peak(prompt: int, output: int, max_model_len: int) -> int:
    """A served request's peak KV: ``s_i + o_i - 1``, or ``L`` where it stops at
    ``L + 1`` tokens (its last token's KV is never written)."""
    return min(prompt + output - 1, max_model_len)


def _rejection(prompt: int, max_model_len: int) -> str:
    """The reason a prompt over ``max_model_len`` is rejected (empty: it fits)."""
    if prompt <= max_model_len:
        return ""
    return f"prompt {prompt} tokens > max_model_len {max_model_len}"


def _predictions(
    instance: Instance, rows: list[int], max_model_len: int
) -> list[int] | None:
    """The predictions of ``rows`` a policy sees: at most ``L - s_i + 1``."""
    pred = instance.predicted_output_tokens
    if pred is None:
        return None
    return [
        min(int(pred[i]), max_model_len - int(instance.prompt_tokens[i]) + 1)
        for i in rows
    ]


def check_peaks(
    instance: Instance, profile: DeploymentProfile, rows: list[int] | None = None
) -> None:
    """Raise InputError for the first request (of ``rows``) whose peak KV can
    never fit.

    A request's KV peaks at ``s_i + o_i - 1`` tokens (the decode step that emits
    its last token), at most ``max_model_len``; if those blocks exceed the
    replica's blocks, no schedule can finish it, whatever the policy.
    """
    b = profile.block_tokens
    capacity = profile.kv_capacity_blocks
    prompts, outputs = instance.prompt_tokens, instance.output_tokens
    for i in range(len(instance)) if rows is None else rows:
        peak = _peak(int(prompts[i]), int(outputs[i]), profile.max_model_len)
        if _blocks(peak, b) > capacity:
            raise InputError(
                f"request {i} needs {peak} KV tokens ({_blocks(peak, b)} blocks of "
                f"{b}) at its peak (prompt + output - 1), more than the capacity of "
                f"{profile.kv_capacity_tokens} tokens ({capacity} blocks); it can "
                "never complete",
                field="kv_capacity_tokens",
            )


# -- the host tier ---------------------------------------------------------------------
#
# Restated from the docstrings (lsched.tiers, lsched.policies.base "Swap preemption",
# lsched.evaluator.engine "Swaps"), not from the fast engine's code:
#
# - host blocks: capacity = memory_bytes // (block_tokens * kv_bytes_per_token); a
#   request swapped out with x tokens (its processed tokens) holds ceil(x / b) of
#   them from the start of its swap-out to the end of its swap-in; a swap-out whose
#   blocks do not fit is a policy error;
# - a copy of x tokens takes x * kv_bytes_per_token / bandwidth (d2h out, h2d in);
# - at a boundary t: land the asynchronous copies that ended by t + tolerance (by
#   end, ties in issue order), take the arrivals, call the policy; apply recompute
#   preemptions, then swap-outs, then swap-ins, each in the batch's order; the GPU
#   blocks held after the swaps (running requests and pinned) must fit; then the
#   iteration, checked as before with the pinned blocks counted;
# - blocking: a swap-out frees its GPU blocks at once and the request is swapped
#   (appended to the swapped list); a swap-in frees its host blocks and the request
#   runs at once (appended to the running list), and may be in the batch; the
#   iteration is longer by the copies' seconds (outs, then ins); a batch that swaps
#   must run an iteration;
# - async: a copy starts at max(t, the end of the last copy on its direction's
#   link); a swap-out leaves the running set at once, its GPU blocks pinned until
#   its copy ends, when it joins the swapped list; a swap-in's GPU blocks are taken
#   (pinned) at once, and when its copy ends its host blocks are freed and it runs
#   (appended to the running list). Meanwhile the request is in no list, and its
#   processed tokens read 0. While blocks are pinned the policy sees a capacity less
#   them. A replica with nothing to run idles to the next arrival, its policy's
#   wake time or the next copy's end, whichever comes first.
#
# Reading where the text leaves a choice: the policy is called at a boundary where
# some request is running, waiting, swapped or has a copy in flight (it may act on
# what lands); ``swapped_tokens`` is None in the view until a request first swaps.

# -- the prefix cache ------------------------------------------------------------------
#
# Restated from the docstrings of lsched.evaluator.prefix (rules 1-4) and
# lsched.prefix.cache (the cache's operations and eviction rules), not from their
# code:
#
# - a block is resident (pinned: referenced by k >= 1 running requests; or
#   evictable: k = 0, in an eviction list, least recently used first) or not; with
#   a capacity of its own the cache holds at most capacity_tokens // B blocks;
# - lookup: the leading run of a request's hashes that are resident;
# - acquire(hs): the evictable ones of hs leave the list (pinned, count 0 so far);
#   then in order each is counted once more, a missing one inserted, first evicting
#   the head of the list when the cache is full; with the list empty insertion
#   stops at k: the blocks of hs[k:] still at count 0 go back to the list's end in
#   the order of hs, and k is what was pinned;
# - release(hs): each count drops by one (hs in order for lru, reversed for
#   lru_tail_first); a block at 0 joins the end of the list;
# - an evictable block takes g = ceil(B / b) KV blocks; a pinned one none;
# - admission (after the preemptions, in batch order; the batch already checked as
#   the policy planned it): want = min(h B, s, T - 1); extra(x) = blocks(min(x + c,
#   T)) - blocks(c); S = capacity - pinned blocks - sum of blocks(planned after)
#   over the running and admitted requests, where planned after is processed + c
#   for a chunk (0 + c for an admission) and + 1 for a decode step; x = want if
#   extra(want) <= S, else B * floor(((blocks(c) + S) b - c) / B), at most want;
#   S -= extra(x); the request holds x tokens, pins its first ceil(x / B) blocks,
#   and its chunk becomes min(c, T - x);
# - before the iteration: KV = blocks after the iteration of the running requests
#   + pinned + g * evictable; over the capacity by e > 0: evict ceil(e / g) from
#   the list's head;
# - after the iteration: each prefill member in batch order pins the blocks it
#   completed and has not pinned (n_r once processed >= s, else floor(processed /
#   B), at most n_r), unless an earlier insertion stopped short for it since it was
#   admitted; then the requests that complete release theirs, in local id order;
#   a preempted request releases its blocks when it is preempted.
#
# With a host tier (host_capacity_tokens = M; rule 5 of lsched.evaluator.prefix):
#
# - a second cache of M // B blocks, same eviction rule, nothing pinned in it: a
#   write of blocks acquires them then releases them at once (each becomes the
#   most recently used; a missing one is inserted, evicting the least recently
#   used when full);
# - lookup: the leading run of hashes resident on the GPU or on the host;
# - an admission taking x > 0 tokens in k = ceil(x / B) blocks: those of its
#   first k blocks not resident on the GPU are copied, y = sum of min((j + 1) B,
#   x) - j B over them, taking y * kv_bytes_per_token / h2d_bytes_per_s seconds,
#   and written to the host in prefix order (before the GPU pins the k blocks);
#   its blocks written since its admission are then k;
# - the copies of an iteration's admissions lengthen it (before the forward
#   pass, one after the other);
# - after an iteration, each prefill member (before its GPU pins, and even if
#   its GPU insertions stopped) writes its completed blocks past those written;
#   a release resets what it has written to 0.
#
# With a KV pool (pool_capacity_tokens = M on a prefill pool of a disaggregated
# cluster; rule 6 of lsched.evaluator.prefix: Mooncake's KV pool over the DRAM of
# the pool's replicas), in place of each replica's host cache:
#
# - one cache of M // B blocks shared by the pool's replicas, same eviction rule,
#   nothing pinned in it, written as a host cache is; each resident block has a
#   home, the replica whose write inserted it (a write of a resident block makes
#   it the most recently used and keeps its home);
# - writes are the host tier's, each due at a time: a prefill member's completed
#   blocks at the end of the iteration that completed them, an admission's
#   copied blocks at the admission; the pool applies the writes due by t in the
#   order of their due times, then of their making, before each decision of a
#   replica at a boundary t and each router's read at t (every read at t sees
#   exactly the writes due by t: the replicas step earliest boundary first, ties
#   by id, so a write is made before its due time);
# - lookup: the leading run of hashes resident on the GPU or in the pool;
# - an admission taking x > 0 tokens in k = ceil(x / B) blocks copies those of
#   its first k blocks not resident on the GPU: of their tokens within x, y_l
#   homed at the admitting replica take y_l * kv_bytes_per_token /
#   h2d_bytes_per_s seconds and y_r homed at another replica take, if y_r > 0,
#   latency_s + y_r * kv_bytes_per_token / bandwidth_bytes_per_s over the
#   cluster's link from the pool to itself (an ideal one if it lists none); the
#   copies lengthen the admitting iteration as the host tier's do; the copied
#   blocks are written (homes kept) at the admission, then pinned on the GPU;
# - the metrics: host_hit_tokens sums y_l + y_r, host_copy_s the copies'
#   seconds, remote_hit_tokens sums y_r.
#
# A prefill or colocated replica of a cluster runs the host tier as above too
# (host_capacity_tokens: its own host cache), its writes applied at once.


class _NaiveCache:
    """One replica's prefix cache (the comment above), as plain lists and dicts;
    with a host tier (``host``) or a share of its pool's KV pool (``pool``, the
    replica being ``replica`` there)."""

    def __init__(
        self,
        hashes: list[list[int]],
        block: int,
        kv_block: int,
        eviction: str,
        capacity_tokens: int | None,
        host_capacity_tokens: int | None = None,
        pool: _NaivePool | None = None,
        replica: int = 0,
    ) -> None:
        self.hashes = hashes
        self.block = block
        self.charge = -(-block // kv_block)
        self.tail_first = eviction == "lru_tail_first"
        self.capacity = None if capacity_tokens is None else capacity_tokens // block
        self.refs: dict[int, int] = {}
        self.free: list[int] = []  # evictable, least recently used first
        m = len(hashes)
        self.pins = [0] * m
        self.stopped = [False] * m
        self.cached = [0] * m
        self.needed = 0
        self.evicted = 0
        self.cut = 0  # admissions whose offered hit did not fit whole
        self.dropped = 0  # blocks evicted by insertions into a full cache
        self.host: _NaiveCache | None = None
        if host_capacity_tokens is not None:
            self.host = _NaiveCache([], block, kv_block, eviction, host_capacity_tokens)
        self.pool = pool
        self.replica = replica
        self.written = [0] * m
        self.copied = 0  # tokens copied from the host tier or the pool
        self.remote = 0  # of those, tokens copied from another replica's share
        self.copy_s = 0.0
        self.pending_s = 0.0  # copies of the iteration being built

    @property
    def tiered(self) -> bool:
        """Whether blocks are also kept off the GPU (a host tier or a pool)."""
        return self.host is not None or self.pool is not None

    def resident(self, h: int) -> bool:
        return h in self.refs or h in self.free

    def anywhere(self, h: int) -> bool:
        """Resident on the GPU, on the host or in the pool (any home)."""
        if self.resident(h):
            return True
        if self.host is not None and self.host.resident(h):
            return True
        return self.pool is not None and self.pool.cache.resident(h)

    def own(self, h: int) -> bool:
        """Held by this replica itself: on its GPU, on its host, or in the pool
        homed here."""
        if self.pool is not None and self.pool.holds(h, self.replica):
            return True
        return self.resident(h) or (self.host is not None and self.host.resident(h))

    @staticmethod
    def run(hs: list[int], held: Callable[[int], bool]) -> int:
        """The leading run of ``hs`` for which ``held`` holds."""
        run = 0
        for h in hs:
            if not held(h):
                break
            run += 1
        return run

    def lookup(self, r: int) -> int:
        return self.run(self.hashes[r], self.anywhere)

    def sync(self, t: float) -> None:
        """A decision or a router's read at ``t``: the pool's writes due by then."""
        if self.pool is not None:
            self.pool.sync(t)

    def write(self, hs: list[int], due: float) -> None:
        """Write ``hs`` to the host cache now, or to the pool due at ``due``."""
        if self.pool is not None:
            self.pool.write(self.replica, hs, due)
            return
        assert self.host is not None
        self.host.unpin(hs[: self.host.acquire(hs)])

    def split(self, hs: list[int], x: int) -> tuple[int, int]:
        """Tokens within the first ``x`` of ``hs`` in blocks not on the GPU:
        (homed here or on the host, homed at another replica)."""
        big = self.block
        local = remote = 0
        for j, h in enumerate(hs[: -(-x // big)]):
            if self.resident(h):
                continue
            tokens = min((j + 1) * big, x) - j * big
            if self.pool is None or self.pool.home[h] == self.replica:
                local += tokens
            else:
                remote += tokens
        return local, remote

    def seconds(self, local: int, remote: int, bytes_per_token: int,
                h2d: float) -> float:  # fmt: skip
        """The copy of ``local`` tokens over host-to-device and ``remote`` ones
        over the pool's own link."""
        seconds = local * bytes_per_token / h2d
        if remote:
            assert self.pool is not None
            bandwidth = self.pool.bandwidth
            seconds += self.pool.latency_s + remote * bytes_per_token / bandwidth
        return seconds

    def copy_in(self, r: int, x: int, bytes_per_token: int, h2d: float,
                t: float) -> None:  # fmt: skip
        """The copy of admission ``r`` at ``t`` taking ``x`` tokens (before its
        pins), written to the tier at once."""
        k = -(-x // self.block)
        hs = self.hashes[r][:k]
        local, remote = self.split(hs, x)
        self.write([h for h in hs if not self.resident(h)], t)
        self.sync(t)
        self.written[r] = k
        self.copied += local + remote
        self.remote += remote
        seconds = self.seconds(local, remote, bytes_per_token, h2d)
        self.copy_s += seconds
        self.pending_s += seconds

    def fetch(self, hs: list[int], prompt: int, bytes_per_token: int,
              h2d: float) -> tuple[int, float]:  # fmt: skip
        """What an admission of a new request (``hs``, ``prompt`` tokens) would
        take now, ignoring room: min(h B, s - 1) tokens and their copy's
        seconds."""
        x = min(self.run(hs, self.anywhere) * self.block, prompt - 1)
        local, remote = self.split(hs, x)
        return x, self.seconds(local, remote, bytes_per_token, h2d)

    def acquire(self, hs: list[int]) -> int:
        for h in hs:
            if h in self.free:
                self.free.remove(h)
                self.refs[h] = 0
        for k, h in enumerate(hs):
            if h not in self.refs:
                full = self.capacity is not None and (
                    len(self.refs) + len(self.free) >= self.capacity
                )
                if full and not self.free:
                    for rest in hs[k:]:
                        if self.refs.get(rest) == 0:
                            del self.refs[rest]
                            self.free.append(rest)
                    return k
                if full:
                    self.free.pop(0)
                    self.dropped += 1
                self.refs[h] = 0
            self.refs[h] += 1
        return len(hs)

    def unpin(self, hs: list[int]) -> None:
        for h in reversed(hs) if self.tail_first else hs:
            self.refs[h] -= 1
            if self.refs[h] == 0:
                del self.refs[h]
                self.free.append(h)

    def release(self, r: int) -> None:
        self.unpin(self.hashes[r][: self.pins[r]])
        self.pins[r] = 0
        self.stopped[r] = False
        self.written[r] = 0

    def completed(self, r: int, processed: int, prompt: int, end: float) -> None:
        n = len(self.hashes[r])
        done = n if processed >= prompt else min(n, processed // self.block)
        if self.tiered and done > self.written[r]:
            self.write(self.hashes[r][self.written[r] : done], end)
            self.written[r] = done
        if self.stopped[r]:
            return
        if done > self.pins[r]:
            got = self.acquire(self.hashes[r][self.pins[r] : done])
            self.stopped[r] = got < done - self.pins[r]
            self.pins[r] += got

    def evict_to_fit(self, blocks: int, capacity: int) -> None:
        over = blocks + self.charge * len(self.free) - capacity
        if over > 0:
            k = -(-over // self.charge)
            assert k <= len(self.free), "eviction cannot make room: a policy bug"
            del self.free[:k]
            self.evicted += k


class _NaivePool:
    """A prefill pool's KV pool (the comment above :class:`_NaiveCache`): a cache
    of blocks no request pins, a home per resident block, the writes not yet
    applied."""

    def __init__(self, block: int, kv_block: int, eviction: str, capacity_tokens: int,
                 latency_s: float, bandwidth: float) -> None:  # fmt: skip
        self.cache = _NaiveCache([], block, kv_block, eviction, capacity_tokens)
        self.home: dict[int, int] = {}
        self.latency_s = latency_s
        self.bandwidth = bandwidth
        #: (due time, number in the order made, replica, hashes)
        self.writes: list[tuple[float, int, int, list[int]]] = []
        self.made = 0

    def write(self, replica: int, hs: list[int], due: float) -> None:
        self.made += 1
        self.writes.append((due, self.made, replica, hs))

    def sync(self, t: float) -> None:
        """Apply the writes due by ``t``: by due time, then in the order made."""
        due = sorted((w for w in self.writes if w[0] <= t), key=lambda w: w[:2])
        self.writes = [w for w in self.writes if w[0] > t]
        cache = self.cache
        for _, _, replica, hs in due:
            new = [h for h in hs if not cache.resident(h)]
            cache.unpin(hs[: cache.acquire(hs)])
            for h in new:
                if cache.resident(h):
                    self.home[h] = replica

    def holds(self, h: int, replica: int) -> bool:
        """Whether block ``h`` is in the pool, homed at ``replica``."""
        return self.cache.resident(h) and self.home[h] == replica


# Adapters, restated from lsched.adapters and lsched.evaluator.adapters:
# - a request's adapter is its name, "" for the base model (no adapter);
# - after a batch's admissions, the running requests use at most max_loras
#   distinct adapters, or the batch is refused (PolicyError);
# - before the iteration, each member's adapter (prefills, then decodes, in
#   batch order) that is not resident is loaded: into a free slot (slots of
#   them), else replacing the least recently used resident adapter that no
#   running request uses; then it becomes the most recently used;
# - a load takes size / h2d seconds, the loads one after the other, and the
#   iteration is longer by their sum; it also takes adapter_s per distinct
#   adapter of the batch and lora_token_s per token of a member with an
#   adapter (a prefill chunk's tokens, 1 per decode step);
# - the slots (slots x slot_bytes bytes) come out of the KV capacity:
#   ceil(bytes / kv_bytes_per_token) tokens fewer;
# - a merged batch (Batch.merged, dLoRA) has members of one adapter only, and is
#   charged no adapter_s or lora_token_s; the replica is then in that adapter's
#   mode, after any other batch unmerged (as it starts), and a batch that
#   changes the mode takes merge_switch_s more.
class _NaiveLora:
    """A replica's adapters: names per local request, the LRU list, the loads."""

    def __init__(self, spec: Any, names: list[str], profile: DeploymentProfile):
        self.names = names
        self.order: list[str] = []  # every adapter's name, sorted (codes())
        self.sizes = dict(spec.sizes or {})
        self.default_size = int(spec.size_bytes)
        self.max_loras = int(spec.max_loras)
        self.slots = self.max_loras if spec.slots is None else int(spec.slots)
        host = profile.host
        assert host is not None
        self.h2d = float(host.h2d_bytes_per_s)
        self.adapter_s = float(profile.iteration_time.adapter_s)
        self.lora_token_s = float(profile.iteration_time.lora_token_s)
        self.switch_s = float(profile.iteration_time.merge_switch_s)
        self.lru: list[str] = []  # least recently used first
        self.loads = 0
        self.load_s = 0.0
        self.mode = ""  # the merged adapter, "" unmerged
        self.switches = 0

    def codes(self) -> np.ndarray:
        """Per local request a number for its adapter (-1: none), for the view:
        its rank among the adapters named (``order``, else those of its
        requests; a replica whose requests come while it runs numbers them
        over the whole instance, so that a number keeps its adapter: dlora
        remembers the one it merged)."""
        order = self.order or sorted({a for a in self.names if a})
        return _frozen([order.index(a) if a else -1 for a in self.names], int)

    def before(self, members: list[int], running: list[int]) -> float:
        """The max_loras check and the loads of a batch; the loads' seconds."""
        used = {self.names[r] for r in running if self.names[r]}
        if len(used) > self.max_loras:
            raise PolicyError(f"running adapters {sorted(used)} > max_loras")
        seconds = 0.0
        for r in members:
            a = self.names[r]
            if not a:
                continue
            if a not in self.lru:
                if len(self.lru) == self.slots:
                    victims = [b for b in self.lru if b not in used]
                    if not victims:
                        raise PolicyError("no adapter slot to load into")
                    self.lru.remove(victims[0])
                seconds += self.sizes.get(a, self.default_size) / self.h2d
                self.loads += 1
            else:
                self.lru.remove(a)
            self.lru.append(a)
        self.load_s += seconds
        return seconds

    def cost(
        self, prefill: list[int], chunks: list[int], decode: list[int], merged: bool
    ) -> float:
        """The adapter columns' seconds of a batch, and a switch's."""
        tokens = [c for r, c in zip(prefill, chunks, strict=True) if self.names[r]]
        tokens += [1 for r in decode if self.names[r]]
        adapters = {self.names[r] for r in prefill + decode}
        mode = ""
        if merged:
            if len(adapters) != 1 or "" in adapters:
                raise PolicyError(f"a merged batch of adapters {sorted(adapters)}")
            mode = adapters.pop()
        seconds = 0.0
        if mode != self.mode:
            self.mode = mode
            self.switches += 1
            seconds = self.switch_s
        if merged:
            return seconds
        adapters.discard("")
        return (
            seconds + self.adapter_s * len(adapters) + self.lora_token_s * sum(tokens)
        )


def _adapter_names(instance: Instance, rows: list[int]) -> list[str]:
    """The adapter of each of ``rows`` ("" for the base model)."""
    if instance.adapter is None:
        return [""] * len(rows)
    return [str(instance.adapter[i]) for i in rows]


def _lora_profile(spec: Any, profile: DeploymentProfile) -> DeploymentProfile:
    """``profile`` less the KV the adapter slots take (the comment above)."""
    slots = spec.max_loras if spec.slots is None else spec.slots
    # with sizes, they name every adapter (size_bytes unused)
    largest = max(spec.sizes.values()) if spec.sizes else spec.size_bytes
    slot = largest if spec.slot_bytes is None else spec.slot_bytes
    taken = -(-slots * slot // profile.kv_bytes_per_token)
    return profile.replace(kv_capacity_tokens=profile.kv_capacity_tokens - taken)


class _Replica:
    """One replica's state and its iteration loop (local ids in arrival order)."""

    def __init__(
        self,
        rows: list[int],
        instance: Instance,
        profile: DeploymentProfile,
        policy: Policy,
        max_model_len: int | None = None,
    ) -> None:
        self.rows = rows
        self.profile = profile
        self.policy = policy
        #: L: a request stops once its sequence is longer (_length_capped)
        self.max_model_len = (
            profile.max_model_len if max_model_len is None else max_model_len
        )
        self.limits = ReplicaLimits(
            kv_capacity_blocks=profile.kv_capacity_blocks,
            block_tokens=profile.block_tokens,
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            max_model_len=profile.max_model_len,
        )
        self.arrival = [float(instance.arrival_s[i]) for i in rows]
        self.prompt = [int(instance.prompt_tokens[i]) for i in rows]
        self.output = [int(instance.output_tokens[i]) for i in rows]
        pred = _predictions(instance, rows, self.max_model_len)
        self.predicted = None if pred is None else _frozen(pred, int)
        prio = instance.priority
        self.priority = None if prio is None else _frozen(prio[rows].tolist(), int)
        tenant = instance.tenant
        self.tenant = None if tenant is None else _frozen(tenant[rows].tolist(), str)
        self.arrival_view = _frozen(self.arrival, float)
        self.prompt_view = _frozen(self.prompt, int)
        m = len(rows)
        self.status = [_WAITING] * m
        self.processed = [0] * m
        self.target = [0] * m
        self.emitted = [0] * m
        self.running: list[int] = []  # admission order, oldest first
        self.admitted_s = [math.nan] * m
        self.first_token_s = [math.nan] * m
        self.completion_s = [math.nan] * m
        self.token_s: list[list[float]] = [[] for _ in range(m)]  # every token
        self.preemptions = [0] * m
        self.recomputed = [0] * m
        self.iterations = 0
        self.busy_s = 0.0
        self.kv_token_seconds = 0.0
        self.max_kv_blocks = 0
        self.max_kv_tokens = 0
        self.max_decode = 0
        # the host tier (the comment above): its data from the profile, the
        # swapped list (swap-out order), per request the tokens it holds there and
        # its swaps, the copies in flight as [end, issue number, direction, request,
        # GPU blocks pinned], each link's last copy end, and the totals
        self.swap_mode = swap_mode(policy)
        if self.swap_mode not in ("blocking", "async"):
            raise InputError(
                f"got {self.swap_mode!r}; expected blocking or async", field="swap_mode"
            )
        host = profile.host
        assert host is not None
        self.kv_bytes_per_token = int(profile.kv_bytes_per_token)
        self.d2h_bytes_per_s = float(host.d2h_bytes_per_s)
        self.h2d_bytes_per_s = float(host.h2d_bytes_per_s)
        self.host_capacity = int(host.memory_bytes) // (
            profile.block_tokens * self.kv_bytes_per_token
        )
        self.host_used = 0
        self.swapped: list[int] = []
        self.swapped_tokens = [0] * m
        self.swap_outs = [0] * m
        self.swap_ins = [0] * m
        self.ever_swapped = False
        self.copies: list[list[Any]] = []
        self.issued = 0
        self.link_end = {_OUT: -math.inf, _IN: -math.inf}
        self.out_tokens = 0
        self.in_tokens = 0
        self.stall_s = 0.0
        self.max_host_blocks = 0
        self.async_waits = 0
        self.cache: _NaiveCache | None = None  # simulate_naive's prefix_cache
        self.lora: _NaiveLora | None = None  # simulate_naive's adapters

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        m = len(self.rows)
        done = 0
        t = self.arrival[0]
        while done < m:
            self._land(t)  # copies first, then arrivals, then the policy
            num_arrived = bisect.bisect_right(self.arrival, t + ARRIVAL_TOLERANCE_S)
            # arrived, neither running nor done; local ids are in arrival order
            waiting = [i for i in range(num_arrived) if self.status[i] == _WAITING]
            if not (self.running or waiting or self.swapped or self.copies):
                t = self.arrival[num_arrived]  # idle: done < m, so one is coming
                continue
            if self.copies:
                self.async_waits += 1
            batch = self.policy.decide(self._view(t, num_arrived, waiting))
            if not isinstance(batch, Batch):
                raise PolicyError(
                    f"decide() returned {type(batch).__name__}, not Batch"
                )
            self._preempt(_ids(batch.preempt, "preempt"))
            prefill = _ids(batch.prefill, "prefill")
            chunks = _ids(batch.prefill_tokens, "prefill_tokens")
            decode = _ids(batch.decode, "decode")
            stall = self._swaps(
                t,
                num_arrived,
                _ids(batch.swap_out, "swap_out"),
                _ids(batch.swap_in, "swap_in"),
                bool(prefill or decode),
            )
            if len(chunks) != len(prefill):
                raise PolicyError(
                    f"Batch.prefill has {len(prefill)} ids but prefill_tokens "
                    f"{len(chunks)} chunk sizes"
                )
            if not prefill and not decode:
                t = self._idle_until(t, num_arrived, batch.wake_at_s)
                continue
            self._validate(prefill, chunks, decode, num_arrived)
            t, done = self._iterate(
                t, prefill, chunks, decode, done, stall, bool(batch.merged)
            )

    def _view(self, t: float, num_arrived: int, waiting: list[int]) -> ReplicaView:
        limits = self.limits
        if self.lora is not None:
            limits = ReplicaLimits(
                kv_capacity_blocks=limits.kv_capacity_blocks,
                block_tokens=limits.block_tokens,
                max_num_seqs=limits.max_num_seqs,
                max_num_batched_tokens=limits.max_num_batched_tokens,
                max_model_len=limits.max_model_len,
                max_loras=self.lora.max_loras,
            )
        pinned = self.pinned_blocks()
        if pinned:  # a policy sees the blocks of copies in flight as lost capacity
            limits = ReplicaLimits(
                kv_capacity_blocks=limits.kv_capacity_blocks - pinned,
                block_tokens=limits.block_tokens,
                max_num_seqs=limits.max_num_seqs,
                max_num_batched_tokens=limits.max_num_batched_tokens,
                max_model_len=limits.max_model_len,
                max_loras=limits.max_loras,
            )
        return ReplicaView(
            now_s=t,
            iteration=self.iterations,
            num_arrived=num_arrived,
            running=_frozen(self.running, int),
            waiting=_frozen(waiting, int),
            arrival_s=self.arrival_view,
            prompt_tokens=self.prompt_view,
            predicted_output_tokens=self.predicted,
            emitted_tokens=_frozen(self.emitted, int),
            processed_tokens=_frozen(self.processed, int),
            prefill_target_tokens=_frozen(self.target, int),
            limits=limits,
            priority=self.priority,
            tenant=self.tenant,
            swapped=_frozen(self.swapped, int),
            swapped_tokens=(
                _frozen(self.swapped_tokens, int) if self.ever_swapped else None
            ),
            host_capacity_blocks=self.host_capacity,
            host_used_blocks=self.host_used,
            # the cache's own leading run of resident hashes, for lpm orderings
            cached_prefix=None if self.cache is None else self.cache.lookup,
            prefix_block_tokens=0 if self.cache is None else self.cache.block,
            adapter=None if self.lora is None else self.lora.codes(),
        )

    def _preempt(self, preempt: list[int]) -> None:
        """Recompute preemption, applied before the iteration (base.py)."""
        if len(set(preempt)) != len(preempt):
            raise PolicyError(f"Batch.preempt lists a request twice: {preempt}")
        for r in preempt:
            if r not in self.running:
                raise PolicyError(f"preempt of request {r}, which is not running")
        for r in preempt:
            self.running.remove(r)
            self.status[r] = _WAITING
            self.recomputed[r] += self.processed[r]
            self.preemptions[r] += 1
            self.processed[r] = 0
            if self.cache is not None:
                self.cache.release(r)

    def pinned_blocks(self) -> int:
        """Blocks taken by no running request: those of asynchronous copies in
        flight (a disaggregated prefill replica adds its KV on its way to a
        decode replica)."""
        return sum(copy[4] for copy in self.copies)

    # -- swaps ------------------------------------------------------------------------

    def _copy_s(self, tokens: int, bytes_per_s: float) -> float:
        """Seconds a copy of ``tokens`` KV tokens takes on a link."""
        return tokens * self.kv_bytes_per_token / bytes_per_s

    def _queue_copy(self, t: float, direction: int, r: int, tokens: int) -> None:
        """An asynchronous copy of request ``r``'s ``tokens`` issued at ``t``,
        FIFO on its direction's link, its GPU blocks pinned until it ends."""
        rate = self.d2h_bytes_per_s if direction == _OUT else self.h2d_bytes_per_s
        start = max(t, self.link_end[direction])
        end = start + self._copy_s(tokens, rate)
        self.link_end[direction] = end
        self.issued += 1
        blocks = _blocks(tokens, self.limits.block_tokens)
        self.copies.append([end, self.issued, direction, r, blocks])

    def _resume(self, r: int) -> None:
        """Swapped request ``r`` holds its KV on the GPU again and runs."""
        tokens = self.swapped_tokens[r]
        self.host_used -= _blocks(tokens, self.limits.block_tokens)
        self.in_tokens += tokens
        self.swap_ins[r] += 1
        self.swapped_tokens[r] = 0
        self.processed[r] = tokens
        self.status[r] = _RUNNING
        self.running.append(r)

    def _land(self, t: float) -> None:
        """The asynchronous copies that ended by the boundary ``t`` (within the
        arrival tolerance), by their ends, ties in issue order."""
        landed = sorted(c for c in self.copies if c[0] <= t + ARRIVAL_TOLERANCE_S)
        for copy in landed:
            self.copies.remove(copy)
            _, _, direction, r, _ = copy
            if direction == _OUT:
                self.swapped.append(r)  # its GPU blocks free with the copy
            else:
                self._resume(r)

    def _swaps(
        self,
        t: float,
        num_arrived: int,
        swap_out: list[int],
        swap_in: list[int],
        runs: bool,
    ) -> float:
        """Apply the batch's swap-outs, then its swap-ins, at the boundary ``t``
        (after its preemptions); the seconds blocking copies add to the iteration."""
        if not swap_out and not swap_in:
            return 0.0
        if self.cache is not None:
            raise PolicyError("a swap with a prefix cache")
        b = self.limits.block_tokens
        blocking = self.swap_mode == "blocking"
        stall = 0.0
        for r in swap_out:
            if not (0 <= r < num_arrived and r in self.running):
                raise PolicyError(f"swap-out of request {r}, which is not running")
            tokens = self.processed[r]
            need = _blocks(tokens, b)
            if self.host_used + need > self.host_capacity:
                raise PolicyError(
                    f"swap-out of request {r} ({tokens} tokens, {need} blocks): the "
                    f"host tier holds {self.host_used} of {self.host_capacity} blocks"
                )
            self.host_used += need
            self.out_tokens += tokens
            self.swap_outs[r] += 1
            self.ever_swapped = True
            self.running.remove(r)
            self.status[r] = _SWAPPED
            self.swapped_tokens[r] = tokens
            self.processed[r] = 0
            if blocking:
                self.swapped.append(r)
                stall += self._copy_s(tokens, self.d2h_bytes_per_s)
            else:
                self._queue_copy(t, _OUT, r, tokens)
        for r in swap_in:
            if not (0 <= r < num_arrived and r in self.swapped):
                raise PolicyError(f"swap-in of request {r}, which is not swapped")
            self.swapped.remove(r)
            tokens = self.swapped_tokens[r]
            if blocking:
                stall += self._copy_s(tokens, self.h2d_bytes_per_s)
                self._resume(r)
            else:
                self._queue_copy(t, _IN, r, tokens)
        if blocking and not runs:
            raise PolicyError(
                "a blocking swap with an empty batch: its copies need an iteration"
            )
        held = sum(_blocks(self.processed[r], b) for r in self.running)
        held += self.pinned_blocks()
        if held > self.limits.kv_capacity_blocks:
            raise PolicyError(
                f"{held} KV blocks after the swaps; capacity is "
                f"{self.limits.kv_capacity_blocks}"
            )
        self.max_host_blocks = max(self.max_host_blocks, self.host_used)
        return stall

    def _idle_until(self, t: float, num_arrived: int, wake_at_s: float | None) -> float:
        """An empty batch: idle until the next arrival or the policy's wake time."""
        events = []
        if num_arrived < len(self.arrival):
            events.append(self.arrival[num_arrived])
        # a copy in flight ends after t (it would have landed otherwise)
        events.extend(copy[0] for copy in self.copies)
        # a wake time not after now has passed already: calling again at the same
        # boundary would loop forever, so it does not count as an event
        if wake_at_s is not None and wake_at_s > t:
            events.append(float(wake_at_s))
        if not events:
            waiting = self.status[:num_arrived].count(_WAITING)
            raise PolicyError(
                f"policy stalled at t={t}: empty batch with {len(self.running)} "
                f"running and {waiting} waiting requests, no arrival to come and no "
                "wake time"
            )
        return min(events)

    def _validate(
        self, prefill: list[int], chunks: list[int], decode: list[int], num_arrived: int
    ) -> None:
        """Raise PolicyError unless the batch obeys every rule of base.py."""
        ids = prefill + decode
        for r in ids:
            if not 0 <= r < num_arrived:
                raise PolicyError(
                    f"unknown request id {r}: {num_arrived} requests have arrived"
                )
        if len(set(ids)) != len(ids):
            raise PolicyError(f"a request appears twice in the batch: {ids}")
        for r, c in zip(prefill, chunks, strict=True):
            if self.status[r] == _WAITING:
                limit = self.prompt[r] + self.emitted[r]
            elif self.status[r] == _RUNNING and self.processed[r] < self.target[r]:
                limit = self.target[r] - self.processed[r]
            else:
                raise PolicyError(
                    f"prefill of request {r}, which is neither waiting nor running "
                    "in its prefill"
                )
            if not 1 <= c <= limit:
                raise PolicyError(
                    f"prefill chunk of {c} tokens for request {r}; expected 1..{limit}"
                )
        for r in decode:
            # past its prefill: processed reached the target set at admission
            # (and grows beyond it by one per decode step)
            if self.status[r] != _RUNNING or self.processed[r] < self.target[r]:
                raise PolicyError(
                    f"decode of request {r}, which is not running past its prefill"
                )
        limits = self.limits
        if len(ids) > limits.max_num_seqs:
            raise PolicyError(
                f"{len(ids)} requests in the batch; max_num_seqs is "
                f"{limits.max_num_seqs}"
            )
        tokens = sum(chunks) + len(decode)
        if tokens > limits.max_num_batched_tokens:
            raise PolicyError(
                f"{tokens} prefill tokens + decode steps; max_num_batched_tokens is "
                f"{limits.max_num_batched_tokens}"
            )
        after = {r: self.processed[r] for r in self.running}
        for r, c in zip(prefill, chunks, strict=True):
            after[r] = self.processed[r] + c  # 0 + c for an admission
        for r in decode:
            after[r] += 1
        blocks = sum(_blocks(x, limits.block_tokens) for x in after.values())
        blocks += self.pinned_blocks()
        if blocks > limits.kv_capacity_blocks:
            raise PolicyError(
                f"{blocks} KV blocks after the iteration; capacity is "
                f"{limits.kv_capacity_blocks}"
            )

    def _planned_slack(
        self, prefill: list[int], chunks: list[int], decode: list[int]
    ) -> int:
        """KV blocks free after the iteration as the policy planned it (no
        admission holding anything yet; cached blocks not counted)."""
        after = {r: self.processed[r] for r in self.running}
        for r, c in zip(prefill, chunks, strict=True):
            after[r] = self.processed[r] + c
        for r in decode:
            after[r] += 1
        b = self.limits.block_tokens
        held = sum(_blocks(x, b) for x in after.values()) + self.pinned_blocks()
        return self.limits.kv_capacity_blocks - held

    def _take_cached(self, r: int, chunk: int, slack: int, t: float) -> tuple[int, int]:
        """Admission of ``r`` at ``t`` with the policy's ``chunk``: the cached
        tokens it takes (those that fit in ``slack``), its chunk left and the
        slack left."""
        cache = self.cache
        assert cache is not None
        b, big = self.limits.block_tokens, cache.block
        target = self.target[r]
        cache.needed += target
        want = min(cache.lookup(r) * big, self.prompt[r], target - 1)

        def extra(x: int) -> int:
            return _blocks(min(x + chunk, target), b) - _blocks(chunk, b)

        x = want
        if extra(x) > slack:
            x = min(want, ((_blocks(chunk, b) + slack) * b - chunk) // big * big)
            cache.cut += 1
        slack -= extra(x)
        if x:
            if cache.tiered:
                rate = self.h2d_bytes_per_s
                cache.copy_in(r, x, self.kv_bytes_per_token, rate, t)
            got = cache.acquire(cache.hashes[r][: -(-x // big)])
            cache.pins[r] = got
            cache.cached[r] += x
            self.processed[r] = x
        return min(chunk, target - x), slack

    def _iterate(
        self,
        t: float,
        prefill: list[int],
        chunks: list[int],
        decode: list[int],
        done: int,
        stall: float = 0.0,
        merged: bool = False,
    ) -> tuple[float, int]:
        """Run one validated iteration from time ``t``, longer by ``stall`` (the
        blocking copies before it); return its end and done."""
        # admission: a waiting request given a chunk starts running, in the order
        # the batch lists them; its target covers tokens emitted before a preemption
        chunks = list(chunks)
        slack = self._planned_slack(prefill, chunks, decode)
        for k, r in enumerate(prefill):
            if self.status[r] == _WAITING:
                self.status[r] = _RUNNING
                self.running.append(r)
                self.target[r] = self.prompt[r] + self.emitted[r]
                if math.isnan(self.admitted_s[r]):
                    self.admitted_s[r] = t
                if self.cache is not None:
                    chunks[k], slack = self._take_cached(r, chunks[k], slack, t)
        if self.cache is not None:  # make room in the KV before the iteration
            grows = dict(zip(prefill, chunks, strict=True)) | dict.fromkeys(decode, 1)
            held = sum(
                _blocks(self.processed[r] + grows.get(r, 0), self.limits.block_tokens)
                for r in self.running
            )
            self.cache.evict_to_fit(
                held + self.pinned_blocks(), self.limits.kv_capacity_blocks
            )
        p = sum(chunks)
        q = sum(
            c * (self.processed[r] + c) for r, c in zip(prefill, chunks, strict=True)
        )
        d = len(decode)
        k = sum(self.processed[r] + 1 for r in decode)  # own new token included
        phi = np.array([1.0, p, q, d, k, 1.0 if p > 0 else 0.0], dtype=np.float64)
        duration = float(self.profile.iteration_time_s(phi))
        if self.cache is not None and self.cache.pending_s:  # host-tier copies
            duration += self.cache.pending_s
            self.cache.pending_s = 0.0
        if stall:
            duration += stall
            self.stall_s += stall
        if self.lora is not None:
            duration += self.lora.cost(prefill, chunks, decode, merged)
            duration += self.lora.before(prefill + decode, self.running)
        end = t + duration

        emitting = []
        for r, c in zip(prefill, chunks, strict=True):
            self.processed[r] += c
            if self.processed[r] == self.target[r]:  # the chunk that ends the prefill
                emitting.append(r)
        for r in decode:
            self.processed[r] += 1
            emitting.append(r)
        if self.cache is not None:  # the blocks the prefills completed
            for r in prefill:
                self.cache.completed(r, self.processed[r], self.prompt[r], end)
        # KV held in this iteration: completing requests still hold theirs (DESIGN:
        # freed at the *end* of the completing iteration)
        kv_tokens = sum(self.processed[r] for r in self.running)
        kv_blocks = sum(
            _blocks(self.processed[r], self.limits.block_tokens) for r in self.running
        )
        finished = []
        for r in emitting:
            self.emitted[r] += 1
            self.token_s[r].append(end)
            if self.emitted[r] == 1:
                self.first_token_s[r] = end
            if self.emitted[r] == self.output[r] or _length_capped(
                self.prompt[r], self.emitted[r], self.max_model_len
            ):
                self.status[r] = _DONE
                self.running.remove(r)
                self.processed[r] = 0
                self.completion_s[r] = end
                done += 1
                finished.append(r)
        if self.cache is not None:
            for r in sorted(finished):
                self.cache.release(r)

        self.iterations += 1
        self.busy_s += duration
        self.kv_token_seconds += kv_tokens * duration
        self.max_kv_blocks = max(self.max_kv_blocks, kv_blocks)
        self.max_kv_tokens = max(self.max_kv_tokens, kv_tokens)
        self.max_decode = max(self.max_decode, d)
        return end, done


def _make(spec: Any, replica: int, profile: DeploymentProfile) -> Policy:
    """A fresh policy for ``replica``: ``spec.make(context)``, or ``spec.make()``
    for a test spec whose ``make`` takes nothing."""
    if not inspect.signature(spec.make).parameters:
        return spec.make()
    limits = ReplicaLimits(
        kv_capacity_blocks=profile.kv_capacity_blocks,
        block_tokens=profile.block_tokens,
        max_num_seqs=profile.max_num_seqs,
        max_num_batched_tokens=profile.max_num_batched_tokens,
        max_model_len=profile.max_model_len,
    )
    return spec.make(PolicyContext(replica, "pool0", limits))


def simulate_naive(
    instance: Instance,
    profile: DeploymentProfile,
    policy: PolicySpec | str,
    *,
    replicas: int | None = None,
    assignment: npt.ArrayLike | None = None,
    prefix_cache: tuple[str, int | None] | tuple[str, int | None, int] | None = None,
    adapters: Any = None,
) -> NaiveResult:
    """Replay ``instance`` on ``profile`` under ``policy``, one iteration at a time.

    Parameters
    ----------
    instance
        The requests.
    profile
        Deployment profile (cost model, KV capacity, limits).
    policy
        A :class:`PolicySpec` or a policy string such as ``"fcfs:chunked=false"``
        (anything with a ``make()`` giving a fresh policy also works, for tests of
        deliberately broken policies).
    replicas
        Number of replicas C; defaults to ``profile.replicas``.
    assignment
        Replica id of each request; by default request ``i`` goes to ``i % C``.
    prefix_cache
        ``(eviction rule, capacity_tokens or None[, host_capacity_tokens])``: a
        prefix cache on each replica (with a host tier given the third; the
        comment above :class:`_NaiveCache`), keyed by the instance's prefix
        hashes in blocks of its ``prefix_block_tokens`` (the profile's block
        size without it).
    adapters
        An :class:`~lsched.adapters.AdapterSpec` (its fields only): each
        replica serves the instance's adapters (the comment above
        :class:`_NaiveLora`).

    Raises
    ------
    InputError
        If a request's peak KV exceeds the capacity, or the assignment is invalid.
    PolicyError
        If the policy returns a batch that breaks a rule, or stalls.
    """
    spec = parse_policy(policy) if isinstance(policy, str) else policy
    if adapters is not None:
        profile = _lora_profile(adapters, profile)
    c = profile.replicas if replicas is None else int(replicas)
    if c < 1:
        raise InputError(f"got {c}; expected >= 1 replicas", field="replicas")
    n = len(instance)
    if assignment is None:
        where = np.arange(n, dtype=np.int64) % c
    else:
        where = np.asarray(assignment)
        if where.shape != (n,) or not np.issubdtype(where.dtype, np.integer):
            raise InputError(
                f"expected {n} integer replica ids, got shape {where.shape}",
                field="assignment",
            )
        if np.any((where < 0) | (where >= c)):
            raise InputError(f"expected replica ids in 0..{c - 1}", field="assignment")
        where = where.astype(np.int64)
    # a prompt over max_model_len is rejected at arrival: it reaches no replica
    # (the others keep the replica the dealing gave them)
    cap = profile.max_model_len
    rejected = tuple(_rejection(int(s), cap) for s in instance.prompt_tokens)
    where = np.where([bool(r) for r in rejected], -1, where).astype(np.int64)
    if all(rejected):
        raise InputError("every prompt is over max_model_len", field="max_model_len")
    check_peaks(instance, profile, np.flatnonzero(where >= 0).tolist())

    admitted = np.full(n, np.nan)
    first = np.full(n, np.nan)
    completion = np.full(n, np.nan)
    preemptions = np.zeros(n, dtype=np.int64)
    recomputed = np.zeros(n, dtype=np.int64)
    max_blocks = np.zeros(c, dtype=np.int64)
    max_tokens = np.zeros(c, dtype=np.int64)
    max_decode = np.zeros(c, dtype=np.int64)
    iterations, busy_s, kv_token_seconds = 0, 0.0, 0.0
    swap_outs = np.zeros(n, dtype=np.int64)
    swap_ins = np.zeros(n, dtype=np.int64)
    emitted = np.zeros(n, dtype=np.int64)
    max_host = np.zeros(c, dtype=np.int64)
    swap_out_bytes = swap_in_bytes = swap_stall_s = 0.0
    avoided = async_waits = 0
    cached = np.zeros(n, dtype=np.int64)
    needed = evicted = cut = host_hit = 0
    host_copy_s = 0.0
    adapter_loads, adapter_load_s, adapter_switches = 0, 0.0, 0
    tbt = np.full(n, math.nan)
    for k in range(c):
        # instance order is arrival order (ties by position): local ids follow it
        rows = np.flatnonzero(where == k).tolist()
        if not rows:
            continue
        replica = _Replica(rows, instance, profile, _make(spec, k, profile))
        if prefix_cache is not None:
            replica.cache = _naive_cache(instance, profile, rows, *prefix_cache)
        if adapters is not None:
            replica.lora = _NaiveLora(adapters, _adapter_names(instance, rows), profile)
        replica.run()
        if replica.lora is not None:
            adapter_loads += replica.lora.loads
            adapter_load_s += replica.lora.load_s
            adapter_switches += replica.lora.switches
        if replica.cache is not None:
            cached[rows] = replica.cache.cached
            needed += replica.cache.needed
            evicted += replica.cache.evicted
            cut += replica.cache.cut
            host_hit += replica.cache.copied
            host_copy_s += replica.cache.copy_s
        admitted[rows] = replica.admitted_s
        first[rows] = replica.first_token_s
        completion[rows] = replica.completion_s
        preemptions[rows] = replica.preemptions
        recomputed[rows] = replica.recomputed
        iterations += replica.iterations
        busy_s += replica.busy_s
        kv_token_seconds += replica.kv_token_seconds
        max_blocks[k] = replica.max_kv_blocks
        max_tokens[k] = replica.max_kv_tokens
        max_decode[k] = replica.max_decode
        swap_outs[rows] = replica.swap_outs
        swap_ins[rows] = replica.swap_ins
        emitted[rows] = replica.emitted
        tbt[rows] = [_naive_tbt(times) for times in replica.token_s]
        bytes_per_token = replica.kv_bytes_per_token
        swap_out_bytes += replica.out_tokens * bytes_per_token
        swap_in_bytes += replica.in_tokens * bytes_per_token
        swap_stall_s += replica.stall_s
        avoided += replica.out_tokens
        max_host[k] = replica.max_host_blocks
        async_waits += replica.async_waits
    return NaiveResult(
        replica=where,
        admitted_s=admitted,
        first_token_s=first,
        completion_s=completion,
        preemptions=preemptions,
        recomputed_tokens=recomputed,
        iterations=iterations,
        busy_s=busy_s,
        kv_token_seconds=kv_token_seconds,
        max_kv_blocks_seen=max_blocks,
        max_kv_tokens_seen=max_tokens,
        max_decode_steps=max_decode,
        swap_outs=swap_outs,
        swap_ins=swap_ins,
        swap_out_bytes=swap_out_bytes,
        swap_in_bytes=swap_in_bytes,
        swap_stall_s=swap_stall_s,
        recompute_avoided_tokens=avoided,
        max_host_blocks_seen=max_host,
        async_waits=async_waits,
        emitted_tokens=emitted,
        rejected=rejected,
        cached_tokens=None if prefix_cache is None else cached,
        prefill_tokens_needed=needed,
        evicted_blocks=evicted,
        cut_hits=cut,
        host_hit_tokens=host_hit,
        host_copy_s=host_copy_s,
        tbt_s=tbt,
        adapter_loads=adapter_loads,
        adapter_load_s=adapter_load_s,
        adapter_switches=adapter_switches,
    )


def _naive_tbt(times: list[float]) -> float:
    """Mooncake's TBT of one request from its tokens' times: the mean of its
    longest 10 % of gaps, one gap counted per started ten (1 to 10 gaps: the
    longest; 11 to 20: the two longest, ...); NaN with one token."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    if not gaps:
        return math.nan
    counted = 1 + (len(gaps) - 1) // 10
    longest = sorted(gaps)[len(gaps) - counted :]
    return sum(longest) / counted


def _naive_cache(
    instance: Instance,
    profile: DeploymentProfile,
    rows: list[int],
    eviction: str,
    capacity_tokens: int | None,
    host_capacity_tokens: int | None = None,
) -> _NaiveCache:
    """The prefix cache of a replica serving ``rows``."""
    offsets, values = instance.prefix_hash_offsets, instance.prefix_hash_values
    assert offsets is not None and values is not None
    hashes = [[int(h) for h in values[offsets[i] : offsets[i + 1]]] for i in rows]
    block = int(instance.params.get("prefix_block_tokens", profile.block_tokens))
    return _NaiveCache(hashes, block, profile.block_tokens, eviction, capacity_tokens,
                       host_capacity_tokens)  # fmt: skip


# -- disaggregated clusters ------------------------------------------------------------
#
# The semantics restated from the module docstring of lsched.evaluator.disagg (not from
# its code), one iteration at a time and with one global clock:
#
# - a request arrives at a_i and is routed to a prefill or colocated replica (or
#   rejected when its prompt is over L, the smallest max_model_len of the pools,
#   or when its peak KV min(s_i + o_i - 1, L) fits no decode replica); a prefill
#   replica serves it as a one-token request; every replica stops a request once
#   prompt + emitted > L (so one with s_i = L completes on its prefill replica);
# - at the end f_i of the iteration that finishes its prefill (o_i >= 2) the decode
#   router picks a decode replica d and its KV, s_i * kv_bytes_per_token bytes of
#   the prefill profile, goes over the link of the two pools: fifo (start at
#   max(f_i, the end of the transfer before it), the whole bandwidth) or share
#   (every transfer on the link gets bandwidth / k; computed here in exact rational
#   arithmetic); it arrives latency_s after leaving the link, at t_i;
# - until t_i the prefill replica keeps ceil(s_i / b) blocks pinned: a policy sees a
#   capacity less the pinned blocks, and a batch must fit beside them;
# - at d's first boundary at or after t_i, in delivery order, the request is adopted
#   running (processed = s_i, emitted = 1) if its blocks fit beside what d holds
#   (blocks reserved for KV on its way included) and d runs fewer than max_num_seqs
#   requests, else its KV is dropped (s_i tokens recomputed) and it waits with
#   emitted = 1, to be prefilled again (s_i + 1 tokens); the policy hears
#   adopt(ids).
#
# Pull (a decode pool with pull = theta): at f_i the request is routed to d and
# joins the tail of d's queue instead of leaving; its KV stays pinned on the prefill
# replica. d takes the head of its queue at each of its boundaries (once per
# boundary time, after adopting what arrived, before its policy decides; the
# boundary where its last request ends and the boundary of an empty decision
# count), or at once, at f_i, when it is idle then (no iteration in flight and no
# decision due by f_i + ARRIVAL_TOLERANCE_S), and keeps taking while
#   (a) reserved blocks + sum of ceil((s_r + emitted_r) / b) over its waiting
#       requests < theta * capacity blocks,
#   (b) ceil(s_i / b) <= capacity - (blocks of its running requests + reserved),
#   (c) running + taken-and-not-delivered < max_num_seqs.
# Taking reserves ceil(s_i / b) blocks on d (counted as pinned: against the
# capacity its policy sees and every batch) and starts the transfer then (start at
# max(take, the link's free time) on fifo; share from the take); at delivery the
# reservation is released and the request is adopted as above (a delivery is an
# event: KV taken at a boundary that arrives at once comes after that boundary's
# decision, and is adopted at d's next one). A request still in a queue at the end
# is an error (PolicyError).
#
# The clock: repeatedly take the earliest thing to happen. An event (an arrival, a
# transfer leaving a shared link, a delivery, a finished prefill) at time e comes
# before a replica's decision at boundary b when e <= b + ARRIVAL_TOLERANCE_S. Events
# at one time are taken in the order: transfers leaving a shared link, deliveries,
# finished prefills, arrivals; events of one kind at one time in the order they were
# made (finished prefills: made when the iteration that ends them is decided, so in
# the order their iterations started, replicas at one boundary by id, then batch
# order; deliveries: in the order their transfers started or left a shared link; a
# shared link's simultaneous departures by instance position). Replicas deciding at
# one time decide by id; a pulling replica's queue is in the order of its requests'
# finished-prefill events.
#
# Routers: round-robin (arrival i to entry replica i mod E over the prefill and
# colocated replicas in replica order; decode: i mod D over the decode replicas) and
# least-outstanding (fewest unfinished, ties to the lowest id). Unfinished at t: the
# requests routed to a replica less those finished; on a decode or colocated replica a
# request is finished once the iteration that completes it has started before t (the
# replica's state at its first boundary at or after t); on a prefill replica once
# its prefill ended by t (an iteration in flight at t has not finished its requests).
# A decode replica counts the requests on their way to it. random: entry replica
# default_rng([seed, i]).integers(E). prefix: the entry replica that holds the
# longest leading run of request i's hashes itself at t (on its GPU, on its host or
# in the pool homed there; the cache after every iteration that started before t,
# a pool's writes due by t applied), ties to least-outstanding's order. conductor:
# _NaiveConductor.
#
# Prefix cache (a prefill or colocated pool's prefix_cache): each such replica runs
# the cache of simulate_naive (_NaiveCache), its requests added as they reach it,
# with its host tier, or, on a prefill pool with pool_capacity_tokens, the pool's
# one KV pool (_NaivePool; the comment above _NaiveCache).

_DEPART, _DELIVER, _PREFILLED, _ARRIVAL = 0, 1, 2, 3
#: Routers the naive cluster engine implements.
NAIVE_ROUTERS = ("round-robin", "least-outstanding", "random", "prefix", "conductor")


@dataclass(frozen=True)
class NaiveDisaggResult:
    """What :func:`simulate_naive_cluster` returns, per request in instance order.

    ``replica`` is the prefill or colocated replica a request arrived at (-1:
    rejected, with its reason in ``rejected``); ``admitted_s`` and
    ``first_token_s`` are there; ``completion_s`` is where it completed (its decode
    replica unless it emits one token or ran colocated). ``decode_replica``,
    ``transfer_start_s``, ``transfer_end_s``, ``transferred_bytes`` and
    ``decode_admitted_s`` (admission or adoption on the decode replica) describe the
    second stage (-1, NaN, 0 without one). ``preemptions`` and
    ``recomputed_tokens`` add up both replicas (a dropped KV counts its ``s_i``).
    ``taken_s`` is when a pulling decode replica took the request (NaN when pushed),
    ``seatless_drops`` the KV dropped for want of a sequence slot alone (blocks
    that fit, ``max_num_seqs`` running), ``pull_stopped_by`` how often each pull
    rule (``threshold``, ``blocks``, ``slots``: (a)-(c)) stopped a pulling
    replica with requests to take: all for the tests' coverage counts.
    ``emitted_tokens``: the tokens each request emitted where it completed (0
    if rejected). ``cached_tokens``: the cached tokens each request took on its
    prefill or colocated replica (a pool's ``prefix_cache``; 0 without one).
    ``host_hit_tokens``, ``host_copy_s`` and ``remote_hit_tokens`` are the
    fast engine's metrics of those names (0 without a host tier or a KV pool);
    ``tier_evictions`` the blocks evicted from host tiers and KV pools, for the
    coverage counts.
    """

    replica: IntArray
    admitted_s: FloatArray
    first_token_s: FloatArray
    completion_s: FloatArray
    preemptions: IntArray
    recomputed_tokens: IntArray
    decode_replica: IntArray
    transfer_start_s: FloatArray
    transfer_end_s: FloatArray
    transferred_bytes: FloatArray
    decode_admitted_s: FloatArray
    rejected: tuple[str, ...]
    iterations: int
    busy_s: float
    taken_s: FloatArray
    emitted_tokens: IntArray
    seatless_drops: int
    pull_stopped_by: dict[str, int]
    cached_tokens: IntArray
    host_hit_tokens: int
    host_copy_s: float
    remote_hit_tokens: int
    tier_evictions: int


def _prefill_s(profile: DeploymentProfile, prompt: int, cached: int) -> float:
    """Seconds to prefill ``prompt`` tokens past ``cached`` alone: one iteration
    per chunk of ``max_num_batched_tokens``, attention over what precedes it."""
    total, done = 0.0, cached
    while done < prompt:
        c = min(profile.max_num_batched_tokens, prompt - done)
        phi = np.array([1.0, c, c * (done + c), 0.0, 0.0, 1.0])
        total += float(profile.iteration_time_s(phi))
        done += c
    return total


class _NaiveConductor:
    """``conductor:ttft_slo_s=S,tbt_slo_s=U`` restated from the docstring of
    :class:`lsched.routers.Conductor`: per entry replica, work = the copy of the
    cached tokens x = min(h B, s - 1) it would take (h: the run on its GPU, host
    or anywhere in its pool; :meth:`_Stage.prefix_fetch`) + the prefill of the
    s - x tokens past them alone; predicted TTFT = max(0, busy - t) + work; the
    smallest (then the lowest id), rejected over ``S``; then the predicted TBT,
    the least over the decode replicas (none: the chosen replica itself) of one
    decode iteration of u + 1 steps reading K + u + s + 1 KV tokens, (u, K) its
    unfinished requests (those on their way counted) and KV tokens held at t,
    rejected over ``U``; else busy = max(busy, t) + work."""

    def __init__(self, ttft_slo: float, tbt_slo: float) -> None:
        self.ttft_slo = ttft_slo
        self.tbt_slo = tbt_slo
        self.busy: dict[int, float] = {}

    def choose(
        self, entry: list[Any], decode: list[Any], i: int, t: float, s: int
    ) -> tuple[Any, str]:
        """The replica for request ``i`` (``s`` tokens) at ``t``, or None and
        the reason."""
        best = None
        for x in entry:
            cached, copy_s = x.prefix_fetch(i, t)
            work = copy_s + _prefill_s(x.profile, s, cached)
            ttft = max(0.0, self.busy.get(x.index, 0.0) - t) + work
            if best is None or ttft < best[0]:
                best = (ttft, work, x)
        assert best is not None
        ttft, work, x = best
        if ttft > self.ttft_slo:
            return None, "conductor: predicted TTFT over its SLO"
        tbt = min(
            _decode_step_s(y.profile, u + 1, kv + u + s + 1)
            for y in decode or [x]
            for u, kv in [y.load(t)]
        )
        if tbt > self.tbt_slo:
            return None, "conductor: predicted TBT over its SLO"
        self.busy[x.index] = max(self.busy.get(x.index, 0.0), t) + work
        return x, ""


def _decode_step_s(profile: DeploymentProfile, steps: int, kv_tokens: int) -> float:
    """One decode iteration of ``steps`` requests reading ``kv_tokens``."""
    phi = np.array([1.0, 0.0, 0.0, steps, kv_tokens, 0.0])
    return float(profile.iteration_time_s(phi))


def _drive(
    events: list[tuple[float, int, int, Any]],
    stages: list[Any],
    event: Callable[[float, int, Any], None],
    step: Callable[[Any], None],
) -> None:
    """The clock of the naive cluster loops: the earliest of the next event and
    the replica whose decision comes first (an event first within
    ``ARRIVAL_TOLERANCE_S``, replicas by id), until neither is left."""
    while True:
        t_event = events[0][0] if events else math.inf
        x = min(stages, key=lambda s: (s.next_s, s.index))
        if t_event == math.inf and x.next_s == math.inf:
            return
        if t_event <= x.next_s + ARRIVAL_TOLERANCE_S:
            t, kind, _, payload = heapq.heappop(events)
            event(t, kind, payload)
        else:
            step(x)


def _hashes(instance: Instance, i: int) -> list[int]:
    """Request ``i``'s prefix block hashes (none without any)."""
    offsets, values = instance.prefix_hash_offsets, instance.prefix_hash_values
    if offsets is None or values is None:
        return []
    return [int(h) for h in values[offsets[i] : offsets[i + 1]]]


class _Stage(_Replica):
    """One replica of a cluster, stepped one decision at a time by the clock of
    :func:`simulate_naive_cluster` (local ids in the order requests reach it)."""

    def __init__(self, index: int, pool: Any, instance: Instance,
                 tenants: tuple[str, ...] | None, max_model_len: int,
                 kv_pool: _NaivePool | None = None) -> None:  # fmt: skip
        profile = pool.profile
        limits = ReplicaLimits(
            kv_capacity_blocks=profile.kv_capacity_blocks,
            block_tokens=profile.block_tokens,
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            max_model_len=profile.max_model_len,
        )
        spec = pool.policy
        if inspect.signature(spec.make).parameters:
            policy = spec.make(PolicyContext(index, pool.name, limits, tenants))
        else:
            policy = spec.make()
        super().__init__([], instance, profile, policy, max_model_len)
        self.index = index
        self.role: str = pool.role
        self.pool: str = pool.name
        self.instance = instance
        self.carried: list[int] = []  # decode: KV tokens each request brings
        self.seen: list[bool] = []  # decode: adopted or dropped already
        self.pins: dict[int, int] = {}  # prefill: instance position -> blocks
        #: pulling decode: theta, the queue of (request, its prefill replica) not
        #: yet taken, the blocks reserved per request taken and not delivered, and
        #: the last boundary time it took at
        self.pull: float | None = getattr(pool, "pull", None)
        self.queue: list[tuple[int, _Stage]] = []
        self.reserved: dict[int, int] = {}
        self.took_at = -math.inf
        self.boundary_takes: list[int] = []  # what it took at its last step
        self.seatless_drops = 0  # KV dropped for want of a sequence slot alone
        #: pull: how often each of rules (a)-(c) stopped it taking (the first
        #: that failed)
        self.stopped_by = dict.fromkeys(("threshold", "blocks", "slots"), 0)
        self.next_s = math.inf  # its next decision (inf: none until an event)
        self.busy = False  # next_s is the end of an iteration it runs
        self.routed = 0  # requests a router sent here
        self.finished_at: list[float] = []  # end of each completing iteration
        spec = getattr(pool, "prefix_cache", None)
        if spec is not None:  # a prefill or colocated pool's prefix cache
            params = instance.params
            block = int(params.get("prefix_block_tokens", profile.block_tokens))
            self.cache = _NaiveCache(
                [], block, profile.block_tokens, spec.eviction, spec.capacity_tokens,
                spec.host_capacity_tokens, kv_pool, index,
            )  # fmt: skip

    def cached_run(self, i: int, t: float) -> int:
        """The leading run of request ``i``'s hashes this replica holds itself
        at ``t`` (0 without a cache)."""
        if self.cache is None:
            return 0
        self.cache.sync(t)
        return self.cache.run(_hashes(self.instance, i), self.cache.own)

    def prefix_fetch(self, i: int, t: float) -> tuple[int, float]:
        """The cached tokens request ``i`` would take here at ``t`` and their
        copy's seconds ((0, 0.0) without a cache)."""
        if self.cache is None:
            return 0, 0.0
        self.cache.sync(t)
        return self.cache.fetch(
            _hashes(self.instance, i),
            int(self.instance.prompt_tokens[i]),
            self.kv_bytes_per_token,
            self.h2d_bytes_per_s,
        )

    def load(self, t: float) -> tuple[int, int]:
        """(unfinished requests, KV tokens its running requests hold) at
        ``t``, as a router sees them."""
        return self.outstanding(t), sum(self.processed[r] for r in self.running)

    def pinned_blocks(self) -> int:
        return sum(self.pins.values()) + sum(self.reserved.values())

    def moves(self, i: int) -> bool:
        """Whether request ``i``, prefilled here, goes on to a decode replica."""
        instance = self.instance
        return _moves(
            int(instance.prompt_tokens[i]),
            int(instance.output_tokens[i]),
            self.max_model_len,
        )

    def idle_at(self, t: float) -> bool:
        """No iteration in flight at ``t`` and no decision due by ``t`` (within
        the arrival tolerance)."""
        return not self.busy and self.next_s > t + ARRIVAL_TOLERANCE_S

    def add(self, i: int, t: float, output: int, carried: int = 0) -> None:
        """Request ``i`` reaches this replica at ``t`` with ``output`` tokens to
        emit and ``carried`` tokens of KV."""
        self.rows.append(i)
        self.arrival.append(t)
        self.prompt.append(int(self.instance.prompt_tokens[i]))
        self.output.append(output)
        self.status.append(_WAITING)
        for column in (self.processed, self.target, self.emitted, self.preemptions,
                       self.recomputed, self.swapped_tokens, self.swap_outs,
                       self.swap_ins):  # fmt: skip
            column.append(0)
        for times in (self.admitted_s, self.first_token_s, self.completion_s):
            times.append(math.nan)
        self.token_s.append([])
        self.carried.append(carried)
        self.seen.append(carried == 0)
        if self.cache is not None:
            cache = self.cache
            cache.hashes.append(_hashes(self.instance, i))
            cache.pins.append(0)
            cache.stopped.append(False)
            cache.cached.append(0)
            cache.written.append(0)
        self.wake(t)

    def wake(self, t: float) -> None:
        """Something changed at ``t``: an idle replica decides then."""
        if not self.busy:
            self.next_s = min(self.next_s, t)

    def outstanding(self, t: float) -> int:
        """Unfinished requests as a router sees them at ``t``."""
        if self.role == "prefill":
            ended = sum(1 for end in self.finished_at if end <= t + ARRIVAL_TOLERANCE_S)
            return self.routed - ended
        return self.routed - len(self.finished_at)

    def _view(self, t: float, num_arrived: int, waiting: list[int]) -> ReplicaView:
        limits = self.limits
        pinned = self.pinned_blocks()
        if pinned or self.lora is not None:  # less the pinned blocks; max_loras
            limits = ReplicaLimits(
                kv_capacity_blocks=limits.kv_capacity_blocks - pinned,
                block_tokens=limits.block_tokens,
                max_num_seqs=limits.max_num_seqs,
                max_num_batched_tokens=limits.max_num_batched_tokens,
                max_model_len=limits.max_model_len,
                max_loras=None if self.lora is None else self.lora.max_loras,
            )
        instance, rows = self.instance, self.rows
        pred = _predictions(instance, rows, self.max_model_len)
        prio, tenant = instance.priority, instance.tenant
        return ReplicaView(
            now_s=t,
            iteration=self.iterations,
            num_arrived=num_arrived,
            running=_frozen(self.running, int),
            waiting=_frozen(waiting, int),
            arrival_s=_frozen(self.arrival, float),
            prompt_tokens=_frozen(self.prompt, int),
            predicted_output_tokens=None if pred is None else _frozen(pred, int),
            emitted_tokens=_frozen(self.emitted, int),
            processed_tokens=_frozen(self.processed, int),
            prefill_target_tokens=_frozen(self.target, int),
            limits=limits,
            priority=None if prio is None else _frozen(prio[rows], int),
            tenant=None if tenant is None else _frozen(tenant[rows], str),
            adapter=None if self.lora is None else self.lora.codes(),
        )

    def _adopt(self, t: float) -> None:
        """Adopt (or drop the KV of) every request delivered since the last
        boundary, in delivery order."""
        b = self.limits.block_tokens
        adopted = []
        for r in range(len(self.rows)):
            if self.seen[r]:
                continue
            self.seen[r] = True
            tokens = self.carried[r]
            self.emitted[r] = 1  # token 1 came from the prefill replica
            held = sum(_blocks(self.processed[x], b) for x in self.running)
            held += self.pinned_blocks()  # reserved for KV still on its way
            fits = held + _blocks(tokens, b) <= self.limits.kv_capacity_blocks
            if not fits or len(self.running) >= self.limits.max_num_seqs:
                self.recomputed[r] += tokens  # dropped: waits to be prefilled again
                self.seatless_drops += fits
                continue
            self.status[r] = _RUNNING
            self.processed[r] = tokens
            self.target[r] = self.prompt[r]
            self.admitted_s[r] = t
            self.running.append(r)
            adopted.append(r)
        adopt = getattr(self.policy, "adopt", None)
        if adopted and adopt is not None:
            adopt(adopted)

    def takes(self) -> list[int]:
        """Pull: the requests (instance positions) this replica takes now from
        the head of its queue, reserving their blocks (rules (a)-(c) above)."""
        assert self.pull is not None
        limits = self.limits
        b, capacity = limits.block_tokens, limits.kv_capacity_blocks
        taken = []
        while self.queue:
            i, _ = self.queue[0]
            reserved = sum(self.reserved.values())
            waiting = reserved + sum(
                _blocks(self.prompt[r] + self.emitted[r], b)
                for r in range(len(self.rows))
                if self.status[r] == _WAITING and self.seen[r]
            )
            held = reserved + sum(_blocks(self.processed[r], b) for r in self.running)
            need = _blocks(int(self.instance.prompt_tokens[i]), b)
            seqs = len(self.running) + len(self.reserved)  # running and awaited
            for rule, holds in (
                ("threshold", waiting < self.pull * capacity),
                ("blocks", need <= capacity - held),
                ("slots", seqs < limits.max_num_seqs),
            ):
                if not holds:
                    self.stopped_by[rule] += 1
                    return taken
            self.queue.pop(0)
            self.reserved[i] = need
            taken.append(i)
        return taken

    def step(self, t: float) -> list[int]:
        """Decide at the boundary ``t`` and run the batch for one iteration; the
        local ids that complete in it (batch order). A pulling replica's takes at
        ``t`` are left in :attr:`boundary_takes` for the clock."""
        self.busy = False
        self.next_s = math.inf
        self.boundary_takes = []
        if self.role == "decode":
            self._adopt(t)
        if self.pull is not None and t > self.took_at:  # once per boundary
            self.took_at = t
            self.boundary_takes = self.takes()
        m = len(self.rows)
        waiting = [r for r in range(m) if self.status[r] == _WAITING]
        if not self.running and not waiting:
            return []
        if self.cache is not None:  # a decision at t: the pool's writes by then
            self.cache.sync(t)
        batch = self.policy.decide(self._view(t, m, waiting))
        if not isinstance(batch, Batch):
            raise PolicyError(f"decide() returned {type(batch).__name__}, not Batch")
        if len(batch.swap_out) or len(batch.swap_in):
            raise ValueError("the naive cluster engine does not model swaps")
        self._preempt(_ids(batch.preempt, "preempt"))
        prefill = _ids(batch.prefill, "prefill")
        chunks = _ids(batch.prefill_tokens, "prefill_tokens")
        decode = _ids(batch.decode, "decode")
        if len(chunks) != len(prefill):
            raise PolicyError(
                f"Batch.prefill has {len(prefill)} ids but prefill_tokens "
                f"{len(chunks)} chunk sizes"
            )
        if not prefill and not decode:
            # idle until its wake time (one not after now has passed) or an event
            wake = batch.wake_at_s
            if wake is not None and wake > t:
                self.next_s = float(wake)
            return []
        self._validate(prefill, chunks, decode, m)
        end, _ = self._iterate(t, prefill, chunks, decode, 0, merged=bool(batch.merged))
        self.busy = True
        self.next_s = end
        done = [
            r
            for r in prefill + decode
            if self.status[r] == _DONE and self.completion_s[r] == end
        ]
        b = self.limits.block_tokens
        for r in done:
            self.finished_at.append(end)
            i = self.rows[r]
            if self.role == "prefill" and self.moves(i):
                self.pins[i] = _blocks(self.prompt[r], b)  # until its transfer ends
        return done


class _SharedLink:
    """The transfers on a ``share`` link, in exact rational arithmetic: each of
    the ``k`` active ones sends at ``bandwidth / k``."""

    def __init__(self, link: Any) -> None:
        self.bandwidth = Fraction(link.bandwidth_bytes_per_s)
        self.latency_s = float(link.latency_s)
        self.left: dict[int, Fraction] = {}  # request -> bytes still to send
        self.moves: dict[int, tuple[_Stage, _Stage]] = {}
        self.last = Fraction(0)
        self.version = 0

    def progress(self, t: Fraction) -> None:
        if self.left and t > self.last:
            sent = (t - self.last) * self.bandwidth / len(self.left)
            for i in self.left:
                self.left[i] -= sent
        self.last = max(self.last, t)

    def next_departure(self) -> Fraction | None:
        if not self.left:
            return None
        return self.last + min(self.left.values()) * len(self.left) / self.bandwidth


def simulate_naive_cluster(instance: Instance, cluster: Any) -> NaiveDisaggResult:
    """Replay ``instance`` on a disaggregated ``cluster`` (a
    :class:`lsched.cluster.Cluster` read as data), one iteration at a time with
    the policy called at every boundary (the rules in the comment above).

    Raises
    ------
    InputError
        If a router sends a request where it can never fit.
    PolicyError
        If a policy breaks a rule or stalls.
    ValueError
        For a router this engine does not implement (:data:`NAIVE_ROUTERS`).
    """
    for spec in (cluster.router, cluster.decode_router):
        if spec.name not in NAIVE_ROUTERS:
            raise ValueError(f"the naive engine has no router {spec.name!r}")
    n = len(instance)
    tenants = None
    if instance.tenant is not None:
        tenants = tuple(str(t) for t in np.unique(instance.tenant))
    cap = min(pool.profile.max_model_len for pool in cluster.pools)
    if all(int(s) > cap for s in instance.prompt_tokens):
        raise InputError("every prompt is over max_model_len", field="max_model_len")
    stages: list[_Stage] = []
    kv_pools = _naive_pools(instance, cluster)
    for pool in cluster.pools:
        for _ in range(pool.replicas):
            kv_pool = kv_pools.get(pool.name)
            stages.append(_Stage(len(stages), pool, instance, tenants, cap, kv_pool))
    entry = [x for x in stages if x.role in ("prefill", "colocated")]
    decode = [x for x in stages if x.role == "decode"]
    arrival = [float(a) for a in instance.arrival_s]
    prompt = [int(s) for s in instance.prompt_tokens]
    output = [int(o) for o in instance.output_tokens]

    replica = [-1] * n
    decode_replica = [-1] * n
    start_s = [math.nan] * n
    end_s = [math.nan] * n
    nbytes = [0.0] * n
    rejected = [""] * n
    taken_s = [math.nan] * n

    conductor = None
    if cluster.router.name == "conductor":
        params = cluster.router.params
        conductor = _NaiveConductor(params.ttft_slo_s, params.tbt_slo_s)
    events: list[tuple[float, int, int, Any]] = []
    counter = itertools.count()

    def push(t: float, kind: int, payload: Any) -> None:
        heapq.heappush(events, (t, kind, next(counter), payload))

    def fits(x: _Stage, tokens: int) -> bool:
        return _blocks(tokens, x.limits.block_tokens) <= x.limits.kv_capacity_blocks

    def choose(spec: Any, replicas: list[_Stage], i: int, t: float) -> _Stage:
        if spec.name == "round-robin":
            return replicas[i % len(replicas)]
        if spec.name == "random":  # a generator seeded with (seed, i) per request
            draw = np.random.default_rng([spec.params.seed, i]).integers(len(replicas))
            return replicas[int(draw)]
        if spec.name == "prefix":  # longest cached run, then fewest unfinished
            return min(
                replicas,
                key=lambda x: (-x.cached_run(i, t), x.outstanding(t), x.index),
            )
        return min(replicas, key=lambda x: (x.outstanding(t), x.index))

    def arrive(i: int) -> None:
        t = arrival[i]
        rejected[i] = _rejection(prompt[i], cap)
        if rejected[i]:
            return
        peak = _peak(prompt[i], output[i], cap)
        if _moves(prompt[i], output[i], cap) and not any(fits(d, peak) for d in decode):
            rejected[i] = f"peak KV {peak} tokens fits no decode replica"
            return
        if conductor is not None:
            x, rejected[i] = conductor.choose(entry, decode, i, t, prompt[i])
            if x is None:
                return
        else:
            x = choose(cluster.router, entry, i, t)
        need = prompt[i] if x.role == "prefill" else peak
        if not fits(x, need):
            raise InputError(
                f"the router sent request {i} to replica {x.index}, where its "
                f"{need} tokens never fit",
                field="router",
            )
        replica[i] = x.index
        x.routed += 1
        x.add(i, t, 1 if x.role == "prefill" else output[i])

    fifo_free: dict[tuple[str, str], float] = {}
    shared: dict[tuple[str, str], _SharedLink] = {}

    def reschedule(state: _SharedLink) -> None:
        state.version += 1
        when = state.next_departure()
        if when is not None:
            push(float(when), _DEPART, (state, state.version, when))

    def prefilled(t: float, x: _Stage, i: int) -> None:
        d = choose(cluster.decode_router, decode, i, t)
        peak = _peak(prompt[i], output[i], cap)
        if not fits(d, peak):
            raise InputError(
                f"the decode router sent request {i} to replica {d.index}, where "
                f"its peak KV of {peak} tokens never fits",
                field="decode_router",
            )
        decode_replica[i] = d.index
        d.routed += 1  # on its way there: counted at once
        if d.pull is None:
            send(t, i, x, d)
            return
        d.queue.append((i, x))  # pull: it waits for d to take it
        if d.idle_at(t):
            take(t, d)

    def take(t: float, d: _Stage) -> None:
        """Pull: ``d`` takes what it may from its queue at ``t``."""
        sources = dict(d.queue)
        for i in d.takes():
            taken_s[i] = t
            send(t, i, sources[i], d)

    def send(t: float, i: int, x: _Stage, d: _Stage) -> None:
        """Request ``i``'s KV leaves prefill replica ``x`` for ``d`` at ``t``."""
        size = float(prompt[i] * x.profile.kv_bytes_per_token)
        nbytes[i] = size
        link = cluster.link(x.pool, d.pool)
        key = (x.pool, d.pool)
        bandwidth = float(link.bandwidth_bytes_per_s)
        if link.sharing == "fifo" or math.isinf(bandwidth):
            start = max(t, fifo_free.get(key, -math.inf))
            fifo_free[key] = start + size / bandwidth
            start_s[i] = start
            push(fifo_free[key] + float(link.latency_s), _DELIVER, (i, x, d))
            return
        start_s[i] = t
        state = shared.setdefault(key, _SharedLink(link))
        state.progress(Fraction(t))
        state.left[i] = Fraction(size)
        state.moves[i] = (x, d)
        reschedule(state)

    def depart(t: float, state: _SharedLink, version: int, when: Fraction) -> None:
        if version != state.version:
            return  # the link changed since this departure was planned
        state.progress(when)
        for i in sorted(j for j, left in state.left.items() if left <= 0):
            del state.left[i]
            x, d = state.moves.pop(i)
            push(t + state.latency_s, _DELIVER, (i, x, d))
        reschedule(state)

    def deliver(t: float, i: int, x: _Stage, d: _Stage) -> None:
        del x.pins[i]
        x.wake(t)
        end_s[i] = t
        d.reserved.pop(i, None)  # pull: the reservation becomes its own blocks
        d.add(i, t, output[i], prompt[i])

    def event(t: float, kind: int, payload: Any) -> None:
        if kind == _ARRIVAL:
            arrive(payload)
        elif kind == _PREFILLED:
            prefilled(t, *payload)
        elif kind == _DELIVER:
            deliver(t, *payload)
        else:
            depart(t, *payload)

    def step(x: _Stage) -> None:
        t = x.next_s
        sources = dict(x.queue)
        done = x.step(t)
        for i in x.boundary_takes:
            taken_s[i] = t
            send(t, i, sources[i], x)
        for r in done:
            i = x.rows[r]
            if x.role == "prefill" and x.moves(i):
                push(x.completion_s[r], _PREFILLED, (x, i))

    for i in range(n):
        push(arrival[i], _ARRIVAL, i)
    _drive(events, stages, event, step)
    for x in stages:
        if x.queue:
            raise PolicyError(
                f"{len(x.queue)} prefilled request(s) were never taken by pulling "
                f"decode replica {x.index}"
            )
    for x in stages:
        if any(status != _DONE for status in x.status):
            raise PolicyError(
                f"replica {x.index} stalled: requests left unfinished with nothing "
                "left to wait for"
            )

    admitted = [math.nan] * n
    first = [math.nan] * n
    completion = [math.nan] * n
    decode_admitted = [math.nan] * n
    preemptions = [0] * n
    recomputed = [0] * n
    emitted = [0] * n
    cached = [0] * n
    for x in stages:
        for r, i in enumerate(x.rows):
            if x.cache is not None:
                cached[i] += x.cache.cached[r]
            if x.role == "decode":
                decode_admitted[i] = x.admitted_s[r]
                completion[i] = x.completion_s[r]
                emitted[i] = x.emitted[r]
            else:
                admitted[i] = x.admitted_s[r]
                first[i] = x.first_token_s[r]
                if x.role == "colocated" or not x.moves(i):
                    completion[i] = x.completion_s[r]
                    emitted[i] = x.emitted[r]
            preemptions[i] += x.preemptions[r]
            recomputed[i] += x.recomputed[r]
    return NaiveDisaggResult(
        replica=_frozen(replica, np.int64),
        admitted_s=_frozen(admitted, np.float64),
        first_token_s=_frozen(first, np.float64),
        completion_s=_frozen(completion, np.float64),
        preemptions=_frozen(preemptions, np.int64),
        recomputed_tokens=_frozen(recomputed, np.int64),
        decode_replica=_frozen(decode_replica, np.int64),
        transfer_start_s=_frozen(start_s, np.float64),
        transfer_end_s=_frozen(end_s, np.float64),
        transferred_bytes=_frozen(nbytes, np.float64),
        decode_admitted_s=_frozen(decode_admitted, np.float64),
        rejected=tuple(rejected),
        iterations=sum(x.iterations for x in stages),
        busy_s=sum(x.busy_s for x in stages),
        taken_s=_frozen(taken_s, np.float64),
        emitted_tokens=_frozen(emitted, np.int64),
        seatless_drops=sum(x.seatless_drops for x in stages),
        pull_stopped_by={
            rule: sum(x.stopped_by[rule] for x in stages)
            for rule in ("threshold", "blocks", "slots")
        },
        cached_tokens=_frozen(cached, np.int64),
        **_naive_copies(stages, list(kv_pools.values())),
    )


def _naive_pools(instance: Instance, cluster: Any) -> dict[str, _NaivePool]:
    """The KV pool of every prefill pool with ``pool_capacity_tokens``, by pool
    name, with the cluster's link from the pool to itself."""
    pools = {}
    for pool in cluster.pools:
        spec = pool.prefix_cache
        if spec is None or spec.pool_capacity_tokens is None:
            continue
        link = cluster.link(pool.name, pool.name)
        profile = pool.profile
        block = int(instance.params.get("prefix_block_tokens", profile.block_tokens))
        pools[pool.name] = _NaivePool(
            block, profile.block_tokens, spec.eviction, spec.pool_capacity_tokens,
            float(link.latency_s), float(link.bandwidth_bytes_per_s),
        )  # fmt: skip
    return pools


def _naive_copies(stages: list[_Stage], pools: list[_NaivePool]) -> dict[str, Any]:
    """The prefix copies' totals over the replicas: tokens copied from a host
    tier or a pool, their seconds, tokens copied from another replica; and the
    blocks evicted from the host tiers and the pools."""
    caches = [x.cache for x in stages if x.cache is not None]
    tiers = [c.host for c in caches if c.host is not None]
    return {
        "host_hit_tokens": sum(c.copied for c in caches),
        "host_copy_s": sum(c.copy_s for c in caches),
        "remote_hit_tokens": sum(c.remote for c in caches),
        "tier_evictions": sum(c.dropped for c in tiers + [p.cache for p in pools]),
    }


# Live migration, restated from the docstring of lsched.evaluator.migration (with
# Llumnix's migration_coordinator.py): request i decoding on replica A moves to
# B from t0 (a move the fast run's migrator decided: this engine replays the
# starts, and computes every stage itself). Stage k starts at A's first boundary
# at or after t0 (k = 1) or the previous stage's end; there i holds h blocks on
# A, c of them copied, x = h - c not. It aborts if i no longer runs on A (done,
# or preempted since t0) or if max_stages stages were copied already. x <=
# last_stage_blocks: the last stage, A stops i there (its blocks pinned on A)
# and copies x blocks; else a live stage copies x - 1 blocks. B reserves the
# stage's blocks at its start (pinned: counted against its capacity), or the
# move aborts (B frees its reservation, i stays on A). A stage of y bytes
# (blocks * b * kv_bytes_per_token of A) ends latency_s + y / bandwidth after
# its start. At the end e of the last stage A frees i's blocks and i reaches B
# with s_i + E - 1 tokens of KV and E tokens emitted; B adopts it running at
# its first boundary at or after e (first token and admission kept; its blocks
# stay reserved until then and become its own), unless B
# runs max_num_seqs requests, its blocks do not fit, or its adapter would make
# B's running requests' adapters more than max_loras (then the KV is dropped,
# recomputed, and i waits to be prefilled again). With adapters, i keeps its
# adapter: B loads it by the adapter rules above when a batch first needs it.
# Downtime: e - the last stage's start. Simultaneous events: stage ends, then
# starts, then arrivals.
_STAGE_END, _MOVE, _ARRIVE = 0, 1, 2


@dataclass(frozen=True)
class NaiveMigrationResult:
    """What :func:`simulate_naive_migration` returns, per request in instance
    order: its first token and completion (wherever they happened), the moves
    it completed and aborted, the bytes its stages copied and its downtime;
    with adapters, the loads of every replica and their seconds."""

    first_token_s: FloatArray
    completion_s: FloatArray
    migrations: IntArray
    migration_aborts: IntArray
    migrated_bytes: FloatArray
    migration_downtime_s: FloatArray
    emitted_tokens: IntArray
    adapter_loads: int = 0
    adapter_load_s: float = 0.0


class _Mover(_Stage):
    """A colocated replica that lets requests leave and adopts those that
    arrive with their KV and tokens (:func:`simulate_naive_migration`)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        #: local id -> (tokens emitted, first token's time, admission) carried
        self.moved_in: dict[int, tuple[int, float, float]] = {}

    def add(self, i: int, t: float, output: int, carried: int = 0) -> None:
        super().add(i, t, output, carried)
        if self.lora is not None:  # its adapter comes with it
            self.lora.names.append(_adapter_names(self.instance, [i])[0])

    def adapter_room(self, r: int) -> bool:
        """Whether ``r`` may join the running requests within max_loras."""
        lora = self.lora
        if lora is None or not lora.names[r]:
            return True
        used = {lora.names[q] for q in self.running if lora.names[q]}
        return len(used | {lora.names[r]}) <= lora.max_loras

    def local(self, i: int) -> int:
        """Request ``i``'s latest local id here."""
        return len(self.rows) - 1 - self.rows[::-1].index(i)

    def boundary(self, t: float) -> float:
        """This replica's first boundary at or after ``t`` (it sits there)."""
        return max(t, self.next_s) if self.busy else t

    def held_blocks(self) -> int:
        b = self.limits.block_tokens
        return sum(_blocks(self.processed[r], b) for r in self.running) + (
            self.pinned_blocks()
        )

    def step(self, t: float) -> list[int]:
        b = self.limits.block_tokens
        for r, (emitted, first, admitted) in sorted(self.moved_in.items()):
            if self.seen[r]:
                continue
            self.seen[r] = True
            self.reserved.pop(self.rows[r])  # its own blocks from now on
            tokens = self.carried[r]
            self.emitted[r] = emitted
            self.first_token_s[r] = first
            fits = self.held_blocks() + _blocks(tokens, b) <= (
                self.limits.kv_capacity_blocks
            )
            room = len(self.running) < self.limits.max_num_seqs
            if not (fits and room and self.adapter_room(r)):
                self.recomputed[r] += tokens  # dropped: prefilled again
                continue
            self.status[r] = _RUNNING
            self.processed[r] = tokens
            self.target[r] = self.prompt[r]
            self.admitted_s[r] = admitted
            self.running.append(r)
        return super().step(t)


@dataclass
class _NaiveMove:
    i: int
    source: _Mover
    target: _Mover
    preemptions: int
    stages: int = 0
    copied: int = 0
    last: bool = False
    stopped_s: float = math.nan
    tokens: int = 0
    emitted: int = 0


def simulate_naive_migration(
    instance: Instance,
    cluster: Any,
    where: npt.ArrayLike,
    starts: list[tuple[int, int, int, float]],
    last_stage_blocks: int,
    max_stages: int,
) -> NaiveMigrationResult:
    """Replay ``instance`` on a colocated ``cluster``, request ``i`` routed to
    ``where[i]`` (-1: rejected), with the migrations ``starts`` (request, source,
    target, t0), one iteration at a time (the rules in the comment above)."""
    n = len(instance)
    stages = _movers(instance, cluster)
    output = [int(o) for o in instance.output_tokens]
    moved, aborts = [0] * n, [0] * n
    nbytes, down = [0.0] * n, [0.0] * n
    events: list[tuple[float, int, int, Any]] = []
    counter = itertools.count()

    def push(t: float, kind: int, payload: Any) -> None:
        heapq.heappush(events, (t, kind, next(counter), payload))

    def stage(move: _NaiveMove, t: float) -> None:
        a, b = move.source, move.target
        r = a.local(move.i)
        if (a.status[r] != _RUNNING or a.preemptions[r] != move.preemptions
                or move.stages >= max_stages):  # fmt: skip
            abort(move, t)
            return
        block = a.limits.block_tokens
        start = a.boundary(t)
        uncopied = _blocks(a.processed[r], block) - move.copied
        last = uncopied <= last_stage_blocks
        blocks = uncopied if last else uncopied - 1
        if b.held_blocks() + blocks > b.limits.kv_capacity_blocks:
            abort(move, t)
            return
        if last:  # A stops it: its blocks stay taken, pinned, until the end
            move.tokens, move.emitted = a.processed[r], a.emitted[r]
            a.pins[move.i] = _blocks(a.processed[r], block)
            a.running.remove(r)
            a.status[r] = _DONE
            move.stopped_s = start
        b.reserved[move.i] = b.reserved.get(move.i, 0) + blocks
        move.copied += blocks
        move.stages += 1
        move.last = last
        size = float(blocks * block * a.profile.kv_bytes_per_token)
        nbytes[move.i] += size
        link = cluster.link(a.pool, b.pool)
        seconds = size / float(link.bandwidth_bytes_per_s)
        push(start + float(link.latency_s) + seconds, _STAGE_END, move)

    def abort(move: _NaiveMove, t: float) -> None:
        move.target.reserved.pop(move.i, None)
        move.target.wake(t)
        aborts[move.i] += 1

    def land(move: _NaiveMove, t: float) -> None:
        a, b, i = move.source, move.target, move.i
        r = a.local(i)
        del a.pins[i]
        a.wake(t)
        b.add(i, t, output[i], move.tokens)  # reserved until it is adopted
        b.moved_in[len(b.rows) - 1] = (
            move.emitted,
            a.first_token_s[r],
            a.admitted_s[r],
        )
        moved[i] += 1
        down[i] += t - move.stopped_s

    for i in range(n):
        if where[i] >= 0:
            push(float(instance.arrival_s[i]), _ARRIVE, i)
    for i, source, target, t0 in starts:
        push(t0, _MOVE, (i, source, target))

    def event(t: float, kind: int, payload: Any) -> None:
        if kind == _ARRIVE:
            stages[int(where[payload])].add(payload, t, output[payload])
        elif kind == _MOVE:
            i, source, target = payload
            a = stages[source]
            move = _NaiveMove(i, a, stages[target], a.preemptions[a.local(i)])
            stage(move, t)
        elif payload.last:
            land(payload, t)
        else:
            stage(payload, t)

    _drive(events, stages, event, lambda x: x.step(x.next_s))
    return _naive_migration_result(stages, n, moved, aborts, nbytes, down)


def _movers(instance: Instance, cluster: Any) -> list[_Mover]:
    """A :class:`_Mover` per replica of ``cluster``, with its pool's adapters
    (the pool's profile has their slots out already), numbered over the
    instance."""
    cap = min(pool.profile.max_model_len for pool in cluster.pools)
    names = _adapter_names(instance, list(range(len(instance))))
    every = sorted({a for a in names if a})
    stages: list[_Mover] = []
    for pool in cluster.pools:
        for _ in range(pool.replicas):
            stages.append(_Mover(len(stages), pool, instance, None, cap))
            if pool.adapters is not None:
                stages[-1].lora = _NaiveLora(pool.adapters, [], pool.profile)
                stages[-1].lora.order = every
    return stages


def _naive_migration_result(
    stages: list[_Mover],
    n: int,
    moved: list[int],
    aborts: list[int],
    nbytes: list[float],
    down: list[float],
) -> NaiveMigrationResult:
    """Each request's first token (its first replica's) and completion (where it
    completed), with the migration counts of the run."""
    first, completion = [math.nan] * n, [math.nan] * n
    emitted = [0] * n
    for x in stages:
        for r, i in enumerate(x.rows):
            if math.isnan(first[i]):
                first[i] = x.first_token_s[r]
            if not math.isnan(x.completion_s[r]):
                completion[i] = x.completion_s[r]
                emitted[i] = x.emitted[r]
    return NaiveMigrationResult(
        first_token_s=_frozen(first, np.float64),
        completion_s=_frozen(completion, np.float64),
        migrations=_frozen(moved, np.int64),
        migration_aborts=_frozen(aborts, np.int64),
        migrated_bytes=_frozen(nbytes, np.float64),
        migration_downtime_s=_frozen(down, np.float64),
        emitted_tokens=_frozen(emitted, np.int64),
        adapter_loads=sum(x.lora.loads for x in stages if x.lora is not None),
        adapter_load_s=sum(x.lora.load_s for x in stages if x.lora is not None),
    )
