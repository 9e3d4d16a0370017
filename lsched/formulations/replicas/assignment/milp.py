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

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo

from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.replicas.assignment.model import ASSIGNMENT
from lsched.formulations.replicas.assignment.problem import AssignmentProblem
from lsched.formulations.solvers import highs

__all__ = ["search_loaded", "solve"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


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
) -> FloatArray:
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
    values: FloatArray,
    shape: tuple[int, int],
) -> IntArray:
    """The replica of every request: its largest ``x[i, c]`` in ``values``."""
    chosen = np.zeros(shape)
    for v, value in zip(loaded.columns, values, strict=True):
        if id(v) in index:
            chosen[index[id(v)]] = value
    return chosen.argmax(axis=1).astype(np.int64)


@backend(ASSIGNMENT)
def solve(run: SolveRun, **params: Any) -> Attempt:
    """The assignment of least largest integer load, with HiGHS, from LPT.

    ``problem``, ``time_limit``, ``num_workers``, ``seed`` and ``on_progress`` as
    :func:`lsched.formulations.driver.drive` (no ``initial_solution``: it starts
    from LPT); ``**params`` are HiGHS options.
    """
    # the search: build the model, load it into HiGHS, run it from LPT
    problem: AssignmentProblem = run.problem
    upper = problem.integer_objective(run.start)
    model = pyo.ConcreteModel()
    pairs = _variables(model, problem, upper)
    _constraints(model, problem)
    _objective(model)
    loaded = highs.load(model)
    index = {id(model.x[p]): p for p in pairs}
    shape = (len(problem), problem.replicas)
    return search_loaded(
        run,
        loaded,
        params=params,
        start=_mip_start(loaded, index, run.start, upper),
        upper=upper,
        schedule_of=lambda values: _assignment(loaded, index, values, shape),
        solver="milp",
    )


def search_loaded(
    run: SolveRun,
    loaded: highs.LoadedModel,
    *,
    params: dict[str, Any],
    start: FloatArray,
    upper: int,
    schedule_of: Callable[[FloatArray], IntArray],
    solver: str,
) -> Attempt:
    """HiGHS on a packing model (this one or
    :mod:`lsched.formulations.pang_offline`'s), from the incumbent.

    Parameters
    ----------
    run
        The driver's run.
    loaded
        The model, in HiGHS.
    params
        HiGHS options, over
        :data:`~lsched.formulations.solvers.highs.INTEGER_GAP`.
    start
        The incumbent's column values (MIP start), of largest load ``upper``.
    upper
        The incumbent's integer objective.
    schedule_of
        The schedule of HiGHS's column values, offered to the run.
    solver
        :attr:`Attempt.solver`.
    """
    outcome = highs.run_in(
        run,
        loaded,
        options={**highs.INTEGER_GAP, **params},
        start=start,
        start_objective=float(upper),
    )
    if outcome.values is not None:
        run.offer(schedule_of(outcome.values), "highs")
    return Attempt(
        solver=solver,
        stop=outcome.stop,
        bound=outcome.bound,
        info={
            **loaded.size,
            "highs_status": outcome.model_status,
            "nodes": outcome.nodes,
            "interrupted": outcome.interrupted,
        },
    )
