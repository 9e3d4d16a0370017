"""The ordered assignment as the solve driver (:mod:`lsched.formulations.driver`)
sees it.

Its data are the packing's (:class:`~lsched.formulations.replicas.AssignmentProblem`:
loads, replicas, integer grid, LPT). A schedule is a ``(2, n)`` int64 array: row
0 the client of every request, row 1 its position on that client (0 first). It
is feasible when each client's positions are ``0..m-1`` once each; its objective
is the largest client's integer load (the order does not change it:
:mod:`lsched.formulations.pang_offline`), with the packing's free bound and
bound rounding (:mod:`lsched.formulations.replicas.assignment.model`). The warm
start is LPT, each client's requests in LPT order (:func:`lpt_positions`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.driver import Model
from lsched.formulations.replicas.assignment.model import free_bound, round_bound
from lsched.formulations.replicas.assignment.problem import (
    AssignmentProblem,
    rank_order,
)

__all__ = ["ORDERED", "lpt_positions"]

IntArray = npt.NDArray[np.int64]


def lpt_positions(load_s: npt.ArrayLike, where: IntArray) -> IntArray:
    """Each request's position on its client, the client's requests in LPT order."""
    load = np.asarray(load_s, dtype=np.float64)
    position = np.zeros(len(load), dtype=np.int64)
    seen: dict[int, int] = {}
    for i in rank_order(load).tolist():
        c = int(where[i])
        position[i] = seen.get(c, 0)
        seen[c] = position[i] + 1
    return position


def _start(problem: AssignmentProblem, initial_solution: Any) -> tuple[str, IntArray]:
    """LPT in LPT order; the model takes no other warm start."""
    if initial_solution is not None:
        raise InputError(
            "the ordered assignment starts from LPT; expected no initial solution",
            field="initial_solution",
        )
    where = problem.lpt_assignment
    return "lpt", np.stack([where, lpt_positions(problem.load_s, where)])


def _is_feasible(problem: AssignmentProblem, schedule: IntArray) -> bool:
    """Whether every request is on a client and each client's positions are
    ``0..m-1`` once each."""
    if schedule.shape != (2, len(problem)):
        return False
    where, position = schedule
    if np.any((where < 0) | (where >= problem.replicas)):
        return False
    return all(
        np.array_equal(np.sort(position[where == c]), np.arange(np.sum(where == c)))
        for c in range(problem.replicas)
    )


#: The ordered assignment: clients and positions scored by the largest
#: integer load.
ORDERED = Model(
    name="pang_offline.ordered",
    problem_type=AssignmentProblem,
    start=_start,
    objective=lambda problem, schedule: float(problem.integer_objective(schedule[0])),
    is_feasible=_is_feasible,
    free_bound=free_bound,
    round_bound=round_bound,
)
