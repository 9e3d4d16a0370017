"""MILP backend of the ordered assignment: the positional model of
:mod:`lsched.formulations.pang_offline` in Pyomo, solved by HiGHS.

Binaries ``z[i, c, k]`` on the clients request ``i`` may use, completions
``F[c, k] >= 0`` and the integer makespan ``T`` in ``[lower, upper]``
(:func:`_variables`); the placement, position, order, completion and makespan rows
(:func:`_constraints`); minimise ``T`` (:func:`_objective`). HiGHS starts from the
incumbent (completions its prefix sums) with the packing's integer gap
(:data:`~lsched.formulations.solvers.highs.INTEGER_GAP`), run as the packing's
(:func:`~lsched.formulations.replicas.assignment.milp.search_loaded`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo

from lsched.formulations.driver import Attempt, SolveRun
from lsched.formulations.replicas.assignment.milp import search_loaded
from lsched.formulations.replicas.assignment.problem import AssignmentProblem
from lsched.formulations.solvers import highs

__all__ = ["search"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _variables(
    model: pyo.ConcreteModel, problem: AssignmentProblem, upper: int
) -> None:
    """``z``, ``finish`` and ``makespan`` on ``model``."""
    n, allowed = len(problem), problem.allowed()
    triples = [(i, c, k) for i in range(n) for c in allowed[i] for k in range(n)]
    model.z = pyo.Var(triples, within=pyo.Binary)
    model.finish = pyo.Var(
        range(problem.replicas), range(n), within=pyo.NonNegativeReals
    )
    model.makespan = pyo.Var(
        within=pyo.NonNegativeIntegers, bounds=(problem.lower, upper)
    )


def _constraints(model: pyo.ConcreteModel, problem: AssignmentProblem) -> None:
    """Each request placed once, one request per position, positions filled in
    order, completions, and ``T`` after every client's last completion."""
    n, w, allowed = len(problem), problem.load, problem.allowed()
    slots, clients = range(n), range(problem.replicas)
    on = [[i for i in range(n) if c in allowed[i]] for c in clients]

    def held(m: pyo.ConcreteModel, c: int, k: int) -> Any:
        return sum(m.z[i, c, k] for i in on[c])

    model.placed = pyo.Constraint(
        range(n),
        rule=lambda m, i: sum(m.z[i, c, k] for c in allowed[i] for k in slots) == 1,
    )
    # a client no request may use (symmetry breaking with few requests) has no
    # position rows: they would be the constant 0 <= 1
    model.one_per_position = pyo.Constraint(
        clients,
        slots,
        rule=lambda m, c, k: held(m, c, k) <= 1 if on[c] else pyo.Constraint.Skip,
    )
    model.in_order = pyo.Constraint(
        clients,
        slots,
        rule=lambda m, c, k: (
            held(m, c, k) <= held(m, c, k - 1) if k and on[c] else pyo.Constraint.Skip
        ),
    )
    model.completion = pyo.Constraint(
        clients,
        slots,
        rule=lambda m, c, k: (
            m.finish[c, k]
            >= (m.finish[c, k - 1] if k else 0)
            + sum(int(w[i]) * m.z[i, c, k] for i in on[c])
        ),
    )
    model.last = pyo.Constraint(
        clients, rule=lambda m, c: m.makespan >= m.finish[c, n - 1]
    )


def _objective(model: pyo.ConcreteModel) -> None:
    """Minimise ``T``."""
    model.objective = pyo.Objective(expr=model.makespan, sense=pyo.minimize)


def _mip_start(
    model: pyo.ConcreteModel,
    loaded: highs.LoadedModel,
    problem: AssignmentProblem,
    schedule: IntArray,
    upper: int,
) -> FloatArray:
    """Column values of ``schedule`` (clients, positions) of largest load
    ``upper``, completions its prefix sums."""
    where, position = schedule
    w, n = problem.load, len(problem)
    value: dict[int, float] = {id(model.makespan): float(upper)}
    for (i, c, k), var in model.z.items():
        value[id(var)] = float(where[i] == c and position[i] == k)
    for c in range(problem.replicas):
        mine = np.flatnonzero(where == c)
        order = mine[np.argsort(position[mine], kind="stable")]
        done = np.cumsum(w[order])
        for k in range(n):
            reached = float(done[min(k, len(done) - 1)]) if len(done) else 0.0
            value[id(model.finish[c, k])] = reached
    return np.array([value[id(v)] for v in loaded.columns], dtype=np.float64)


def _schedule(
    model: pyo.ConcreteModel,
    loaded: highs.LoadedModel,
    problem: AssignmentProblem,
    values: FloatArray,
) -> IntArray:
    """Clients and positions of HiGHS's solution: each request's largest
    ``z[i, c, k]``."""
    got = dict(zip((id(v) for v in loaded.columns), values, strict=True))
    n, allowed = len(problem), problem.allowed()
    schedule = np.zeros((2, n), dtype=np.int64)
    for i in range(n):
        schedule[:, i] = max(
            ((c, k) for c in allowed[i] for k in range(n)),
            key=lambda ck: got[id(model.z[i, ck[0], ck[1]])],
        )
    return schedule


def search(run: SolveRun, params: dict[str, Any]) -> Attempt:
    """Build the model, load it into HiGHS, run it from the incumbent."""
    problem: AssignmentProblem = run.problem
    upper = problem.integer_objective(run.start[0])
    model = pyo.ConcreteModel()
    _variables(model, problem, upper)
    _constraints(model, problem)
    _objective(model)
    loaded = highs.load(model)
    return search_loaded(
        run,
        loaded,
        params=params,
        start=_mip_start(model, loaded, problem, run.start, upper),
        upper=upper,
        schedule_of=lambda values: _schedule(model, loaded, problem, values),
        solver="milp/ordered",
    )
