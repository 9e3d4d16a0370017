"""The joint slot model (:func:`solve_joint`): replica and start slot of every
request together, to measure what the two-stage decomposition loses
(:func:`decomposition_loss`).

Its data and what the solve driver (:mod:`lsched.formulations.driver`) sees of it
are in :mod:`.model`, its CP-SAT backend (variables, constraints, objective) in
:mod:`.cpsat`.

The slot model of :mod:`lsched.formulations.slot` with ``C`` replicas: start slot
``S_i >= r_i`` and replica booleans ``y_ic`` (``sum_c y_ic = 1``); request ``i`` runs
in slots ``S_i .. S_i + o_i - 1`` of its replica, holding ``k_ij = ceil((s_i + j) /
b)`` blocks in slot ``S_i + j``, and for every replica ``c`` and slot ``t``::

    sum_{i : y_ic = 1, S_i <= t < S_i + o_i} k_{i, t - S_i}  <= M

(and the batch cap and token budget likewise, per replica). CP-SAT model: the KV
staircase of request ``i`` is one optional fixed-size interval ``[S_i + j, S_i +
o_i)`` per step ``j`` where ``k_ij`` rises, present iff ``y_ic``, with demand the rise,
and one cumulative of capacity ``M`` per replica: exactly the rule above (the
``interval`` formulation of :mod:`lsched.formulations.slot.cpsat.build`, made optional).
Objectives as in the slot model (makespan ``max_i (S_i + o_i) - min_i a_i``, total
latency, total TTFT). Symmetry: replicas are ordered by first use in position order
(``y_kc <= sum_{k' < k} y_{k',c-1}``), and identical requests start in position order;
both hold together in some optimum (sort each identical group's (start, replica)
pairs by start, then relabel replicas by first use). Start domains end at the safe
horizon ``max_i r_i + sum_i o_i``: in an optimal schedule no replica has an empty slot
after the last release (closing it keeps every rule and no completion gets later),
so every completion is at most that. For the makespan objective the domains are also
cut at the incumbent's makespan.

:func:`decomposition_loss` compares the decomposition
(:func:`~lsched.formulations.replicas.decompose`) with the joint optimum, started
from the decomposition's schedule.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int, check_time_limit
from lsched.evaluator import assign_replicas
from lsched.formulations.driver import drive
from lsched.formulations.replicas.joint import cpsat
from lsched.formulations.replicas.joint.model import (
    JOINT,
    JointProblem,
    not_a_schedule,
)
from lsched.formulations.replicas.results import DecompositionLoss, ReplicaSchedule
from lsched.formulations.replicas.sequence import decompose
from lsched.formulations.replicas.slots import (
    feasible_on_replicas,
    replayed_objective,
    unit_problem,
)
from lsched.formulations.result import SolveResult
from lsched.instance import Instance
from lsched.profile import DeploymentProfile

__all__ = ["JointProblem", "decomposition_loss", "solve_joint"]

IntArray = npt.NDArray[np.int64]


def _initial_schedule(
    instance: Instance,
    replicas: int,
    initial: ReplicaSchedule | tuple[npt.ArrayLike, npt.ArrayLike] | None,
) -> IntArray | None:
    """``initial`` as the model's ``(2, n)`` schedule, replica ids checked
    (its feasibility is the model's to check)."""
    if initial is None:
        return None
    if isinstance(initial, ReplicaSchedule):
        pair = (initial.start, initial.assignment)
    else:
        pair = initial
    start = np.asarray(pair[0], dtype=np.int64)
    where = assign_replicas(instance, replicas, pair[1])
    if start.shape != where.shape:
        raise not_a_schedule()
    return np.stack([start, where])


def _replica_schedule(
    problem: JointProblem, result: SolveResult, began: float
) -> ReplicaSchedule:
    """The driver's ``result`` as a :class:`ReplicaSchedule`, replayed by the
    evaluator; its runtime from ``began`` (:func:`time.monotonic`), the replay
    included."""
    assert result.start is not None  # the warm start is a feasible schedule
    start, where = result.start
    slot, replicas = problem.slot, problem.replicas
    info = {
        "replayed_objective": replayed_objective(slot, start, where, replicas),
        "feasible": feasible_on_replicas(slot, start, where, replicas),
        **result.info,
        "log": result.log,
    }
    assert result.objective is not None
    return ReplicaSchedule(
        status=result.status,
        objective=result.objective,
        bound=result.bound,
        runtime_s=time.monotonic() - began,
        start=start,
        assignment=where,
        replicas=replicas,
        solver=result.solver,
        info=info,
    )


def solve_joint(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    objective: str = "makespan",
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    initial: ReplicaSchedule | tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    **params: Any,
) -> ReplicaSchedule:
    """The exact joint slot model: replica and start slot of every request (CP-SAT).

    Meant for small instances (tens of requests); see the module docstring.
    Status, bound and log are the solve driver's.

    Parameters
    ----------
    instance
        The requests, arrivals in slots.
    profile
        A unit-slot profile with the instance's KV capacity.
    replicas
        ``C >= 1``.
    objective
        ``"makespan"``, ``"latency"`` or ``"ttft"``.
    time_limit
        Wall-clock seconds for the whole call.
    num_workers, seed
        CP-SAT's.
    initial
        A feasible schedule to start from (a
        :class:`~lsched.formulations.replicas.ReplicaSchedule` or
        ``(start, assignment)``); by default LPT on KV areas with the best
        heuristic per replica.
    **params
        Further CP-SAT parameters.

    Returns
    -------
    ReplicaSchedule
        Never worse than ``initial``; ``bound`` bounds every joint schedule.

    Raises
    ------
    InputError
        If the profile is not unit-slot, or ``initial`` is not feasible.
    """
    began = time.monotonic()
    check_time_limit(time_limit)
    replicas = check_int(replicas, "replicas", 1)
    problem = JointProblem(unit_problem(instance, profile, objective), replicas)
    result = drive(
        JOINT, cpsat.solve.search, problem, time_limit=time_limit,
        num_workers=num_workers, seed=seed, began=began,
        initial_solution=_initial_schedule(instance, replicas, initial),
        **params,
    )  # fmt: skip
    return _replica_schedule(problem, result, began)


def decomposition_loss(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    objective: str = "makespan",
    time_limit: float = 30.0,
    num_workers: int = 2,
    seed: int = 0,
) -> DecompositionLoss:
    """What bin packing then per-replica sequencing loses against the joint optimum.

    Runs :func:`~lsched.formulations.replicas.decompose` (each stage under
    ``time_limit``), then :func:`solve_joint` from its schedule (so the joint one
    is never worse).

    Parameters
    ----------
    instance, profile, replicas, objective
        As :func:`solve_joint` (a unit-slot profile).
    time_limit
        Seconds for each solve.
    num_workers, seed
        CP-SAT's.
    """
    parts = decompose(
        instance, profile, replicas, objective=objective, time_limit=time_limit,
        num_workers=num_workers, seed=seed,
    )  # fmt: skip
    joint = solve_joint(
        instance, profile, replicas, objective=objective, time_limit=time_limit,
        num_workers=num_workers, seed=seed, initial=parts,
    )  # fmt: skip
    return DecompositionLoss(joint=joint, decomposition=parts)
