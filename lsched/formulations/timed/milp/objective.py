"""Objectives of the timed MILP: makespan directly, latency through local big-Ms.

Notation of :mod:`lsched.formulations.timed.milp` and of its variables
(:mod:`lsched.formulations.timed.milp.variables`).

Objectives
----------
Makespan: ``min T_{K-1} + d_{K-1} - min a`` (the last end; no products).

Latency. With ``F_k = T_k + d_k`` (``F_{-1} = 0``) and ``delta_l = F_l -
F_{l-1} >= 0``, a completion is a sum over the iterations it waits through:

    C_i = F_{E_i - 1} = sum_l delta_l R_il.

``R_il = 1`` for ``l < o_i``, so ``C_i = F_{o_i - 1} + sum_{l >= o_i} v[i,l]``
with ``v[i,l] = delta_l R_il`` linearised as

    v[i,l] >= delta_l - M_l (1 - R_il),   v[i,l] >= 0,
    sum_{l >= o_i} v[i,l] >= d_min S_i = d_min sum_t t x[i,t].

The big-M is *local*, one iteration's span rather than the horizon:
``delta_l`` is ``d_l <= d_max`` plus the idle time before iteration ``l``, which
is positive only if an arrival at most ``max a`` delays it past ``F_{l-1} >=
min a + l d_min``, so ``M_l = d_max + max(0, max a - min a - l d_min)``; on
instances with every arrival at 0 it is ``d_max``. (A big-M on ``C_i >= F_k -
M (1 - R_ik)`` would need ``M`` of the whole horizon.) The last row holds since
``i`` waits through the ``S_i`` iterations ``o_i .. E_i - 1``, each at least
``d_min`` long; it is the sum of the per-iteration rows ``v[i,l] >= d_min
R_il``, which are a little tighter but made HiGHS 1.16's presolve map the MIP
start into its reduced space with a wrong objective (see
:mod:`lsched.formulations.timed.milp`). Minimised: ``sum_i w_i C_i - sum_i w_i
a_i``.

The constants (``- min a``, ``- sum_i w_i a_i``) are left out of the model:
they are :attr:`~lsched.formulations.timed.problem.TimedProblem.objective_offset`.
"""

from __future__ import annotations

import pyomo.environ as pyo

from lsched.formulations.timed.milp.variables import MilpData, cumulative, end


def _add_waits(m: pyo.ConcreteModel, data: MilpData) -> None:
    """``v[i,l]``, the rows that make it ``delta_l R_il``, and the ``d_min S_i``
    rows."""
    o, last, d_min = data.o, data.last, data.d_min
    a_min, a_max = min(data.a), max(data.a)
    index = [(i, ell) for i in range(data.n) for ell in range(o[i], last[i] + o[i])]
    m.v = pyo.Var(index, bounds=(0, None))
    m.wait = pyo.ConstraintList()
    for i, ell in index:
        if ell == o[i]:
            data.check()
        big = data.d_max + max(0.0, a_max - a_min - ell * d_min) + data.slack
        done_before = cumulative(m, data, i, ell - o[i])  # 1 - R_il
        m.wait.add(m.v[i, ell] >= end(m, ell) - end(m, ell - 1) - big * done_before)
    for i in range(data.n):
        data.check()
        # i waits through S_i iterations l >= o_i, each >= d_min long
        if d_min > 0 and last[i] > 0:
            m.wait.add(
                sum(m.v[i, ell] for ell in range(o[i], last[i] + o[i]))
                >= d_min * sum(t * m.x[i, t] for t in range(1, last[i] + 1))
            )


def add_objective(m: pyo.ConcreteModel, data: MilpData) -> None:
    """The objective (module docstring) as ``m.objective``, without its
    constant."""
    if data.problem.objective == "makespan":
        m.objective = pyo.Objective(expr=end(m, data.num - 1), sense=pyo.minimize)
        return
    _add_waits(m, data)
    o, last = data.o, data.last
    completion = [
        end(m, o[i] - 1) + sum(m.v[i, ell] for ell in range(o[i], last[i] + o[i]))
        for i in range(data.n)
    ]
    m.objective = pyo.Objective(
        expr=sum(data.w[i] * completion[i] for i in range(data.n)), sense=pyo.minimize
    )
    data.count("wait", len(m.wait))


__all__ = ["add_objective"]
