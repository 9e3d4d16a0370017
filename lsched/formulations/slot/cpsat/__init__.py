"""CP-SAT backend (OR-Tools): :func:`solve` for the slot model.

The formulations are assembled in :mod:`lsched.formulations.slot.cpsat.build`
from :mod:`~lsched.formulations.slot.cpsat.variables`,
:mod:`~lsched.formulations.slot.cpsat.constraints` and
:mod:`~lsched.formulations.slot.cpsat.objective`. The solve driver
(:mod:`lsched.formulations.driver`) gives it a feasible incumbent
(``initial_solution``, checked, or the best heuristic of
:mod:`lsched.formulations.slot.incumbent`); the backend

1. cuts start domains at the safe deadlines of :mod:`lsched.formulations.slot.horizon`
   derived from that incumbent's objective;
2. hands the incumbent to CP-SAT as a solution hint and runs it under
   ``max_time_in_seconds`` (CP-SAT keeps to it; the remaining time after building
   the model is what it gets);
3. returns the better of CP-SAT's best solution and the incumbent, the better of
   CP-SAT's best bound (valid: the deadlines keep an optimal schedule) and the
   closed-form bounds of :func:`lsched.formulations.bounds.slot.closed_form`, and the
   objective and bound over time. CP-SAT's objective is an integer, and it
   reports optimal only with a zero absolute gap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.slot.cpsat.build import FORMULATIONS, SlotModel, build
from lsched.formulations.slot.horizon import deadlines
from lsched.formulations.slot.model import SLOT
from lsched.formulations.slot.problem import SlotProblem
from lsched.formulations.solvers.cpsat import (
    CpsatOutcome,
    ProgressRecorder,
    solve_in_run,
)

__all__ = ["FORMULATIONS", "search_built", "solve"]


def search_built(
    run: SolveRun, built: SlotModel, params: dict[str, Any], source: str
) -> CpsatOutcome:
    """CP-SAT on ``built`` in the run's time left, hinted with its incumbent; its
    best schedule, if any, is offered to the run as ``source``."""
    built.hint(run.start)
    recorder = ProgressRecorder(run, run.problem.objective_offset)
    outcome = solve_in_run(run, built.model, params, recorder)
    if outcome.found:
        solver = outcome.solver
        found = np.array([solver.value(v) for v in built.start], dtype=np.int64)
        run.offer(found, source)
    return outcome


@backend(SLOT)
def solve(run: SolveRun, *, formulation: str = "events", **params: Any) -> Attempt:
    """Solve a slot problem with CP-SAT.

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`.
    formulation
        ``"events"`` (default), ``"interval"`` or ``"time-indexed"``
        (:mod:`lsched.formulations.slot.cpsat.build`).
    **params
        Further CP-SAT parameters, e.g. ``linearization_level=2``.

    Returns
    -------
    SolveResult
        Never raises on a time-out: the incumbent and bound found so far.
    """
    # the search: build the formulation, hint the incumbent, CP-SAT in the time left
    problem: SlotProblem = run.problem
    upper = problem.integer_objective(run.start)
    hi = deadlines(problem, upper) - problem.output_tokens
    built = build(problem, problem.release, hi, formulation)
    outcome = search_built(run, built, params, "cpsat")
    offset = problem.objective_offset
    return Attempt(
        solver=f"cpsat/{built.formulation}",
        stop=outcome.stop,
        bound=outcome.bound() + offset,
        infeasible=outcome.infeasible,
        info={
            **outcome.info(),
            "conflicts": outcome.solver.num_conflicts,
            "horizon": int((hi + problem.output_tokens).max()),
        },
    )
