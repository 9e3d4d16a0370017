"""Every lower bound lsched knows for one instance, each with the schedules it bounds.

A bound is only a bound *for a class of schedules*. Two classes matter here:

``any``
    Every schedule the evaluator can run on the deployment: online policies with
    chunked prefill or preemption, fixed tables, the slot and timed models. The
    closed forms of :mod:`lsched.formulations.bounds.work` (seconds) are of this
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

On a cluster that is more than one colocated pool (pools of different profiles,
disaggregated prefill and decode), :func:`cluster_bound_report` gives the closed
forms of :mod:`lsched.formulations.bounds.cluster` (``cluster.<name>``, class
``any``: every policy and router on that cluster). Every bound states the topology
it holds for (:attr:`Bound.holds_for`, e.g. ``colocated: 2 x unit-slot``).

Nothing is dropped silently: :func:`bound_report` returns, next to the bounds it
computed, every other bound the suite knows for the objective with the reason it
was not computed (:class:`~lsched.formulations.result.Skipped`: time limit, out of
scope, size, interrupted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lsched.checks import check_choice, check_int, check_time_limit, check_type
from lsched.cluster import Cluster, Pool, colocated_topology
from lsched.errors import InputError
from lsched.evaluator.fixed import check_unit_slots
from lsched.formulations.bounds import slot as slot_bounds
from lsched.formulations.bounds.cluster import CLUSTER_BOUNDS, cluster_bounds
from lsched.formulations.bounds.work import OBJECTIVES, work_bounds
from lsched.formulations.result import Reason, Skipped
from lsched.formulations.slot import SlotProblem, milp
from lsched.formulations.slot.incumbent import best_heuristic
from lsched.formulations.timed import TimedProblem
from lsched.formulations.timed import milp as timed_milp
from lsched.instance import Instance
from lsched.interrupt import requested, session
from lsched.profile import DeploymentProfile

#: Schedule classes a bound can hold for (module docstring).
SCOPES: tuple[str, ...] = ("any", "slot")
#: The slot model's bounds, computed where slots are seconds.
SLOT_BOUNDS: tuple[str, ...] = (
    "slot.energy",
    "slot.sawtooth",
    "slot.lagrangian",
    "slot.lp",
)
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
    holds_for
        The topology it holds for (:meth:`lsched.cluster.Cluster.describe`), e.g.
        ``"colocated: 2 x unit-slot"``.
    """

    name: str
    value: float
    scope: str
    holds_for: str = ""


def why_not_slots(
    instance: Instance, profile: DeploymentProfile, replicas: int
) -> str | None:
    """Why slots are not seconds here (one line), or ``None`` where they are.

    Slots are seconds on a unit-slot profile with one replica and integer arrivals.
    """
    try:
        check_unit_slots(profile)
    except InputError:
        return f"profile {profile.name!r} is not unit-slot"
    if replicas != 1:
        return f"{replicas} replicas; the slot model has one"
    arrival = instance.arrival_s
    if not np.all(arrival == np.floor(arrival)):
        return "arrivals are not whole seconds"
    return None


def slot_problem_in_seconds(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str,
    replicas: int,
) -> SlotProblem | None:
    """The slot problem whose objective is the evaluator's, or ``None``.

    That is the case on a unit-slot profile with one replica and integer arrivals
    (:func:`why_not_slots`).
    """
    if why_not_slots(instance, profile, replicas) is not None:
        return None
    return SlotProblem.from_instance(instance, profile, objective=objective)


@dataclass(frozen=True)
class BoundReport:
    """What :func:`bound_report` found.

    Attributes
    ----------
    bounds
        Every bound computed (finite), in a fixed order.
    skipped
        Every bound the suite knows that was not computed, with the reason
        (:class:`~lsched.formulations.result.Skipped`, kind ``"bound"``).
    """

    bounds: list[Bound]
    skipped: list[Skipped]


class _Collector:
    """The bounds found, each tagged with ``topology``, and those skipped."""

    def __init__(self, topology: str) -> None:
        self.topology = topology
        self.found: list[Bound] = []
        self.skipped: list[Skipped] = []

    def skip(self, name: str, reason: Reason, detail: str) -> None:
        self.skipped.append(Skipped(name, "bound", reason, detail))

    def stopped(self, name: str) -> bool:
        """Whether the user stopped the work (:mod:`lsched.interrupt`): then
        ``name`` is listed as interrupted, not computed."""
        if not requested():
            return False
        self.skip(name, Reason.INTERRUPTED, "stopped by the user")
        return True

    def add(self, name: str, value: float, scope: str, otherwise: Skipped) -> None:
        """Keep a finite ``value``; else skip it as ``otherwise`` says."""
        if math.isfinite(value):
            self.found.append(Bound(name, value, scope, self.topology))
        else:
            self.skipped.append(otherwise)


