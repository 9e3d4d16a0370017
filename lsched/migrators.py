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

Priorities (the paper's headroom for high-priority requests) are not modelled:
every request has the same priority here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

#: Llumnix's freeness thresholds: a source has less, a destination more
#: (``migrate_out_load_threshold`` and the paper's pairing of overloaded with
#: underloaded instances; ``llumnix/config/default.py``).
FREENESS_THRESHOLD = 3.0


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
    """

    free_blocks: int
    head_blocks: int
    running: int
    waiting: int
    waiting_blocks: int
    preempted: int
    candidates: tuple[tuple[int, int], ...]
    block_tokens: int

    @property
    def freeness(self) -> float:
        """Llumnix's freeness for migration (module docstring)."""
        return self.freeness_after(0, 0)

    @property
    def dispatch_freeness(self) -> float:
        """Llumnix's freeness for dispatch (module docstring)."""
        return freeness(
            self.free_blocks - self.waiting_blocks, self.running + self.waiting
        )

    def freeness_after(self, blocks: int, requests: int) -> float:
        """The freeness with ``blocks`` more blocks taken and ``requests`` more
        running (negative: a request moved out)."""
        room = self.free_blocks - blocks - self.head_blocks
        return freeness(room, self.running + requests + (self.waiting > 0))


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

    def decide(self, view: MigrationView) -> list[tuple[int, int, int]]:
        loads = view.loads
        f = [load.freeness for load in loads]
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
        before = _gap(target.freeness, source.freeness)
        after = _gap(target.freeness_after(x, 1), source.freeness_after(-x, -1))
        return i if after < before else None
