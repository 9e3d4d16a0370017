"""Objectives of the timed CP-SAT model, in integer time.

Notation of :mod:`lsched.formulations.timed.cpsat` and of its variables
(:mod:`lsched.formulations.timed.cpsat.variables`)::

    makespan:  min T'_{K-1} + d'_{K-1}
    latency:   x[i,t] => C'_i >= T'_{t+o_i-1} + d'_{t+o_i-1};  min sum_i w_i C'_i

Enforced constraints are invisible to CP-SAT's default LP relaxation, so a valid
linear row carries the latency's bound: ``C'_i >= T'_{o_i-1} + d'_{o_i-1} +
ceil(q d_min) S_i`` (request ``i`` waits through the ``S_i`` iterations ``o_i ..
E_i - 1``, each at least ``d_min`` long). The constants (``- min a``, ``- sum_i
w_i a_i``) are left out: they are
:attr:`~lsched.formulations.timed.problem.TimedProblem.objective_offset`.
"""

from __future__ import annotations

from typing import Any

from ortools.sat.python import cp_model

from lsched.formulations.timed.cpsat.variables import CpData, CpVariables


def add_objective(
    model: cp_model.CpModel, data: CpData, v: CpVariables
) -> list[cp_model.IntVar]:
    """Minimise the objective (module docstring); returns the latency's
    completions ``C'_i`` (none for makespan)."""

    def end(k: int) -> Any:
        return v.t[k] + v.d[k]

    if data.problem.objective == "makespan":
        model.minimize(end(data.num - 1))
        return []
    completion = []
    o = data.o
    for i in range(data.n):
        c_var = model.new_int_var(data.a_min, data.horizon, f"C{i}")
        # i waits through S_i iterations o_i .. E_i - 1, each >= d_min long
        model.add(c_var >= end(o[i] - 1) + data.d_least * v.start[i])
        for t in range(data.last[i] + 1):
            model.add(c_var >= end(t + o[i] - 1)).only_enforce_if(v.x[i, t])
        completion.append(c_var)
    model.minimize(sum(data.w[i] * completion[i] for i in range(data.n)))
    return completion


__all__ = ["add_objective"]
