"""Objective of the slot MILP (the integer objective of
:meth:`~lsched.formulations.slot.SlotProblem.integer_objective`).

::

    latency   min sum_i w_i sum_t (t + o_i) x[i,t]
    ttft      min sum_i w_i sum_t  t        x[i,t]
    makespan  min C,   C >= sum_t (t + o_i) x[i,t]   for every i

For the makespan, ``C`` is one continuous variable with the bounds of
:func:`makespan_bounds` (strengthening ``energy``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo

from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.milp.variables import StartColumns

IntArray = npt.NDArray[np.int64]


def makespan_bounds(
    problem: SlotProblem, kv: IntArray, upper_bound: int | None, *, energy: bool
) -> tuple[float, float | None]:
    """Bounds on ``C``: ``max_i (r_i + o_i) <= C <= U``, and ``energy``'s.

    ``U`` is ``upper_bound`` (a feasible schedule's makespan; none if ``None``).
    With ``energy``: every request-slot is processed in ``[min_i r_i, C)`` with
    at most ``M`` blocks per slot, so ``C >= min_i r_i + ceil(sum_ij k_ij /
    M)`` (``kv`` holds ``k_ij``, zero past ``o_i``).
    """
    r, capacity = problem.release, problem.kv_capacity_blocks
    lower = int((r + problem.output_tokens).max())
    if energy:
        area = int(kv.sum())
        lower = max(lower, int(r.min()) + -(-area // capacity))
    return float(lower), None if upper_bound is None else float(upper_bound)


def add_objective(
    model: pyo.ConcreteModel,
    problem: SlotProblem,
    latest: IntArray,
    starts: StartColumns,
    kv: IntArray,
    upper_bound: int | None,
    *,
    energy: bool,
) -> None:
    """Add ``model.objective`` (and ``model.C``, ``model.makespan`` for the makespan).

    ``latest`` holds ``L_i``; ``kv``, ``upper_bound`` and ``energy`` are for
    :func:`makespan_bounds`.
    """
    r, o, w = problem.release, problem.output_tokens, problem.weight
    n, width = len(problem), starts.width
    if problem.objective == "makespan":
        model.C = pyo.Var(
            bounds=makespan_bounds(problem, kv, upper_bound, energy=energy)
        )
        model.makespan = pyo.Constraint(
            range(n),
            rule=lambda m, i: (
                starts.row(starts.of_request(i), r[i] + np.arange(width[i]) + o[i])
                <= m.C
            ),
        )
        model.objective = pyo.Objective(expr=model.C, sense=pyo.minimize)
    else:
        shift = o if problem.objective == "latency" else np.zeros(n, dtype=np.int64)
        who = np.repeat(np.arange(n), width)
        slot = np.concatenate([np.arange(r[i], latest[i] + 1) for i in range(n)])
        model.objective = pyo.Objective(
            expr=starts.row(np.arange(len(starts.xs)), w[who] * (slot + shift[who])),
            sense=pyo.minimize,
        )
