"""The assignment problem as the solve driver (:mod:`lsched.formulations.driver`)
sees it, and what a solve of it says about the true loads.

A schedule is a replica id per request. Its objective is the largest replica's
*integer* load (:meth:`AssignmentProblem.integer_objective`), so a proven bound
``z`` implies ``ceil(z - 1e-6)`` (the ``1e-6`` absorbs a solver's floating
point) and the driver's status is that of the integer problem. The free bound is
:attr:`AssignmentProblem.lower`; the warm start is LPT.

:func:`packing_fields` turns the driver's answer into the true loads
(:mod:`lsched.formulations.replicas.assignment`): the objective of the returned
assignment, and the bound ``max(assignment_lower_bound, q B - E+)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.driver import Model
from lsched.formulations.replicas.assignment.problem import (
    AssignmentProblem,
    assignment_lower_bound,
)
from lsched.formulations.result import SolveResult

__all__ = ["ASSIGNMENT", "free_bound", "lpt_is_better", "packing_fields", "round_bound"]

IntArray = npt.NDArray[np.int64]


def round_bound(problem: AssignmentProblem, bound: float) -> float:
    """The integer objective's bound implied by ``bound`` (module docstring)."""
    return float(math.ceil(bound - 1e-6)) if math.isfinite(bound) else bound


def free_bound(problem: AssignmentProblem) -> float:
    """:attr:`AssignmentProblem.lower`, a bound on every assignment."""
    return float(problem.lower)


def _start(problem: AssignmentProblem, initial_solution: Any) -> tuple[str, IntArray]:
    """LPT's assignment; the model takes no other warm start."""
    if initial_solution is not None:
        raise InputError(
            "the assignment starts from LPT; expected no initial solution",
            field="initial_solution",
        )
    return "lpt", problem.lpt_assignment


def _is_feasible(problem: AssignmentProblem, where: IntArray) -> bool:
    """Whether ``where`` puts every request on one of the replicas."""
    return where.shape == (len(problem),) and bool(
        np.all((where >= 0) & (where < problem.replicas))
    )


#: The assignment problem: replica ids scored by their largest integer load.
ASSIGNMENT = Model(
    name="replicas.assignment",
    problem_type=AssignmentProblem,
    start=_start,
    objective=lambda problem, where: float(problem.integer_objective(where)),
    is_feasible=_is_feasible,
    free_bound=free_bound,
    round_bound=round_bound,
)


def lpt_is_better(problem: AssignmentProblem, where: IntArray) -> bool:
    """Whether LPT's assignment has a smaller largest *true* load than ``where``
    (the integer loads' rounding can make it so)."""
    lpt_load = problem.replica_loads_s(problem.lpt_assignment).max()
    return bool(lpt_load < problem.replica_loads_s(where).max())


def packing_fields(
    problem: AssignmentProblem, result: SolveResult, where: IntArray
) -> dict[str, Any]:
    """The fields of an :class:`~lsched.formulations.replicas.AssignmentResult`
    for the assignment ``where``, from the driver's ``result`` (integer loads):
    everything but ``solver``.

    The objective is ``where``'s largest true load; the bound the larger of
    :func:`assignment_lower_bound` and ``q B - E+``, never above the objective;
    the status and runtime the driver's; ``info["source"]`` is ``"lpt"`` when
    ``where`` is LPT's assignment.
    """
    replica_load = problem.replica_loads_s(where)
    objective = float(replica_load.max())
    scaled = problem.load_step * result.bound - problem.excess
    float_bound = assignment_lower_bound(problem.load_s, problem.replicas)
    lpt_load = problem.replica_loads_s(problem.lpt_assignment)
    info: dict[str, Any] = {
        "load_step": problem.load_step,
        "exact": problem.exact,
        "lpt_objective": float(lpt_load.max()),
        **result.info,
        "log": result.log,
    }
    if np.array_equal(where, problem.lpt_assignment):  # kept for the true loads
        info["source"] = "lpt"
    return {
        "status": result.status,
        "objective": objective,
        "bound": min(objective, max(float_bound, scaled)),
        "runtime_s": result.runtime_s,
        "assignment": where,
        "replica_load_s": replica_load,
        "load_s": problem.load_s,
        "replicas": problem.replicas,
        "info": info,
    }
