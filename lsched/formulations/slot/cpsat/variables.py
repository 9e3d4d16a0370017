"""Variables of the slot model in CP-SAT, with the constraints that define them.

Notation of :mod:`lsched.formulations.slot`: release ``r_i``, prompt ``s_i``,
output ``o_i``, KV table ``k_ij``, block size ``b``. Every formulation has the
start ``S_i`` (an integer in ``[lo_i, hi_i]``) and the completion
``E_i = S_i + o_i`` (an expression); the formulation-specific variables below
(intervals, start booleans, ordering booleans) are created by the constraint
families of :mod:`lsched.formulations.slot.cpsat.constraints` that use them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.slot import SlotProblem

IntArray = npt.NDArray[np.int64]


def start_variables(
    model: cp_model.CpModel, lo: IntArray, hi: IntArray
) -> list[cp_model.IntVar]:
    """``S_i`` in ``[lo_i, hi_i]``, named ``S{i}``."""
    return [model.new_int_var(int(lo[i]), int(hi[i]), f"S{i}") for i in range(len(lo))]


def end_expressions(
    problem: SlotProblem, start: list[cp_model.IntVar]
) -> list[cp_model.LinearExpr]:
    """``E_i = S_i + o_i``."""
    o = problem.output_tokens
    return [start[i] + int(o[i]) for i in range(len(problem))]


def kv_step_intervals(
    model: cp_model.CpModel, problem: SlotProblem, start: list[cp_model.IntVar]
) -> tuple[list[cp_model.IntervalVar], list[int], list[cp_model.IntervalVar]]:
    """The KV staircase of every request as fixed-size intervals (``interval``).

    Returns
    -------
    steps, demands, whole
        ``[S_i + j, E_i)`` with demand ``k_ij - k_{i,j-1}`` for every offset ``j``
        where request ``i``'s table steps up (``k_{i,-1} = 0``), requests in
        order; and the ``j = 0`` steps, ``[S_i, E_i)``, one per request.
    """
    o = problem.output_tokens
    steps, demands, whole = [], [], []
    for i in range(len(problem)):
        table = problem.kv_table(i)
        rise = np.diff(table, prepend=0)
        oi = int(o[i])
        for j in np.flatnonzero(rise):
            iv = model.new_fixed_size_interval_var(start[i] + int(j), oi - int(j), "")
            steps.append(iv)
            demands.append(int(rise[j]))
            if j == 0:
                whole.append(iv)
    return steps, demands, whole


def run_intervals(
    model: cp_model.CpModel, problem: SlotProblem, start: list[cp_model.IntVar]
) -> list[cp_model.IntervalVar]:
    """``[S_i, E_i)``: the slots request ``i`` runs in, one per request."""
    o = problem.output_tokens
    return [
        model.new_fixed_size_interval_var(start[i], int(o[i]), "")
        for i in range(len(problem))
    ]


def prefill_intervals(
    model: cp_model.CpModel, problem: SlotProblem, start: list[cp_model.IntVar]
) -> list[cp_model.IntervalVar]:
    """``[S_i, S_i + 1)`` for every request with ``s_i > 1`` (its prefill slot)."""
    return [
        model.new_fixed_size_interval_var(start[i], 1, "")
        for i in range(len(problem))
        if problem.prompt_tokens[i] > 1
    ]


def start_booleans(
    model: cp_model.CpModel,
    start: list[cp_model.IntVar],
    lo: IntArray,
    hi: IntArray,
) -> list[list[cp_model.IntVar]]:
    """``x_it`` = "request ``i`` starts at ``t``" (``time-indexed``).

    For ``t = lo_i..hi_i``, tied to the start by ``sum_t x_it = 1`` and
    ``S_i = sum_t t x_it``.
    """
    x = []
    for i in range(len(start)):
        slots = range(int(lo[i]), int(hi[i]) + 1)
        xi = [model.new_bool_var(f"x{i}_{t}") for t in slots]
        model.add_exactly_one(xi)
        model.add(start[i] == sum(t * v for t, v in zip(slots, xi, strict=True)))
        x.append(xi)
    return x


def running_at_completion(
    model: cp_model.CpModel,
    problem: SlotProblem,
    start: list[cp_model.IntVar],
    end: list[cp_model.LinearExpr],
    lo: IntArray,
    hi: IntArray,
    k: int,
) -> tuple[list[cp_model.IntVar], list[cp_model.IntVar]]:
    """Who runs in request ``k``'s last slot ``E_k - 1`` and its KV (``events``).

    ``end`` holds the ``E_i`` (:func:`end_expressions`). For every other request
    ``i`` that can run in that slot (the others are skipped), the boolean
    ``a_ik`` = "``i`` runs in slot ``E_k - 1``" is tied to the starts in both
    directions: exactly one of ``a_ik`` (``S_i <= E_k - 1 < E_i``), "before"
    (``S_i >= E_k``) and "after" (``E_i <= E_k - 1``) holds, each enforcing its
    inequalities. The integer ``c_ik`` in ``[0, k_{i,o_i-1}]`` is at least
    ``i``'s KV in that slot when ``a_ik``: for the table ``k_ij = ceil((s_i + j)
    / b)``, ``b c_ik >= s_i + E_k - 1 - S_i``.

    Returns
    -------
    runs, held
        The ``a_ik`` and ``c_ik`` of the requests ``i`` not skipped.
    """
    n = len(problem)
    o, s, b = problem.output_tokens, problem.prompt_tokens, problem.block_tokens
    peak = problem.peak_blocks
    runs_list, held_list = [], []
    last_k = (int(lo[k] + o[k]) - 1, int(hi[k] + o[k]) - 1)  # range of E_k - 1
    for i in range(n):
        # skip i if it can never run in k's last slot
        if i == k or lo[i] > last_k[1] or hi[i] + o[i] <= last_k[0]:
            continue
        runs = model.new_bool_var(f"a{i}_{k}")
        before = model.new_bool_var("")
        after = model.new_bool_var("")
        # runs <=> S_i <= E_k - 1 < E_i: each of the three cases is enforced
        model.add(start[i] <= end[k] - 1).only_enforce_if(runs)
        model.add(end[i] >= end[k]).only_enforce_if(runs)
        model.add(start[i] >= end[k]).only_enforce_if(before)
        model.add(end[i] <= end[k] - 1).only_enforce_if(after)
        model.add_exactly_one([runs, before, after])
        held = model.new_int_var(0, int(peak[i]), "")
        age = end[k] - 1 - start[i]
        model.add(b * held >= int(s[i]) + age).only_enforce_if(runs)
        held_list.append(held)
        runs_list.append(runs)
    return runs_list, held_list
