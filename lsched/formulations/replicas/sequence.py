"""Sequencing a fixed assignment: each replica runs its own requests.

Sequencing (:func:`sequence`, :func:`sequence_slots`)
-----------------------------------------------------
:func:`sequence` replays the instance with the assignment (static dispatch) under
each given policy in :func:`lsched.evaluator.simulate` and keeps the policy with the
smallest makespan. :func:`sequence_slots` (``unit-slot`` profiles) solves the slot
model of every replica's requests (:mod:`lsched.formulations.slot`, CP-SAT) and
replays the combined start slots through the evaluator.

The decomposition (:func:`decompose`) is Pang et al.'s two stages in the slot
model: it assigns by KV area (the unit-slot load times ``M``, integers, so the bin
packing is exact; :func:`~lsched.formulations.replicas.assign`) and solves each
replica's slot model (:func:`sequence_slots`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.errors import InputError
from lsched.evaluator import assign_replicas, simulate
from lsched.formulations.replicas.assignment import assign
from lsched.formulations.replicas.loads import kv_areas
from lsched.formulations.replicas.results import (
    AssignmentResult,
    ReplicaSchedule,
    SequenceResult,
)
from lsched.formulations.replicas.slots import (
    feasible_on_replicas,
    replayed_objective,
    unit_problem,
)
from lsched.formulations.result import combined_status
from lsched.formulations.slot import cpsat
from lsched.instance import Instance
from lsched.policies import PolicySpec, parse_policy
from lsched.profile import DeploymentProfile

__all__ = ["decompose", "sequence", "sequence_slots"]

IntArray = npt.NDArray[np.int64]


def _assignment_of(
    instance: Instance,
    profile: DeploymentProfile,
    assignment: AssignmentResult | npt.ArrayLike,
    replicas: int | None,
) -> tuple[IntArray, int]:
    """The replica of every request, checked, and ``C`` (the assignment's, else
    the profile's)."""
    if isinstance(assignment, AssignmentResult):
        if replicas is not None and replicas != assignment.replicas:
            raise InputError(
                f"got {replicas}; the assignment is over {assignment.replicas}",
                field="replicas",
            )
        replicas, assignment = assignment.replicas, assignment.assignment
    replicas = profile.replicas if replicas is None else replicas
    return assign_replicas(instance, replicas, assignment), replicas


def sequence(
    instance: Instance,
    profile: DeploymentProfile,
    assignment: AssignmentResult | npt.ArrayLike,
    *,
    policy: str | PolicySpec | Sequence[str | PolicySpec] = "mc-sf",
    replicas: int | None = None,
) -> SequenceResult:
    """Run every replica's requests under each policy; keep the best makespan.

    Parameters
    ----------
    instance
        The requests. Length-aware policies (``mc-sf``, ``sjf``, ...) read
        ``predicted_output_tokens``; attach them first (e.g.
        :func:`lsched.predictors.oracle`).
    profile
        The deployment.
    assignment
        An :class:`AssignmentResult` or one replica id per request.
    policy
        A policy, or several to choose from.
    replicas
        ``C``; the assignment's, else the profile's.

    Returns
    -------
    SequenceResult
        Scored by :func:`lsched.evaluator.simulate` with static dispatch.

    Raises
    ------
    InputError
        On an empty policy list, a bad assignment or a policy that needs
        predictions the instance lacks.
    """
    where, replicas = _assignment_of(instance, profile, assignment, replicas)
    policies = [policy] if isinstance(policy, str | PolicySpec) else list(policy)
    if not policies:
        raise InputError("expected at least one policy", field="policy")
    specs = [parse_policy(p) if isinstance(p, str) else p for p in policies]
    runs = [
        simulate(
            instance, profile, spec, replicas=replicas, assignment=where,
            dispatch="static",
        )
        for spec in specs
    ]  # fmt: skip
    best = min(range(len(runs)), key=lambda k: runs[k].metrics["makespan_s"])
    chosen = runs[best]
    return SequenceResult(
        policy=chosen.policy,
        makespan_s=float(chosen.metrics["makespan_s"]),
        busy_fraction=float(chosen.metrics["busy_fraction"]),
        assignment=where,
        replicas=replicas,
        table=pd.concat([r.metrics_frame for r in runs]),
        simulation=chosen,
    )


def sequence_slots(
    instance: Instance,
    profile: DeploymentProfile,
    assignment: AssignmentResult | npt.ArrayLike,
    *,
    replicas: int | None = None,
    objective: str = "makespan",
    time_limit: float = 10.0,
    num_workers: int = 2,
    seed: int = 0,
) -> ReplicaSchedule:
    """Solve the slot model of every replica's requests (CP-SAT), then combine.

    Parameters
    ----------
    instance
        The requests, arrivals in slots.
    profile
        A unit-slot profile (``load_profile("unit-slot").replace(
        kv_capacity_tokens=M)``).
    assignment
        An :class:`AssignmentResult` or one replica id per request.
    replicas
        ``C``; the assignment's, else the profile's.
    objective
        ``"makespan"``, ``"latency"`` or ``"ttft"``.
    time_limit
        Seconds per replica's solve.
    num_workers, seed
        CP-SAT's.

    Returns
    -------
    ReplicaSchedule
        ``OPTIMAL`` when every replica is solved to optimality (optimal for this
        assignment); ``bound`` bounds the schedules with this assignment.

    Raises
    ------
    InputError
        If the profile is not unit-slot, or on a bad assignment.
    """
    began = time.monotonic()
    problem = unit_problem(instance, profile, objective)
    where, replicas = _assignment_of(instance, profile, assignment, replicas)
    start = np.zeros(len(problem), dtype=np.int64)
    bounds, statuses = [], []
    for c in range(replicas):
        ids = np.flatnonzero(where == c)
        if len(ids) == 0:
            continue
        sub = problem.subproblem(ids)
        result = cpsat.solve(
            sub, time_limit=time_limit, num_workers=num_workers, seed=seed
        )
        assert result.start is not None  # a feasible incumbent always exists
        start[ids] = result.start
        bounds.append(result.bound - sub.objective_offset)
        statuses.append(result.status)
    integer_bound = max(bounds) if objective == "makespan" else sum(bounds)
    integer_bound = min(integer_bound, problem.integer_objective(start))
    info = {
        "replayed_objective": replayed_objective(problem, start, where, replicas),
        "feasible": feasible_on_replicas(problem, start, where, replicas),
        "replica_status": [s.value for s in statuses],
    }
    return ReplicaSchedule(
        status=combined_status(statuses),
        objective=problem.objective_value(start),
        bound=integer_bound + problem.objective_offset,
        runtime_s=time.monotonic() - began,
        start=start,
        assignment=where,
        replicas=replicas,
        solver="cpsat/per-replica",
        info=info,
    )


def decompose(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    objective: str = "makespan",
    backend: str = "cpsat",
    time_limit: float = 10.0,
    num_workers: int = 2,
    seed: int = 0,
) -> ReplicaSchedule:
    """Pang et al.'s two stages in the slot model: bin packing by KV area, then
    each replica's slot optimum.

    Parameters
    ----------
    instance, profile
        As :func:`sequence_slots` (unit-slot profile).
    replicas
        ``C``.
    objective
        Slot-model objective of the second stage.
    backend
        Of the assignment (:func:`assign`).
    time_limit
        Seconds for the assignment, and again per replica's solve.
    num_workers, seed
        The solvers'.

    Returns
    -------
    ReplicaSchedule
        ``info["assignment"]`` holds the :class:`AssignmentResult`.
    """
    began = time.monotonic()
    problem = unit_problem(instance, profile, objective)
    area = kv_areas(instance, problem.block_tokens)
    packing = assign(
        instance, profile, replicas, backend=backend, time_limit=time_limit,
        num_workers=num_workers, seed=seed, load=area,
    )  # fmt: skip
    schedule = sequence_slots(
        instance, profile, packing, objective=objective, time_limit=time_limit,
        num_workers=num_workers, seed=seed,
    )  # fmt: skip
    return ReplicaSchedule(
        status=schedule.status,
        objective=schedule.objective,
        bound=schedule.bound,
        runtime_s=time.monotonic() - began,
        start=schedule.start,
        assignment=schedule.assignment,
        replicas=replicas,
        solver=f"{packing.solver}+cpsat/per-replica",
        info=schedule.info | {"assignment": packing},
    )
