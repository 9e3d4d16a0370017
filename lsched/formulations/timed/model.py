"""The timed model as the solve driver (:mod:`lsched.formulations.driver`) sees it.

A schedule is a start iteration per request, scored in seconds by the exact
replay :func:`~lsched.formulations.timed.problem.timed_objective` and checked by
:func:`~lsched.formulations.timed.problem.is_feasible`. The warm start is
:func:`lsched.formulations.timed.incumbent.starting_schedule` (canonical: the
identical requests in position order). The objective is continuous, so a proven
bound implies nothing stronger (no rounding), and the model has no closed-form
bound of its own (the work bounds of :mod:`lsched.formulations.bounds.work` are
the bound suite's, not the solver's).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.formulations.driver import Model
from lsched.formulations.timed.incumbent import starting_schedule
from lsched.formulations.timed.problem import TimedProblem, is_feasible, timed_objective

IntArray = npt.NDArray[np.int64]


def start(
    problem: TimedProblem, initial_solution: npt.ArrayLike | None
) -> tuple[str, IntArray]:
    """The warm start's source and (canonical) start iterations."""
    source, schedule, _ = starting_schedule(problem, initial_solution)
    return source, schedule


#: The timed model: start iterations scored in seconds by :func:`timed_objective`.
TIMED = Model(
    name="timed",
    problem_type=TimedProblem,
    start=start,
    objective=timed_objective,
    is_feasible=is_feasible,
)

__all__ = ["TIMED", "start"]
