"""Variables of the co-migration MILP (:mod:`lsched.formulations.comigration`).

``x[i, j]`` binary (request ``i`` on replica ``j``); ``y[k, j]`` binary
(adapter ``k`` placed on replica ``j``), only for the adapters some request
uses; ``o[j] >= 0`` continuous (overflow blocks: at an optimum ``max(0,
sum_i b_i x_ij - G_j)``, an integer once ``x`` is; the schedule is read from
``x`` alone);
``T >= 0`` continuous (seconds). :meth:`CoMigrationModel.values` gives every
variable's value for an assignment: the MIP start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap

from lsched.formulations.comigration.problem import CoMigrationProblem

__all__ = ["CoMigrationModel", "add_variables"]

IntArray = npt.NDArray[np.int64]


def add_variables(m: pyo.ConcreteModel, problem: CoMigrationProblem) -> list[int]:
    """``m.x``, ``m.y``, ``m.o`` and ``m.T``; returns the adapters that have
    ``y`` (those some request uses)."""
    n, c = len(problem), problem.replicas
    used = sorted({int(k) for k in problem.adapter})
    m.x = pyo.Var(range(n), range(c), within=pyo.Binary)
    m.y = pyo.Var(used, range(c), within=pyo.Binary)
    m.o = pyo.Var(range(c), within=pyo.NonNegativeReals)
    m.T = pyo.Var(within=pyo.NonNegativeReals)
    return used


@dataclass(frozen=True)
class CoMigrationModel:
    """The built Pyomo model and its problem.

    Attributes
    ----------
    model
        The Pyomo model (:func:`lsched.formulations.comigration.milp.build_model`).
    problem
        Its problem.
    used
        The adapters with ``y`` variables.
    """

    model: pyo.ConcreteModel
    problem: CoMigrationProblem
    used: list[int]

    def values(self, where: IntArray) -> ComponentMap:
        """Every variable's value for the assignment ``where`` (its least
        placement, its overflow, ``T`` its objective)."""
        m, problem = self.model, self.problem
        placed = problem.needed(where)
        overflow = problem.overflow_blocks(where)
        out = ComponentMap()
        out[m.T] = float(problem.replica_times_s(where).max())
        for (i, j), var in m.x.items():
            out[var] = float(where[i] == j)
        for (k, j), var in m.y.items():
            out[var] = float(placed[k, j])
        for j, var in m.o.items():
            out[var] = float(overflow[j])
        return out

    def assignment(self, values: Mapping[Any, float]) -> IntArray:
        """The replica of every request: its largest ``x[i, j]`` in ``values``."""
        problem = self.problem
        chosen = np.zeros((len(problem), problem.replicas))
        for (i, j), var in self.model.x.items():
            chosen[i, j] = values[var]
        return chosen.argmax(axis=1).astype(np.int64)
