"""Live migration: running requests move between colocated replicas (DESIGN.md,
"Clusters"; Llumnix, Sun et al., OSDI 2024, section 4.2, and its
``llumnix/llumlet/migration_coordinator.py``).

The loop
--------
Replicas run jointly in time as in :mod:`lsched.evaluator.disagg`: every
replica is a :class:`MigrationEngine` stepped one boundary at a time, always the
one whose boundary is earliest. Events are arrivals, the migrator's ticks
(every ``interval_s``, at ``a_0 + k * interval_s``, ``a_0`` the first arrival;
ticks that fall while no replica runs anything and no copy is under way are
skipped to the first one at or after the next arrival) and the ends of copy
stages. Before an event at ``t`` is taken every replica is advanced to its first
boundary at or after ``t`` (a held decode stretch ends there: each engine's
stretches stop at the next event, as they stop at an arrival), so what the
router and the migrator read, and where a stage measures a request's KV, is a
boundary's state. Simultaneous events: stage ends, then ticks, then arrivals.

A router that declares ``migrates = True`` (``llumnix``) takes this loop. It is
called at every arrival with :meth:`~lsched.routers.ClusterView.replica_load`
available; its ``migrator`` (:mod:`lsched.migrators`) decides at every tick.

Migration of request ``i`` from replica ``A`` to ``B`` started at ``t_0``
(:meth:`MigrationSim.migrate`; ``i`` decoding on ``A``, one migration per
request at a time), with ``L`` = ``last_stage_blocks`` and ``S`` = ``max_stages``:

1. Stage ``k`` starts at ``u_k``: ``A``'s first boundary at or after ``t_0``
   (``k = 1``) or after stage ``k - 1`` ended. There ``i`` holds ``h`` blocks on
   ``A`` of which ``c`` were copied; ``x = h - c`` are not. If ``i`` no longer
   runs on ``A`` (it completed, or was preempted since ``t_0``), the migration
   aborts.
2. If ``x <= L`` (Llumnix: ``len(incremental_blocks) <=
   migration_last_stage_max_blocks``) this is the *last stage*: ``A`` stops
   scheduling ``i`` at ``u_k`` (its blocks stay taken on ``A``, pinned) and the
   stage copies all ``x`` blocks. Otherwise the stage is *live*: it copies ``x -
   1`` blocks (all but the one being written) while ``i`` keeps decoding on
   ``A``. A migration that copied ``S`` stages, all live, aborts where stage
   ``S + 1`` would start (Llumnix's ``migration_max_stages`` loop).
3. ``B`` reserves the stage's blocks at its first boundary at or after ``u_k``
   (Llumnix's ``pre_alloc_cache`` runs in the destination's scheduler, between
   its steps): pinned in its ledger, they count against its capacity and its
   policy sees a capacity less them. If they do not fit beside what ``B`` holds
   there the migration aborts. An abort frees every block ``B`` reserved for
   ``i`` and leaves ``i`` running on ``A``. (The copy is taken to start at
   ``u_k`` all the same.)
4. The stage moves ``y = blocks * b * kv_bytes_per_token`` bytes (``b`` tokens
   per block, ``A``'s profile) over the cluster's link from ``A``'s pool to
   ``B``'s (:meth:`lsched.cluster.Cluster.link`) and ends at ``u_k + latency_s
   + y / bandwidth``. Copies do not contend: every stage of every migration
   has the whole link (a simplification; Llumnix moves one request per pair of
   instances at a time).
5. At the end ``e`` of the last stage ``A`` frees ``i``'s blocks and ``i``
   arrives on ``B`` with ``s_i + E - 1`` tokens of KV, ``E`` the tokens it
   emitted on ``A``: ``B`` adopts it, running, at its first boundary at or after
   ``e`` (its blocks stay reserved until then and become ``i``'s own; its
   first token's time and admission are kept; if ``B`` then runs
   ``max_num_seqs`` requests, or ``i``'s adapter would make the adapters of
   ``B``'s running requests more than ``max_loras``, ``i`` waits there to be
   prefilled again, as a disaggregated decode replica's adoption does). Its
   next token comes from ``B``. **Downtime** is ``e - u_last``: the last
   stage's ``latency_s + y / bandwidth``.
6. *Adapters* (a pool that serves them, :mod:`lsched.evaluator.adapters`): the
   request keeps its adapter. Nothing is copied for it: ``B`` loads it by its
   own rule 2, before the first batch on ``B`` that holds ``i`` if it is not
   resident there, and that batch's iteration is longer by its load time.

KV on both sides is counted where it is: on ``A`` (running, then pinned for the
last stage) until ``e``, on ``B`` (reserved) from each stage's start.

Records (:mod:`lsched.evaluator.records`): per request ``migrations`` (completed),
``migration_aborts``, ``migrated_bytes`` (every stage copied, aborted ones
included) and ``migration_downtime_s``; their sums in the metrics; the table
``migrations`` has one row per stage. A request that moved is listed on every
replica it ran on; its ``replica`` is the one it arrived at. A replica has
``2n + 16`` request entries (``n`` requests): its arrivals and the migrations
that land there; a move to a replica whose entries are all taken (counting the
migrations on their way to it) is not started.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lsched.cluster import Cluster
from lsched.errors import InputError
from lsched.evaluator.cluster import (
    REJECTED,
    ClusterRun,
    _check_fits,
    _contexts,
    _decision,
    _view,
    joint_adapters,
    make_policy,
    router_context,
)
from lsched.evaluator.disagg import StageEngine, joint_outcome
from lsched.evaluator.engine import DONE, RUNNING
from lsched.evaluator.length import cluster_max_model_len, cut_to_length
from lsched.instance import Instance
from lsched.migrators import AdapterLoad, MigrationView, ReplicaLoad, RequestLoad
from lsched.policies import ARRIVAL_TOLERANCE_S, ReplicaLimits
from lsched.routers import Reject

#: Order of simultaneous events.
_STAGE, _TICK = 0, 1
#: The columns of the ``migrations`` table (one row per stage).
STAGE_COLUMNS = ("request", "source", "target", "stage", "start_s", "end_s",
                 "blocks", "bytes", "last", "outcome")  # fmt: skip


class MigrationEngine(StageEngine):
    """A colocated replica whose held stretches stop at the loop's next event,
    that lets a request leave (:meth:`leave`) and adopts requests that arrive
    with their KV (:meth:`StageEngine.add_stage` with ``carried_tokens``)."""

    def __init__(self, capacity: int, instance: Instance, pool: Any, policy: object,
                 *, log: bool, on_finished: Callable[[int], None] | None,
                 next_event_s: Callable[[], float]) -> None:  # fmt: skip
        super().__init__(
            capacity, instance, pool, policy, log=log, on_finished=on_finished,
            adapters=joint_adapters(instance, pool, capacity),
        )  # fmt: skip
        self.next_event_s = next_event_s
        self.block_bytes = float(
            pool.profile.block_tokens * pool.profile.kv_bytes_per_token
        )
        self.migrating: set[int] = set()  # local ids being copied out
        #: local id of a request that landed -> the blocks reserved for it, its
        #: own from its adoption
        self.landed: dict[int, int] = {}
        #: adapter code -> (requests finished here, their seconds from admission
        #: to completion), with adapters (:class:`~lsched.migrators.AdapterLoad`)
        self.finished_by_adapter: dict[int, tuple[int, float]] = {}

    def _finish(self, finished: list[int], end: float) -> None:
        if self.adapters is not None:
            stats, codes = self.finished_by_adapter, self.adapters.codes
            for r in finished:
                count, seconds = stats.get(int(codes[r]), (0, 0.0))
                stats[int(codes[r])] = (count + 1, seconds + end - self.admitted_s[r])
        super()._finish(finished, end)

    def _adopt(self, k: int) -> None:
        for r in range(k, self.num_arrived):
            blocks = self.landed.pop(r, 0)
            if blocks:
                self.kv.unpin(blocks)
        super()._adopt(k)

    def _plan(self, decode: np.ndarray, p: np.ndarray, held: int,
              wake_at_s: float | None, context_cap: int | None) -> Any:  # fmt: skip
        t = self.next_event_s()
        if t < math.inf:  # the first boundary at or after it, as an arrival's
            wake = t - ARRIVAL_TOLERANCE_S
            wake_at_s = wake if wake_at_s is None else min(wake_at_s, wake)
        return super()._plan(decode, p, held, wake_at_s, context_cap)

    def leave(self, r: int) -> tuple[int, int]:
        """Stop running request ``r`` here (it is done here); its blocks stay
        taken, pinned. Returns (blocks, tokens)."""
        tokens = int(self.processed[r])
        blocks = self.kv.pin(r)
        self.running.remove(r)
        self.status[r] = DONE
        self.done += 1
        self._shown = None
        if self.prefix is not None:
            self.prefix.release(r)
        if self.pending is not None and self.pending.is_empty:
            self.pending = None  # it decides again here
        return blocks, tokens

    def load(self) -> ReplicaLoad:
        """This replica at its boundary (:class:`~lsched.migrators.ReplicaLoad`)."""
        kv = self.kv
        free = kv.kv.capacity_blocks - kv.exact_blocks(self.running)
        waiting = self._waiting()
        need = [0]
        if len(waiting):
            need = kv.kv.blocks(self.prompt[waiting] + self.emitted[waiting]).tolist()
        processed, target = self.processed, self.target
        candidates = tuple(
            (self.ids[r], int(processed[r]))
            for r in self.running
            if processed[r] >= target[r] and r not in self.migrating
        )
        return ReplicaLoad(
            free,
            int(need[0]),
            len(self.running),
            len(waiting),
            int(sum(need)),
            len(self.requeued) + len(self.swapped),
            candidates,
            kv.kv.block_tokens,
            self._adapter_load(waiting, need),
            self._priorities(),
        )

    def _priorities(self) -> tuple[tuple[int, int], ...]:
        """``(request, priority)`` of its running requests (none without
        priorities)."""
        priority = self._priority_view
        if priority is None:
            return ()
        return tuple((self.ids[r], int(priority[r])) for r in self.running)

    def _adapter_load(self, waiting: np.ndarray, need: list[int]) -> AdapterLoad | None:
        """Its requests and adapters (``None`` without adapters): a running
        request holds its blocks and may move if it decodes and is not
        migrating; a waiting one needs ``need`` blocks and stays."""
        adapters = self.adapters
        if adapters is None:
            return None
        codes, ids, kv = adapters.codes, self.ids, self.kv
        processed, target = self.processed, self.target
        requests = [
            RequestLoad(ids[r], int(codes[r]), int(kv.kv.blocks(int(processed[r]))),
                        bool(processed[r] >= target[r] and r not in self.migrating))
            for r in self.running
        ]  # fmt: skip
        requests += [
            RequestLoad(ids[r], int(codes[r]), b, False, False)
            for r, b in zip(waiting.tolist(), need, strict=False)
        ]
        return AdapterLoad(
            capacity_blocks=int(kv.kv.capacity_blocks),
            block_bytes=self.block_bytes,
            max_num_seqs=self._max_seqs,
            max_loras=adapters.max_loras,
            resident=tuple(adapters.resident),
            load_s=tuple(adapters.load_s),
            requests=tuple(requests),
            finished=tuple((c, n, s) for c, (n, s) in self.finished_by_adapter.items()),
        )


@dataclass
class _Move:
    """One migration under way: request ``i`` (local ``r`` on ``source``)."""

    i: int
    r: int
    source: int
    target: int
    preemptions: int
    stages: int = 0
    copied: int = 0  # blocks copied, all reserved on the target
    last: bool = False
    stopped_s: float = math.nan
    pinned: int = 0
    tokens: int = 0
    row: int = -1  # its last row in the stage table


class MigrationSim:
    """A replay of ``instance`` on a colocated ``cluster`` whose router migrates
    (module docstring).

    Raises
    ------
    InputError
        For a migrator whose ``interval_s`` is not finite and positive, or whose
        ``last_stage_blocks`` or ``max_stages`` is below 1; for a move of a
        request that is not decoding on its source.
    """

    def __init__(self, instance: Instance, cluster: Cluster, *, log: bool = False,
                 on_finished: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.cut = cut_to_length(instance, cluster_max_model_len(cluster))
        instance = self.instance = self.cut.served
        self.cluster = cluster
        n, replicas = len(instance), cluster.num_replicas
        self.paths = ["python: the router migrates requests"] * replicas
        self.compile_s = 0.0
        self.context = router_context(instance, cluster, np.arange(replicas))
        self.router = cluster.router.make(self.context)
        self.migrator = self.router.migrator  # type: ignore[attr-defined]
        _check_migrator(self.migrator)
        self._kv = [ReplicaLimits.from_profile(p.profile).kv for p in cluster.pools]
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self.routed = 0
        contexts = _contexts(instance, cluster)
        self.engines = [
            MigrationEngine(
                2 * n + 16,  # entries: arrivals and migrations in
                instance,
                cluster.pool_of(c),
                make_policy(cluster.pool_of(c).policy, contexts[c]),
                log=log,
                on_finished=on_finished,
                next_event_s=self._next_event_s,
            )
            for c in range(replicas)
        ]
        self.where = np.full(n, REJECTED, dtype=np.int64)
        self.reasons: dict[int, str] = self.cut.reasons
        self.host: dict[int, tuple[int, int]] = {}  # request -> (replica, local)
        self.active: dict[int, _Move] = {}
        self.starts: list[tuple[int, int, int, float]] = []
        self.stage_rows: list[tuple[Any, ...]] = []
        self.migrations = np.zeros(n, dtype=np.int64)
        self.aborts = np.zeros(n, dtype=np.int64)
        self.migrated_bytes = np.zeros(n)
        self.downtime_s = np.zeros(n)

    # -- the loop -------------------------------------------------------------------

    def _next_event_s(self) -> float:
        t = self._events[0][0] if self._events else math.inf
        if self.routed < len(self.instance):
            t = min(t, float(self.instance.arrival_s[self.routed]))
        return t

    def _push(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._events, (t, kind, next(self._seq), payload))

    def run(self) -> bool:
        """Run to the end; returns True."""
        arrival = self.instance.arrival_s
        n = len(self.instance)
        if n:
            self._push(float(arrival[0]) + self.migrator.interval_s, _TICK, 1)
        while True:
            t_event = self._events[0][0] if self._events else math.inf
            t_arrival = float(arrival[self.routed]) if self.routed < n else math.inf
            t_step, engine = min(
                ((e.next_step_s(), e) for e in self.engines), key=lambda x: x[0]
            )
            t_next = min(t_event, t_arrival)
            if t_next == math.inf and t_step == math.inf:
                break
            if t_next <= t_step + ARRIVAL_TOLERANCE_S:
                for e in self.engines:  # to the first boundary at or after t_next
                    e.advance(t_next)
                if t_event <= t_arrival:
                    t, kind, _, payload = heapq.heappop(self._events)
                    if kind == _STAGE:
                        self._stage_end(t, payload)
                    else:
                        self._tick(t, payload)
                else:
                    self._arrival(self.routed)
                    self.routed += 1
            else:
                engine.step(t_step)
        for e in self.engines:
            e.advance(math.inf)
        return True

    def _arrival(self, i: int) -> None:
        if self.cut.rejected[i]:  # prompt over max_model_len: never routed
            return
        engines, instance = self.engines, self.instance
        t = float(instance.arrival_s[i])
        view = _view(
            self.context,
            instance,
            i,
            lambda c: (engines[c].m - engines[c].done, engines[c].kv.held_tokens),
            lambda c: engines[c].queued_at(t),
            replica_load=lambda c: engines[c].load(),
        )
        choice = _decision(self.router.route(view), i, len(engines))
        if isinstance(choice, Reject):
            self.reasons[i] = choice.reason
            return
        kv = self._kv[int(self.cluster.replica_pool[choice])]
        _check_fits(instance, i, self.cluster, choice, kv)
        self.where[i] = choice
        engine = engines[choice]
        engine.add_stage(instance, i, t, int(instance.output_tokens[i]), 0)
        self.host[i] = (choice, engine.m - 1)

    def _tick(self, t: float, k: int) -> None:
        engines = self.engines
        view = MigrationView(t, tuple(e.load() for e in engines))
        for i, source, target in self.migrator.decide(view):
            self.migrate(i, source, target, t)
        n = len(self.instance)
        busy = self.active or any(e.running for e in engines)
        if not busy and self.routed >= n and all(e.done >= e.m for e in engines):
            return  # nothing left to move
        interval, a0 = self.migrator.interval_s, float(self.instance.arrival_s[0])
        k += 1
        if not busy and self.routed < n:  # idle: skip to the next arrival
            upcoming = float(self.instance.arrival_s[self.routed])
            k = max(k, math.ceil((upcoming - a0) / interval))
        self._push(a0 + k * interval, _TICK, k)

    # -- migration ------------------------------------------------------------------

    def migrate(self, i: int, source: int, target: int, t: float) -> None:
        """Start moving request ``i`` (instance position), decoding on replica
        ``source``, to replica ``target`` at ``t`` (module docstring); every
        replica is at its first boundary at or after ``t``."""
        c, r = self.host.get(i, (REJECTED, -1))
        engine = self.engines[source] if 0 <= source < len(self.engines) else None
        if (
            engine is None
            or c != source
            or not 0 <= target < len(self.engines)
            or target == source
            or i in self.active
            or engine.status[r] != RUNNING
            or engine.processed[r] < engine.target[r]
        ):
            raise InputError(
                f"the migrator moved request {i} from {source} to {target}; expected "
                "a request decoding on the source, not migrating, and another replica",
                field="migrator",
            )
        kv = self._kv[int(self.cluster.replica_pool[target])]
        _check_fits(self.instance, i, self.cluster, target, kv)
        landing = sum(m.target == target for m in self.active.values())
        if self.engines[target].m + landing >= len(self.engines[target].arrival_s):
            return  # no entry left on the target (module docstring)
        self.starts.append((i, source, target, t))
        move = _Move(i, r, source, target, int(engine.preemptions[r]))
        self.active[i] = move
        engine.migrating.add(r)
        self._stage(move, t)

    def _stage(self, move: _Move, t: float) -> None:
        """Start the next stage of ``move`` at ``t`` (or abort it)."""
        source, target = self.engines[move.source], self.engines[move.target]
        r = move.r
        if (
            source.status[r] != RUNNING
            or source.preemptions[r] != move.preemptions
            or move.stages >= self.migrator.max_stages
        ):
            self._abort(move, t)
            return
        kv = source.kv.kv
        start = max(t, source.now_s)
        uncopied = int(kv.blocks(int(source.processed[r]))) - move.copied
        last = uncopied <= self.migrator.last_stage_blocks
        blocks = uncopied if last else uncopied - 1
        ledger = target.kv
        if ledger.exact_blocks(target.running) + blocks > ledger.kv.capacity_blocks:
            self._abort(move, t)
            return
        if last:
            move.pinned, move.tokens = source.leave(r)
            move.stopped_s = start
        ledger.reserve(blocks)
        move.copied += blocks
        move.stages += 1
        move.last = last
        pool = self.cluster.pool_of(move.source)
        nbytes = float(blocks * kv.block_tokens * pool.profile.kv_bytes_per_token)
        link = self.cluster.link(pool.name, self.cluster.pool_of(move.target).name)
        end = start + link.latency_s + link.seconds(nbytes)
        self.migrated_bytes[move.i] += nbytes
        self.stage_rows.append([move.i, move.source, move.target, move.stages,
                                start, end, blocks, nbytes, last, ""])  # fmt: skip
        move.row = len(self.stage_rows) - 1
        self._push(end, _STAGE, move)

    def _stage_end(self, t: float, move: _Move) -> None:
        if not move.last:
            self._stage(move, t)
            return
        source, target = self.engines[move.source], self.engines[move.target]
        i, r = move.i, move.r
        source.release(move.pinned, move.tokens, move.stopped_s, t)
        source.migrating.discard(r)
        target.add_stage(
            self.instance, i, t, int(self.instance.output_tokens[i]), move.tokens,
            emitted=int(source.emitted[r]),
            first_token_s=float(source.first_token_s[r]),
            admitted_s=float(source.admitted_s[r]),
        )  # fmt: skip
        target.landed[target.m - 1] = move.copied  # reserved until its adoption
        self.host[i] = (move.target, target.m - 1)
        self.migrations[i] += 1
        self.downtime_s[i] += t - move.stopped_s
        self.stage_rows[move.row][-1] = "migrated"
        del self.active[i]

    def _abort(self, move: _Move, t: float) -> None:
        target = self.engines[move.target]
        target.release(move.copied, 0, t, t)  # frees its reservation
        self.engines[move.source].migrating.discard(move.r)
        self.aborts[move.i] += 1
        del self.active[move.i]
        if move.row >= 0:
            self.stage_rows[move.row][-1] = "aborted"

    def outcome(self) -> ClusterRun:
        """Where every request went, the engines and the migration columns."""
        return joint_outcome(
            self,
            {
                "migrations": self.migrations,
                "migration_aborts": self.aborts,
                "migrated_bytes": self.migrated_bytes,
                "migration_downtime_s": self.downtime_s,
            },
            migrations=pd.DataFrame(self.stage_rows, columns=list(STAGE_COLUMNS)),
        )


def _check_migrator(migrator: Any) -> None:
    """Raise unless the migrator's parameters are in range."""
    interval = migrator.interval_s
    if not (isinstance(interval, int | float) and math.isfinite(interval)
            and interval > 0):  # fmt: skip
        raise InputError(
            f"got {interval!r}; expected finite seconds > 0", field="interval_s"
        )
    for name in ("last_stage_blocks", "max_stages"):
        value = getattr(migrator, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"got {value!r}; expected an integer >= 1", field=name)
