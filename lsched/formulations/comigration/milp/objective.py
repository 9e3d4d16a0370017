"""Objective of the co-migration MILP (:mod:`lsched.formulations.comigration`):
``min T`` with ``T`` above every replica's time (the epigraph of the max)."""

from __future__ import annotations

import pyomo.environ as pyo

from lsched.formulations.comigration.problem import CoMigrationProblem

__all__ = ["add_objective"]


def _replica_time(
    m: pyo.ConcreteModel, problem: CoMigrationProblem, used: list[int], j: int
) -> object:
    """``T_j``: execution, moves into ``j``, overflow and adapter loads, seconds."""
    n, e, load = len(problem), problem.exec_s, problem.adapter_load_s
    moved = [i for i in range(n) if problem.replica[i] != j]
    loaded = [k for k in used if not problem.resident[k, j] and load[k] > 0]
    return (
        sum(float(e[i]) * m.x[i, j] for i in range(n))
        + problem.move_s * sum(m.x[i, j] for i in moved)
        + problem.block_s * m.o[j]
        + sum(float(load[k]) * m.y[k, j] for k in loaded)
    )


def add_objective(
    m: pyo.ConcreteModel, problem: CoMigrationProblem, used: list[int]
) -> None:
    """``m.epigraph`` (``T >= T_j`` for every ``j``) and ``m.objective``;
    ``used`` are the adapters that have ``y``."""
    m.epigraph = pyo.Constraint(
        range(problem.replicas),
        rule=lambda m, j: _replica_time(m, problem, used, j) <= m.T,
    )
    m.objective = pyo.Objective(expr=m.T, sense=pyo.minimize)
