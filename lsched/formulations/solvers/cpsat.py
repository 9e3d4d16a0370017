"""CP-SAT (OR-Tools) under lsched's limits: one configured solver, a stoppable solve.

Every CP-SAT backend (slot, timed, LNS, replica assignment) gets its solver from
:func:`configured_solver`, so the time limit, workers, seed and the handling of
Ctrl-C (by :mod:`lsched.interrupt`, not CP-SAT's own handler) are set once.
"""

from __future__ import annotations

from typing import Any

from ortools.sat.python import cp_model

from lsched.errors import InputError
from lsched.interrupt import run_stoppable


def configured_solver(
    time_limit: float, num_workers: int, seed: int, params: dict[str, Any]
) -> cp_model.CpSolver:
    """A CP-SAT solver with these limits and any further CP-SAT ``params``.

    Raises
    ------
    InputError
        Naming an unknown CP-SAT parameter.
    """
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = num_workers
    solver.parameters.random_seed = seed
    solver.parameters.max_time_in_seconds = time_limit
    # a Ctrl-C goes to lsched.interrupt, which stops the search and says so
    solver.parameters.catch_sigint_signal = False
    for key, value in params.items():
        if not hasattr(solver.parameters, key):
            raise InputError(f"unknown CP-SAT parameter {key!r}", field=key)
        setattr(solver.parameters, key, value)
    return solver


def solve_stoppable(
    solver: cp_model.CpSolver,
    model: cp_model.CpModel,
    callback: cp_model.CpSolverSolutionCallback | None = None,
) -> tuple[Any, bool]:
    """``solver.solve(model, callback)`` that a stop request ends
    (:mod:`lsched.interrupt`): CP-SAT's status code and whether it was requested.
    """
    return run_stoppable(lambda: solver.solve(model, callback), solver.stop_search)


__all__ = ["configured_solver", "solve_stoppable"]
