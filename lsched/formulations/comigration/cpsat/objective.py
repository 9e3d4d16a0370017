"""Objective of the co-migration CP-SAT model (:mod:`lsched.formulations.comigration`):
``min T`` with ``T >= T'_j``, each replica's integer time
(:mod:`~lsched.formulations.comigration.cpsat.scale`)."""

from __future__ import annotations

from ortools.sat.python import cp_model

from lsched.formulations.comigration.cpsat.scale import TimeScale
from lsched.formulations.comigration.cpsat.variables import CpVariables
from lsched.formulations.comigration.problem import CoMigrationProblem

__all__ = ["add_objective"]


def add_objective(
    model: cp_model.CpModel,
    problem: CoMigrationProblem,
    v: CpVariables,
    scale: TimeScale,
) -> None:
    """The epigraph rows ``T >= T'_j`` and ``min T``."""
    for j in range(problem.replicas):
        work = sum(
            int(e) * row[j] for e, row in zip(scale.exec_units, v.x, strict=True)
        )
        moved = sum(
            row[j] for row, r in zip(v.x, problem.replica, strict=True) if r != j
        )
        loads = sum(
            int(scale.load_units[k]) * row[j]
            for k, row in v.y.items()
            if not problem.resident[k, j]
        )
        model.add(
            v.makespan
            >= work
            + scale.move_units * moved
            + scale.block_units * v.overflow[j]
            + loads
        )
    model.minimize(v.makespan)
