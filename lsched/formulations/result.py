"""What every solve returns: status, objective, bound, gap, runtime, schedule, log.

DESIGN.md: "No solution is a status, not an exception." A time-out, an infeasible
model or a solver failure gives a :class:`SolveResult` with the matching
:class:`Status`; only bad input raises (:class:`~lsched.errors.InputError`).

The gap is the *certified* gap ``(objective - bound) / |objective|`` of the best
schedule found against the best proven bound (0 when both are 0), so that
``objective * (1 - gap)`` is a valid lower bound. Objectives and bounds are in the
problem's units (slots), constants included (see
:attr:`lsched.formulations.slot.SlotProblem.objective_offset`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

IntArray = npt.NDArray[np.int64]

#: Columns of :attr:`SolveResult.log`: one row per improvement of either side.
LOG_COLUMNS: tuple[str, ...] = ("time_s", "objective", "bound")


class Status(enum.StrEnum):
    """Outcome of a solve (DESIGN.md's result statuses)."""

    OPTIMAL = "optimal"
    """A schedule proven optimal (absolute gap below one objective unit)."""
    FEASIBLE = "feasible"
    """A schedule, not proven optimal, and the solver stopped on its own."""
    TIME_LIMIT = "time_limit"
    """The time limit was reached; a schedule may or may not have been found."""
    INFEASIBLE = "infeasible"
    """Proven to have no schedule (within the horizon, which is safe)."""
    UNKNOWN = "unknown"
    """No schedule and no proof; e.g. a solver failure."""
    INTERRUPTED = "interrupted"
    """Stopped by the user (SIGINT, Ctrl-C); the incumbent and bound are kept."""


class Stop(enum.StrEnum):
    """Why a solver stopped: the input of :func:`decide_status` besides the values.

    Each backend maps its solver's own answer to one of these
    (:func:`cpsat_stop`, :func:`highs_stop`); :func:`decide_status` alone turns it
    into a :class:`Status`.
    """

    FINISHED = "finished"
    """The solver ended on its own: a proof, or a gap the caller relaxed."""
    TIME_LIMIT = "time_limit"
    """The wall-clock limit (the solver's or ours) stopped it."""
    INTERRUPTED = "interrupted"
    """The user stopped it (:mod:`lsched.interrupt`)."""
    OTHER_LIMIT = "other_limit"
    """A limit the caller set through solver parameters (solutions, conflicts)."""
    ERROR = "error"
    """The solver failed or rejected the model."""


#: The one tolerance of :func:`decide_status`: a schedule is ``OPTIMAL`` when its
#: bound is within this share of its objective (of 1 below 1). Integer objectives
#: (the slot and assignment models) have their bounds rounded up first, so for
#: them it means a zero gap; the timed model's seconds need the slack of
#: floating point, no more. A solver's own "optimal" on a looser gap (a relaxed
#: ``mip_rel_gap``, or CP-SAT's proof on rounded durations) is ``FEASIBLE``.
OPTIMALITY_RTOL = 1e-6


def decide_status(
    stop: Stop,
    objective: float | None,
    bound: float,
    *,
    infeasible: bool = False,
) -> Status:
    """The status of a solve, from why it stopped and what it has; a pure function.

    The one owner of statuses: every backend calls it (DESIGN.md's result
    statuses), so no status depends on how fast the machine was.

    Parameters
    ----------
    stop
        Why the solver stopped.
    objective
        Objective of the best schedule returned, or ``None`` without one.
    bound
        Best proven lower bound, in the same units (``-inf`` if none).
    infeasible
        Whether the solver proved that no schedule exists.

    Rules, first match wins: a proof of infeasibility without a schedule is
    ``INFEASIBLE``; a bound that meets the objective (within
    :data:`OPTIMALITY_RTOL`) is ``OPTIMAL`` however the
    solver stopped; then the stop decides: ``INTERRUPTED``, ``TIME_LIMIT``,
    ``UNKNOWN`` on a solver error; otherwise ``FEASIBLE`` with a schedule and
    ``UNKNOWN`` without.
    """
    if infeasible and objective is None:
        return Status.INFEASIBLE
    if objective is not None and bound >= objective - OPTIMALITY_RTOL * max(
        1.0, abs(objective)
    ):
        return Status.OPTIMAL
    if stop is Stop.INTERRUPTED:
        return Status.INTERRUPTED
    if stop is Stop.TIME_LIMIT:
        return Status.TIME_LIMIT
    if stop is Stop.ERROR or objective is None:
        return Status.UNKNOWN
    return Status.FEASIBLE


def combined_status(statuses: list[Status]) -> Status:
    """The status of a result made of several solves (one per replica, say).

    ``OPTIMAL`` only if every part is; else the first of ``INFEASIBLE``,
    ``INTERRUPTED``, ``TIME_LIMIT``, ``UNKNOWN`` that a part has; else
    ``FEASIBLE``.
    """
    if all(s is Status.OPTIMAL for s in statuses):
        return Status.OPTIMAL
    for status in (
        Status.INFEASIBLE,
        Status.INTERRUPTED,
        Status.TIME_LIMIT,
        Status.UNKNOWN,
    ):
        if status in statuses:
            return status
    return Status.FEASIBLE


#: CP-SAT parameters that stop a search early for reasons other than its clock.
CPSAT_OTHER_LIMITS: frozenset[str] = frozenset(
    {
        "max_number_of_conflicts",
        "stop_after_first_solution",
        "stop_after_presolve",
        "stop_after_root_propagation",
        "max_deterministic_time",
        "absolute_gap_limit",
        "relative_gap_limit",
    }
)


def cpsat_stop(status_name: str, *, interrupted: bool, other_limits: bool) -> Stop:
    """Why CP-SAT stopped, from its status name (``solver.status_name(code)``).

    ``OPTIMAL`` and ``INFEASIBLE`` end the search on their own; ``MODEL_INVALID``
    is an error. ``FEASIBLE`` and ``UNKNOWN`` mean a limit stopped it: the user's
    (``interrupted``), one set through parameters (``other_limits``, see
    :data:`CPSAT_OTHER_LIMITS`; gap limits make ``FEASIBLE`` a finished search),
    else the time limit, whatever CP-SAT's own clock says under load.
    """
    if interrupted:
        return Stop.INTERRUPTED
    if status_name in ("OPTIMAL", "INFEASIBLE"):
        return Stop.FINISHED
    if status_name == "MODEL_INVALID":
        return Stop.ERROR
    return Stop.OTHER_LIMIT if other_limits else Stop.TIME_LIMIT


def highs_stop(model_status: str, *, interrupted: bool, deadline_passed: bool) -> Stop:
    """Why HiGHS stopped, from its model status text (``modelStatusToString``).

    ``interrupted``: the user stopped it; ``deadline_passed``: our wall-clock
    deadline had passed when it returned (HiGHS then says "Time limit reached"
    or, through our callback, "Interrupted by user").
    """
    if interrupted:
        return Stop.INTERRUPTED
    text = model_status.lower()
    if text in ("optimal", "infeasible", "unbounded", "primal infeasible or unbounded"):
        return Stop.FINISHED
    if "time limit" in text or deadline_passed:
        return Stop.TIME_LIMIT
    if "limit" in text or "objective" in text:  # iteration, solution, target
        return Stop.OTHER_LIMIT
    return Stop.ERROR


def certified_gap(objective: float | None, bound: float | None) -> float | None:
    """``(objective - bound) / |objective|``, 0 if both are 0; ``None`` if unknown."""
    if objective is None or bound is None or not math.isfinite(bound):
        return None
    if objective == 0:
        return 0.0 if bound >= 0 else math.inf
    return max(0.0, (objective - bound) / abs(objective))


@dataclass(frozen=True)
class SolveResult:
    """One solve's answer.

    Attributes
    ----------
    status
        See :class:`Status`.
    objective
        Objective of ``start``, or ``None`` without a schedule.
    bound
        Best proven lower bound (``-inf`` if none).
    runtime_s
        Wall-clock seconds, model building included.
    start
        Start slot per request, or ``None``; the schedule in its model's own
        form for other models (:mod:`lsched.formulations.driver`).
    solver
        Which backend and formulation produced it, e.g. ``"cpsat/events"``.
    log
        Objective and bound over time (:data:`LOG_COLUMNS`).
    info
        Solver-specific figures (nodes, model size, messages).
    """

    status: Status
    objective: float | None
    bound: float
    runtime_s: float
    start: IntArray | None
    solver: str
    log: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LOG_COLUMNS))
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """Certified relative gap (module docstring)."""
        return certified_gap(self.objective, self.bound)

    def summary(self) -> dict[str, Any]:
        """The JSON view: status, objective, bound, gap, runtime and solver."""
        bound = self.bound if math.isfinite(self.bound) else None
        return {
            "status": self.status.value,
            "objective": self.objective,
            "bound": bound,
            "gap": self.gap,
            "runtime_s": self.runtime_s,
            "solver": self.solver,
        }


