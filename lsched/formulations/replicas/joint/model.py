"""The joint replica model's data (:class:`JointProblem`) and what the solve driver
(:mod:`lsched.formulations.driver`) sees of it (:data:`JOINT`).

A schedule is a ``(2, n)`` int64 array: row 0 the start slot of every request,
row 1 its replica. Its objective is the slot model's
(:meth:`~lsched.formulations.slot.SlotProblem.objective_value` of the starts: an
integer plus a constant), so a proven bound is rounded as the slot model's
(:func:`lsched.formulations.slot.model.round_bound`). It is feasible when every
replica's starts keep every slot-model rule
(:func:`~lsched.formulations.replicas.slots.feasible_on_replicas`). The free
bound of the makespan is ``max_i (r_i + o_i)`` (none for the other objectives).
The warm start, a given schedule or LPT on KV areas with the best heuristic per
replica, is made canonical (:func:`canonical`) to keep the symmetry breaking of
:mod:`lsched.formulations.replicas.joint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int, check_type
from lsched.errors import InputError
from lsched.formulations.driver import Model
from lsched.formulations.replicas.assignment.problem import lpt
from lsched.formulations.replicas.slots import feasible_on_replicas
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.incumbent import best_heuristic
from lsched.formulations.slot.model import round_bound as slot_round_bound

__all__ = ["JOINT", "JointProblem", "canonical", "not_a_schedule"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class JointProblem:
    """The slot problem of a set of requests on ``C`` identical replicas.

    Attributes
    ----------
    slot
        The requests' slot problem (one replica's rules, the objective).
    replicas
        ``C >= 1``.

    Raises
    ------
    InputError
        If ``slot`` is not a :class:`~lsched.formulations.slot.SlotProblem` or
        ``replicas`` is not an integer ``>= 1``.
    """

    slot: SlotProblem
    replicas: int

    def __post_init__(self) -> None:
        check_type(self.slot, "slot", SlotProblem, "a SlotProblem")
        object.__setattr__(self, "replicas", check_int(self.replicas, "replicas", 1))

    def __len__(self) -> int:
        """Number of requests."""
        return len(self.slot)

    @property
    def horizon(self) -> int:
        """The safe latest completion ``max_i r_i + sum_i o_i``
        (:mod:`lsched.formulations.replicas.joint`)."""
        return int(self.slot.release.max() + self.slot.output_tokens.sum())

    def is_feasible(self, schedule: IntArray) -> bool:
        """Whether ``schedule`` (module docstring) keeps every rule on every
        replica."""
        if schedule.shape != (2, len(self)):
            return False
        start, where = schedule
        if np.any((where < 0) | (where >= self.replicas)):
            return False
        return feasible_on_replicas(self.slot, start, where, self.replicas)


def canonical(problem: JointProblem, schedule: IntArray) -> IntArray:
    """Identical requests in start order, replicas numbered by first use: the
    same objective, and the joint model's symmetry breaking kept."""
    start, where = schedule.copy()
    for group in problem.slot.identical_groups():
        order = np.argsort(start[group], kind="stable")
        start[group], where[group] = start[group][order], where[group][order]
    _, first = np.unique(where, return_index=True)
    used = where[np.sort(first)]
    label = np.empty(int(where.max()) + 1, dtype=np.int64)
    label[used] = np.arange(len(used))
    return np.stack([start, label[where]])


def _heuristic(problem: JointProblem) -> IntArray:
    """A feasible joint schedule: LPT on KV areas, best heuristic per replica."""
    slot = problem.slot
    area = np.array([int(slot.kv_table(i).sum()) for i in range(len(slot))])
    where = lpt(area, problem.replicas)
    start = np.zeros(len(slot), dtype=np.int64)
    for c in range(problem.replicas):
        ids = np.flatnonzero(where == c)
        if len(ids):
            _, start[ids] = best_heuristic(slot.subproblem(ids))
    return np.stack([start, where])


def not_a_schedule() -> InputError:
    """The error for an ``initial`` schedule of
    :func:`~lsched.formulations.replicas.solve_joint` that is not a feasible one."""
    return InputError(
        "expected a feasible schedule: one start slot per request that keeps "
        "every slot-model rule on its replica",
        field="initial",
    )


def _start(problem: JointProblem, initial: Any) -> tuple[str, IntArray]:
    """``initial`` (a ``(2, n)`` schedule, checked) or the heuristic, canonical.

    Raises
    ------
    InputError
        Naming ``initial`` (:func:`~lsched.formulations.replicas.solve_joint`'s
        argument) if it is not a feasible schedule.
    """
    if initial is None:
        return "lpt+heuristic", canonical(problem, _heuristic(problem))
    schedule = np.asarray(initial, dtype=np.int64)
    if not problem.is_feasible(schedule):
        raise not_a_schedule()
    return "initial", canonical(problem, schedule)


def _free_bound(problem: JointProblem) -> float:
    """``max_i (r_i + o_i)`` plus the constant for the makespan; else none."""
    slot = problem.slot
    if slot.objective != "makespan":
        return -math.inf
    return float((slot.release + slot.output_tokens).max()) + slot.objective_offset


#: The joint model: start slots and replicas scored by the slot objective.
JOINT = Model(
    name="replicas.joint",
    problem_type=JointProblem,
    start=_start,
    objective=lambda problem, schedule: problem.slot.objective_value(schedule[0]),
    is_feasible=lambda problem, schedule: problem.is_feasible(schedule),
    free_bound=_free_bound,
    round_bound=lambda problem, bound: slot_round_bound(problem.slot, bound),
)