def _stopped(name: str, time_limit: float) -> Skipped:
    """The record of an LP that gave no value: the user's stop or its limit."""
    if requested():
        return Skipped(name, "bound", Reason.INTERRUPTED, "stopped by the user")
    return Skipped(
        name,
        "bound",
        Reason.TIME_LIMIT,
        f"the LP was not solved within its limit of {time_limit:g} s",
    )


def _check_arguments(
    instance: object, objective: object, lp_time_limit: object, lp_max_requests: object
) -> None:
    """InputError naming the first bad argument shared by the reports."""
    check_type(instance, "instance", Instance, "an Instance")
    check_choice(objective, "objective", OBJECTIVES)
    check_time_limit(lp_time_limit, "lp_time_limit", zero=True)
    check_int(lp_max_requests, "lp_max_requests", 0)


@session()
def bound_report(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str = "latency",
    *,
    replicas: int | None = None,
    lp_time_limit: float = 10.0,
    lp_max_requests: int = LP_MAX_REQUESTS,
) -> BoundReport:
    """Every bound on ``objective``: those computed and, with the reason, the rest.

    Parameters are those of :func:`bound_suite`. Every bound name the suite knows
    for ``objective`` is either in ``bounds`` or in ``skipped``. On a user's stop
    (Ctrl-C, :mod:`lsched.interrupt`) the bounds finished are kept and the rest
    listed as interrupted; an LP in progress stops at once.

    Raises
    ------
    InputError
        On an argument of the wrong type or out of its range
        (:mod:`lsched.checks`); ``lp_time_limit`` may be 0 (every LP skipped).
    """
    check_type(profile, "profile", DeploymentProfile, "a DeploymentProfile")
    _check_arguments(instance, objective, lp_time_limit, lp_max_requests)
    replicas = (
        profile.replicas if replicas is None else check_int(replicas, "replicas", 1)
    )
    report = _Collector(colocated_topology(profile.name, replicas))
    add, skip = report.add, report.skip

    names = ("critical_path", "work")
    names += ("prefill_queue",) if objective == "latency" else ()
    if requested():
        for name in names:
            report.stopped(f"seconds.{name}")
    else:
        work = work_bounds(instance, profile, objective, replicas=replicas)
        missing = "the cost model has no usable under-estimator"
        _closed_forms(report, "seconds", names, work, missing)
    why_not = why_not_slots(instance, profile, replicas)
    if why_not is not None:
        for name in SLOT_BOUNDS:
            skip(name, Reason.OUT_OF_SCOPE, why_not)
    else:
        problem = SlotProblem.from_instance(instance, profile, objective=objective)
        no_value = "no finite value on this instance"

        def none(name: str) -> Skipped:
            return Skipped(name, "bound", Reason.OUT_OF_SCOPE, no_value)

        if not report.stopped("slot.energy"):
            value = slot_bounds.energy(problem)
            add("slot.energy", value, "any", none("slot.energy"))
        if not report.stopped("slot.sawtooth"):
            value = slot_bounds.sawtooth(problem)
            add("slot.sawtooth", value, "slot", none("slot.sawtooth"))
        if objective != "latency":
            skip(
                "slot.lagrangian",
                Reason.OUT_OF_SCOPE,
                f"defined for latency, not {objective}",
            )
        elif not report.stopped("slot.lagrangian"):
            _, start = best_heuristic(problem)
            upper = problem.integer_objective(start)
            value = slot_bounds.lagrangian(problem, upper)
            add("slot.lagrangian", value, "slot", none("slot.lagrangian"))
        if len(instance) > lp_max_requests:
            skip(
                "slot.lp",
                Reason.SIZE,
                f"{len(instance)} requests > {lp_max_requests}",
            )
        elif not report.stopped("slot.lp"):
            value = milp.lp_bound(problem, time_limit=lp_time_limit)
            add("slot.lp", value, "slot", _stopped("slot.lp", lp_time_limit))
    _timed_lp(
        instance, profile, objective, replicas, why_not, lp_time_limit,
        lp_max_requests, report,
    )  # fmt: skip
    return BoundReport(report.found, report.skipped)


