"""Variables of the slot MILP and the sparse rows over them.

Notation of :mod:`lsched.formulations.slot.milp.build`: request ``i`` may start
in the window ``T_i = {r_i, ..., L_i}``.

``x[i,t] in {0,1}`` for ``t in T_i``
    Request ``i`` starts in slot ``t`` (:func:`add_starts`). The columns are
    numbered request by request, slots ascending, so the column of ``x[i,t]`` is
    ``base_i + t - r_i``: every row is built from NumPy index arrays and goes to
    Pyomo as one ``LinearExpression`` (:meth:`StartColumns.row`), not term by
    term (the "Building" section of :mod:`lsched.formulations.slot.milp.build`).
``y[i,t] in [0,1]`` for ``t in T_i \\ {L_i}``, symmetric requests only
    The cumulative start ``y[i,t] = sum_{t' <= t} x[i,t']``
    (:func:`add_cumulative_starts`), defined by ``y[i,r_i] = x[i,r_i]`` and
    ``y[i,t] = y[i,t-1] + x[i,t]`` so that the rows stay sparse; ``y[i,L_i] = 1``
    always, so it is left out.

The makespan ``C`` is the objective's (:mod:`lsched.formulations.slot.milp.objective`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression

from lsched.formulations.slot import SlotProblem

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class StartColumns:
    """The start variables ``x`` as numbered columns.

    Attributes
    ----------
    xs
        ``x[i,t]`` in column order: request by request, slots ascending.
    release
        ``r_i``: the first slot of each window.
    width
        ``|T_i| = L_i - r_i + 1``.
    base
        Column of ``x[i, r_i]``.
    """

    xs: list[pyo.Var]
    release: IntArray
    width: IntArray
    base: IntArray

    def row(self, columns: IntArray, coefs: IntArray | None = None) -> LinearExpression:
        """``sum coefs[k] * xs[columns[k]]`` (coefficients 1 by default)."""
        terms = [self.xs[c] for c in columns.tolist()]
        if coefs is None:
            return LinearExpression(terms)
        return LinearExpression(linear_coefs=coefs.tolist(), linear_vars=terms)

    def at(self, who: IntArray, slot: IntArray | int) -> IntArray:
        """Columns of ``x[who[k], slot[k]]`` (``slot`` may be one slot for all)."""
        return self.base[who] + slot - self.release[who]

    def of_request(self, i: int) -> IntArray:
        """Columns of ``x[i, t]`` for ``t in T_i``, ascending."""
        return self.base[i] + np.arange(self.width[i])


def add_starts(
    model: pyo.ConcreteModel, problem: SlotProblem, latest: IntArray
) -> StartColumns:
    """Add ``x[i,t]`` (binary) for ``r_i <= t <= L_i = latest[i]`` to ``model``."""
    r = problem.release
    index = [
        (i, t)
        for i in range(len(problem))
        for t in range(int(r[i]), int(latest[i]) + 1)
    ]
    model.x = pyo.Var(index, domain=pyo.Binary)
    width = latest - r + 1
    return StartColumns(
        xs=list(model.x.values()),  # in the order of index
        release=r,
        width=width,
        base=np.cumsum(width) - width,
    )


def add_cumulative_starts(
    model: pyo.ConcreteModel,
    problem: SlotProblem,
    latest: IntArray,
    groups: list[list[int]],
    check: Callable[[], None],
) -> None:
    """Add ``y[i,t]`` for the requests in ``groups`` and the rows defining them.

    ``model.cumulative`` holds ``y[i,t] = y[i,t-1] + x[i,t]`` (``y[i,r_i-1] =
    0``), group by group; ``check`` is called once per group.
    """
    r = problem.release
    y_index = [
        (i, t)
        for group in groups
        for i in group
        for t in range(int(r[i]), int(latest[i]))  # y[i, L_i] = 1 always
    ]
    model.y = pyo.Var(y_index, bounds=(0, 1))
    x, y = model.x, model.y
    model.cumulative = pyo.ConstraintList()
    for group in groups:
        check()
        for i in group:
            for t in range(int(r[i]), int(latest[i])):
                previous = y[i, t - 1] if t > r[i] else 0
                model.cumulative.add(y[i, t] == previous + x[i, t])
