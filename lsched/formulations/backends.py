"""One front door to the slot-model backends, and the evaluator's check of a schedule.

``solve_slot(problem, backend=...)`` picks :mod:`~lsched.formulations.cpsat`,
:mod:`~lsched.formulations.milp` or :mod:`~lsched.formulations.lns` (imported on
first use: each pulls in a heavy solver stack). :func:`replay_objective` scores a
schedule by replaying it in the evaluator, which shares no code with the
formulations (DESIGN.md: a solver's schedule is replayed and both objectives
must agree).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.evaluator.fixed import replay_start_slots
from lsched.formulations.result import SolveResult
from lsched.formulations.slot import SlotProblem
from lsched.policies import PolicyError

#: Slot-model backends by name.
BACKENDS: tuple[str, ...] = ("cpsat", "milp", "lns")


def solve_slot(
    problem: SlotProblem, backend: str = "cpsat", **options: Any
) -> SolveResult:
    """Solve ``problem`` with ``backend``; ``options`` go to its ``solve()``.

    Raises
    ------
    InputError
        On an unknown backend.
    """
    if backend == "cpsat":
        from lsched.formulations.cpsat import solve
    elif backend == "milp":
        from lsched.formulations.milp import solve
    elif backend == "lns":
        from lsched.formulations.lns import solve
    else:
        raise InputError(
            f"got {backend!r}; expected one of {', '.join(BACKENDS)}", field="backend"
        )
    return solve(problem, **options)


def replay_objective(problem: SlotProblem, start: npt.ArrayLike) -> float:
    """The objective of start slots ``start`` as the evaluator scores their replay.

    Raises
    ------
    PolicyError
        If the schedule breaks a rule in the replay (a solver bug).
    """
    try:
        replay = replay_start_slots(
            problem.unit_instance(), problem.unit_profile(), start
        )
    except PolicyError as exc:
        raise PolicyError(f"replay check failed: {exc}") from exc
    records = replay.requests
    arrival, weight = problem.arrival, problem.weight
    if problem.objective == "latency":
        return float(np.dot(weight, records["completion_s"].to_numpy() - arrival))
    if problem.objective == "ttft":
        return float(np.dot(weight, records["first_token_s"].to_numpy() - arrival))
    return float(records["completion_s"].max() - arrival.min())


__all__ = ["BACKENDS", "replay_objective", "solve_slot"]
