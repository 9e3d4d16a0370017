"""Migrators: who moves which running request between replicas, and when.

A migrator is the trigger of live migration (:mod:`lsched.evaluator.migration`
runs the copies). Every ``interval_s`` seconds of simulated time the loop shows
it a read-only :class:`MigrationView` (every replica's :class:`ReplicaLoad` at
its first iteration boundary at or after the tick) and it returns a list of
moves ``(request, source, target)``: instance positions of decoding requests
running on ``source``. The loop starts each move with
:meth:`lsched.evaluator.migration.MigrationSim.migrate`. A migrator also carries
the copy's two parameters, ``last_stage_blocks`` and ``max_stages``.

Llumnix (Sun et al., OSDI 2024; ``AlibabaPAI/llumnix``)
--------------------------------------------------------
*Freeness* of a replica, the paper's "virtual usage" with no priority headroom,
as Llumnix computes it (``RemainingStepsLoad`` in ``llumnix/load_computation.py``):
for migration (its ``enable_defrag`` branch) ::

    F = (free blocks - blocks of the head of its waiting queue)
        / (running requests + (1 if a request waits else 0))

and for dispatch (the other branch, every waiting request counted) ::

    F_d = (free blocks - blocks of every waiting request)
          / (running requests + waiting requests)

each ``+inf`` with a zero denominator. Free blocks count every block taken on
the replica, by a running request or reserved for KV on its way in or out. A
waiting request's blocks are those its prefill needs (``ceil((s_i + emitted) /
b)``: a request preempted by recompute prefills its emitted tokens again).
(Counting only the head, over running requests alone, as the paper's summary
reads, a replica with a long queue looks free to the dispatcher.)

Every tick, :class:`LlumnixMigrator` (``llumnix/global_scheduler/
migration_scheduler.py``, ``migration_filter.py``): sources are the replicas
with ``F < 3`` or a preempted request waiting; destinations those with
``F > 3``. Sources sorted by ascending ``F`` (most loaded first) are paired with
destinations sorted by descending ``F`` (least loaded first), pair by pair, a
replica in one pair at most. From each pair's source one decoding request not
already migrating: the last admitted (``select=last``, Llumnix's ``LCR``) or the
one holding the fewest KV tokens (``select=shortest``, ``SR``); the move is kept
only if it shrinks the pair's freeness gap: with ``x`` the request's blocks,
``|F_t' - F_s'| < |F_t - F_s|`` where ``F_s'`` counts ``x`` more free blocks and
one running request less on the source and ``F_t'`` ``x`` fewer free blocks and
one running request more on the target (``inf`` compares as larger than any
number; a gap between two infinities is taken as 0). The ``llumnix`` router
sends each arrival to the replica of highest ``F_d``.

Priorities (the paper's virtual usage for execution priorities): with
``headroom_blocks = h > 0``, a replica that runs a request of priority ``<=
high_priority`` (lsched's priorities: smaller is more urgent) counts ``h`` more
blocks taken in both freenesses, the paper's headroom spread over its
high-priority requests. So the dispatcher sends new requests elsewhere and the
migrator moves requests off it, keeping its high-priority requests' batch
small and their memory free. In the gap test a move takes the headroom with
it when it moves the source's only high-priority request. ``h = 0`` (the
default), or an instance without priorities, is the rule above.

dLoRA (Wu et al., OSDI 2024; ``LLMServe/dLoRA-artifact``)
----------------------------------------------------------
:class:`DLoraMigrator` is dLoRA's periodic co-migration
(``EngineManager.migration_schedule`` in ``vllm/engine/engine_manager.py``; its
trigger and model are stated, with line numbers, in
:mod:`lsched.formulations.comigration`). Every ``interval_s`` (10 s) it reads
each replica's :class:`AdapterLoad`: its unfinished requests, each with its
adapter and blocks ``b_i`` (held if running, needed to prefill if waiting, as
dLoRA sums ``num_blocks`` over every request an engine reports). With ``U_j =
sum_i b_i`` and ``G_j`` the KV capacity:

1. *KV.* ``h`` the replica of largest ``U`` (ties: the highest id, the last
   of dLoRA's stable ascending sort), ``l`` of smallest (ties: the lowest id):
   if ``U_h >= kv_fraction G_h`` and ``U_l < kv_fraction G_l``, solve over
   ``{h, l}``.
2. *Requests.* Else, ``h`` the replica with the most unfinished requests (same
   ties) and ``l`` the one with the fewest: if ``n_h - mean_j n_j >=
   imbalance`` (16) and ``n_l`` is below the mean, solve over ``{h, l}``
   (dLoRA's loop matches the most loaded engine with the first engine below
   the mean in ascending order, and returns when the first gap is below the
   threshold).
3. Else nothing.

The problem (:class:`~lsched.formulations.comigration.CoMigrationProblem`) holds
every unfinished request of the two replicas; only a decoding request not
already migrating is *movable* (a live migration takes nothing else). ``e_i``
is dLoRA's per-adapter mean execution time over every request finished so far
(each replica's counts summed, as ``get_migration_info`` does), 5 s for an
adapter with none (``default_exec_time``); a request's execution time is here
its completion less its admission (dLoRA sums the iterations it ran in).
Adapters are those of the two replicas' requests and resident adapters; the
base model (code ``-1``) is one more adapter, resident everywhere with a slot
of its own. Slots ``L_j = max(max_loras, adapters j's requests need now)``
(+1 for the base model): a move never brings a replica more adapters than
vLLM's ``max_loras`` rule lets its running requests hold, unless its own
requests already need more (dLoRA's ``engine_lora_capacity``, the adapters an
engine holds, has no such rule to meet). ``l_k`` is adapter ``k``'s load time
(size / h2d) where it is not resident: lsched's engines do load it (dLoRA's ILP
prices no load). The ILP is solved by ``backend`` (``milp``: Pyomo + HiGHS)
within ``time_limit_s``; every request whose replica changes in its best
assignment is moved (:class:`~lsched.formulations.comigration.MigrationPlan`),
by a live migration, unless its target could not adopt it as the target
stands (its running requests at ``max_num_seqs``, or its adapter one more than
``max_loras`` allows beside theirs and the moves kept before it:
:func:`adoptable`; the slots above count waiting requests' adapters too, which
the rule does not); its adapter is loaded on the target by the engine's own
rule when it first runs there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: Llumnix's freeness thresholds: a source has less, a destination more
#: (``migrate_out_load_threshold`` and the paper's pairing of overloaded with
#: underloaded instances; ``llumnix/config/default.py``).
FREENESS_THRESHOLD = 3.0


@dataclass(frozen=True, slots=True)
class RequestLoad:
    """One unfinished request of a replica that serves adapters: its instance
    position, adapter code (``-1``: the base model), KV blocks (held, or needed
    to prefill if it waits), whether a live migration may take it now and
    whether it runs (else it waits)."""

    request: int
    adapter: int
    blocks: int
    movable: bool
    running: bool = True


@dataclass(frozen=True, slots=True)
class AdapterLoad:
    """A replica's requests and adapters, as :class:`DLoraMigrator` and the
    ``dlora`` router read them.

    Attributes
    ----------
    capacity_blocks
        KV capacity, blocks.
    block_bytes
        Bytes of one KV block.
    max_num_seqs
        The profile's ``max_num_seqs``.
    max_loras
        vLLM's ``max_loras`` (:mod:`lsched.adapters`).
    resident
        Codes of its resident adapters, least recently used first.
    load_s
        Per adapter code, its load time, seconds.
    requests
        Its unfinished requests: running (in running order), then waiting.
    finished
        ``(adapter code, requests, seconds)``: the requests of each adapter that
        finished here and their summed seconds from admission to completion.
    """

    capacity_blocks: int
    block_bytes: float
    max_num_seqs: int
    max_loras: int
    resident: tuple[int, ...]
    load_s: tuple[float, ...]
    requests: tuple[RequestLoad, ...]
    finished: tuple[tuple[int, int, float], ...]


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica at a boundary, as a migrator or the ``llumnix`` router sees it.

    Attributes
    ----------
    free_blocks
        Capacity less every block taken (running requests and reservations).
    head_blocks
        Blocks the head of its waiting queue needs to prefill (0 if none waits).
    running
        Requests it runs (prefilling or decoding).
    waiting
        Requests waiting to be admitted (new, or preempted by recompute).
    waiting_blocks
        Blocks every waiting request needs to prefill.
    preempted
        Requests preempted (recompute or swap) that wait to run again.
    candidates
        ``(request, kv_tokens)`` of its decoding requests that may migrate
        (not already migrating), in admission order; ``request`` is the
        instance position.
    block_tokens
        ``b``, tokens per KV block.
    adapters
        Its requests and adapters where the replica serves adapters, else
        ``None``.
    priorities
        ``(request, priority)`` of its running requests where the instance has
        priorities (smaller is more urgent), else empty.
    """

    free_blocks: int
    head_blocks: int
    running: int
    waiting: int
    waiting_blocks: int
    preempted: int
    candidates: tuple[tuple[int, int], ...]
    block_tokens: int
    adapters: AdapterLoad | None = None
    priorities: tuple[tuple[int, int], ...] = ()

    @property
    def freeness(self) -> float:
        """Llumnix's freeness for migration (module docstring)."""
        return self.freeness_after(0, 0)

    def dispatch_freeness_after(self, headroom_blocks: int) -> float:
        """Llumnix's freeness for dispatch (module docstring) with
        ``headroom_blocks`` more taken."""
        room = self.free_blocks - self.waiting_blocks - headroom_blocks
        return freeness(room, self.running + self.waiting)

    def freeness_after(
        self, blocks: int, requests: int, headroom_blocks: int = 0
    ) -> float:
        """The freeness with ``blocks`` (and ``headroom_blocks``) more blocks
        taken and ``requests`` more running (negative: a request moved out)."""
        room = self.free_blocks - blocks - self.head_blocks - headroom_blocks
        return freeness(room, self.running + requests + (self.waiting > 0))

    def runs_urgent(self, high_priority: int, without: int = -1) -> bool:
        """Whether it runs a request of priority ``<= high_priority`` other than
        request ``without``."""
        return any(p <= high_priority for i, p in self.priorities if i != without)


