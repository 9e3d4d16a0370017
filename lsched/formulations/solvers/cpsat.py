"""CP-SAT (OR-Tools) under lsched's limits: one configured solver, a stoppable solve.

Every CP-SAT backend (slot, timed, LNS, replica assignment) gets its solver from
:func:`configured_solver`, so the time limit, workers, seed and the handling of
Ctrl-C (by :mod:`lsched.interrupt`, not CP-SAT's own handler) are set once.
:func:`solve_in_run` runs a backend's model inside a solve of the driver
(:mod:`lsched.formulations.driver`), logging CP-SAT's progress in it, and returns
what every backend reads of it (:class:`CpsatOutcome`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from lsched.errors import InputError
from lsched.formulations.driver import SolveRun
from lsched.formulations.result import CPSAT_OTHER_LIMITS, Stop, cpsat_stop
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


@dataclass(frozen=True)
class CpsatOutcome:
    """CP-SAT once it has stopped in a driver's run (:func:`solve_in_run`).

    Attributes
    ----------
    solver
        The solver, to read the solution's values from.
    code
        CP-SAT's status code.
    stop
        Why it stopped (:func:`lsched.formulations.result.cpsat_stop`).
    """

    solver: cp_model.CpSolver
    code: Any
    stop: Stop

    @property
    def found(self) -> bool:
        """Whether CP-SAT has a solution (optimal or feasible)."""
        return self.code in (cp_model.OPTIMAL, cp_model.FEASIBLE)

    @property
    def infeasible(self) -> bool:
        """Whether CP-SAT proved the model infeasible."""
        return self.code == cp_model.INFEASIBLE

    def bound(self) -> float:
        """CP-SAT's objective bound where its status carries one (optimal,
        feasible or unknown), else ``-inf``; in CP-SAT's units."""
        if self.code in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.UNKNOWN):
            return float(self.solver.best_objective_bound)
        return -math.inf

    def info(self) -> dict[str, Any]:
        """CP-SAT's status text and branch count, for :attr:`Attempt.info`."""
        return {
            "cpsat_status": self.solver.status_name(self.code),
            "branches": self.solver.num_branches,
        }


def solve_in_run(
    run: SolveRun,
    model: cp_model.CpModel,
    params: dict[str, Any],
    recorder: ProgressRecorder | None = None,
) -> CpsatOutcome:
    """Solve ``model`` with CP-SAT in the time ``run`` has left, with its workers,
    seed and the further CP-SAT ``params``.

    ``recorder`` logs CP-SAT's progress in ``run`` (a :class:`ProgressRecorder`
    of CP-SAT's own values by default); a stop request ends the solve
    (:func:`solve_stoppable`).

    Raises
    ------
    InputError
        Naming an unknown CP-SAT parameter.
    """
    solver = configured_solver(run.remaining_s(), run.num_workers, run.seed, params)
    recorder = ProgressRecorder(run) if recorder is None else recorder
    solver.best_bound_callback = recorder.on_bound
    code, interrupted = solve_stoppable(solver, model, recorder)
    stop = cpsat_stop(
        solver.status_name(code),
        interrupted=interrupted,
        other_limits=bool(CPSAT_OTHER_LIMITS & params.keys()),
    )
    return CpsatOutcome(solver=solver, code=code, stop=stop)


__all__ = [
    "CpsatOutcome",
    "ProgressRecorder",
    "configured_solver",
    "solve_in_run",
    "solve_stoppable",
]
