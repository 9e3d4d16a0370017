"""Large-neighbourhood search for the slot model, over CP-SAT sub-models.

Start from a feasible schedule (``initial_solution`` or the best heuristic) and
repeat until the search share of the time limit is spent:

1. **destroy**: free a neighbourhood of requests and fix every other one at its
   incumbent start. Two kinds, alternated: a *time window* (requests whose
   incumbent run ``[S_i, E_i)`` meets a random window ``[t0, t0 + W)``, the slots
   where they interact) and a *random subset* of the same size;
2. **repair**: solve the sub-model (the default ``events`` formulation of
   :mod:`lsched.formulations.cpsat.slot`, the fixed starts as one-value domains,
   the incumbent as hint) for at most ``step_s`` seconds;
3. **accept** the repaired schedule if its objective is no worse (equal moves
   let the search drift across plateaus), and adapt the neighbourhood size: up
   by a quarter after a sub-model solved to optimality (the neighbourhood was
   easy), down by a quarter after a time-out.

Every accepted schedule keeps the safe start range of
:mod:`lsched.formulations.horizon`, so the search never leaves the space the
exact backends search. The remaining time (``polish_share`` of the limit, 0.5 by
default) runs the full CP-SAT model from the LNS incumbent, which supplies the
dual bound and, on small instances, the proof; the reported bound is the best of
that (closed-form bounds included) and
:func:`lsched.formulations.bounds.lagrangian`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from ortools.sat.python import cp_model

from lsched.checks import SEED_MAX, check_solver_options, check_type
from lsched.formulations import cpsat
from lsched.formulations.bounds import lagrangian
from lsched.formulations.cpsat.slot import build
from lsched.formulations.horizon import deadlines
from lsched.formulations.incumbent import starting_schedule
from lsched.formulations.result import (
    LOG_COLUMNS,
    SolveResult,
    Status,
    decide_status,
    stop_of,
)
from lsched.formulations.slot import SlotProblem
from lsched.interrupt import requested, session

IntArray = npt.NDArray[np.int64]


def _neighbourhood(
    problem: SlotProblem, start: IntArray, size: int, rng: np.random.Generator, k: int
) -> IntArray:
    n = len(problem)
    if k % 2:  # a random subset
        return rng.choice(n, size=size, replace=False)
    end = start + problem.output_tokens
    # a time window around a random request, grown until it frees `size` requests
    centre = int(start[rng.integers(n)])
    distance = np.maximum(0, np.maximum(start - centre, centre - end + 1))
    return np.argsort(distance + rng.random(n) * 0.5, kind="stable")[:size]


@session()
def solve(
    problem: SlotProblem,
    *,
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    initial_solution: npt.ArrayLike | None = None,
    on_progress: cpsat.Progress | None = None,
    neighbourhood: int = 12,
    step_s: float = 1.0,
    polish_share: float = 0.5,
    **params: Any,
) -> SolveResult:
    """LNS, then the full CP-SAT model from its incumbent (module docstring).

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.cpsat.solve`.
    neighbourhood
        Initial number of requests freed per step (adapted as it goes).
    step_s
        Time limit of each sub-model.
    polish_share
        Share of ``time_limit`` left to the full model.
    **params
        CP-SAT parameters for the sub-models and the full model.
    """
    check_type(problem, "problem", SlotProblem, "a SlotProblem")
    time_limit, num_workers, seed = check_solver_options(time_limit, num_workers, seed)
    started = time.perf_counter()
    source, start = starting_schedule(problem, initial_solution)
    upper = problem.integer_objective(start)
    lo_all = problem.release
    hi_all = deadlines(problem, upper) - problem.output_tokens
    rng = np.random.default_rng(seed)
    n = len(problem)
    size = min(n, neighbourhood)
    rows: list[tuple[float, float | None, float]] = []

    def report(objective: float | None, bound: float) -> None:
        row = (time.perf_counter() - started, objective, bound)
        rows.append(row)
        if on_progress is not None:
            on_progress(*row)

    report(problem.objective_value(start), -np.inf)
    search_until = started + time_limit * (1.0 - polish_share)
    steps = improved = 0
    while n > 1 and time.perf_counter() + 0.05 < search_until and not requested():
        free = _neighbourhood(problem, start, size, rng, steps)
        lo, hi = start.copy(), start.copy()
        lo[free], hi[free] = lo_all[free], hi_all[free]
        built = build(problem, lo, hi)
        built.hint(start)
        step_limit = max(0.01, min(step_s, search_until - time.perf_counter()))
        solver = cpsat.configured_solver(
            step_limit, num_workers, (seed + steps) & SEED_MAX, params
        )
        code, _ = cpsat.solve_stoppable(solver, built.model)
        steps += 1
        if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            found = np.array([solver.value(v) for v in built.start], dtype=np.int64)
            value = problem.integer_objective(found)
            if value <= problem.integer_objective(start):
                if value < problem.integer_objective(start):
                    improved += 1
                    report(problem.objective_value(found), -np.inf)
                start = found
        grow = code == cp_model.OPTIMAL
        size = int(np.clip(round(size * (1.25 if grow else 0.8)), 2, n))

    offset_s = time.perf_counter() - started
    full = cpsat.solve(
        problem,
        time_limit=max(1e-3, time_limit - offset_s),
        num_workers=num_workers,
        seed=seed,
        initial_solution=start,
        on_progress=None
        if on_progress is None
        else (lambda t, o, b: on_progress(offset_s + t, o, b)),
        **params,
    )
    rows += [(offset_s + t, o, b) for t, o, b in full.log.itertuples(index=False)]
    upper = problem.integer_objective(full.start)
    bound = max(full.bound, lagrangian(problem, upper))
    objective = full.objective
    if objective is not None:
        bound = min(bound, objective)
    # the Lagrangian bound may close the gap the full model left
    status = decide_status(
        stop_of(full.status),
        objective,
        bound,
        infeasible=full.status is Status.INFEASIBLE,
    )
    return SolveResult(
        status=status,
        objective=objective,
        bound=bound,
        runtime_s=time.perf_counter() - started,
        start=full.start,
        solver="lns/cpsat-events",
        log=pd.DataFrame(rows, columns=list(LOG_COLUMNS)),
        info={
            "incumbent": source,
            "lns_steps": steps,
            "lns_improvements": improved,
            "final_neighbourhood": size,
            "full_model": full.info,
        },
    )
