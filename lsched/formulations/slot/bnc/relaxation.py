"""The node LP of the branch-and-cut: the clique LP with per-node column bounds.

One HiGHS model (:func:`lsched.formulations.bounds.clique.load_lp`) serves every
node: a node only changes column upper bounds (0 for a column the node rules
out, 1 otherwise), and every clique row found anywhere stays in the model (the
rows are valid for every schedule, :mod:`lsched.formulations.bounds.clique`).
Each solve starts from the basis the previous one left (dual simplex).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import pairwise

import highspy
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from lsched.formulations.bounds.clique import (
    Columns,
    ConflictRule,
    add_cliques,
    load_lp,
    separate,
)
from lsched.formulations.slot import SlotProblem
from lsched.formulations.solvers import highs as highs_run
from lsched.interrupt import requested

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Integer objectives: an LP value ``z`` proves ``ceil(z - ROUNDING_TOL)``, as
#: the slot model rounds bounds (:func:`lsched.formulations.slot.model.round_bound`).
ROUNDING_TOL = 1e-6


def rounded(value: float) -> int:
    """The integer bound an LP value ``value`` proves."""
    return math.ceil(value - ROUNDING_TOL)


#: Identical requests with more columns than this get one aggregated order row
#: instead of one row per slot (whose size grows with the square of the window).
PREFIX_ROWS_MAX_WIDTH = 64


def symmetry_rows(problem: SlotProblem, cols: Columns) -> sp.csr_matrix:
    """``E_i <= E_k`` for consecutive identical requests ``i < k``
    (:meth:`~lsched.formulations.slot.SlotProblem.identical_groups`; package
    docstring, "Symmetry"). Identical requests have the same columns (same
    release, output and deadline). Up to :data:`PREFIX_ROWS_MAX_WIDTH` columns:
    ``F_k(t) - F_i(t) <= 0`` for every ``t`` but the last, ``F_j(t) = sum_{c <=
    t} x[j, c]``; wider: ``sum_c c (x[i, c] - x[k, c]) <= 0``."""
    first = np.searchsorted(cols.request, np.arange(len(problem)))
    width = np.bincount(cols.request, minlength=len(problem))
    rows, index, value = [], [], []
    for group in problem.identical_groups():
        for i, k in pairwise(group.tolist()):
            w = int(width[i])
            if w > PREFIX_ROWS_MAX_WIDTH:
                span = np.arange(w)
                rows.append(np.full(2 * w, len(rows)))
                index.append(np.concatenate([first[i] + span, first[k] + span]))
                at = cols.completion[first[i] + span].astype(np.float64)
                value.append(np.concatenate([at, -at]))
                continue
            for t in range(w - 1):
                prefix = np.arange(t + 1)
                rows.append(np.full(2 * (t + 1), len(rows)))
                index.append(np.concatenate([first[k] + prefix, first[i] + prefix]))
                value.append(np.repeat([1.0, -1.0], t + 1))
    if not rows:
        return sp.csr_matrix((0, len(cols)))
    return sp.csr_matrix(
        (np.concatenate(value), (np.concatenate(rows), np.concatenate(index))),
        shape=(len(rows), len(cols)),
    )


def add_rows(solver: highspy.Highs, rows: sp.csr_matrix) -> None:
    """``rows x <= 0``, added to the loaded LP."""
    if rows.shape[0] == 0:
        return
    solver.addRows(
        rows.shape[0],
        np.full(rows.shape[0], -highspy.kHighsInf),
        np.zeros(rows.shape[0]),
        rows.nnz,
        rows.indptr[:-1].astype(np.int32),
        rows.indices.astype(np.int32),
        rows.data.astype(np.float64),
    )


@dataclass(frozen=True)
class LPSolution:
    """An optimal node LP: value ``z`` (integer part of the objective), column
    values and reduced costs."""

    value: float
    x: FloatArray
    reduced: FloatArray


class Relaxation:
    """The loaded clique LP, re-solved under each node's column bounds.

    Parameters
    ----------
    problem
        The slot problem.
    cols
        The columns (placements) of the LP.
    cost
        The LP objective per column.
    max_cuts
        Most cliques added per separation round.
    """

    def __init__(
        self, problem: SlotProblem, cols: Columns, cost: FloatArray, max_cuts: int
    ) -> None:
        self.cols = cols
        self.rule = ConflictRule(problem)
        self.loaded = load_lp(problem, cols, cost)
        add_rows(self.loaded.highs, symmetry_rows(problem, cols))
        self.max_cuts = max_cuts
        self.cuts = 0
        self.solves = 0
        self._index = np.arange(len(cols), dtype=np.int32)

    def restrict(self, allowed: BoolArray) -> None:
        """Column ``q`` in ``[0, 1]`` if ``allowed[q]``, else fixed at 0."""
        upper = allowed.astype(np.float64)
        self.loaded.highs.changeColsBounds(
            len(upper), self._index, np.zeros(len(upper)), upper
        )

    def solve(self, deadline: float) -> LPSolution | bool | None:
        """The LP under the current bounds: its solution, ``False`` if it is
        infeasible, ``None`` if it was not solved by ``deadline`` (or a stop)."""
        outcome = highs_run.run(self.loaded, deadline=deadline)
        self.solves += 1
        if outcome.model_status == "Infeasible":
            return False
        if outcome.model_status != "Optimal" or outcome.values is None:
            return None
        if outcome.interrupted or requested():
            return None
        reduced = np.asarray(self.loaded.highs.getSolution().col_dual)
        return LPSolution(outcome.bound, outcome.values, reduced)

    def cut_rounds(
        self,
        deadline: float,
        rounds: int,
        prune_at: float,
        until: float | None = None,
    ) -> LPSolution | bool | None:
        """Solve, add violated cliques, re-solve: at most ``rounds`` rounds.

        Stops early when no clique is violated, the value reaches ``prune_at``
        (the node is then pruned) or ``until`` (``time.monotonic()``) has
        passed. Returns the last solution (or ``False`` / ``None`` as
        :meth:`solve`; ``None`` only if no LP was solved).
        """
        last: LPSolution | bool | None = None
        for round_ in range(rounds + 1):
            solved = self.solve(deadline)
            if not isinstance(solved, LPSolution):
                return solved if solved is False or last is None else last
            last = solved
            if round_ == rounds or rounded(solved.value) >= prune_at:
                break
            if until is not None and time.monotonic() >= until:
                break
            found = separate(
                self.rule, self.cols, solved.x, solved.reduced, max_cuts=self.max_cuts
            )
            if not found:
                break
            add_cliques(self.loaded.highs, found)
            self.cuts += len(found)
        return last
