"""Rows of the co-migration MILP (:mod:`lsched.formulations.comigration`).

Each request on one replica, an immovable one on its own (``x_ir_i = 1``); a
request only where its adapter is placed
(disaggregated, ``x_ij <= y_k(i)j``: the same integer points as dLoRA's
aggregated ``n_k y_kj >= sum_{i of k} x_ij``, with a tighter LP); adapter slots
per replica; overflow blocks above each replica's KV capacity.
"""

from __future__ import annotations

import pyomo.environ as pyo

from lsched.formulations.comigration.problem import CoMigrationProblem

__all__ = ["add_constraints"]


def add_constraints(
    m: pyo.ConcreteModel, problem: CoMigrationProblem, used: list[int]
) -> None:
    """``m.assign``, ``m.placed``, ``m.stay``, ``m.slots`` and ``m.overflow``;
    ``used`` are the adapters that have ``y``."""
    n, c = len(problem), problem.replicas
    adapter, blocks = problem.adapter, problem.blocks
    m.assign = pyo.Constraint(
        range(n), rule=lambda m, i: sum(m.x[i, j] for j in range(c)) == 1
    )
    m.placed = pyo.Constraint(
        range(n), range(c), rule=lambda m, i, j: m.x[i, j] <= m.y[int(adapter[i]), j]
    )
    fixed = [i for i in range(n) if not problem.movable[i]]
    m.stay = pyo.Constraint(
        fixed, rule=lambda m, i: m.x[i, int(problem.replica[i])] == 1
    )
    m.slots = pyo.Constraint(
        range(c),
        rule=lambda m, j: sum(m.y[k, j] for k in used) <= int(problem.adapter_slots[j]),
    )
    m.overflow = pyo.Constraint(
        range(c),
        rule=lambda m, j: (
            m.o[j]
            >= sum(int(blocks[i]) * m.x[i, j] for i in range(n))
            - int(problem.capacity_blocks[j])
        ),
    )