def _closed_forms(
    report: _Collector,
    model: str,
    names: tuple[str, ...],
    values: dict[str, float],
    missing: str,
) -> None:
    """Each closed-form bound ``<model>.<name>`` (scope ``any``) or its reason."""
    for name in names:
        label = f"{model}.{name}"
        if name not in values:
            report.skip(label, Reason.OUT_OF_SCOPE, missing)
            continue
        report.add(
            label,
            values[name],
            "any",
            Skipped(label, "bound", Reason.OUT_OF_SCOPE, "no finite value"),
        )


def one_colocated_pool(cluster: Cluster) -> Pool | None:
    """The cluster's pool if it is one colocated pool (``--model P --replicas C``)."""
    if len(cluster.pools) == 1 and not cluster.disaggregated:
        return cluster.pools[0]
    return None


def cluster_bound_report(
    instance: Instance,
    cluster: Cluster,
    objective: str = "latency",
    *,
    lp_time_limit: float = 10.0,
    lp_max_requests: int = LP_MAX_REQUESTS,
) -> BoundReport:
    """Every bound on ``objective`` for schedules on ``cluster``, and the rest with
    the reason.

    One colocated pool is :func:`bound_report` on its profile and replica count.
    Any other cluster has the closed forms of
    :mod:`lsched.formulations.bounds.cluster` (``cluster.<name>``, scope ``any``,
    for every policy and router); the slot and timed models, of one colocated
    replica, are listed as out of scope. Every bound states the topology it holds
    for (:meth:`~lsched.cluster.Cluster.describe`).
    """
    check_type(cluster, "cluster", Cluster, "a Cluster")
    _check_arguments(instance, objective, lp_time_limit, lp_max_requests)
    pool = one_colocated_pool(cluster)
    if pool is not None:
        return bound_report(
            instance,
            pool.profile,
            objective,
            replicas=pool.replicas,
            lp_time_limit=lp_time_limit,
            lp_max_requests=lp_max_requests,
        )
    report = _Collector(cluster.describe())
    values = cluster_bounds(instance, cluster, objective)
    missing = "no pool's cost model has a usable under-estimator"
    _closed_forms(report, "cluster", CLUSTER_BOUNDS, values, missing)
    why = (
        f"{why_not_one_replica(cluster)}; the slot and timed models are of one "
        "colocated replica"
    )
    for name in (*SLOT_BOUNDS, "timed.lp"):
        report.skip(name, Reason.OUT_OF_SCOPE, why)
    return BoundReport(report.found, report.skipped)


def why_not_one_replica(cluster: Cluster) -> str:
    """What makes ``cluster`` more than one colocated pool, in a few words."""
    if cluster.disaggregated:
        return "a disaggregated cluster (prefill and decode pools)"
    return f"{len(cluster.pools)} pools"


def _timed_lp(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str,
    replicas: int,
    why_not: str | None,
    lp_time_limit: float,
    lp_max_requests: int,
    report: _Collector,
) -> None:
    """``timed.lp``, computed where slots are not seconds, or its reason."""
    add, skip = report.add, report.skip
    name = "timed.lp"
    iterations = int(instance.output_tokens.sum())
    if why_not is None:
        skip(name, Reason.OUT_OF_SCOPE, "slots are seconds here: slot.lp is this LP")
    elif replicas != 1:
        skip(name, Reason.OUT_OF_SCOPE, f"{replicas} replicas; the timed model has one")
    elif len(instance) > lp_max_requests:
        skip(name, Reason.SIZE, f"{len(instance)} requests > {lp_max_requests}")
    elif iterations > TIMED_LP_MAX_ITERATIONS:
        skip(
            name,
            Reason.SIZE,
            f"{iterations} output tokens > {TIMED_LP_MAX_ITERATIONS}",
        )
    else:
        try:
            timed = TimedProblem.from_instance(instance, profile, objective=objective)
        except InputError as error:  # e.g. a prompt over the token budget
            skip(name, Reason.OUT_OF_SCOPE, str(error))
        else:
            if not report.stopped(name):
                value = timed_milp.lp_bound(timed, time_limit=lp_time_limit)
                add(name, value, "slot", _stopped(name, lp_time_limit))


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
        Bounds in seconds, finite ones only, in a fixed order. The bounds not
        computed, and why, are in :func:`bound_report`'s ``skipped``.
    """
    return bound_report(
        instance,
        profile,
        objective,
        replicas=replicas,
        lp_time_limit=lp_time_limit,
        lp_max_requests=lp_max_requests,
    ).bounds


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
    "BoundReport",
    "best_bound",
    "bound_report",
    "bound_suite",
    "cluster_bound_report",
    "one_colocated_pool",
    "slot_problem_in_seconds",
    "why_not_one_replica",
    "why_not_slots",
]
