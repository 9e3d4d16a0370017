"""MILP backend of the slot model: a time-indexed Pyomo model solved by HiGHS.

:func:`solve` runs the whole pipeline under one wall-clock limit:

1. a feasible schedule: ``initial_solution`` (checked, idle slots after the last
   release closed) or :func:`lsched.formulations.slot.incumbent.best_heuristic`; its
   integer objective ``U`` gives the safe deadlines
   :func:`lsched.formulations.slot.horizon.deadlines` ``(problem, U)``;
2. the time-indexed model with every strengthening
   (:mod:`lsched.formulations.slot.milp.build`, which assembles it from
   :mod:`~lsched.formulations.slot.milp.variables`,
   :mod:`~lsched.formulations.slot.milp.constraints` and
   :mod:`~lsched.formulations.slot.milp.objective`);
3. HiGHS, started from that schedule (permuted within groups of identical
   requests to meet the symmetry rows), with ``mip_rel_gap = 0`` and
   ``mip_abs_gap = 1 - 1e-6``: the integer objective has integer coefficients, so
   an absolute gap below one closes it (:mod:`lsched.formulations.solvers.highs`).

Objectives and bounds are reported in problem units (integer objective plus
:attr:`SlotProblem.objective_offset`); HiGHS's dual bound ``z`` is rounded up to
``ceil(z - 1e-6)`` first, which is valid for an integer objective, and never
reported above the objective.

Status (:func:`lsched.formulations.result.decide_status`): ``OPTIMAL`` once the
rounded bound meets the integer objective, whatever stopped HiGHS; otherwise
its time limit or the wall-clock interrupt gives ``TIME_LIMIT``, a user's stop
``INTERRUPTED``, "optimal" on a user-relaxed gap (e.g. ``mip_rel_gap=0.1``)
``FEASIBLE``; "infeasible" gives ``INFEASIBLE`` (not expected: the horizon is
safe and the start is feasible); a solver error ``UNKNOWN``. The best
schedule is always returned: HiGHS's if it is better and passes
:func:`lsched.formulations.slot.incumbent.is_feasible`, else the starting one.
HiGHS starts from the incumbent; where its objective is not that of the values
it returns (HiGHS 1.16 can map a MIP start wrongly), it is solved again without
the start (:func:`lsched.formulations.solvers.highs.run_in_from_start`,
``info["restarted_without_start"]``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.horizon import deadlines
from lsched.formulations.slot.incumbent import starting_schedule
from lsched.formulations.slot.milp.build import SlotModel, Strengthening, build_model
from lsched.formulations.slot.model import SLOT
from lsched.formulations.solvers import highs
from lsched.formulations.solvers.highs import BuildStopped, LoadedModel

__all__ = ["SOLVER", "Strengthening", "build_model", "lp_bound", "solve"]

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "milp/time-indexed"


def _builder(
    problem: SlotProblem,
    upper: int,
    strengthening: Strengthening | None,
    deadline: float,
) -> Callable[[], SlotModel]:
    """The build of the model whose windows come from a schedule of objective
    ``upper``, giving up past ``deadline``."""

    def build() -> SlotModel:
        return build_model(
            problem,
            deadlines(problem, upper),
            upper_bound=upper,
            strengthening=strengthening,
            stop_at=deadline,
        )

    return build


@backend(SLOT, num_workers=1)
def solve(
    run: SolveRun, *, strengthening: Strengthening | None = None, **params: Any
) -> Attempt:
    """Solve ``problem`` to optimality or until ``time_limit`` wall-clock seconds.

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`.
    strengthening
        Which strengthenings to add (all by default); for measurements.
    **params
        HiGHS options, applied last (e.g. ``mip_rel_gap=0.01``).

    Returns
    -------
    SolveResult
        ``solver="milp/time-indexed"``; never raises on a time-out.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a feasible schedule.
    """
    # the search: build the model in the time left, then HiGHS from the incumbent
    problem: SlotProblem = run.problem
    upper = problem.integer_objective(run.start)
    offset = problem.objective_offset

    def search(built: SlotModel, loaded: LoadedModel, build_s: float) -> Attempt:
        # checked against HiGHS's mapping of a MIP start (run_in_from_start)
        outcome, loaded, restarted = highs.run_in_from_start(
            run,
            loaded,
            built.model,
            options={**highs.INTEGER_GAP, **params},
            start=highs.column_values(loaded, built.values(run.start)),
            start_objective=float(upper),
            to_problem=lambda value: value + offset,
        )
        if outcome.values is not None and outcome.objective is not None:
            run.offer(built.start_of(highs.solution(loaded, outcome.values)), "highs")
        return Attempt(
            solver=SOLVER,
            stop=outcome.stop,
            bound=outcome.bound + offset,
            infeasible=outcome.infeasible,
            info={
                **loaded.size,
                "rows": built.counts,
                "symmetric_groups": len(built.groups),
                "nodes": outcome.nodes,
                "highs_status": outcome.model_status,
                "interrupted": outcome.interrupted,
                "highs_runtime_s": outcome.runtime_s,
                "build_s": build_s,
                "restarted_without_start": restarted,
            },
        )

    build = _builder(problem, upper, strengthening, run.deadline)
    return highs.search_built(run, build, search, solver=SOLVER)


def lp_bound(
    problem: SlotProblem,
    *,
    time_limit: float = 60.0,
    strengthening: Strengthening | None = None,
) -> float:
    """LP relaxation value of :func:`solve`'s model, in problem units.

    A valid lower bound on the optimum: the windows come from the best
    heuristic's safe deadlines, and every strengthening is valid for some optimal
    schedule. ``-inf`` unless the model is built and the LP solved within
    ``time_limit`` wall-clock seconds (and no stop was requested).
    """
    began = time.monotonic()
    deadline = began + float(time_limit)
    _, start = starting_schedule(problem, None)
    upper = problem.integer_objective(start)
    try:
        _, loaded = highs.build_and_load(
            _builder(problem, upper, strengthening, deadline),
            lambda b: b.model,
            deadline=deadline,
            relax=True,
        )
    except BuildStopped:  # the build alone ran out of time, or the user stopped it
        return -math.inf
    value = highs.lp_relaxation(loaded, deadline=deadline)
    return value + problem.objective_offset
