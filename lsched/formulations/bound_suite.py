"""Every lower bound lsched knows for one instance, each with the schedules it bounds.

A bound is only a bound *for a class of schedules*. Two classes matter here:

``any``
    Every schedule the evaluator can run on the deployment: online policies with
    chunked prefill or preemption, fixed tables, the slot and timed models. The
    closed forms of :mod:`lsched.formulations.work_bounds` (seconds) are of this
    kind, and so is the slot model's ``energy`` bound on a unit-slot profile (each
    token-emitting iteration holds at least the non-preemptive KV).
``slot``
    Non-preemptive schedules that prefill each prompt whole (the slot model of
    :mod:`lsched.formulations.slot`, and every policy run that neither preempts
    nor chunks). The ``sawtooth``, ``lagrangian`` and ``lp`` bounds use that
    structure (KV only grows between completions; one start slot per request), so
    a preemptive policy may beat them.

The slot bounds are computed only where slots are seconds: a unit-slot profile
(every iteration one second), one replica and integer arrivals, where the slot
model's objective equals the evaluator's. On other profiles with one replica,
the LP relaxation of the timed model (:func:`lsched.formulations.timed.milp.lp_bound`)
is the ``slot``-class bound, on small instances: its model grows with ``n``
times the horizon, at most ``sum_i o_i`` iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lsched.errors import InputError
from lsched.evaluator.fixed import check_unit_slots
from lsched.formulations import bounds as slot_bounds
from lsched.formulations import milp
from lsched.formulations.incumbent import best_heuristic
from lsched.formulations.slot import SlotProblem
from lsched.formulations.timed import TimedProblem
from lsched.formulations.timed import milp as timed_milp
from lsched.formulations.work_bounds import work_bounds
from lsched.instance import Instance
from lsched.profile import DeploymentProfile

#: Schedule classes a bound can hold for (module docstring).
SCOPES: tuple[str, ...] = ("any", "slot")
#: Largest instance whose slot LP relaxation the suite solves by default.
LP_MAX_REQUESTS = 60
#: Largest ``sum_i o_i`` (the timed model's horizon) whose timed LP the suite solves.
TIMED_LP_MAX_ITERATIONS = 400


@dataclass(frozen=True)
class Bound:
    """One lower bound on the objective, in seconds.

    Attributes
    ----------
    name
        ``<model>.<bound>``, e.g. ``"seconds.work"`` or ``"slot.sawtooth"``.
    value
        The bound.
    scope
        ``"any"`` or ``"slot"`` (module docstring).
    """

    name: str
    value: float
    scope: str


def slot_problem_in_seconds(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str,
    replicas: int,
) -> SlotProblem | None:
    """The slot problem whose objective is the evaluator's, or ``None``.

    That is the case on a unit-slot profile with one replica and integer arrivals.
    """
    try:
        check_unit_slots(profile)
    except InputError:
        return None
    arrival = instance.arrival_s
    if replicas != 1 or not np.all(arrival == np.floor(arrival)):
        return None
    return SlotProblem.from_instance(instance, profile, objective=objective)


def bound_suite(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str = "latency",
    *,
    replicas: int | None = None,
    lp_time_limit: float = 10.0,
    lp_max_requests: int = LP_MAX_REQUESTS,
) -> list[Bound]:
    """Every applicable bound on ``objective`` (``"latency"`` or ``"makespan"``).

    Parameters
    ----------
    instance, profile
        The requests and the deployment.
    objective
        ``"latency"`` (total E2E seconds) or ``"makespan"`` (seconds).
    replicas
        Number of replicas; the profile's by default.
    lp_time_limit
        Wall-clock seconds for the slot or timed LP relaxation.
    lp_max_requests
        Skip the LP above this many requests (its size grows with ``n`` times
        the horizon); the timed LP is also skipped above
        :data:`TIMED_LP_MAX_ITERATIONS` output tokens in all.

    Returns
    -------
    list[Bound]
        Bounds in seconds, finite ones only, in a fixed order.
    """
    replicas = profile.replicas if replicas is None else replicas
    found = [
        Bound(f"seconds.{name}", value, "any")
        for name, value in work_bounds(
            instance, profile, objective, replicas=replicas
        ).items()
    ]
    problem = slot_problem_in_seconds(instance, profile, objective, replicas)
    if problem is not None:
        found.append(Bound("slot.energy", slot_bounds.energy(problem), "any"))
        found.append(Bound("slot.sawtooth", slot_bounds.sawtooth(problem), "slot"))
        if objective == "latency":
            _, start = best_heuristic(problem)
            upper = problem.integer_objective(start)
            value = slot_bounds.lagrangian(problem, upper)
            found.append(Bound("slot.lagrangian", value, "slot"))
        if len(instance) <= lp_max_requests:
            value = milp.lp_bound(problem, time_limit=lp_time_limit)
            found.append(Bound("slot.lp", value, "slot"))
    elif (
        replicas == 1
        and len(instance) <= lp_max_requests
        and instance.output_tokens.sum() <= TIMED_LP_MAX_ITERATIONS
    ):
        try:
            timed = TimedProblem.from_instance(instance, profile, objective=objective)
        except InputError:
            pass  # e.g. a prompt over the token budget: no slot schedule to bound
        else:
            value = timed_milp.lp_bound(timed, time_limit=lp_time_limit)
            found.append(Bound("timed.lp", value, "slot"))
    return [b for b in found if math.isfinite(b.value)]


def best_bound(bounds: list[Bound], scope: str = "slot") -> float:
    """The largest bound valid for ``scope`` (``"slot"`` admits both kinds)."""
    if scope not in SCOPES:
        raise InputError(f"got {scope!r}; expected one of {SCOPES}", field="scope")
    valid = [b.value for b in bounds if scope == "slot" or b.scope == "any"]
    return max(valid, default=-math.inf)


__all__ = [
    "LP_MAX_REQUESTS",
    "SCOPES",
    "TIMED_LP_MAX_ITERATIONS",
    "Bound",
    "best_bound",
    "bound_suite",
]
