from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.checks import SEED_MAX
from lsched.formulations.bounds.slot import lagrangian
from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.slot import SlotProblem, cpsat
from lsched.formulations.slot.cpsat.build import build
from lsched.formulations.slot.horizon import deadlines
from lsched.formulations.slot.model import SLOT
from lsched.formulations.solvers.cpsat import configured_solver, solve_stoppable
from lsched.interrupt import requested

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


def walk(
    run: SolveRun,
    *,
    neighbourhood: int,
    step_s: float,
    search_until: float,
    params: dict[str, Any],
) -> dict[str, int]:
    """Destroy and repair until ``search_until`` (monotonic): the LNS proper."""
    problem: SlotProblem = run.problem
    start = run.start
    lo_all = problem.release
    hi_all = (
        deadlines(problem, problem.integer_objective(start)) - problem.output_tokens
    )
    rng = np.random.default_rng(run.seed)
    n = len(problem)
    size = min(n, neighbourhood)
    steps = improved = 0
    while n > 1 and time.monotonic() + 0.05 < search_until and not requested():
        free = _neighbourhood(problem, start, size, rng, steps)
        lo, hi = start.copy(), start.copy()
        lo[free], hi[free] = lo_all[free], hi_all[free]
        built = build(problem, lo, hi)
        built.hint(start)
        step_limit = max(0.01, min(step_s, search_until - time.monotonic()))
        solver = configured_solver(
            step_limit, run.num_workers, (run.seed + steps) & SEED_MAX, params
        )
        code, _ = solve_stoppable(solver, built.model)
        steps += 1
        if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            found = np.array([solver.value(v) for v in built.start], dtype=np.int64)
            if problem.integer_objective(found) <= problem.integer_objective(start):
                improved += run.offer(found, "lns")
                start = found
        grow = code == cp_model.OPTIMAL
        if grow and len(free) == n:
            break  # the whole model solved to optimality: nothing left to find
        size = int(np.clip(round(size * (1.25 if grow else 0.8)), 2, n))
    return {
        "lns_steps": steps,
        "lns_improvements": improved,
        "final_neighbourhood": size,
    }


@backend(SLOT)
def solve(
    run: SolveRun,
    *,
    neighbourhood: int = 12,
    step_s: float = 1.0,
    polish_share: float = 0.5,
    **params: Any,
) -> Attempt:
    """LNS, then the full CP-SAT model from its incumbent (module docstring).

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`.
    neighbourhood
        Initial number of requests freed per step (adapted as it goes).
    step_s
        Time limit of each sub-model.
    polish_share
        Share of ``time_limit`` left to the full model.
    **params
        CP-SAT parameters for the sub-models and the full model.
    """
    search_until = run.deadline - (run.deadline - run.began) * polish_share
    walk_info = walk(
        run,
        neighbourhood=neighbourhood,
        step_s=step_s,
        search_until=search_until,
        params=params,
    )
    full = cpsat.solve.search(run, **params)
    upper = run.problem.integer_objective(run.start)
    # the Lagrangian bound may close the gap the full model left
    bound = max(full.bound, lagrangian(run.problem, upper))
    return Attempt(
        solver="lns/cpsat-events",
        stop=full.stop,
        bound=bound if math.isfinite(bound) else full.bound,
        infeasible=full.infeasible,
        info={**walk_info, "full_model": full.info},
    )
