"""The backend registry of every model, and the evaluator's check of a schedule.

:data:`BACKENDS` is the one table of what solves what: per model (``"slot"``,
``"timed"``) the backends by name, each the module whose ``solve(problem, *,
time_limit, num_workers, seed, initial_solution, on_progress, **params)`` runs
it (imported on first use: each pulls in a heavy solver stack).
:func:`solve` picks the model from the problem's type (:data:`MODEL_OF`) and the
backend by name. :func:`replay_objective` and :func:`replay_timed_objective`
score a schedule by replaying it in the evaluator, which shares no code with the
formulations (DESIGN.md: a solver's schedule is replayed and both objectives
must agree).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.checks import check_type
from lsched.errors import InputError
from lsched.evaluator.fixed import replay_batch_table, replay_start_slots
from lsched.formulations.result import SolveResult
from lsched.formulations.slot import SlotProblem
from lsched.formulations.timed import TimedProblem, to_batch_table
from lsched.policies import PolicyError

#: Every model's backends: model -> backend name -> the module whose ``solve``
#: runs it. A new backend is one line here (and is then covered by the tests that
#: solve with every registered backend); a new model is one entry here and one in
#: :data:`MODEL_OF`.
BACKENDS: Mapping[str, Mapping[str, str]] = {
    "slot": {
        "cpsat": "lsched.formulations.slot.cpsat",
        "milp": "lsched.formulations.slot.milp",
        "lns": "lsched.formulations.slot.lns",
    },
    "timed": {
        "cpsat": "lsched.formulations.timed.cpsat",
        "milp": "lsched.formulations.timed.milp",
    },
    # The replica-assignment model (lsched.formulations.replicas) joins here, with
    # its problem type in MODEL_OF, once it has the shared solve() signature.
}

#: The model that solves each problem type (a key of :data:`BACKENDS`).
MODEL_OF: Mapping[type, str] = {SlotProblem: "slot", TimedProblem: "timed"}


def model_of(problem: Any) -> str:
    """The model (a key of :data:`BACKENDS`) that solves ``problem``.

    Raises
    ------
    InputError
        If ``problem`` is of no registered problem type (field ``problem``).
    """
    kinds = tuple(MODEL_OF)
    what = " or ".join(f"a {kind.__name__}" for kind in kinds)
    check_type(problem, "problem", kinds, what)
    return next(MODEL_OF[kind] for kind in kinds if isinstance(problem, kind))


def backend_solve(model: str, backend: str) -> Callable[..., SolveResult]:
    """The ``solve`` function of ``model``'s ``backend``, its module imported now.

    Raises
    ------
    InputError
        On a backend ``model`` does not have (field ``backend``, listing those it
        has).
    """
    backends = BACKENDS[model]
    if not isinstance(backend, str) or backend not in backends:
        raise InputError(
            f"got {backend!r}; expected one of {', '.join(backends)} for the "
            f"{model} model",
            field="backend",
        )
    solve_function: Callable[..., SolveResult] = import_module(backends[backend]).solve
    return solve_function


def solve(
    problem: SlotProblem | TimedProblem, backend: str = "cpsat", **options: Any
) -> SolveResult:
    """Solve ``problem`` with ``backend`` of its model; ``options`` go to ``solve()``.

    Parameters
    ----------
    problem
        A :class:`~lsched.formulations.slot.SlotProblem` (the slot model) or a
        :class:`~lsched.formulations.timed.TimedProblem` (the timed model).
    backend
        A backend of the problem's model (:data:`BACKENDS`).
    **options
        ``time_limit``, ``num_workers``, ``seed``, ``initial_solution``,
        ``on_progress`` and the backend's own parameters.

    Returns
    -------
    SolveResult
        The best schedule found, its objective, the proven bound and the status.

    Raises
    ------
    InputError
        On a problem of no registered type (field ``problem``) or a backend its
        model does not have (field ``backend``).
    """
    return backend_solve(model_of(problem), backend)(problem, **options)


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
    "MODEL_OF",
    "backend_solve",
    "model_of",
    "replay_objective",
    "replay_timed_objective",
    "solve",
]