class Reason(enum.StrEnum):
    """Why a bound or a solve was not computed (:class:`Skipped`)."""

    TIME_LIMIT = "time_limit"
    """It ran out of its wall-clock limit without a value."""
    OUT_OF_SCOPE = "out_of_scope"
    """It does not apply to this instance, deployment, objective or backend."""
    SIZE = "size"
    """The instance is above the size it is computed for."""
    INTERRUPTED = "interrupted"
    """The user stopped it (SIGINT, Ctrl-C)."""
    NOT_REQUESTED = "not_requested"
    """The caller asked for none (e.g. ``--backend none``)."""


@dataclass(frozen=True)
class Skipped:
    """A bound, a solve or a policy run that was not computed, and why.

    Nothing is dropped silently: every result table and JSON lists these next to
    what was computed.

    Attributes
    ----------
    name
        What was not computed: a bound's name (``"slot.lp"``), ``"solve"`` or a
        policy label.
    kind
        ``"bound"``, ``"solve"`` or ``"policy"``.
    reason
        The :class:`Reason`.
    detail
        One line for a person, e.g. ``"120 requests > 60"``.
    """

    name: str
    kind: str
    reason: Reason
    detail: str

    def to_dict(self) -> dict[str, str]:
        """The JSON view: name, kind, reason and detail."""
        return {
            "name": self.name,
            "kind": self.kind,
            "reason": self.reason.value,
            "detail": self.detail,
        }

    def describe(self) -> str:
        """The table's text: ``"not computed: size (120 requests > 60)"``."""
        return f"not computed: {self.reason.value} ({self.detail})"
