"""The timed model: the slot model's decisions, iterations priced by the cost model.

Request ``i`` starts (prefills its whole prompt) in iteration ``S_i`` and decodes
in the next ``o_i - 1`` iterations, under the slot model's per-iteration limits;
iteration ``k`` lasts ``t(phi_k)`` seconds (the profile's
:class:`~lsched.profile.IterationTime`) and starts when iteration ``k - 1`` has
ended and its new members have arrived. Objectives are total (weighted) latency
and makespan in seconds. The math is in :mod:`~lsched.formulations.timed.problem`
(data, exact times, the batch table the evaluator replays),
:mod:`~lsched.formulations.timed.milp` (Pyomo + HiGHS) and
:mod:`~lsched.formulations.timed.cpsat` (CP-SAT on integer time, with its rounding
bound), each split into its variables, constraints and objective;
:mod:`~lsched.formulations.timed.incumbent` gives the warm starts and the safe
start windows (:mod:`~lsched.formulations.timed.windows` the data of the
requests within them that both backends read), and
:mod:`~lsched.formulations.timed.model` what the one solve driver
(:mod:`lsched.formulations.driver`) needs to know of the model. Both
backends have the slot backends' ``solve(problem, *, time_limit, num_workers,
seed, initial_solution, on_progress, **params)`` and report the exact objective
of their schedule (:func:`timed_objective`); import them as ``from
lsched.formulations.timed import milp, cpsat``.
"""

from lsched.formulations.timed.problem import (
    OBJECTIVES,
    TimedProblem,
    TimedSchedule,
    check_start,
    compact,
    is_feasible,
    iteration_features,
    timed_objective,
    timed_schedule,
    to_batch_table,
)

__all__ = [
    "OBJECTIVES",
    "TimedProblem",
    "TimedSchedule",
    "check_start",
    "compact",
    "is_feasible",
    "iteration_features",
    "timed_objective",
    "timed_schedule",
    "to_batch_table",
]
