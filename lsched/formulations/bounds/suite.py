"""Every lower bound lsched knows for one instance, each with the schedules it bounds.

The bounds are the specs of :data:`lsched.formulations.bounds.registry.BOUNDS`,
computed in the table's order (:func:`bound_report`); the registry's docstring
says which schedules each class is and which bounds a report lists. Each
:class:`Bound` found carries the :class:`~lsched.formulations.bounds.registry.Schedules`
its spec holds for, its *scope* as users see it (:attr:`Bound.scope`):

``any``
    Every schedule the evaluator can run on the deployment: online policies with
    chunked prefill or preemption, fixed tables, the slot and timed models. The
    closed forms of :mod:`lsched.formulations.bounds.work` (seconds) and
    :mod:`lsched.formulations.bounds.cluster` are of this kind, and so is the
    slot model's ``energy`` bound on a unit-slot profile (each token-emitting
    iteration holds at least the non-preemptive KV).
``slot``
    Non-preemptive schedules that prefill each prompt whole (the slot model of
    :mod:`lsched.formulations.slot`, and every policy run that neither preempts
    nor chunks). The ``sawtooth``, ``lagrangian`` and ``lp`` bounds use that
    structure (KV only grows between completions; one start slot per request), so
    a preemptive policy may beat them.
``recompute``
    Schedules of one colocated replica with chunked prefill and recompute
    preemption, without prefix cache, host tier or migration: the bucket LP
    (:mod:`lsched.formulations.bounds.bucket`), which counts the iterations a
    decode tail needs. It holds for the ``slot`` class too.

Orthogonally, each bound holds for runs without a prefix cache (every bound
computed from whole prompts) or with any prefix cache or none
(:attr:`Bound.cache`, ``"none"`` or ``"any"``): ``seconds.cached_work`` and
``seconds.cached_prefill_queue`` (:mod:`lsched.formulations.bounds.cached`) are
the only ones of the second kind; :func:`best_bound` takes the run's cache.
Likewise each holds for runs without migration only, or with any
(:attr:`Bound.migration`); a report on runs that move requests between replicas
(``migrates=True``) skips the first kind with the reason
(:class:`~lsched.formulations.bounds.registry.Migration`).

The slot bounds are computed only where slots are seconds: a unit-slot profile
(every iteration one second), one replica and integer arrivals, where the slot
model's objective equals the evaluator's. On other profiles with one replica,
the LP relaxation of the timed model (:func:`lsched.formulations.timed.milp.lp_bound`)
is the ``slot``-class bound, on small instances: its model grows with ``n``
times the horizon, at most ``sum_i o_i`` iterations.

On a cluster that is more than one colocated pool (pools of different profiles,
disaggregated prefill and decode), :func:`cluster_bound_report` gives the closed
forms of :mod:`lsched.formulations.bounds.cluster` (``cluster.<name>``, class
``any``: every policy and router on that cluster). Every bound states the
deployment it holds for (:attr:`Bound.holds_for`, e.g. ``colocated: 2 x
unit-slot``).

Nothing is dropped silently: :func:`bound_report` returns, next to the bounds it
computed, every other bound the table lists for the objective and deployment with
the reason it was not computed (:class:`~lsched.formulations.result.Skipped`:
time limit, out of scope, size, interrupted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lsched.checks import check_choice, check_int, check_time_limit, check_type
from lsched.cluster import Cluster
from lsched.errors import InputError
from lsched.formulations.bounds import registry
from lsched.formulations.bounds.context import BoundContext, one_colocated_pool
from lsched.formulations.bounds.registry import Cache, Preemption, Schedules
from lsched.formulations.bounds.work import OBJECTIVES
from lsched.formulations.result import Reason, Skipped
from lsched.instance import Instance
from lsched.interrupt import requested, session
from lsched.profile import DeploymentProfile

#: The scopes users see, one per schedule class (:class:`Bound`).
SCOPES: tuple[str, ...] = tuple(p.value for p in Preemption)
#: Largest instance whose LP relaxations (slot, timed) the suite solves by default.
LP_MAX_REQUESTS = 60


@dataclass(frozen=True)
class Bound:
    """One lower bound on the objective, in seconds.

    Attributes
    ----------
    name
        ``<model>.<bound>``, e.g. ``"seconds.work"`` or ``"slot.sawtooth"``.
    value
        The bound.
    schedules
        The schedules it holds for (its spec's,
        :class:`~lsched.formulations.bounds.registry.Schedules`).
    holds_for
        The deployment it holds for (:meth:`lsched.cluster.Cluster.describe`),
        e.g. ``"colocated: 2 x unit-slot"``.
    """

    name: str
    value: float
    schedules: Schedules
    holds_for: str = ""

    @property
    def scope(self) -> str:
        """``"any"``, ``"slot"`` or ``"recompute"`` (module docstring): the
        schedule class."""
        return self.schedules.preemption.value

    @property
    def cache(self) -> str:
        """``"none"`` or ``"any"``: the prefix caches of the runs it holds for
        (:class:`~lsched.formulations.bounds.registry.Cache`)."""
        return self.schedules.cache.value

    @property
    def migration(self) -> str:
        """``"none"`` or ``"any"``: whether it holds for runs that move requests
        between replicas (:class:`~lsched.formulations.bounds.registry.Migration`)."""
        return self.schedules.migration.value


@dataclass(frozen=True)
class BoundReport:
    """What :func:`bound_report` found.

    Attributes
    ----------
    bounds
        Every bound computed (finite), in the table's order.
    skipped
        Every bound listed that was not computed, with the reason
        (:class:`~lsched.formulations.result.Skipped`, kind ``"bound"``).
    """

    bounds: list[Bound]
    skipped: list[Skipped]


def _report(context: BoundContext) -> BoundReport:
    """Each spec of the table that ``context`` lists, computed or skipped with
    its reason (:mod:`~lsched.formulations.bounds.registry`, "Listing")."""
    found: list[Bound] = []
    skipped: list[Skipped] = []
    for spec in registry.BOUNDS:
        if not spec.listed(context):
            continue
        why = spec.why_not(context)
        if why is None and requested():
            why = Reason.INTERRUPTED, "stopped by the user"
        if why is None:
            value = spec.compute(context)
            if isinstance(value, tuple):
                why = value
            elif not math.isfinite(value):
                why = Reason.OUT_OF_SCOPE, "no finite value"
            else:
                found.append(Bound(spec.name, value, spec.schedules, context.holds_for))
        if why is not None:
            skipped.append(Skipped(spec.name, "bound", *why))
    return BoundReport(found, skipped)


def _check_arguments(
    instance: object, objective: object, lp_time_limit: object, lp_max_requests: object
) -> None:
    """InputError naming the first bad argument shared by the reports."""
    check_type(instance, "instance", Instance, "an Instance")
    check_choice(objective, "objective", OBJECTIVES)
    check_time_limit(lp_time_limit, "lp_time_limit", zero=True)
    check_int(lp_max_requests, "lp_max_requests", 0)


def _flag(migrates: object) -> bool:
    """``migrates`` checked: a bool (field ``migrates``)."""
    if not isinstance(migrates, bool):
        raise InputError(f"got {migrates!r}; expected true or false", field="migrates")
    return migrates


@session()
def bound_report(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str = "latency",
    *,
    replicas: int | None = None,
    lp_time_limit: float = 10.0,
    lp_max_requests: int = LP_MAX_REQUESTS,
    migrates: bool = False,
) -> BoundReport:
    """Every bound on ``objective``: those computed and, with the reason, the rest.

    Parameters are those of :func:`bound_suite`. Every bound the table lists for
    ``objective`` on one colocated pool is either in ``bounds`` or in
    ``skipped``. With ``migrates`` (runs that move requests between replicas)
    the bounds for runs without migration are skipped, out of scope. On a
    user's stop (Ctrl-C, :mod:`lsched.interrupt`) the bounds finished are kept
    and the rest listed as interrupted; an LP in progress stops at once.

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
    context = BoundContext(
        instance, objective, lp_time_limit, lp_max_requests,
        profile=profile, replicas=replicas, migrates=_flag(migrates),
    )  # fmt: skip
    return _report(context)


