"""What a bound is computed from: one instance, one objective and one deployment.

:class:`BoundContext` is the argument of every bound's ``compute`` and
``applies`` in :mod:`lsched.formulations.bounds.registry`. The deployment is one
colocated pool (a profile and its replica count: ``--model P --replicas C``) or a
cluster beyond it (pools of different profiles, disaggregated prefill and
decode). What several bounds share is computed once, on first use: the closed
forms of one pool and of a cluster (each a dict of every bound of its module),
the slot problem where slots are seconds, the timed problem.

It also says why the offline models do not describe a deployment
(:func:`why_not_slots`, :func:`why_not_one_replica`): their bounds are then
listed as out of scope with that line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lsched.cluster import Cluster, Pool, colocated_topology
from lsched.errors import InputError
from lsched.evaluator.fixed import check_unit_slots
from lsched.formulations.bounds.cached import cached_work_bounds
from lsched.formulations.bounds.cluster import cluster_bounds
from lsched.formulations.bounds.work import work_bounds
from lsched.formulations.slot import SlotProblem
from lsched.formulations.timed import TimedProblem
from lsched.instance import Instance
from lsched.profile import DeploymentProfile


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


def one_colocated_pool(cluster: Cluster) -> Pool | None:
    """The cluster's pool if it is one colocated pool (``--model P --replicas C``)."""
    if len(cluster.pools) == 1 and not cluster.disaggregated:
        return cluster.pools[0]
    return None


def why_not_one_replica(cluster: Cluster) -> str:
    """What makes ``cluster`` more than one colocated pool, in a few words."""
    if cluster.disaggregated:
        return "a disaggregated cluster (prefill and decode pools)"
    return f"{len(cluster.pools)} pools"


@dataclass(frozen=True)
class BoundContext:
    """One instance, objective and deployment, with what its bounds share.

    Give ``profile`` (and ``replicas``) for one colocated pool, or ``cluster``
    for a cluster beyond one colocated pool (:func:`one_colocated_pool` is
    ``None``); not both.

    Attributes
    ----------
    instance
        The requests.
    objective
        ``"latency"`` (total E2E seconds) or ``"makespan"`` (seconds).
    lp_time_limit
        Wall-clock seconds for each LP relaxation.
    lp_max_requests
        Largest instance whose LP relaxations are solved.
    profile, replicas
        One colocated pool: its profile and replica count.
    cluster
        A cluster beyond one colocated pool.
    migrates
        Whether the runs bounded move requests between replicas (migration,
        co-migration): the bounds that assume each request stays where it was
        routed are then skipped
        (:class:`~lsched.formulations.bounds.registry.Migration`).
    """

    instance: Instance
    objective: str
    lp_time_limit: float
    lp_max_requests: int
    profile: DeploymentProfile | None = None
    replicas: int = 1
    cluster: Cluster | None = None
    migrates: bool = False

    def __post_init__(self) -> None:
        if (self.profile is None) == (self.cluster is None):
            raise InputError(
                "expected a profile or a cluster, and not both", field="cluster"
            )

    @cached_property
    def holds_for(self) -> str:
        """The deployment in one line (:meth:`~lsched.cluster.Cluster.describe`)."""
        if self.cluster is not None:
            return self.cluster.describe()
        assert self.profile is not None
        return colocated_topology(self.profile.name, self.replicas)

    @cached_property
    def seconds_values(self) -> dict[str, float]:
        """:func:`~lsched.formulations.bounds.work.work_bounds` on the pool."""
        assert self.profile is not None
        return work_bounds(
            self.instance, self.profile, self.objective, replicas=self.replicas
        )

    @cached_property
    def cached_values(self) -> dict[str, float]:
        """:func:`~lsched.formulations.bounds.cached.cached_work_bounds` on the
        pool (the instance has prefix hashes)."""
        assert self.profile is not None
        return cached_work_bounds(
            self.instance, self.profile, self.objective, replicas=self.replicas
        )

    @cached_property
    def cluster_values(self) -> dict[str, float]:
        """:func:`~lsched.formulations.bounds.cluster.cluster_bounds`."""
        assert self.cluster is not None
        return cluster_bounds(self.instance, self.cluster, self.objective)

    @cached_property
    def why_not_one_replica(self) -> str | None:
        """Why the models of one colocated replica (slot, timed) do not describe
        this cluster (one line), or ``None`` on one colocated pool."""
        if self.cluster is None:
            return None
        return (
            f"{why_not_one_replica(self.cluster)}; the slot and timed models are "
            "of one colocated replica"
        )

    @cached_property
    def why_not_slots(self) -> str | None:
        """Why slots are not seconds here (:func:`why_not_slots`; on a cluster,
        :attr:`why_not_one_replica`), or ``None`` where they are."""
        if self.why_not_one_replica is not None:
            return self.why_not_one_replica
        assert self.profile is not None
        return why_not_slots(self.instance, self.profile, self.replicas)

    @cached_property
    def slot_problem(self) -> SlotProblem:
        """The slot problem, where slots are seconds (:attr:`why_not_slots`)."""
        assert self.profile is not None and self.why_not_slots is None
        return SlotProblem.from_instance(
            self.instance, self.profile, objective=self.objective
        )

    @cached_property
    def timed_problem(self) -> TimedProblem | InputError:
        """The timed problem on the pool, or the error that refused it (e.g. a
        prompt over the token budget)."""
        assert self.profile is not None
        try:
            return TimedProblem.from_instance(
                self.instance, self.profile, objective=self.objective
            )
        except InputError as error:
            return error


__all__ = [
    "BoundContext",
    "one_colocated_pool",
    "slot_problem_in_seconds",
    "why_not_one_replica",
    "why_not_slots",
]
