"""CP-SAT backend of the assignment problem
(:mod:`lsched.formulations.replicas.assignment`).

Booleans ``x_ic`` only on the replicas request ``i`` may use
(:meth:`AssignmentProblem.allowed`), one integer load per replica, their total
(redundant: it helps the LP and propagation), and the makespan as their maximum
within ``[lower, upper]`` (the free bound and LPT's objective). LPT is the
solution hint; CP-SAT's objective is the integer one, so its "optimal" means a
zero gap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.replicas.assignment.model import ASSIGNMENT
from lsched.formulations.replicas.assignment.problem import AssignmentProblem
from lsched.formulations.solvers.cpsat import solve_in_run

__all__ = ["solve"]

Choice = list[dict[int, Any]]


def _variables(model: cp_model.CpModel, problem: AssignmentProblem) -> Choice:
    """``x_ic`` for every allowed replica ``c`` of every request ``i``."""
    return [
        {c: model.new_bool_var(f"x{i}_{c}") for c in allowed}
        for i, allowed in enumerate(problem.allowed())
    ]


def _constraints(
    model: cp_model.CpModel, problem: AssignmentProblem, x: Choice, upper: int
) -> list[Any]:
    """Every request on one replica; each replica's load (returned) and their
    total."""
    w = problem.load
    for choice in x:
        model.add_exactly_one(choice.values())
    total = int(w.sum())
    loads = []
    for c in range(problem.replicas):
        terms = [(int(w[i]), choice[c]) for i, choice in enumerate(x) if c in choice]
        load = model.new_int_var(0, min(upper, total), f"load{c}")
        model.add(load == sum(k * v for k, v in terms))
        loads.append(load)
    model.add(sum(loads) == total)  # redundant: helps the LP and propagation
    return loads


def _objective(
    model: cp_model.CpModel, loads: list[Any], lower: int, upper: int
) -> None:
    """Minimise the largest replica load."""
    makespan = model.new_int_var(lower, upper, "makespan")
    model.add_max_equality(makespan, loads)
    model.minimize(makespan)


@backend(ASSIGNMENT)
def solve(run: SolveRun, **params: Any) -> Attempt:
    """The assignment of least largest integer load, with CP-SAT, from LPT.

    ``problem``, ``time_limit``, ``num_workers``, ``seed`` and ``on_progress`` as
    :func:`lsched.formulations.driver.drive` (no ``initial_solution``: it starts
    from LPT); ``**params`` are CP-SAT parameters.
    """
    # the search: build the model, hint the incumbent (LPT), CP-SAT in the time left
    problem: AssignmentProblem = run.problem
    upper = problem.integer_objective(run.start)
    model = cp_model.CpModel()
    x = _variables(model, problem)
    _objective(model, _constraints(model, problem, x, upper), problem.lower, upper)
    for i, choice in enumerate(x):
        for c, v in choice.items():
            model.add_hint(v, int(run.start[i] == c))
    outcome = solve_in_run(run, model, params)
    solver = outcome.solver
    if outcome.found:
        found = [next(c for c, v in choice.items() if solver.value(v)) for choice in x]
        run.offer(np.array(found, dtype=np.int64), "cpsat")
    bound = float(solver.best_objective_bound)
    return Attempt(
        solver="cpsat",
        stop=outcome.stop,
        bound=bound if math.isfinite(bound) else -math.inf,
        info={
            **outcome.info(),
            "conflicts": solver.num_conflicts,
            "variables": sum(len(choice) for choice in x) + problem.replicas + 1,
        },
    )