@session()
def cluster_bound_report(
    instance: Instance,
    cluster: Cluster,
    objective: str = "latency",
    *,
    lp_time_limit: float = 10.0,
    lp_max_requests: int = LP_MAX_REQUESTS,
    migrates: bool = False,
) -> BoundReport:
    """Every bound on ``objective`` for schedules on ``cluster``, and the rest with
    the reason; ``migrates`` as in :func:`bound_report`.

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
            migrates=migrates,
        )
    context = BoundContext(
        instance, objective, lp_time_limit, lp_max_requests,
        cluster=cluster, migrates=_flag(migrates),
    )  # fmt: skip
    return _report(context)


def bound_suite(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str = "latency",
    **options: Any,
) -> list[Bound]:
    """Every applicable bound on ``objective`` (``"latency"`` or ``"makespan"``).

    Parameters
    ----------
    instance, profile, objective, **options
        As :func:`bound_report` (``replicas``, ``lp_time_limit``,
        ``lp_max_requests``, ``migrates``).

    Returns
    -------
    list[Bound]
        Bounds in seconds, finite ones only, in a fixed order. The bounds not
        computed, and why, are in :func:`bound_report`'s ``skipped``.
    """
    return bound_report(instance, profile, objective, **options).bounds


def best_bound(bounds: list[Bound], scope: str = "slot", cache: str = "none") -> float:
    """The largest bound valid for the schedules of ``scope`` (:data:`SCOPES`;
    ``"slot"`` admits both kinds: a bound for any schedule holds for it) and for
    runs with ``cache`` (``"none"``: no prefix cache, every bound; ``"any"``: a
    prefix cache, only the bounds that see it)."""
    if scope not in SCOPES:
        raise InputError(f"got {scope!r}; expected one of {SCOPES}", field="scope")
    caches = tuple(c.value for c in Cache)
    if cache not in caches:
        raise InputError(f"got {cache!r}; expected one of {caches}", field="cache")
    wanted, run = Preemption(scope), Cache(cache)
    valid = [
        b.value
        for b in bounds
        if b.schedules.preemption.covers(wanted) and b.schedules.cache.covers(run)
    ]
    return max(valid, default=-math.inf)


__all__ = [
    "LP_MAX_REQUESTS",
    "SCOPES",
    "Bound",
    "BoundReport",
    "best_bound",
    "bound_report",
    "bound_suite",
    "cluster_bound_report",
]
