"""What a migration policy applies of a co-migration solve: moves and adapter loads.

:meth:`MigrationPlan.of` turns an assignment (:attr:`SolveResult.start` of a
solve of a :class:`~lsched.formulations.comigration.CoMigrationProblem`) into the
requests to move, ``(request, source, target)`` with ``source != target``, and
per replica the adapters it must hold (the least placement) and those among them
to load (not resident now). dLoRA (``engine_manager.py`` lines 422-450) applies
its ILP the same way: it moves each request whose replica changed and sets each
engine's adapters to the ILP's placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.comigration.model import is_feasible
from lsched.formulations.comigration.problem import CoMigrationProblem, read_only

__all__ = ["MigrationPlan", "Move"]


@dataclass(frozen=True)
class Move:
    """Request ``request`` (the problem's index) moves from ``source`` to
    ``target``."""

    request: int
    source: int
    target: int


@dataclass(frozen=True, eq=False)
class MigrationPlan:
    """The moves and adapter loads of one assignment.

    Attributes
    ----------
    moves
        Every request whose replica changes, by request index.
    placement
        ``(K, C)`` booleans: the adapters each replica holds (those its requests
        need; read-only).
    loads
        Per replica, the adapters of :attr:`placement` not resident now, to load.
    replica_time_s
        ``T_j`` per replica, seconds (read-only).
    objective_s
        ``max_j T_j``.
    """

    moves: tuple[Move, ...]
    placement: npt.NDArray[np.bool_]
    loads: tuple[tuple[int, ...], ...]
    replica_time_s: npt.NDArray[np.float64]
    objective_s: float

    @classmethod
    def of(cls, problem: CoMigrationProblem, where: npt.ArrayLike) -> MigrationPlan:
        """The plan of the assignment ``where`` (a replica per request).

        Raises
        ------
        InputError
            If ``where`` is not a feasible assignment of ``problem`` (field
            ``where``).
        """
        assignment = np.asarray(where)
        if assignment.dtype.kind not in "iu" or not is_feasible(
            problem, assignment.astype(np.int64)
        ):
            raise InputError(
                f"expected a feasible assignment of {len(problem)} requests",
                field="where",
            )
        assignment = assignment.astype(np.int64)
        moved = np.flatnonzero(assignment != problem.replica)
        moves = tuple(
            Move(int(i), int(problem.replica[i]), int(assignment[i])) for i in moved
        )
        placement = problem.needed(assignment)
        new = placement & ~problem.resident
        loads = tuple(
            tuple(int(k) for k in np.flatnonzero(new[:, j]))
            for j in range(problem.replicas)
        )
        times = problem.replica_times_s(assignment)
        return cls(
            moves=moves,
            placement=read_only(placement),
            loads=loads,
            replica_time_s=read_only(times),
            objective_s=float(times.max()),
        )
