"""The branch-and-cut backend of the slot model: :func:`solve` (package
docstring)."""

from __future__ import annotations

import math
import time
from typing import Any

from lsched.errors import InputError
from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.result import Stop
from lsched.formulations.slot.bnc.finisher import finish
from lsched.formulations.slot.bnc.state import BranchAndCut, columns_below
from lsched.formulations.slot.lns import walk
from lsched.formulations.slot.model import SLOT
from lsched.interrupt import requested

#: The finishers after the root: the tree, or CP-SAT on the reduced windows.
FINISHERS = ("tree", "cpsat")


def _check(finisher: str, shares: tuple[float, float], rounds: tuple[int, int]) -> None:
    if finisher not in FINISHERS:
        raise InputError(
            f"got {finisher!r}; expected one of {', '.join(FINISHERS)}",
            field="finisher",
        )
    for name, share in zip(("lns_share", "root_share"), shares, strict=True):
        if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise InputError(f"got {share!r}; expected 0 <= share <= 1", field=name)
    for name, value in zip(("root_rounds", "node_rounds"), rounds, strict=True):
        if not isinstance(value, int) or value < 0:
            raise InputError(f"got {value!r}; expected an integer >= 0", field=name)


def _stop() -> Stop:
    return Stop.INTERRUPTED if requested() else Stop.TIME_LIMIT


def _tree(bnc: BranchAndCut, node_rounds: int) -> Stop:
    """Best-first until the queue is empty (``FINISHED``) or the clock stops."""
    while len(bnc.queue):
        if not bnc.time_left() or requested():
            return _stop()
        node = bnc.queue.pop()
        bnc.progress(node.bound)
        if not bnc.process(node, node_rounds):
            return _stop()
    return Stop.FINISHED


def _lns(bnc: BranchAndCut, share: float, params: dict[str, Any]) -> dict[str, int]:
    """The LNS of :mod:`lsched.formulations.slot.lns` for ``share`` of the time
    limit, when the root left a gap."""
    run = bnc.run
    if share <= 0 or bnc.bound() >= bnc.upper or len(run.problem) < 2:
        return {}
    until = min(run.deadline, time.monotonic() + share * (run.deadline - run.began))
    found = walk(run, neighbourhood=12, step_s=1.0, search_until=until, params=params)
    bnc.refresh()
    return found


def _figures(bnc: BranchAndCut) -> dict[str, Any]:
    """The search's figures for :attr:`SolveResult.info`."""
    offset = bnc.problem.objective_offset
    return {
        "nodes": bnc.nodes,
        "open_nodes": len(bnc.queue),
        "lp_solves": bnc.relax.solves,
        "cuts": bnc.relax.cuts,
        "root_lp": bnc.root_value + offset if bnc.bounded else None,
        "columns_left": int(bnc.allowed.sum()),
    }


@backend(SLOT)
def solve(
    run: SolveRun,
    *,
    finisher: str = "tree",
    lns_share: float = 0.1,
    root_share: float = 0.4,
    root_rounds: int = 500,
    node_rounds: int = 3,
    max_cuts: int | None = None,
    **params: Any,
) -> Attempt:
    """Branch-and-cut on completion slots over the clique LP (package docstring).

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`.
    finisher
        After the root: ``"tree"`` (branch-and-cut, best-first) or ``"cpsat"``
        (CP-SAT on the completion windows the fixing left).
    lns_share
        Share of ``time_limit`` for LNS after the root, when the root leaves a
        gap (0: none).
    root_share
        Share of the time left after the warm start in which the root may
        start separation rounds (its LP bound so far is kept).
    root_rounds, node_rounds
        Most clique separation rounds at the root and at every other node.
    max_cuts
        Most cliques per round; ``max(20, n)`` by default.
    **params
        CP-SAT parameters for the LNS steps and the ``cpsat`` finisher.
    """
    _check(finisher, (lns_share, root_share), (root_rounds, node_rounds))
    problem = run.problem
    offset = problem.objective_offset
    cols = columns_below(problem, problem.integer_objective(run.start))
    if cols is None:  # no request can complete below U: U is optimal
        return Attempt("bnc", Stop.FINISHED, float(run.objective), info={"nodes": 0})
    cuts = max(20, len(problem)) if max_cuts is None else max_cuts
    bnc = BranchAndCut(run, cols, cuts)
    bnc.queue.push(bnc.allowed, -math.inf, 0)
    stop = Stop.FINISHED
    until = time.monotonic() + root_share * run.remaining_s()
    if not bnc.process(bnc.queue.pop(), root_rounds, until):
        stop = _stop()
    bnc.progress()
    info: dict[str, Any] = {"columns": len(cols)}
    if stop is Stop.FINISHED and len(bnc.queue):  # else the root proved U
        info |= _lns(bnc, lns_share, params)
        if finisher == "cpsat":
            stop, bound, more = finish(run, cols, bnc.allowed, bnc.fixed_at, params)
            bound = max(bound, bnc.root_bound())
            info |= more | _figures(bnc)
            return Attempt("bnc/cpsat-events", stop, bound + offset, info=info)
        stop = _tree(bnc, node_rounds)
    bound = bnc.bound() if stop is not Stop.FINISHED else float(bnc.upper)
    return Attempt("bnc/highs", stop, bound + offset, info=info | _figures(bnc))
