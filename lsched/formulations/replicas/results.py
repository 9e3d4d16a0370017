"""What the replica functions return: an assignment (:class:`AssignmentResult`),
the best policy for it (:class:`SequenceResult`), a slot schedule over replicas
(:class:`ReplicaSchedule`) and the decomposition's loss (:class:`DecompositionLoss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.errors import InputError
from lsched.evaluator import SimulationResult
from lsched.formulations.result import Status, certified_gap

__all__ = [
    "AssignmentResult",
    "DecompositionLoss",
    "ReplicaSchedule",
    "SequenceResult",
    "read_only",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def read_only(array: npt.ArrayLike) -> np.ndarray:
    """A read-only copy of ``array``."""
    array = np.array(array)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class AssignmentResult:
    """A replica assignment and how good it is proven to be.

    Attributes
    ----------
    status
        :class:`~lsched.formulations.result.Status`
        (:mod:`lsched.formulations.replicas.assignment` on ``OPTIMAL``).
    objective
        Largest replica load of ``assignment``, in the loads' unit (seconds for
        profile loads).
    bound
        Proven lower bound on the smallest possible largest load.
    runtime_s
        Wall-clock seconds of the whole call.
    assignment
        Replica id per request (int64, read-only).
    replica_load_s
        Load of every replica (``replicas`` entries).
    load_s
        The per-request loads that were balanced.
    replicas
        ``C``.
    solver
        ``"cpsat"``, ``"milp"`` or ``"lpt"`` (LPT already met the bound).
    info
        Solver figures: ``load_step`` (the grid ``q``; 1 when exact), ``exact``,
        ``lpt_objective``, solver status, model size; and the solve driver's
        ``source``, ``initial_objective`` and ``log`` of objective and bound over
        time, these two in the solvers' integer loads (``load_step`` each).
    """

    status: Status
    objective: float
    bound: float
    runtime_s: float
    assignment: IntArray
    replica_load_s: FloatArray
    load_s: FloatArray
    replicas: int
    solver: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, c = len(self.load_s), self.replicas
        where = np.asarray(self.assignment)
        if where.shape != (n,) or np.any((where < 0) | (where >= c)):
            raise InputError(
                f"expected {n} replica ids in 0..{c - 1}", field="assignment"
            )
        if np.shape(self.replica_load_s) != (c,):
            raise InputError(f"expected {c} replica loads", field="replica_load_s")
        object.__setattr__(self, "assignment", read_only(where.astype(np.int64)))
        for name in ("replica_load_s", "load_s"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            object.__setattr__(self, name, read_only(value))

    @property
    def gap(self) -> float | None:
        """Certified relative gap ``(objective - bound) / objective``."""
        return certified_gap(self.objective, self.bound)

    def summary(self) -> dict[str, Any]:
        """The JSON view."""
        return {
            "status": self.status.value,
            "objective": self.objective,
            "bound": self.bound if math.isfinite(self.bound) else None,
            "gap": self.gap,
            "runtime_s": self.runtime_s,
            "replicas": self.replicas,
            "solver": self.solver,
        }


@dataclass(frozen=True, eq=False)
class SequenceResult:
    """The best policy for a fixed assignment, as the evaluator scored it.

    Attributes
    ----------
    policy
        Label of the best policy (smallest makespan; ties to the first given).
    makespan_s, busy_fraction
        Its evaluator metrics.
    assignment
        Replica id per request.
    replicas
        ``C``.
    table
        One row per policy tried (index ``policy``), every evaluator metric.
    simulation
        The best policy's :class:`~lsched.evaluator.SimulationResult`.
    """

    policy: str
    makespan_s: float
    busy_fraction: float
    assignment: IntArray
    replicas: int
    table: pd.DataFrame
    simulation: SimulationResult

    def __post_init__(self) -> None:
        where = np.asarray(self.assignment, dtype=np.int64)
        object.__setattr__(self, "assignment", read_only(where))


@dataclass(frozen=True, eq=False)
class ReplicaSchedule:
    """A slot-model schedule on ``C`` replicas: start slot and replica per request.

    Attributes
    ----------
    status
        :class:`~lsched.formulations.result.Status`.
    objective
        Slot-model objective of the schedule (slots, constants included, as
        :meth:`~lsched.formulations.slot.SlotProblem.objective_value`).
    bound
        Proven lower bound: over every joint schedule for
        :func:`~lsched.formulations.replicas.solve_joint`; over the schedules
        *with this assignment* for
        :func:`~lsched.formulations.replicas.sequence_slots` and
        :func:`~lsched.formulations.replicas.decompose`.
    runtime_s
        Wall-clock seconds.
    start
        Start slot per request (int64, read-only).
    assignment
        Replica id per request (int64, read-only).
    replicas
        ``C``.
    solver
        Which method produced it.
    info
        ``replayed_objective`` (the evaluator's), ``feasible`` (every replica
        checked by the evaluator's scorer), per-replica statuses, solver
        figures; for :func:`~lsched.formulations.replicas.solve_joint` also the
        solve driver's ``source`` and ``log`` of objective and bound over time.
    """

    status: Status
    objective: float
    bound: float
    runtime_s: float
    start: IntArray
    assignment: IntArray
    replicas: int
    solver: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = np.asarray(self.start, dtype=np.int64)
        where = np.asarray(self.assignment, dtype=np.int64)
        if start.shape != where.shape:
            raise InputError(
                f"got {start.shape} starts and {where.shape} replica ids; expected "
                "one of each per request",
                field="start",
            )
        object.__setattr__(self, "start", read_only(start))
        object.__setattr__(self, "assignment", read_only(where))

    @property
    def gap(self) -> float | None:
        """Certified relative gap."""
        return certified_gap(self.objective, self.bound)


@dataclass(frozen=True, eq=False)
class DecompositionLoss:
    """The joint slot optimum against assignment-then-sequencing.

    Attributes
    ----------
    joint
        :func:`~lsched.formulations.replicas.solve_joint`'s schedule (started
        from the decomposition's).
    decomposition
        :func:`~lsched.formulations.replicas.decompose`'s schedule.
    """

    joint: ReplicaSchedule
    decomposition: ReplicaSchedule

    @property
    def loss(self) -> float:
        """``decomposition / joint - 1``: what the decomposition loses against the
        best joint schedule found (exact when the joint one is optimal)."""
        return _ratio(self.decomposition.objective, self.joint.objective) - 1.0

    @property
    def loss_upper(self) -> float:
        """``decomposition / joint bound - 1``: a proven upper bound on the loss."""
        return _ratio(self.decomposition.objective, self.joint.bound) - 1.0

    def summary(self) -> dict[str, Any]:
        """The JSON view."""
        return {
            "joint_status": self.joint.status.value,
            "joint_objective": self.joint.objective,
            "joint_bound": self.joint.bound,
            "decomposition_status": self.decomposition.status.value,
            "decomposition_objective": self.decomposition.objective,
            "loss": self.loss,
            "loss_upper": self.loss_upper,
            "joint_runtime_s": self.joint.runtime_s,
            "decomposition_runtime_s": self.decomposition.runtime_s,
        }


def _ratio(a: float, b: float) -> float:
    """``a / b``, or 1 when ``a <= b <= 0`` and infinity when ``b <= 0 < a``."""
    if b > 0:
        return a / b
    return 1.0 if a <= b else math.inf
