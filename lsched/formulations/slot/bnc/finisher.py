"""CP-SAT on the completion windows the root left (package docstring,
"The CP-SAT finisher")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.bounds.clique import Columns
from lsched.formulations.driver import SolveRun
from lsched.formulations.result import Stop
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.cpsat import search_built
from lsched.formulations.slot.cpsat.build import build

BoolArray = npt.NDArray[np.bool_]


def finish(
    run: SolveRun, cols: Columns, allowed: BoolArray, fixed_at: int, params: dict
) -> tuple[Stop, float, dict[str, Any]]:
    """CP-SAT (``events``) with each request's starts restricted to its allowed
    columns, which keep every schedule of integer objective ``<= fixed_at - 1``.

    Returns
    -------
    stop, bound, info
        CP-SAT's stop, the integer bound ``min(CP-SAT's bound, fixed_at)``
        (``fixed_at`` if no start survived or CP-SAT proved the domains empty)
        and CP-SAT's figures.
    """
    problem: SlotProblem = run.problem
    start = cols.completion - problem.output_tokens[cols.request]
    who, start = cols.request[allowed], start[allowed]
    if len(np.unique(who)) < len(problem):
        return Stop.FINISHED, float(fixed_at), {"finisher_columns": len(who)}
    lo = np.full(len(problem), np.iinfo(np.int64).max)
    hi = np.full(len(problem), np.iinfo(np.int64).min)
    np.minimum.at(lo, who, start)
    np.maximum.at(hi, who, start)
    built = build(problem, lo, hi)
    for j in np.flatnonzero(np.bincount(who, minlength=len(problem)) < hi - lo + 1):
        domain = cp_model.Domain.from_values(start[who == j].tolist())
        built.model.add_linear_expression_in_domain(built.start[j], domain)
    outcome = search_built(run, built, params, "bnc/cpsat")
    bound = math.inf if outcome.infeasible else outcome.bound()
    info = {**outcome.info(), "finisher_columns": len(who)}
    stop = Stop.FINISHED if outcome.infeasible else outcome.stop
    return stop, min(bound, float(fixed_at)), info
