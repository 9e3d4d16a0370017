"""MILP backend of the slot model: a time-indexed Pyomo model solved by HiGHS.

:func:`solve` runs the whole pipeline under one wall-clock limit:

1. a feasible schedule: ``initial_solution`` (checked, idle slots after the last
   release closed) or :func:`lsched.formulations.incumbent.best_heuristic`; its
   integer objective ``U`` gives the safe deadlines
   :func:`lsched.formulations.horizon.deadlines` ``(problem, U)``;
2. the time-indexed model with every strengthening
   (:mod:`lsched.formulations.milp.slot`);
3. HiGHS, started from that schedule (permuted within groups of identical
   requests to meet the symmetry rows), with ``mip_rel_gap = 0`` and
   ``mip_abs_gap = 1 - 1e-6``: the integer objective has integer coefficients, so
   an absolute gap below one closes it (:mod:`lsched.formulations.milp.highs`).

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
:func:`lsched.formulations.incumbent.is_feasible`, else the starting one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from pyomo.common.collections import ComponentMap

from lsched.checks import check_solver_options, check_type
from lsched.formulations.bounds import closed_form
from lsched.formulations.horizon import deadlines
from lsched.formulations.incumbent import is_feasible, starting_schedule
from lsched.formulations.milp import highs as _highs
from lsched.formulations.milp.highs import BuildStopped
from lsched.formulations.milp.slot import SlotModel, Strengthening, build_model
from lsched.formulations.result import (
    LOG_COLUMNS,
    SolveResult,
    Status,
    decide_status,
)
from lsched.formulations.slot import SlotProblem
from lsched.interrupt import session

__all__ = ["SOLVER", "Strengthening", "build_model", "lp_bound", "solve"]

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "milp/time-indexed"

#: HiGHS options that make "optimal" mean optimal for an integer objective.
INTEGER_GAP: dict[str, float] = {"mip_rel_gap": 0.0, "mip_abs_gap": 1.0 - 1e-6}

ProgressCallback = Callable[[float, float | None, float], None]


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


def _integer_bound(bound: float) -> float:
    return float(math.ceil(bound - 1e-6)) if math.isfinite(bound) else bound


@session()
def solve(
    problem: SlotProblem,
    *,
    time_limit: float = 60.0,
    num_workers: int = 1,
    seed: int = 0,
    initial_solution: np.ndarray | None = None,
    on_progress: ProgressCallback | None = None,
    strengthening: Strengthening | None = None,
    **params: Any,
) -> SolveResult:
    """Solve ``problem`` to optimality or until ``time_limit`` wall-clock seconds.

    Parameters
    ----------
    problem
        The slot problem.
    time_limit
        Wall-clock seconds for everything (heuristic, model building, HiGHS);
        enforced by :mod:`lsched.formulations.milp.highs`.
    num_workers
        HiGHS ``threads``.
    seed
        HiGHS ``random_seed``.
    initial_solution
        A feasible schedule (start slots) to start from; the best heuristic's by
        default.
    on_progress
        ``on_progress(time_s, objective, bound)`` on each improvement of the
        incumbent or the bound, in problem units, ``time_s`` from the call.
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
    check_type(problem, "problem", SlotProblem, "a SlotProblem")
    time_limit, num_workers, seed = check_solver_options(time_limit, num_workers, seed)
    began = time.monotonic()
    deadline = began + float(time_limit)
    offset = problem.objective_offset
    source, start = starting_schedule(problem, initial_solution)
    upper = problem.integer_objective(start)
    rows: list[tuple[float, float | None, float]] = []

    def emit(time_s: float, objective: float | None, bound: float) -> None:
        bound = _integer_bound(bound)
        if objective is not None:
            bound = min(bound, objective)
        row = (
            time_s,
            None if objective is None else objective + offset,
            bound + offset,
        )
        if rows and rows[-1][1:] == row[1:]:
            return  # an improvement that rounding to integers hides
        rows.append(row)
        if on_progress is not None:
            on_progress(*row)

    emit(time.monotonic() - began, float(upper), -math.inf)

    def without_solver(stopped: BuildStopped) -> SolveResult:
        # the model could not be built (and compiled) in time, or the user
        # stopped it: the heuristic's schedule, the free bounds, and the status
        # that says why
        free = closed_form(problem) - offset
        bound = min(_integer_bound(free), float(upper))
        return SolveResult(
            status=decide_status(stopped.stop, float(upper), bound),
            objective=problem.objective_value(start),
            bound=bound + offset,
            runtime_s=time.monotonic() - began,
            start=start,
            solver=SOLVER,
            log=pd.DataFrame(rows, columns=list(LOG_COLUMNS), dtype=np.float64),
            info={
                "stopped_in": stopped.stage,
                "build_s": time.monotonic() - began,
                "initial_source": source,
                "initial_objective": float(upper) + offset,
                "source": source,
            },
        )

    try:
        built, loaded = _highs.build_and_load(
            _builder(problem, upper, strengthening, deadline),
            lambda b: b.model,
            deadline=deadline,
        )
    except BuildStopped as stopped:
        return without_solver(stopped)
    values = built.values(start)
    mip_start = np.array([values[v] for v in loaded.columns], dtype=np.float64)
    build_s = time.monotonic() - began
    outcome = _highs.run(
        loaded,
        deadline=deadline,
        threads=num_workers,
        seed=seed,
        options={**INTEGER_GAP, **params},
        start=mip_start,
        start_objective=float(upper),
        on_event=emit,
        origin=began,
    )

    best, best_source = start, source
    if outcome.values is not None and outcome.objective is not None:
        value = ComponentMap(zip(loaded.columns, outcome.values, strict=True))
        candidate = built.start_of(value)
        if problem.integer_objective(candidate) < upper and is_feasible(
            problem, candidate
        ):
            best, best_source = candidate, "highs"
    integer = problem.integer_objective(best)
    # the free closed-form bounds may beat HiGHS's dual bound on large instances
    free = closed_form(problem) - problem.objective_offset
    bound = min(max(_integer_bound(outcome.bound), free), float(integer))
    # OPTIMAL once the rounded bound meets the integer objective, whatever stopped
    # HiGHS; "optimal" on a gap the caller relaxed is FEASIBLE
    status = decide_status(
        outcome.stop,
        None if outcome.infeasible else float(integer),
        bound,
        infeasible=outcome.infeasible,
    )
    info: dict[str, Any] = {
        **loaded.size,
        "rows": built.counts,
        "symmetric_groups": len(built.groups),
        "nodes": outcome.nodes,
        "highs_status": outcome.model_status,
        "interrupted": outcome.interrupted,
        "highs_runtime_s": outcome.runtime_s,
        "build_s": build_s,
        "initial_source": source,
        "initial_objective": float(upper) + offset,
        "source": best_source,
    }
    log = pd.DataFrame(rows, columns=list(LOG_COLUMNS), dtype=np.float64)
    runtime = time.monotonic() - began
    if status == Status.INFEASIBLE:
        return SolveResult(
            status=status,
            objective=None,
            bound=math.inf,
            runtime_s=runtime,
            start=None,
            solver=SOLVER,
            log=log,
            info=info,
        )
    return SolveResult(
        status=status,
        objective=problem.objective_value(best),
        bound=bound + offset,
        runtime_s=runtime,
        start=best,
        solver=SOLVER,
        log=log,
        info=info,
    )


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
        _, loaded = _highs.build_and_load(
            _builder(problem, upper, strengthening, deadline),
            lambda b: b.model,
            deadline=deadline,
            relax=True,
        )
    except BuildStopped:  # the build alone ran out of time, or the user stopped it
        return -math.inf
    value = _highs.lp_relaxation(loaded, deadline=deadline)
    return value + problem.objective_offset
