"""Objective of the slot model in CP-SAT.

The objectives of :mod:`lsched.formulations.slot`, all integers: total weighted
completion ``sum_i w_i E_i`` (``latency``), total weighted start ``sum_i w_i
S_i`` (``ttft``), or the makespan ``max_i E_i``, an integer variable in ``[0,
max_i (hi_i + o_i)]`` equal to the largest ``E_i``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.cpsat.variables import end_expressions

IntArray = npt.NDArray[np.int64]


def set_objective(
    model: cp_model.CpModel,
    problem: SlotProblem,
    start: list[cp_model.IntVar],
    hi: IntArray,
) -> None:
    """Minimise ``problem.objective`` of the starts ``start`` (``S_i <= hi_i``)."""
    n = len(problem)
    end = end_expressions(problem, start)
    w = problem.weight.tolist()
    if problem.objective == "latency":
        model.minimize(sum(w[i] * end[i] for i in range(n)))
    elif problem.objective == "ttft":
        model.minimize(sum(w[i] * start[i] for i in range(n)))
    else:
        horizon = int((hi + problem.output_tokens).max())
        makespan = model.new_int_var(0, horizon, "makespan")
        model.add_max_equality(makespan, end)
        model.minimize(makespan)
