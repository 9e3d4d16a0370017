"""CP-SAT backend of the ordered assignment: the disjunctive model of
:mod:`lsched.formulations.pang_offline`.

Booleans ``x_ic`` on the clients request ``i`` may use, an optional interval
``[S_ic, S_ic + w_i)`` present iff ``x_ic`` (:func:`_variables`); one client per
request, one ``no_overlap`` per client, ``T >= S_ic + w_i`` when ``x_ic`` and the
implied ``sum_i w_i x_ic <= T`` (:func:`_constraints`); minimise ``T``
(:func:`_objective`). The hint is the incumbent, each client's requests back to
back in their order; the order read back is the order of the starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.driver import Attempt, SolveRun
from lsched.formulations.replicas.assignment.problem import AssignmentProblem
from lsched.formulations.solvers.cpsat import solve_in_run

__all__ = ["search"]

IntArray = npt.NDArray[np.int64]


@dataclass
class _Variables:
    """``x[i][c]``, ``begin[i][c]``, each client's intervals, and ``T``."""

    x: list[dict[int, Any]]
    begin: list[dict[int, Any]]
    intervals: list[list[Any]]
    makespan: Any


def _variables(
    model: cp_model.CpModel, problem: AssignmentProblem, upper: int
) -> _Variables:
    """The variables, with ``T`` in ``[lower, upper]`` and starts in
    ``[0, upper - w_i]``."""
    w = problem.load
    makespan = model.new_int_var(problem.lower, upper, "makespan")
    found = _Variables([], [], [[] for _ in range(problem.replicas)], makespan)
    for i, allowed in enumerate(problem.allowed()):
        found.x.append({})
        found.begin.append({})
        for c in allowed:
            present = model.new_bool_var(f"x{i}_{c}")
            begin = model.new_int_var(0, max(0, upper - int(w[i])), f"s{i}_{c}")
            found.intervals[c].append(
                model.new_optional_fixed_size_interval_var(
                    begin, int(w[i]), present, f"iv{i}_{c}"
                )
            )
            found.x[i][c], found.begin[i][c] = present, begin
    return found


def _constraints(
    model: cp_model.CpModel, problem: AssignmentProblem, v: _Variables
) -> None:
    """One client per request, no overlap per client, ``T`` after every end, and
    the implied client loads."""
    w = problem.load
    for i, choice in enumerate(v.x):
        for c, present in choice.items():
            model.add(v.makespan >= v.begin[i][c] + int(w[i])).only_enforce_if(present)
        model.add_exactly_one(choice.values())
    for c in range(problem.replicas):
        model.add_no_overlap(v.intervals[c])
        on_c = [(int(w[i]), choice[c]) for i, choice in enumerate(v.x) if c in choice]
        model.add(sum(k * x for k, x in on_c) <= v.makespan)  # implied


def _objective(model: cp_model.CpModel, v: _Variables) -> None:
    """Minimise ``T``."""
    model.minimize(v.makespan)


def _hint(
    model: cp_model.CpModel, problem: AssignmentProblem, v: _Variables, hint: IntArray
) -> None:
    """Hint the schedule ``hint`` (clients, positions), back to back."""
    where, position = hint
    w = problem.load
    begins = np.zeros(len(problem), dtype=np.int64)
    for c in range(problem.replicas):
        mine = np.flatnonzero(where == c)
        order = mine[np.argsort(position[mine], kind="stable")]
        begins[order] = np.cumsum(w[order]) - w[order]
    for i, choice in enumerate(v.x):
        for c, present in choice.items():
            model.add_hint(present, int(where[i] == c))
            model.add_hint(v.begin[i][c], int(begins[i]) if where[i] == c else 0)


def _schedule(
    solver: cp_model.CpSolver, problem: AssignmentProblem, v: _Variables
) -> IntArray:
    """Clients and positions (by start, ties by index) of CP-SAT's solution."""
    n = len(problem)
    where = np.array(
        [next(c for c, x in choice.items() if solver.value(x)) for choice in v.x],
        dtype=np.int64,
    )
    at = np.array([solver.value(v.begin[i][int(where[i])]) for i in range(n)])
    position = np.zeros(n, dtype=np.int64)
    for c in range(problem.replicas):
        mine = np.flatnonzero(where == c)
        position[mine[np.lexsort((mine, at[mine]))]] = np.arange(len(mine))
    return np.stack([where, position])


def search(run: SolveRun, params: dict[str, Any]) -> Attempt:
    """Build the model, hint the incumbent, run CP-SAT in the time left."""
    problem: AssignmentProblem = run.problem
    model = cp_model.CpModel()
    v = _variables(model, problem, problem.integer_objective(run.start[0]))
    _constraints(model, problem, v)
    _objective(model, v)
    _hint(model, problem, v, run.start)
    outcome = solve_in_run(run, model, params)
    if outcome.found:
        run.offer(_schedule(outcome.solver, problem, v), "cpsat")
    bound = float(outcome.solver.best_objective_bound)
    return Attempt(
        solver="cpsat/ordered",
        stop=outcome.stop,
        bound=bound if math.isfinite(bound) else -math.inf,
        info={
            **outcome.info(),
            "variables": 2 * sum(len(choice) for choice in v.x) + 1,
        },
    )
