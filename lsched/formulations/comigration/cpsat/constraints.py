"""Constraints of the co-migration CP-SAT model
(:mod:`lsched.formulations.comigration`).

Each request on exactly one replica, an immovable one on its own; ``x_ij =>
y_k(i)j``; at most ``L_j``
adapters on replica ``j``; ``o_j >= sum_i b_i x_ij - G_j``.
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from lsched.formulations.comigration.cpsat.variables import CpVariables
from lsched.formulations.comigration.problem import CoMigrationProblem

__all__ = ["add_constraints"]


def add_constraints(
    model: cp_model.CpModel, problem: CoMigrationProblem, v: CpVariables
) -> None:
    """Assignment (immovable requests in place), placement, slots and overflow
    rows."""
    c = problem.replicas
    for i, row in enumerate(v.x):
        model.add_exactly_one(row)
        if not problem.movable[i]:
            model.add(row[int(problem.replica[i])] == 1)
        k = int(problem.adapter[i])
        for j in range(c):
            model.add_implication(row[j], v.y[k][j])
    for j in range(c):
        model.add(sum(row[j] for row in v.y.values()) <= int(problem.adapter_slots[j]))
        held = sum(int(b) * row[j] for b, row in zip(problem.blocks, v.x, strict=True))
        model.add(v.overflow[j] >= held - int(problem.capacity_blocks[j]))
