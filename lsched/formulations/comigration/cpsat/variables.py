"""Variables of the co-migration CP-SAT model (:mod:`lsched.formulations.comigration`).

Booleans ``x[i][j]`` (request ``i`` on replica ``j``) and ``y[k][j]`` (adapter
``k`` placed on ``j``, for the adapters some request uses); integers ``o_j`` in
``[0, max(0, sum_i b_i - G_j)]`` (overflow blocks) and ``T`` in ``[0, upper]``
(integer time, :mod:`~lsched.formulations.comigration.cpsat.scale`), ``upper``
the incumbent's integer time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.comigration.problem import CoMigrationProblem

__all__ = ["CpVariables", "add_variables"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CpVariables:
    """The model's variables (module docstring)."""

    x: list[list[Any]]
    y: dict[int, list[Any]]
    overflow: list[Any]
    makespan: Any

    def hint(self, model: cp_model.CpModel, problem: CoMigrationProblem,
             where: IntArray) -> None:  # fmt: skip
        """Hint the assignment ``where`` and its least placement."""
        placed = problem.needed(where)
        for i, row in enumerate(self.x):
            for j, var in enumerate(row):
                model.add_hint(var, int(where[i] == j))
        for k, row in self.y.items():
            for j, var in enumerate(row):
                model.add_hint(var, int(placed[k, j]))

    def assignment(self, value: Any) -> IntArray:
        """The replica of every request under ``value`` (a solver's or a
        callback's ``value``)."""
        return np.array(
            [next(j for j, v in enumerate(row) if value(v)) for row in self.x],
            dtype=np.int64,
        )


def add_variables(
    model: cp_model.CpModel, problem: CoMigrationProblem, upper: int
) -> CpVariables:
    """The variables, ``T <= upper``."""
    n, c = len(problem), problem.replicas
    total = int(problem.blocks.sum())
    x = [[model.new_bool_var(f"x{i}_{j}") for j in range(c)] for i in range(n)]
    used = sorted({int(k) for k in problem.adapter})
    y = {k: [model.new_bool_var(f"y{k}_{j}") for j in range(c)] for k in used}
    overflow = [
        model.new_int_var(0, max(0, total - int(problem.capacity_blocks[j])), f"o{j}")
        for j in range(c)
    ]
    makespan = model.new_int_var(0, upper, "T")
    return CpVariables(x=x, y=y, overflow=overflow, makespan=makespan)