def freeness(room_blocks: int, requests: int) -> float:
    """``room_blocks / requests``, ``inf`` with none."""
    return math.inf if requests == 0 else room_blocks / requests


@dataclass(frozen=True, slots=True)
class MigrationView:
    """What a migrator sees at a tick: ``now_s`` and every replica's load."""

    now_s: float
    loads: tuple[ReplicaLoad, ...]


class Migrator(Protocol):
    """Decides the migrations at every tick."""

    interval_s: float
    last_stage_blocks: int
    max_stages: int

    def decide(self, view: MigrationView) -> list[tuple[int, int, int]]:
        """The moves ``(request, source, target)`` to start at ``view.now_s``."""
        ...


def _gap(a: float, b: float) -> float:
    """``|a - b|``, 0 between two infinities."""
    if math.isinf(a) and math.isinf(b):
        return 0.0
    return abs(a - b)


@dataclass
class LlumnixMigrator:
    """Llumnix's pairing and selection (module docstring)."""

    interval_s: float = 0.05
    select: str = "last"
    last_stage_blocks: int = 16
    max_stages: int = 3
    headroom_blocks: int = 0
    high_priority: int = 0

    def headroom(self, load: ReplicaLoad, without: int = -1, adds: bool = False) -> int:
        """The blocks ``load`` keeps for high-priority requests (module
        docstring): ``headroom_blocks`` while it runs one other than request
        ``without``, or one moves in (``adds``)."""
        urgent = adds or load.runs_urgent(self.high_priority, without)
        return self.headroom_blocks if urgent else 0

    def decide(self, view: MigrationView) -> list[tuple[int, int, int]]:
        loads = view.loads
        f = [load.freeness_after(0, 0, self.headroom(load)) for load in loads]
        sources = sorted(
            (c for c, load in enumerate(loads)
             if f[c] < FREENESS_THRESHOLD or load.preempted),
            key=lambda c: (f[c], c),
        )  # fmt: skip
        targets = sorted(
            (c for c in range(len(loads)) if f[c] > FREENESS_THRESHOLD),
            key=lambda c: (-f[c], c),
        )
        moves, used = [], set()
        for s in sources:
            t = next((t for t in targets if t not in used and t != s), None)
            if t is None or s in used:
                continue
            used |= {s, t}
            move = self._pick(loads[s], loads[t])
            if move is not None:
                moves.append((move, s, t))
        return moves

    def _pick(self, source: ReplicaLoad, target: ReplicaLoad) -> int | None:
        """The request to move from ``source`` to ``target``, if the move
        shrinks their freeness gap."""
        if not source.candidates:
            return None
        if self.select == "last":
            i, tokens = source.candidates[-1]
        else:
            i, tokens = min(source.candidates, key=lambda c: (c[1], c[0]))
        x = -(-tokens // source.block_tokens)
        urgent = any(j == i and p <= self.high_priority for j, p in source.priorities)
        before = _gap(
            target.freeness_after(0, 0, self.headroom(target)),
            source.freeness_after(0, 0, self.headroom(source)),
        )
        after = _gap(
            target.freeness_after(x, 1, self.headroom(target, adds=urgent)),
            source.freeness_after(-x, -1, self.headroom(source, without=i)),
        )
        return i if after < before else None


#: dLoRA's ``default_exec_time``: an adapter's expected execution time before any
#: of its requests finished, seconds (``engine_manager.py``, ``EngineManager``).
DEFAULT_EXEC_S = 5.0


@dataclass
class DLoraMigrator:
    """dLoRA's periodic co-migration (module docstring).

    Parameters
    ----------
    interval_s
        Seconds between decisions (dLoRA's ``migration_interval``, 10).
    kv_fraction
        The KV trigger's fraction of capacity (0.9), in ``(0, 1]``.
    imbalance
        The request trigger's excess over the mean (``migration_req_thres``,
        16), ``>= 1``.
    time_limit_s
        Seconds each solve may take. A solve that finishes within it is
        deterministic; one stopped by it applies its incumbent, which then
        depends on the machine's speed (the run says nothing of it: keep the
        limit above the solve times, ``benchmarks/comigration/README.md``).
    backend
        The co-migration backend (:mod:`lsched.formulations.backends`).
    last_stage_blocks, max_stages
        The live copy's parameters (:mod:`lsched.evaluator.migration`).

    On a cluster that serves no adapters it moves nothing (its loads carry no
    :class:`AdapterLoad`).
    """

    interval_s: float = 10.0
    kv_fraction: float = 0.9
    imbalance: float = 16.0
    time_limit_s: float = 5.0
    backend: str = "milp"
    last_stage_blocks: int = 16
    max_stages: int = 3

    def decide(self, view: MigrationView) -> list[tuple[int, int, int]]:
        loads = [load.adapters for load in view.loads]
        if any(a is None for a in loads):
            return []  # no adapters: nothing of dLoRA's to price
        pair = self.pair(loads)  # type: ignore[arg-type]
        if pair is None:
            return []
        return _co_migrate(self, loads, pair)  # type: ignore[arg-type]

    def pair(self, loads: list[AdapterLoad]) -> tuple[int, int] | None:
        """The two replicas the ILP runs over (steps 1 and 2), or ``None``."""
        used = [sum(q.blocks for q in a.requests) for a in loads]
        most = max(range(len(loads)), key=lambda c: (used[c], c))
        least = min(range(len(loads)), key=lambda c: (used[c], c))
        fraction = self.kv_fraction
        if (
            used[most] >= fraction * loads[most].capacity_blocks
            and used[least] < fraction * loads[least].capacity_blocks
        ):
            return most, least
        count = [len(a.requests) for a in loads]
        mean = sum(count) / len(count)
        most = max(range(len(loads)), key=lambda c: (count[c], c))
        least = min(range(len(loads)), key=lambda c: (count[c], c))
        if count[most] - mean >= self.imbalance and count[least] < mean:
            return most, least
        return None


def expected_exec_s(loads: list[AdapterLoad]) -> dict[int, float]:
    """Per adapter code, the mean seconds of its finished requests over every
    replica (codes with none are absent: :data:`DEFAULT_EXEC_S`)."""
    totals: dict[int, tuple[int, float]] = {}
    for a in loads:
        for code, n, seconds in a.finished:
            count, total = totals.get(code, (0, 0.0))
            totals[code] = (count + n, total + seconds)
    return {code: total / count for code, (count, total) in totals.items()}


def _co_migrate(
    migrator: DLoraMigrator, loads: list[AdapterLoad], pair: tuple[int, int]
) -> list[tuple[int, int, int]]:
    """Solve the ILP over the replicas ``pair`` and return its moves."""
    from lsched.formulations.backends import solve
    from lsched.formulations.comigration import MigrationPlan

    problem, requests = comigration_problem(loads, pair)
    result = solve(
        problem, migrator.backend, time_limit=migrator.time_limit_s,
        num_workers=1, seed=0,
    )  # fmt: skip
    if result.start is None:
        return []
    plan = MigrationPlan.of(problem, result.start)
    moves = [(requests[m.request], pair[m.source], pair[m.target]) for m in plan.moves]
    return adoptable(moves, loads)


def adoptable(
    moves: list[tuple[int, int, int]], loads: list[AdapterLoad]
) -> list[tuple[int, int, int]]:
    """The ``moves`` a target can adopt as it stands: in order, each while its
    target runs fewer than ``max_num_seqs`` requests and its adapter is one of
    the target's running requests' or these stay below ``max_loras``
    (counting the moves kept before it)."""
    adapter = {q.request: q.adapter for a in loads for q in a.requests}
    running = [sum(q.running for q in a.requests) for a in loads]
    used = [{q.adapter for q in a.requests if q.running and q.adapter >= 0}
            for a in loads]  # fmt: skip
    kept = []
    for i, source, target in moves:
        k, on = adapter[i], used[target]
        room = running[target] < loads[target].max_num_seqs
        if room and (k < 0 or k in on or len(on) < loads[target].max_loras):
            kept.append((i, source, target))
            running[target] += 1
            if k >= 0:
                on.add(k)
    return kept


def comigration_problem(
    loads: list[AdapterLoad], pair: tuple[int, int]
) -> tuple[Any, list[int]]:
    """The co-migration problem over the replicas ``pair`` (module docstring)
    and the instance position of each of its requests."""
    from lsched.formulations.comigration import PCIE_BYTES_PER_S, CoMigrationProblem

    sides = [loads[c] for c in pair]
    members = [(j, q) for j, a in enumerate(sides) for q in a.requests]
    codes = sorted({q.adapter for _, q in members} | {
        c for a in sides for c in a.resident})  # fmt: skip
    if -1 not in codes:
        codes.append(-1)
    index = {c: k for k, c in enumerate(codes)}
    resident = np.zeros((len(codes), 2), dtype=np.bool_)
    resident[index[-1], :] = True
    for j, a in enumerate(sides):
        for c in a.resident:
            resident[index[c], j] = True
    needed = [len({q.adapter for i, q in members if i == j} - {-1}) for j in range(2)]
    exec_s = expected_exec_s(loads)
    load_s = sides[0].load_s
    problem = CoMigrationProblem(
        replica=[j for j, _ in members],
        adapter=[index[q.adapter] for _, q in members],
        blocks=[q.blocks for _, q in members],
        exec_s=[exec_s.get(q.adapter, DEFAULT_EXEC_S) for _, q in members],
        capacity_blocks=[a.capacity_blocks for a in sides],
        adapter_slots=[
            max(a.max_loras, n) + 1 for a, n in zip(sides, needed, strict=True)
        ],
        resident=resident,
        block_bytes=sides[0].block_bytes,
        pcie_bytes_per_s=PCIE_BYTES_PER_S,
        adapter_load_s=[0.0 if c < 0 else load_s[c] for c in codes],
        movable=np.array([q.movable for _, q in members], dtype=np.bool_),
    )
    return problem, [q.request for _, q in members]
