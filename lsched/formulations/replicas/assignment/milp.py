"""MILP backend of the assignment problem
(:mod:`lsched.formulations.replicas.assignment`): Pyomo, solved by HiGHS
(:mod:`lsched.formulations.solvers.highs`).

Binaries ``x_ic`` only on the replicas request ``i`` may use
(:meth:`AssignmentProblem.allowed`), an integer makespan ``T`` in ``[lower,
upper]`` (the free bound and LPT's objective), one row per request and one per
replica. HiGHS starts from LPT and runs with ``mip_rel_gap = 0`` and
``mip_abs_gap = 1 - 1e-6``: the objective is an integer, so an absolute gap
below one closes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo

from lsched.formulations.driver import Attempt, SolveRun
from lsched.formulations.replicas.assignment.problem import AssignmentProblem
from lsched.formulations.solvers import highs

__all__ = ["INTEGER_GAP", "search"]

IntArray = npt.NDArray[np.int64]

#: HiGHS options that make "optimal" mean optimal for an integer objective.
INTEGER_GAP: dict[str, float] = {"mip_rel_gap": 0.0, "mip_abs_gap": 1.0 - 1e-6}


def _variables(
    model: pyo.ConcreteModel, problem: AssignmentProblem, upper: int
) -> list[tuple[int, int]]:
    """``x[i, c]`` on the allowed pairs (returned) and the makespan ``T``."""
    allowed = problem.allowed()
    pairs = [(i, c) for i in range(len(problem)) for c in allowed[i]]
    model.x = pyo.Var(pairs, within=pyo.Binary)
    model.makespan = pyo.Var(
        within=pyo.NonNegativeIntegers, bounds=(problem.lower, upper)
    )
    return pairs


def _constraints(model: pyo.ConcreteModel, problem: AssignmentProblem) -> None:
    """Every request on one replica; every replica's load at most ``T``."""
    allowed = problem.allowed()
    n, w = len(problem), problem.load
    model.assign = pyo.Constraint(
        range(n), rule=lambda m, i: sum(m.x[i, c] for c in allowed[i]) == 1
    )
    on = [[i for i in range(n) if c in allowed[i]] for c in range(problem.replicas)]
    model.replica_load = pyo.Constraint(
        range(problem.replicas),
        rule=lambda m, c: sum(int(w[i]) * m.x[i, c] for i in on[c]) <= m.makespan,
    )


def _objective(model: pyo.ConcreteModel) -> None:
    """Minimise ``T``."""
    model.objective = pyo.Objective(expr=model.makespan, sense=pyo.minimize)


def _mip_start(
    loaded: highs.LoadedModel,
    index: dict[int, tuple[int, int]],
    where: IntArray,
    upper: int,
) -> npt.NDArray[np.float64]:
    """Column values of the assignment ``where`` of largest load ``upper``."""
    return np.array(
        [
            float(where[index[id(v)][0]] == index[id(v)][1])
            if id(v) in index
            else float(upper)  # the makespan column
            for v in loaded.columns
        ],
        dtype=np.float64,
    )


def _assignment(
    loaded: highs.LoadedModel,
    index: dict[int, tuple[int, int]],
    values: npt.NDArray[np.float64],
    shape: tuple[int, int],
) -> IntArray:
    """The replica of every request: its largest ``x[i, c]`` in ``values``."""
    chosen = np.zeros(shape)
    for v, value in zip(loaded.columns, values, strict=True):
        if id(v) in index:
            chosen[index[id(v)]] = value
    return chosen.argmax(axis=1).astype(np.int64)


def search(run: SolveRun, params: dict[str, Any]) -> Attempt:
    """Build the model, load it into HiGHS, run it from the incumbent (LPT)."""
    problem: AssignmentProblem = run.problem
    upper = problem.integer_objective(run.start)
    model = pyo.ConcreteModel()
    pairs = _variables(model, problem, upper)
    _constraints(model, problem)
    _objective(model)
    loaded = highs.load(model)
    index = {id(model.x[p]): p for p in pairs}

    def on_event(time_s: float, objective: float | None, bound: float) -> None:
        run.record(objective, bound)

    outcome = highs.run(
        loaded,
        deadline=run.deadline,
        threads=run.num_workers,
        seed=run.seed,
        options={**INTEGER_GAP, **params},
        start=_mip_start(loaded, index, run.start, upper),
        start_objective=float(upper),
        on_event=on_event,
        origin=run.began,
    )
    if outcome.values is not None:
        shape = (len(problem), problem.replicas)
        run.offer(_assignment(loaded, index, outcome.values, shape), "highs")
    return Attempt(
        solver="milp",
        stop=outcome.stop,
        bound=outcome.bound,
        info={
            **loaded.size,
            "highs_status": outcome.model_status,
            "nodes": outcome.nodes,
            "interrupted": outcome.interrupted,
        },
    )
