"""The slot model as the solve driver (:mod:`lsched.formulations.driver`) sees it.

A schedule is a start slot per request. Its objective
(:meth:`SlotProblem.objective_value`) is an integer plus the constant
:attr:`SlotProblem.objective_offset`, so a proven bound ``z`` implies
``offset + ceil(z - offset - 1e-6)`` (the ``1e-6`` absorbs a solver's floating
point). The free bound is :func:`lsched.formulations.bounds.slot.closed_form`.
"""

from __future__ import annotations

import math

from lsched.formulations.bounds.slot import closed_form
from lsched.formulations.driver import Model
from lsched.formulations.slot.incumbent import is_feasible, starting_schedule
from lsched.formulations.slot.problem import SlotProblem


def round_bound(problem: SlotProblem, bound: float) -> float:
    """The integer objective's bound implied by ``bound`` (module docstring)."""
    if not math.isfinite(bound):
        return bound
    offset = problem.objective_offset
    return offset + math.ceil(bound - offset - 1e-6)


#: The slot model: start slots scored by :meth:`SlotProblem.objective_value`.
SLOT = Model(
    name="slot",
    problem_type=SlotProblem,
    start=starting_schedule,
    objective=lambda problem, start: problem.objective_value(start),
    is_feasible=is_feasible,
    free_bound=closed_form,
    round_bound=round_bound,
)
