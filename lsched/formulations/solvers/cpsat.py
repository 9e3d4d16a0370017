"""CP-SAT (OR-Tools) under lsched's limits: one configured solver, a stoppable solve.

Every CP-SAT backend (slot, timed, LNS, replica assignment) gets its solver from
:func:`configured_solver`, so the time limit, workers, seed and the handling of
Ctrl-C (by :mod:`lsched.interrupt`, not CP-SAT's own handler) are set once.
:func:`solve_recorded` runs a backend's model inside a solve of the driver
(:mod:`lsched.formulations.driver`), logging CP-SAT's progress in it.
"""

from __future__ import annotations

import math
from typing import Any

from ortools.sat.python import cp_model

from lsched.errors import InputError
from lsched.formulations.driver import SolveRun
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


class ProgressRecorder(cp_model.CpSolverSolutionCallback):
    """Logs CP-SAT's improvements of either side in a driver's run.

    CP-SAT's objective and bound plus ``offset`` are the model's values (the
    slot model's :attr:`~lsched.formulations.slot.SlotProblem.objective_offset`,
    say; 0 when CP-SAT's objective is the model's).
    """

    def __init__(self, run: SolveRun, offset: float = 0.0) -> None:
        super().__init__()
        self._run = run
        self._offset = offset

    def on_solution_callback(self) -> None:
        self._run.record(self.objective_value + self._offset, -math.inf)

    def on_bound(self, bound: float) -> None:
        self._run.record(None, bound + self._offset)


def solve_recorded(
    solver: cp_model.CpSolver,
    model: cp_model.CpModel,
    run: SolveRun,
    offset: float = 0.0,
) -> tuple[Any, bool]:
    """:func:`solve_stoppable` with CP-SAT's progress logged in ``run``
    (:class:`ProgressRecorder`)."""
    recorder = ProgressRecorder(run, offset)
    solver.best_bound_callback = recorder.on_bound
    return solve_stoppable(solver, model, recorder)


__all__ = ["ProgressRecorder", "configured_solver", "solve_recorded", "solve_stoppable"]
