"""Disaggregated prefill and decode: prefill pools, decode pools and the links
between them (DESIGN.md, "Clusters"; DistServe, Splitwise).

The life of request ``i`` (prompt ``s_i``, output ``o_i``) in a cluster with
prefill and decode pools:

1. It arrives at ``a_i`` and the cluster's router sends it to a prefill (or
   colocated) replica. A prefill replica serves it as a one-token request: the
   iteration that finishes its prompt emits token 1 at ``f_i``. A colocated
   replica serves it whole, as in a colocated cluster.
2. At ``f_i`` (``o_i >= 2``) the decode router picks a decode replica ``d``; its
   KV, ``x_i = s_i * kv_bytes_per_token`` bytes of the prefill profile, goes over
   the :class:`~lsched.cluster.Link` of the two pools. On a ``fifo`` link the
   transfer starts at ``max(f_i, the end of the transfer before it)`` and holds the
   link for ``x_i / bandwidth``; on a ``share`` link every transfer starts at once
   and the ``k`` transfers on the link each get ``bandwidth / k``. It arrives
   ``latency_s`` after leaving the link, at ``t_i``. Until ``t_i`` the prefill
   replica keeps its blocks (``ceil(s_i / b)``, pinned in its ledger: they count
   against its capacity and its admissions; its policy sees a capacity less the
   pinned blocks).
3. At its first boundary at or after ``t_i`` the decode replica adopts the
   request already prefilled (``processed = s_i``, ``emitted = 1``, running) if its
   blocks fit beside what the replica holds and it runs fewer than
   ``max_num_seqs`` requests; the policy then decodes it like any running request
   (one that keeps state about its admissions learns of it through an optional
   ``adopt(ids)``). Otherwise the KV is dropped (its ``s_i`` tokens counted as
   recomputed) and the request waits on the decode replica to be prefilled again
   (``s_i + 1`` tokens), like a request preempted by recompute. It completes there
   at ``c_i``.

*Prefix cache.* A prefill (or colocated) pool may have a ``prefix_cache``; a
decode pool may not. Its replicas run the cache of :mod:`lsched.evaluator.prefix`
as a colocated replica does (hits at admission, blocks cached as the prefill
computes them, released when the request finishes its prefill). The blocks a
finished request keeps pinned until its transfer ends are its own: its hash
blocks become evictable at once, and count ``g`` each beside them (the KV on
its way out is not shared with the cache). A prefill pool's replicas may share
one KV pool (rule 6 there: :class:`~lsched.evaluator.prefix.KVPool`, one per
such pool, with the pool's link to itself; exact because the prefill replicas
step in time order, below). Routers read each entry replica's cache through
:meth:`~lsched.routers.ClusterView.cached_blocks` and
:meth:`~lsched.routers.ClusterView.prefix_fetch`, and the decode replicas'
loads through :attr:`~lsched.routers.ClusterView.decode_loads`.

*Pull* (a decode pool with ``pull = theta``, DistServe the system,
``distserve/decoding_stage_scheduler.py``): step 2 stops at the routing. The
request joins its decode replica's queue and its KV waits, pinned, on the prefill
replica. The decode replica takes the head of its queue at each of its boundaries
(after adopting what arrived, before its policy decides; once per boundary: a
held decode stretch ends where a request joins its queue, and at every boundary
while one waits there), or at once when it is idle (no iteration in flight and no
boundary due, such as one where KV that arrived waits to be adopted), while (a)
the blocks of the requests it took and has not yet admitted (KV on its way, or
waiting to be prefilled again) are under ``theta * capacity``, (b) the prompt's
blocks are free, and (c) it runs and awaits fewer than ``max_num_seqs`` requests.
Taking a request reserves its blocks and starts the transfer then; the
reservation becomes the request's own blocks at ``t_i``, so the adoption always
fits its blocks (KV taken at a boundary that arrives at once is adopted at the
replica's next decision: it decided there before the KV came). (DistServe swaps a
decode request out on overflow; lsched's policies recompute until swap is
modelled.)

A request that emits one token completes on its prefill replica. One whose peak
KV ``s_i + o_i - 1`` fits no decode replica is rejected at arrival (DESIGN.md,
"Rejection"), and so is one whose prompt is over the cluster's ``max_model_len``
``L`` (the smallest over its pools); every other request's output is cut to
``min(o_i, L - s_i + 1)`` tokens before the loop starts, as in the colocated loop
(:mod:`lsched.evaluator.length`), and ``o_i`` above is that cut output (one with
``s_i = L`` emits one token and completes on its prefill replica). The records
add per request the decode replica, the transfer's start and end, and its
bytes; the stages are prefill queue ``[a_i, admitted]``, prefill ``[admitted,
f_i]``, transfer wait ``[f_i, start]``, transfer ``[start, t_i]``, decode queue
``[t_i, decode admitted]`` and decode ``[decode admitted, c_i]``.

The loop
--------
Replicas run jointly in time as in :mod:`lsched.evaluator.cluster`. Events are
taken in time order: arrivals, prefill completions (which route to a decode
replica and start a transfer), a shared link's progress and transfer ends (which
free the prefill replica's blocks and hand the request to its decode replica).
A prefill replica (and a pulling decode replica) runs one step at a time, always
the one whose boundary is earliest, after every event at or before that boundary
(within ``ARRIVAL_TOLERANCE_S``): an event can only come from a step that has
ended, so none is missed. Simultaneous events keep the order in which they were
made: prefills that end together reach a FIFO link in the order their replicas
stepped, then in batch order. Pushing decode replicas and colocated ones send
nothing back: each is advanced only as far as its next arrival needs, and to its
end at the finish.

Routers read replica state as in the colocated loop. A prefill replica's state
at ``t`` counts as unfinished the requests of the iteration in flight at ``t``
(DistServe's ``_prefill_ips + len(prefill_queue)``); a decode replica's counts
the requests on their way to it. :meth:`~lsched.routers.ClusterView.queued`
counts a replica's unfinished requests that are not in its iteration in flight at
``t``, plus, on a decode replica, those on their way to it: with no transfer time
that is DistServe's ``len(decode_queue)``, which the ``least-queued`` decode
router minimises as simdistserve's ``Scheduler.schedule_decode`` does
(``tests/test_simdistserve_disagg.py`` replays simdistserve's disaggregated mode
request by request: ``router = "least-outstanding"``, ``decode_router =
"least-queued"``).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsched.cluster import Cluster, Link
from lsched.errors import InputError
from lsched.evaluator.adapters import ReplicaAdapters
from lsched.evaluator.cluster import (
    REJECTED,
    ClusterRun,
    JointEngine,
    _check_fits,
    _contexts,
    _decision,
    _view,
    hash_block_tokens,
    make_policy,
    replica_prefix,
    request_hashes,
    router_context,
)
from lsched.evaluator.length import (
    cluster_max_model_len,
    cut_to_length,
    rejection_reason,
)
from lsched.evaluator.prefix import KVPool
from lsched.instance import Instance
from lsched.policies import (
    ARRIVAL_TOLERANCE_S,
    Batch,
    PolicyError,
    ReplicaLimits,
)
from lsched.routers import Reject

#: Order of simultaneous events: a shared link's progress, then transfer ends (a
#: decode replica sees a request that arrives when another is routed), then
#: prefill completions.
_PROGRESS, _DELIVER, _PREFILLED = 0, 1, 2


def kv_pools_of(instance: Instance, cluster: Cluster) -> dict[str, KVPool]:
    """The KV pool of every pool whose replicas share one (rule 6 of
    :mod:`lsched.evaluator.prefix`), by pool name, each with the link from the
    pool to itself."""
    pools = {}
    for pool in cluster.pools:
        spec = pool.prefix_cache
        if spec is not None and spec.pool_capacity_tokens is not None:
            link = cluster.link(pool.name, pool.name)
            block = hash_block_tokens(instance, pool.profile)
            pools[pool.name] = KVPool(
                spec, block, link.latency_s, link.bandwidth_bytes_per_s
            )
    return pools


class StageEngine(JointEngine):
    """A replica of a disaggregated cluster: a :class:`JointEngine` that, on a
    prefill replica, pins a finished request's KV until :meth:`release`, and on a
    decode replica adopts requests that arrive prefilled."""

    def __init__(
        self,
        capacity: int,
        instance: Instance,
        pool: Any,
        policy: object,
        *,
        log: bool,
        on_finished: Callable[[int], None] | None,
        adapters: ReplicaAdapters | None = None,
        kv_pool: KVPool | None = None,
        replica: int = 0,
    ) -> None:
        super().__init__(
            capacity,
            instance,
            pool.profile,
            policy,
            log=log,
            on_finished=on_finished,
            prefix=replica_prefix(instance, [], pool, capacity, log, kv_pool, replica),
            adapters=adapters,
        )
        self.role = pool.role
        #: prefill: (local id, pinned blocks, time) of every request that finished
        #: its prefill, until the loop takes them
        self.parked: list[tuple[int, int, float]] = []
        #: decode (or a migration's target): the KV tokens each request brings,
        #: the tokens it emitted before, its first token's time and its admission
        #: (NaN: its arrival here, and its adoption)
        self.carried = np.zeros(capacity, dtype=np.int64)
        self.carried_emitted = np.ones(capacity, dtype=np.int64)
        self.carried_first_s = np.full(capacity, np.nan)
        self.carried_admitted_s = np.full(capacity, np.nan)
        #: called at every boundary before the policy decides (a pulling decode
        #: replica takes prefilled requests there)
        self.on_boundary: Callable[[], None] | None = None
        #: a held stretch ends at the first boundary at or after this time (a
        #: request joined a pulling replica's queue)
        self.notify_s = math.inf
        #: a request was left in a pulling replica's queue at this boundary: a
        #: held stretch decided here stops at the next boundary, to take again
        self.blocked_s = -math.inf
        self._boundary_s = -math.inf  # the last boundary on_boundary saw
        self._end: tuple[tuple | None, float] = (None, math.inf)  # _stretch_end's

    def add_stage(self, instance: Instance, i: int, arrival_s: float,
                  output_tokens: int, carried_tokens: int = 0, *,
                  emitted: int = 1, first_token_s: float = math.nan,
                  admitted_s: float = math.nan) -> None:  # fmt: skip
        """Route request ``i`` here, arriving at ``arrival_s`` with
        ``output_tokens`` to emit (1 on a prefill replica) and, on a decode
        replica (or a migration's target), ``carried_tokens`` of KV, ``emitted``
        tokens emitted before, the first at ``first_token_s`` (NaN: at
        ``arrival_s``), admitted at ``admitted_s`` (NaN: at its adoption)."""
        self.add(instance, i)
        k = self.m - 1
        self.arrival_s[k] = arrival_s
        self.output[k] = output_tokens
        self.carried[k] = carried_tokens
        self.carried_emitted[k] = emitted
        self.carried_first_s[k] = first_token_s
        self.carried_admitted_s[k] = admitted_s

    def _moves(self, batch: Batch) -> Batch:
        if self._async_swap and len(batch.swap_out) + len(batch.swap_in):
            raise PolicyError(
                "asynchronous swaps are not modelled on a disaggregated cluster "
                "(the global loop does not see their copies): use swap_mode=blocking"
            )
        return super()._moves(batch)

    # -- prefill side ---------------------------------------------------------------

    def _finish(self, finished: list[int], end: float) -> None:
        if self.role == "prefill":
            for r in finished:
                self.parked.append((r, self.kv.pin(r), end))
        super()._finish(finished, end)

    def release(self, blocks: int, tokens: int, since_s: float, t: float) -> None:
        """Free ``blocks`` pinned at ``since_s`` (``tokens`` of KV) at ``t``; a
        replica waiting for room decides again at ``t``."""
        self.kv.unpin(blocks)
        self.kv_token_seconds += tokens * (t - since_s)
        if self.pending is not None and self.pending.is_empty:
            self.pending = None
            self.now_s = max(self.now_s, t)

    def next_step_s(self) -> float:
        """When this replica next reaches a boundary where it decides (``inf``:
        not before an event)."""
        if self.done >= self.m:  # the boundary where the last request ended
            return self.now_s if self._unvisited() else math.inf
        upcoming = math.inf
        if self.num_arrived < self.m:
            upcoming = float(self.arrival_s[self.num_arrived])
        if self.pending is not None and not self.pending.is_empty:
            return self._stretch_end()
        if self.pending is not None:  # waits for an arrival, a wake-up or room
            wake = self.pending.wake_at_s
            if wake is not None and wake > self.now_s:
                upcoming = min(upcoming, wake)
        elif self.running or self._has_waiting():
            return self.now_s
        elif upcoming <= self.now_s + ARRIVAL_TOLERANCE_S:
            return self.now_s  # it decides at this boundary, the arrival counted
        return max(self.now_s, upcoming)

    def _stretch_end(self) -> float:
        """The end of the pending held stretch, computed once per state."""
        key = (self.pending, self.now_s, self.m, self.notify_s)
        cached, end = self._end
        if cached is None or any(a is not b for a, b in zip(key, cached, strict=True)):
            stretch, n, _ = self._cut(math.inf)
            end = self.now_s + stretch.elapsed_s(n)
            self._end = (key, end)
        return end

    def step(self, t: float) -> None:
        """Run to the boundary ``t`` (from :meth:`next_step_s`) and decide there."""
        if self.done >= self.m:
            self._visit()
            return
        # just past t + tolerance, which far from 0 may round to t itself
        self.advance(math.nextafter(t + ARRIVAL_TOLERANCE_S, math.inf))

    def state_at(self, t: float) -> tuple[int, int]:
        if self.role != "prefill":
            return super().state_at(t)
        # the iteration in flight at t has not finished its requests yet (the
        # loop takes them from ``parked`` as soon as it runs)
        _, finished = self.in_flight(t)
        return self.m - self.done + finished, self.kv.held_tokens

    # -- decode side ----------------------------------------------------------------

    def _arrive(self) -> None:
        k = self.num_arrived
        super()._arrive()
        n = self.num_arrived
        if n > k and (self.role == "decode" or self.carried[k:n].any()):
            self._adopt(k)
        if self.notify_s <= self.now_s + ARRIVAL_TOLERANCE_S:
            self.notify_s = math.inf
        self._visit()

    def waiting_blocks(self) -> int:
        """Blocks of the requests this decode replica took and has not admitted:
        reserved for KV on its way, or needed to prefill a waiting request again
        (DistServe's blocks of its waiting queue)."""
        kv = self.kv.kv
        again = sum(
            kv.blocks(int(self.prompt[r] + self.emitted[r]))
            for r in self._waiting().tolist()
        )
        return self.kv.pinned_blocks + again

    def _unvisited(self) -> bool:
        """Whether the boundary ``now_s`` has an ``on_boundary`` call to come."""
        return self.on_boundary is not None and self._boundary_s < self.now_s

    def _visit(self) -> None:
        # once per boundary (an idle replica may come back to the same one)
        if self._unvisited():
            self._boundary_s = self.now_s
            self.on_boundary()  # type: ignore[misc]

    def _plan(self, decode: np.ndarray, p: np.ndarray, held: int,
              wake_at_s: float | None, context_cap: int | None) -> Any:  # fmt: skip
        if self.notify_s < math.inf:  # the first boundary at or after it, as an
            # arrival's: within the arrival tolerance
            notify = self.notify_s - ARRIVAL_TOLERANCE_S
            wake_at_s = min(notify, math.inf if wake_at_s is None else wake_at_s)
        if self.blocked_s >= self.now_s:
            wake_at_s = self.now_s  # one iteration: it takes at every boundary
        return super()._plan(decode, p, held, wake_at_s, context_cap)

    def _adopt(self, k: int) -> None:
        """Adopt the requests ``k..num_arrived-1`` that just arrived with KV
        (prefilled, or migrated); those without wait as new requests."""
        adopted = []
        for r in range(k, self.num_arrived):
            tokens = int(self.carried[r])
            if not tokens:
                continue
            blocks = self.kv.kv.blocks(tokens)
            self.emitted[r] = self.carried_emitted[r]
            first = self.carried_first_s[r]  # token 1 came with it (prefilled)
            self.first_token_s[r] = self.arrival_s[r] if math.isnan(first) else first
            room = len(self.running) < self._max_seqs and self._adapter_room(r)
            if not (room and self.kv.fits(blocks, self.running)):
                self.recomputed[r] += tokens  # dropped: prefilled again here
                continue
            self.kv.tokens[r] = tokens
            self.kv.grow(blocks, tokens)
            self.status[r] = 1  # RUNNING
            self.target[r] = self.prompt[r]
            since = self.carried_admitted_s[r]
            self.admitted_s[r] = self.now_s if math.isnan(since) else since
            self.running.append(r)
            adopted.append(r)
        if adopted:
            self._shown = None
            self._dequeue(adopted)
            adopt = getattr(self.policy, "adopt", None)
            if adopt is not None:
                adopt(adopted)

    def _adapter_room(self, r: int) -> bool:
        """Whether request ``r`` may join the running requests without making
        their distinct adapters more than ``max_loras`` (rule 1 of
        :mod:`lsched.evaluator.adapters`; always without adapters)."""
        adapters = self.adapters
        if adapters is None or adapters.codes[r] < 0:
            return True
        codes = adapters.codes
        used = {int(codes[q]) for q in self.running if codes[q] >= 0}
        return len(used | {int(codes[r])}) <= adapters.max_loras


@dataclass
class _Transfer:
    """One request's KV on its way: prefill replica ``source``, decode replica
    ``target``, ``blocks`` pinned since ``since_s``."""

    i: int
    source: int
    target: int
    blocks: int
    since_s: float
    nbytes: float
    reserved: int = 0  # blocks the (pulling) decode replica holds for it


@dataclass
class _LinkState:
    """The transfers on one link: the end of the last one (``fifo``), or the
    bytes each active one still has to send (``share``)."""

    link: Link
    free_s: float = -math.inf
    active: dict[int, float] = field(default_factory=dict)
    moves: dict[int, _Transfer] = field(default_factory=dict)
    last_s: float = 0.0
    version: int = 0

    def progress(self, t: float) -> None:
        """Move the shared transfers on to ``t``."""
        if self.active and t > self.last_s:
            sent = (
                (t - self.last_s) * self.link.bandwidth_bytes_per_s / len(self.active)
            )
            for i in self.active:
                self.active[i] -= sent
        self.last_s = t

    def next_done(self) -> tuple[float, int] | None:
        """When the first shared transfer leaves the link, and which."""
        if not self.active:
            return None
        i = min(self.active, key=lambda j: (self.active[j], j))
        share = self.link.bandwidth_bytes_per_s / len(self.active)
        return self.last_s + max(0.0, self.active[i]) / share, i


class DisaggSim:
    """A replay of ``instance`` on a cluster with prefill and decode pools (module
    docstring).

    Parameters
    ----------
    instance, cluster
        The requests and the cluster (``cluster.disaggregated``).
    log
        Keep every replica's iteration log.
    on_finished
        Called with the number of requests each completion event finishes.
    """

    def __init__(self, instance: Instance, cluster: Cluster, *, log: bool = False,
                 on_finished: Callable[[int], None] | None = None) -> None:  # fmt: skip
        #: prompts over max_model_len rejected, outputs cut to it (as in
        #: ClusterSim; lsched.evaluator.length): the replicas run ``self.instance``
        self.cut = cut_to_length(instance, cluster_max_model_len(cluster))
        instance = self.instance = self.cut.served
        self.cluster = cluster
        n = len(instance)
        self.on_finished = on_finished
        #: every replica runs on the Python engine; nothing is compiled
        self.paths = ["python: a disaggregated cluster"] * cluster.num_replicas
        self.compile_s = 0.0
        contexts = _contexts(instance, cluster)
        kv_pools = kv_pools_of(instance, cluster)
        self.engines = [
            StageEngine(
                n,
                instance,
                cluster.pool_of(c),
                make_policy(cluster.pool_of(c).policy, contexts[c]),
                log=log,
                on_finished=None
                if cluster.pool_of(c).role == "prefill"
                else on_finished,
                kv_pool=kv_pools.get(cluster.pool_of(c).name),
                replica=c,
            )
            for c in range(cluster.num_replicas)
        ]
        self.entry = cluster.replicas_of("prefill", "colocated")
        self.decode = cluster.replicas_of("decode")
        self.contexts = (
            router_context(instance, cluster, self.entry, decode=self.decode),
            router_context(instance, cluster, self.decode),
        )
        self.router = cluster.router.make(self.contexts[0])
        self.decode_router = cluster.decode_router.make(self.contexts[1])
        self._kv = [ReplicaLimits.from_profile(p.profile).kv for p in cluster.pools]
        self.where = np.full(n, REJECTED, dtype=np.int64)
        self.reasons: dict[int, str] = {}
        self.decode_replica = np.full(n, REJECTED, dtype=np.int64)
        self.transfer_start_s = np.full(n, np.nan)
        self.transfer_end_s = np.full(n, np.nan)
        self.transferred_bytes = np.zeros(n)
        self.inbound = np.zeros(cluster.num_replicas, dtype=np.int64)
        #: per replica: the requests it took (pulling) whose KV is on its way
        self.taken = np.zeros(cluster.num_replicas, dtype=np.int64)
        #: per pulling decode replica: its prefilled requests not yet taken
        self.unaccepted: dict[int, deque[_Transfer]] = {}
        for d in self.decode.tolist():
            if cluster.pool_of(d).pull is not None:
                self.unaccepted[d] = deque()
                self.engines[d].on_boundary = functools.partial(self._accept, d)
        #: the replicas whose boundaries make events: run one step at a time
        self.stepped = [self.engines[c] for c in cluster.replicas_of("prefill")]
        self.stepped += [self.engines[d] for d in self.unaccepted]
        self._links: dict[tuple[str, str], _LinkState] = {}
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        peak = instance.prompt_tokens + instance.output_tokens - 1
        decode_pools = {int(self.cluster.replica_pool[d]) for d in self.decode}
        self._fits_decode = np.zeros(n, dtype=bool)
        for k in decode_pools:
            self._fits_decode |= self._kv[k].blocks(peak) <= self._kv[k].capacity_blocks

    def _push(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._events, (t, kind, next(self._seq), payload))

    # -- the loop -------------------------------------------------------------------

    def run(self) -> bool:
        """Run to the end; returns True."""
        arrival = self.instance.arrival_s
        n = len(self.instance)
        routed = 0
        while True:
            t_event = self._events[0][0] if self._events else math.inf
            t_arrival = float(arrival[routed]) if routed < n else math.inf
            t_step, engine = min(
                ((e.next_step_s(), e) for e in self.stepped),
                key=lambda x: x[0],
                default=(math.inf, None),
            )
            t_next = min(t_event, t_arrival)
            if t_next == math.inf and t_step == math.inf:
                break
            if t_next <= t_step + ARRIVAL_TOLERANCE_S:
                if t_event <= t_arrival:
                    self._event(*heapq.heappop(self._events))
                else:
                    self._arrival(routed)
                    routed += 1
            else:
                assert engine is not None
                engine.step(t_step)
                self._take_parked(engine)
        for engine in self.engines:
            engine.advance(math.inf)
        stuck = [len(q) for q in self.unaccepted.values() if q]
        if stuck:
            raise PolicyError(
                f"{sum(stuck)} prefilled request(s) were never taken by a pulling "
                "decode replica: their prompts never fit its free blocks"
            )
        return True

    def _arrival(self, i: int) -> None:
        instance, cluster = self.instance, self.cluster
        t = float(instance.arrival_s[i])
        if self.cut.rejected[i]:  # prompt over max_model_len: never routed
            self.reasons[i] = rejection_reason(
                int(instance.prompt_tokens[i]), self.cut.max_model_len
            )
            return
        if instance.output_tokens[i] > 1 and not self._fits_decode[i]:
            peak = int(instance.prompt_tokens[i] + instance.output_tokens[i] - 1)
            self.reasons[i] = f"peak KV {peak} tokens fits no decode replica"
            return
        entry = self.entry

        def state(k: int) -> tuple[int, int]:
            engine = self.engines[int(entry[k])]
            engine.advance(t)  # a colocated replica may lag; a prefill one is here
            return engine.state_at(t)

        def queued(k: int) -> int:
            engine = self.engines[int(entry[k])]
            engine.advance(t)
            return engine.queued_at(t)

        hashes = request_hashes(instance, i)

        s = int(instance.prompt_tokens[i])

        def lookup(k: int) -> tuple[int, int, float]:
            engine = self.engines[int(entry[k])]
            engine.advance(t)
            return engine.prefix_hit(hashes, s, t)

        def decode() -> list[tuple[int, int]]:
            return [self._decode_state(int(d), t) for d in self.decode]

        view = _view(self.contexts[0], instance, i, state, queued, lookup, decode)
        choice = _decision(self.router.route(view), i, len(entry))
        if isinstance(choice, Reject):
            self.reasons[i] = choice.reason
            return
        c = int(entry[choice])
        pool = cluster.pool_of(c)
        kv = self._kv[int(cluster.replica_pool[c])]
        if pool.role == "prefill":
            if kv.blocks(int(instance.prompt_tokens[i])) > kv.capacity_blocks:
                raise InputError(
                    f"the router sent request {i} (prompt {instance.prompt_tokens[i]} "
                    f"tokens) to prefill replica {c} of pool {pool.name!r}, whose "
                    f"capacity is {pool.profile.kv_capacity_tokens} tokens",
                    field="router",
                )
            output = 1
        else:
            _check_fits(instance, i, cluster, c, kv)
            output = int(instance.output_tokens[i])
        self.engines[c].advance(t)
        self.engines[c].add_stage(instance, i, t, output)
        self.where[i] = c

    def _take_parked(self, engine: StageEngine) -> None:
        c = self.engines.index(engine)
        for r, blocks, end in engine.parked:
            self._push(end, _PREFILLED, (c, engine.ids[r], blocks, end))
        engine.parked.clear()

    def _event(self, t: float, kind: int, _: int, payload: Any) -> None:
        if kind == _PREFILLED:
            self._prefilled(t, *payload)
        elif kind == _PROGRESS:
            state, version, i = payload
            if version == state.version:
                self._leave_shared(state, t, i)
        else:
            self._deliver(t, payload)

    def _prefilled(self, t: float, c: int, i: int, blocks: int, end: float) -> None:
        """Request ``i`` finished its prefill on replica ``c`` at ``t``."""
        instance = self.instance
        source = self.engines[c]
        if instance.output_tokens[i] == 1:  # done: nothing to move
            source.release(blocks, 0, end, t)
            if self.on_finished is not None:
                self.on_finished(1)
            return
        d = self._route_decode(i, t)
        tokens = int(instance.prompt_tokens[i])
        nbytes = float(tokens * self.cluster.pool_of(c).profile.kv_bytes_per_token)
        move = _Transfer(i, c, d, blocks, end, nbytes)
        self.inbound[d] += 1
        if d in self.unaccepted:
            self.unaccepted[d].append(move)
            engine = self.engines[d]
            engine.advance(t)
            pending = engine.pending
            held = pending is not None and not pending.is_empty
            # a boundary is due (an iteration in flight ends there, or KV delivered
            # at t waits there to be adopted): it looks there, not before
            due = pending is None and engine.next_step_s() < math.inf
            if held or due:
                engine.notify_s = min(engine.notify_s, t)  # it looks at its boundary
            else:  # idle: it looks now
                self._accept(d, t)
        else:
            self._transfer(move, t)

    def _accept(self, d: int, t: float | None = None) -> None:
        """DistServe's pull (:class:`~lsched.cluster.Pool`, ``pull``): decode
        replica ``d`` takes the head of its queue while the rule allows, at ``t``
        (its boundary by default)."""
        queue = self.unaccepted[d]
        engine = self.engines[d]
        t = engine.now_s if t is None else t
        ledger = engine.kv
        capacity = ledger.kv.capacity_blocks
        limit = self.cluster.pool_of(d).pull * capacity  # type: ignore[operator]
        seqs = engine.limits.max_num_seqs
        while queue and len(engine.running) + self.taken[d] < seqs:
            move = queue[0]
            need = ledger.kv.blocks(int(self.instance.prompt_tokens[move.i]))
            waiting = engine.waiting_blocks()
            free = capacity - ledger.exact_blocks(engine.running)
            if not (waiting < limit and need <= free):
                break
            queue.popleft()
            ledger.reserve(need)
            move.reserved = need
            self.taken[d] += 1
            self._transfer(move, t)
        if queue:  # it tries again at its next boundary, even in a held stretch
            engine.blocked_s = engine.now_s

    def _transfer(self, move: _Transfer, t: float) -> None:
        """Start moving ``move``'s KV at ``t`` over its link."""
        i, c, d, nbytes = move.i, move.source, move.target, move.nbytes
        self.transferred_bytes[i] = nbytes
        key = (self.cluster.pool_of(c).name, self.cluster.pool_of(d).name)
        state = self._links.get(key)
        if state is None:
            state = self._links[key] = _LinkState(self.cluster.link(*key))
        link = state.link
        if link.sharing == "fifo" or link.seconds(nbytes) == 0:
            start = max(t, state.free_s)
            state.free_s = start + link.seconds(nbytes)
            self.transfer_start_s[i] = start
            self._push(state.free_s + link.latency_s, _DELIVER, move)
            return
        self.transfer_start_s[i] = t
        state.progress(t)
        state.active[i] = nbytes
        state.moves[i] = move
        self._reschedule(state)

    def _reschedule(self, state: _LinkState) -> None:
        state.version += 1
        done = state.next_done()
        if done is not None:
            self._push(done[0], _PROGRESS, (state, state.version, done[1]))

    def _leave_shared(self, state: _LinkState, t: float, i: int) -> None:
        state.progress(t)
        del state.active[i]
        move = state.moves.pop(i)
        self._push(t + state.link.latency_s, _DELIVER, move)
        self._reschedule(state)

    def _decode_state(self, d: int, t: float) -> tuple[int, int]:
        """Decode replica ``d``'s (unfinished, KV tokens) at ``t``, the requests
        on their way to it counted."""
        self.engines[d].advance(t)
        unfinished, kv = self.engines[d].state_at(t)
        return unfinished + int(self.inbound[d]), kv

    def _route_decode(self, i: int, t: float) -> int:
        decode = self.decode

        def state(k: int) -> tuple[int, int]:
            return self._decode_state(int(decode[k]), t)

        def queued(k: int) -> int:
            d = int(decode[k])
            self.engines[d].advance(t)
            return self.engines[d].queued_at(t) + int(self.inbound[d])

        view = _view(self.contexts[1], self.instance, i, state, queued)
        choice = _decision(self.decode_router.route(view), i, len(decode))
        if isinstance(choice, Reject):
            raise InputError(
                f"the decode router rejected request {i} after its prefill; expected "
                "a decode replica (reject at arrival instead)",
                field="decode_router",
            )
        d = int(decode[choice])
        _check_fits(
            self.instance,
            i,
            self.cluster,
            d,
            self._kv[int(self.cluster.replica_pool[d])],
        )
        self.decode_replica[i] = d
        return d

    def _deliver(self, t: float, move: _Transfer) -> None:
        """Request ``move.i``'s KV arrived on its decode replica at ``t``."""
        i = move.i
        tokens = int(self.instance.prompt_tokens[i])
        self.engines[move.source].release(move.blocks, tokens, move.since_s, t)
        self.transfer_end_s[i] = t
        self.inbound[move.target] -= 1
        target = self.engines[move.target]
        target.advance(t)
        if move.reserved:  # its blocks, now its own
            target.kv.unpin(move.reserved)
            self.taken[move.target] -= 1
        target.add_stage(
            self.instance, i, t, int(self.instance.output_tokens[i]), tokens
        )

    def outcome(self) -> ClusterRun:
        """Where every request went, the engines and the stages (after :meth:`run`)."""
        return joint_outcome(
            self,
            {
                "decode_replica": self.decode_replica,
                "transfer_start_s": self.transfer_start_s,
                "transfer_end_s": self.transfer_end_s,
                "transferred_bytes": self.transferred_bytes,
            },
        )


def joint_outcome(sim: Any, stages: dict[str, np.ndarray], **extra: Any) -> ClusterRun:
    """The :class:`ClusterRun` of an event loop over :class:`StageEngine`
    replicas (``sim``: ``engines``, ``where``, ``reasons``, ``instance``,
    ``cut``), with its per-request ``stages`` columns and ``extra`` fields."""
    ids = [np.array(e.ids, dtype=np.int64) for e in sim.engines]
    return ClusterRun(
        sim.where,
        sim.reasons,
        [e if len(k) else None for e, k in zip(sim.engines, ids, strict=True)],
        ids,
        stages=stages,
        served=sim.instance,
        truncated=sim.cut.truncated,
        **extra,
    )
