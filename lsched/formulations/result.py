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
        Start slot per request, or ``None``.
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
