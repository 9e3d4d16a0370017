"""The branch-and-cut's state: columns, the shared LP, the global column mask and
the incumbent (package docstring).

:class:`BranchAndCut` processes one node at a time (:meth:`BranchAndCut.process`);
the loop, the LNS phase and the finisher are in :mod:`.search`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import numpy.typing as npt

from lsched.formulations.bounds.clique import (
    ColumnIndex,
    Columns,
    column_cost,
    completion_columns,
)
from lsched.formulations.driver import SolveRun
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.bnc.fixing import fixed_by_cost
from lsched.formulations.slot.bnc.relaxation import LPSolution, Relaxation, rounded
from lsched.formulations.slot.bnc.tree import (
    Node,
    Queue,
    children,
    completions,
    propagate,
    split,
)
from lsched.formulations.slot.horizon import deadlines
from lsched.formulations.slot.incumbent import list_schedule

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

#: The LP is rounded to a list schedule at the root and every this many nodes
#: (a list schedule costs about as much as a node LP at n = 10).
ROUNDING_EVERY = 16


def columns_below(problem: SlotProblem, upper: int) -> Columns | None:
    """The columns that a schedule of integer objective ``<= upper - 1`` may use
    (deadlines of :mod:`lsched.formulations.slot.horizon`); ``None`` if some
    request has none (then ``upper`` is optimal)."""
    deadline = deadlines(problem, upper - 1)
    if np.any(deadline < problem.release + problem.output_tokens):
        return None
    return completion_columns(problem, deadline)


class BranchAndCut:
    """One branch-and-cut in a driver's run.

    Parameters
    ----------
    run
        The driver's run (incumbent, clock, log).
    cols
        :func:`columns_below` the incumbent.
    max_cuts
        Most cliques per separation round.
    """

    def __init__(self, run: SolveRun, cols: Columns, max_cuts: int) -> None:
        problem: SlotProblem = run.problem
        self.run, self.problem, self.cols = run, problem, cols
        #: latency and TTFT: LP values are bounds; makespan: a feasibility search
        self.bounded = problem.objective in ("latency", "ttft")
        cost = column_cost(problem, cols) if self.bounded else cols.completion * 1.0
        self.relax = Relaxation(problem, cols, cost, max_cuts)
        self.index = ColumnIndex(problem, cols)
        self.queue = Queue()
        self.nodes = 0
        self.root: LPSolution | None = None
        self.root_value = -math.inf
        self._fixed_at: int | None = None
        self.allowed = np.ones(len(cols), dtype=bool)
        self.refresh()

    @property
    def upper(self) -> int:
        """The incumbent's integer objective ``U``."""
        return self.problem.integer_objective(self.run.start)

    def refresh(self, *, force: bool = False) -> None:
        """The global mask for the current ``U``: deadlines of ``U - 1`` and the
        root's reduced-cost fixing (again only if ``U`` moved, or ``force``)."""
        upper = self.upper
        if upper == self._fixed_at and not force:
            return
        self._fixed_at = upper
        deadline = deadlines(self.problem, upper - 1)
        mask = self.allowed & (self.cols.completion <= deadline[self.cols.request])
        if self.bounded and self.root is not None:
            mask = fixed_by_cost(self.cols, self.root, mask, upper - 1)
        self.allowed = mask

    @property
    def fixed_at(self) -> int:
        """The ``U`` the global mask was computed for."""
        return int(self._fixed_at) if self._fixed_at is not None else self.upper

    def offer(self, start: npt.ArrayLike, source: str) -> None:
        """Offer a schedule to the run; on an improvement, refresh the mask."""
        if self.run.offer(np.asarray(start, dtype=np.int64), source):
            self.refresh()

    def bound(self, current: float = math.inf) -> float:
        """The proven integer bound: the smallest over the open nodes and the
        ``current`` one, never above ``U`` (``-inf`` for makespan until the tree
        is exhausted)."""
        if not self.bounded:
            done = not len(self.queue) and current == math.inf
            return self.upper if done else -math.inf
        return min(self.queue.bound(), current, self.upper)

    def root_bound(self) -> float:
        """The root LP's integer bound, valid globally (``-inf`` for makespan or
        before the root is solved)."""
        finite = self.bounded and math.isfinite(self.root_value)
        return float(rounded(self.root_value)) if finite else -math.inf

    def prune_at(self) -> float:
        """Nodes whose rounded LP value reaches this hold nothing better."""
        return self.upper if self.bounded else math.inf

    def round_off(self, solution: LPSolution) -> None:
        """List-schedule the requests in the order of their LP mean completion."""
        n = len(self.problem)
        mean = np.bincount(
            self.cols.request, weights=solution.x * self.cols.completion, minlength=n
        )
        self.offer(list_schedule(self.problem, np.argsort(mean, kind="stable")), "bnc")

    def process(self, node: Node, rounds: int, until: float | None = None) -> bool:
        """Solve ``node``'s LP with up to ``rounds`` separation rounds (none
        started after ``until``, ``time.monotonic()``), then prune, fix and
        branch. Returns ``False`` if time ran out (the node is reopened)."""
        if node.bound >= self.prune_at():
            return True
        allowed = node.allowed() & self.allowed
        self.relax.restrict(allowed)
        solved = self.relax.cut_rounds(
            self.run.deadline, rounds, self.prune_at(), until
        )
        self.nodes += 1
        if solved is None:
            self.queue.push(node.allowed(), node.bound, node.depth)
            return False
        if solved is False:
            return True
        if node.depth == 0:
            self.root, self.root_value = solved, solved.value
            self.refresh(force=True)
        if self.nodes % ROUNDING_EVERY == 1:
            self.round_off(solved)
        self._branch(node, solved, allowed & self.allowed)
        return True

    def _branch(self, node: Node, solved: LPSolution, allowed: BoolArray) -> None:
        """Prune on the bound, close an integral node, else open two children."""
        value = float(rounded(solved.value)) if self.bounded else solved.value
        if value >= self.prune_at():
            return
        branch = split(self.cols, solved.x)
        if branch is None:
            before = self.upper
            end = completions(self.cols, solved.x, len(self.problem))
            self.offer(end - self.problem.output_tokens, "bnc")
            if not self.bounded and self.upper < before:
                # a makespan below the new U may remain in the node
                self.queue.push(allowed, value, node.depth)
            return
        if self.bounded:
            allowed = fixed_by_cost(self.cols, solved, allowed, self.upper - 1)
        j = branch[0]
        for child in children(self.cols, allowed, *branch):
            child = propagate(self.relax.rule, self.index, self.cols, child, j)
            self.queue.push(child, value, node.depth + 1)

    def progress(self, current: float = math.inf) -> None:
        """Log the bound (problem units) in the run."""
        bound = self.bound(current)
        self.run.record(None, bound + self.problem.objective_offset)

    def time_left(self) -> bool:
        """Whether the run's clock has time left."""
        return time.monotonic() < self.run.deadline
