"""CP-SAT backend (OR-Tools): :func:`solve` for the slot model.

The formulations are in :mod:`lsched.formulations.cpsat.slot`. Every solve

1. takes a feasible incumbent: ``initial_solution`` (checked) or the best
   heuristic of :mod:`lsched.formulations.incumbent`;
2. cuts start domains at the safe deadlines of :mod:`lsched.formulations.horizon`
   derived from that incumbent's objective;
3. hands the incumbent to CP-SAT as a solution hint and runs it under
   ``max_time_in_seconds`` (CP-SAT keeps to it; the remaining time after building
   the model is what it gets);
4. returns the better of CP-SAT's best solution and the incumbent, the better of
   CP-SAT's best bound (valid: the deadlines keep an optimal schedule) and the
   closed-form bounds of :func:`lsched.formulations.bounds.closed_form`, and the
   objective and bound over time. CP-SAT's objective is an integer, and it
   reports optimal only with a zero absolute gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from ortools.sat.python import cp_model

from lsched.checks import check_solver_options, check_type
from lsched.errors import InputError
from lsched.formulations.bounds import closed_form
from lsched.formulations.cpsat.slot import FORMULATIONS, build
from lsched.formulations.horizon import deadlines
from lsched.formulations.incumbent import starting_schedule
from lsched.formulations.result import (
    CPSAT_OTHER_LIMITS,
    LOG_COLUMNS,
    SolveResult,
    cpsat_stop,
    decide_status,
)
from lsched.formulations.slot import SlotProblem
from lsched.interrupt import run_stoppable, session

__all__ = ["FORMULATIONS", "solve"]

Progress = Callable[[float, float | None, float], None]


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


class _Recorder(cp_model.CpSolverSolutionCallback):
    """Collects (time, objective, bound) whenever the solution or bound improves."""

    def __init__(
        self, problem: SlotProblem, started: float, on_progress: Progress | None
    ) -> None:
        super().__init__()
        self.rows: list[tuple[float, float | None, float]] = []
        self._offset = problem.objective_offset
        self._started = started
        self._objective: float | None = None
        self._bound = -np.inf
        self._on_progress = on_progress

    def record(self, objective: float | None, bound: float) -> None:
        self._objective = objective if objective is not None else self._objective
        self._bound = max(self._bound, bound)
        row = (time.perf_counter() - self._started, self._objective, self._bound)
        self.rows.append(row)
        if self._on_progress is not None:
            self._on_progress(*row)

    def on_solution_callback(self) -> None:
        self.record(self.objective_value + self._offset, -np.inf)

    def on_bound(self, bound: float) -> None:
        self.record(None, bound + self._offset)


@session()
def solve(
    problem: SlotProblem,
    *,
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    initial_solution: npt.ArrayLike | None = None,
    on_progress: Progress | None = None,
    formulation: str = "events",
    **params: Any,
) -> SolveResult:
    """Solve ``problem`` with CP-SAT.

    Parameters
    ----------
    problem
        The slot problem (objective included).
    time_limit
        Wall-clock seconds for the whole call, model building included.
    num_workers
        CP-SAT search workers.
    seed
        CP-SAT's ``random_seed``.
    initial_solution
        A feasible schedule (start slot per request) to start from; the best
        heuristic by default.
    on_progress
        Called with ``(time_s, objective, bound)`` on every improvement.
    formulation
        ``"events"`` (default), ``"interval"`` or ``"time-indexed"``
        (:mod:`lsched.formulations.cpsat.slot`).
    **params
        Further CP-SAT parameters, e.g. ``linearization_level=2``.

    Returns
    -------
    SolveResult
        Never raises on a time-out: the incumbent and bound found so far.
    """
    check_type(problem, "problem", SlotProblem, "a SlotProblem")
    time_limit, num_workers, seed = check_solver_options(time_limit, num_workers, seed)
    started = time.perf_counter()
    source, start = starting_schedule(problem, initial_solution)
    upper = problem.integer_objective(start)
    hi = deadlines(problem, upper) - problem.output_tokens
    built = build(problem, problem.release, hi, formulation)
    built.hint(start)
    remaining = time_limit - (time.perf_counter() - started)
    solver = configured_solver(max(0.0, remaining), num_workers, seed, params)
    recorder = _Recorder(problem, started, on_progress)
    recorder.record(problem.objective_value(start), -np.inf)
    solver.best_bound_callback = recorder.on_bound
    code, interrupted = solve_stoppable(solver, built.model, recorder)

    has_solution = code in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    if has_solution:
        found = np.array([solver.value(v) for v in built.start], dtype=np.int64)
        if problem.integer_objective(found) <= upper:
            start, source = found, "cpsat"
    bound = -np.inf
    if code == cp_model.OPTIMAL:
        bound = float(problem.integer_objective(start))
    elif code == cp_model.INFEASIBLE:  # impossible with a feasible incumbent
        start = None
    elif has_solution or code == cp_model.UNKNOWN:
        bound = solver.best_objective_bound
    offset = problem.objective_offset
    # the free closed-form bounds may beat CP-SAT's on large instances
    bound = max(bound, closed_form(problem) - offset)
    objective = None if start is None else problem.objective_value(start)
    bound = min(bound + offset, objective) if objective is not None else bound + offset
    stop = cpsat_stop(
        solver.status_name(code),
        interrupted=interrupted,
        other_limits=bool(CPSAT_OTHER_LIMITS & params.keys()),
    )
    status = decide_status(
        stop, objective, bound, infeasible=code == cp_model.INFEASIBLE
    )
    recorder.record(objective, bound)
    runtime = time.perf_counter() - started  # after the last log row
    return SolveResult(
        status=status,
        objective=objective,
        bound=bound,
        runtime_s=runtime,
        start=start,
        solver=f"cpsat/{built.formulation}",
        log=pd.DataFrame(recorder.rows, columns=list(LOG_COLUMNS)),
        info={
            "incumbent": source,
            "cpsat_status": solver.status_name(code),
            "branches": solver.num_branches,
            "conflicts": solver.num_conflicts,
            "horizon": int((hi + problem.output_tokens).max()),
        },
    )
