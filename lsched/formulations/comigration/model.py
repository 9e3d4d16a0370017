"""The co-migration problem as the solve driver (:mod:`lsched.formulations.driver`)
sees it.

A schedule is a replica per request (int64). Its objective is the exact ``max_j
T_j`` in seconds (:meth:`CoMigrationProblem.replica_times_s`), with each replica
holding the least placement its requests need; it is feasible when every request
is on a replica, every immovable request on its own, and no replica needs more
adapters than its slots. The warm start is staying put (no move, ``x_i = r_i``),
feasible by the problem's validation, or ``initial_solution`` checked. The free
bound is :func:`free_bound`; the objective is continuous, so a proven bound
implies nothing stronger.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.comigration.problem import CoMigrationProblem
from lsched.formulations.driver import Model

__all__ = ["COMIGRATION", "free_bound", "is_feasible", "objective_s", "start"]

IntArray = npt.NDArray[np.int64]


def objective_s(problem: CoMigrationProblem, where: IntArray) -> float:
    """``max_j T_j`` of the assignment ``where``, seconds."""
    return float(problem.replica_times_s(where).max())


def is_feasible(problem: CoMigrationProblem, where: IntArray) -> bool:
    """Whether ``where`` puts every request on a replica within adapter slots,
    every immovable request where it is."""
    if where.shape != (len(problem),):
        return False
    if not np.all((where >= 0) & (where < problem.replicas)):
        return False
    if np.any((where != problem.replica) & ~problem.movable):
        return False
    return bool(np.all(problem.needed(where).sum(axis=0) <= problem.adapter_slots))


def free_bound(problem: CoMigrationProblem) -> float:
    """``max(max_i e_i, (sum_i e_i + beta (sum_i b_i - sum_j G_j)^+) / C)``
    (:mod:`lsched.formulations.comigration`, "Free bound")."""
    total_overflow = max(
        0, int(problem.blocks.sum()) - int(problem.capacity_blocks.sum())
    )
    average = (
        float(problem.exec_s.sum()) + problem.block_s * total_overflow
    ) / problem.replicas
    return max(float(problem.exec_s.max()), average)


def start(
    problem: CoMigrationProblem, initial_solution: npt.ArrayLike | None
) -> tuple[str, IntArray]:
    """No move (``r``), or ``initial_solution`` if it is a feasible assignment.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a feasible assignment (field
        ``initial_solution``).
    """
    if initial_solution is None:
        return "no_move", np.array(problem.replica, dtype=np.int64)
    where = np.asarray(initial_solution)
    if where.dtype.kind not in "iu" or not is_feasible(problem, where.astype(np.int64)):
        raise InputError(
            f"expected {len(problem)} replica ids from 0 to {problem.replicas - 1} "
            "within every replica's adapter slots, immovable requests in place",
            field="initial_solution",
        )
    return "initial_solution", where.astype(np.int64)


#: The co-migration model: replica ids scored by dLoRA's largest replica time.
COMIGRATION = Model(
    name="comigration",
    problem_type=CoMigrationProblem,
    start=start,
    objective=objective_s,
    is_feasible=is_feasible,
    free_bound=free_bound,
)
