"""Slot schedules over several replicas: the unit-slot problem of an instance, and
the two independent checks of a schedule.

Every multi-replica slot schedule of :mod:`lsched.formulations.replicas` is checked
replica by replica by the evaluator's independent scorer
(:func:`feasible_on_replicas`) and replayed through
:func:`lsched.evaluator.fixed.replay_start_slots` (:func:`replayed_objective`); the
replayed objective is in ``info["replayed_objective"]``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.evaluator.fixed import check_unit_slots, replay_start_slots
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.incumbent import is_feasible
from lsched.instance import Instance
from lsched.profile import DeploymentProfile

__all__ = ["feasible_on_replicas", "replayed_objective", "unit_problem"]

IntArray = npt.NDArray[np.int64]


def unit_problem(
    instance: Instance, profile: DeploymentProfile, objective: str
) -> SlotProblem:
    """The slot problem of ``instance`` on a unit-slot ``profile``.

    Raises
    ------
    InputError
        If the profile is not unit-slot, or on a bad objective.
    """
    check_unit_slots(profile)
    return SlotProblem.from_instance(instance, profile, objective=objective)


def feasible_on_replicas(
    problem: SlotProblem, start: IntArray, where: IntArray, replicas: int
) -> bool:
    """Whether the start slots ``start`` keep every slot-model rule on each
    replica (``where``: replica id per request)."""
    return all(
        is_feasible(problem.subproblem(ids), start[ids])
        for c in range(replicas)
        if len(ids := np.flatnonzero(where == c))
    )


def replayed_objective(
    problem: SlotProblem, start: IntArray, where: IntArray, replicas: int
) -> float:
    """The objective of the schedule as the evaluator scores its replay."""
    result = replay_start_slots(
        problem.unit_instance(),
        problem.unit_profile(),
        start,
        replicas=replicas,
        assignment=where,
    )
    first = result.requests["first_token_s"].to_numpy()
    done = result.requests["completion_s"].to_numpy()
    a, w = problem.arrival, problem.weight
    if problem.objective == "latency":
        return float(np.dot(w, done - a))
    if problem.objective == "ttft":
        return float(np.dot(w, first - a))
    return float(done.max() - a.min())
