"""One front door per model to its backends, and the evaluator's check of a schedule.

``solve_slot(problem, backend=...)`` picks :mod:`~lsched.formulations.slot.cpsat`,
:mod:`~lsched.formulations.slot.milp` or :mod:`~lsched.formulations.slot.lns`;
``solve_timed`` the timed model's :mod:`~lsched.formulations.timed.cpsat` or
:mod:`~lsched.formulations.timed.milp` (imported on first use: each pulls in a
heavy solver stack). :func:`replay_objective` and :func:`replay_timed_objective`
score a schedule by replaying it in the evaluator, which shares no code with the
formulations (DESIGN.md: a solver's schedule is replayed and both objectives
must agree).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.evaluator.fixed import replay_batch_table, replay_start_slots
from lsched.formulations.result import SolveResult
from lsched.formulations.slot import SlotProblem
from lsched.formulations.timed import TimedProblem, to_batch_table
from lsched.policies import PolicyError

#: Slot-model backends by name.
BACKENDS: tuple[str, ...] = ("cpsat", "milp", "lns")
#: Timed-model backends by name.
TIMED_BACKENDS: tuple[str, ...] = ("cpsat", "milp")


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
        from lsched.formulations.slot.cpsat import solve
    elif backend == "milp":
        from lsched.formulations.slot.milp import solve
    elif backend == "lns":
        from lsched.formulations.slot.lns import solve
    else:
        raise InputError(
            f"got {backend!r}; expected one of {', '.join(BACKENDS)}", field="backend"
        )
    return solve(problem, **options)


def solve_timed(
    problem: TimedProblem, backend: str = "cpsat", **options: Any
) -> SolveResult:
    """Solve the timed ``problem`` with ``backend``; ``options`` go to ``solve()``.

    Raises
    ------
    InputError
        On an unknown backend.
    """
    if backend == "cpsat":
        from lsched.formulations.timed.cpsat import solve
    elif backend == "milp":
        from lsched.formulations.timed.milp import solve
    else:
        raise InputError(
            f"got {backend!r}; expected one of {', '.join(TIMED_BACKENDS)} for the "
            "timed model",
            field="backend",
        )
    return solve(problem, **options)


def replay_timed_objective(problem: TimedProblem, start: npt.ArrayLike) -> float:
    """The objective of timed start iterations as the evaluator scores their replay.

    Raises
    ------
    PolicyError
        If the schedule breaks a rule in the replay (a solver bug).
    """
    table = to_batch_table(problem, start)
    try:
        replay = replay_batch_table(problem.instance, problem.profile, table)
    except PolicyError as exc:
        raise PolicyError(f"replay check failed: {exc}") from exc
    completion = replay.requests["completion_s"].to_numpy()
    arrival = problem.instance.arrival_s
    if problem.objective == "latency":
        return float(np.dot(problem.weight, completion - arrival))
    return float(completion.max() - arrival.min())


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


__all__ = [
    "BACKENDS",
    "TIMED_BACKENDS",
    "replay_objective",
    "replay_timed_objective",
    "solve_slot",
    "solve_timed",
]
