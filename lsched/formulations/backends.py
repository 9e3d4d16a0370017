"""The backend registry of every model, and the evaluator's check of a schedule.

:data:`BACKENDS` is the one table of what solves what: per model (``"slot"``,
``"timed"``, the replica ``"assignment"``, the ``"joint"`` replica-and-slot
model and dLoRA's ``"comigration"``) the backends by name, each the module
whose ``solve(problem, *, time_limit, num_workers, seed, initial_solution,
on_progress, **params)`` runs it (imported on first use: each pulls in a heavy
solver stack).
:func:`solve` picks the model from the problem's type (:data:`PROBLEM_TYPES`) and the
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

from lsched.checks import shown
from lsched.errors import InputError
from lsched.evaluator.fixed import replay_batch_table, replay_start_slots
from lsched.formulations.result import SolveResult
from lsched.formulations.slot import SlotProblem
from lsched.formulations.timed import TimedProblem, to_batch_table
from lsched.policies import PolicyError

#: Every model's backends: model -> backend name -> the module whose ``solve``
#: runs it. A new backend is one line here (and is then covered by the tests that
#: solve with every registered backend); a new model is one entry here and one in
#: :data:`PROBLEM_TYPES`.
BACKENDS: Mapping[str, Mapping[str, str]] = {
    "slot": {
        "cpsat": "lsched.formulations.slot.cpsat",
        "milp": "lsched.formulations.slot.milp",
        "lns": "lsched.formulations.slot.lns",
        "bnc": "lsched.formulations.slot.bnc",
    },
    "timed": {
        "cpsat": "lsched.formulations.timed.cpsat",
        "milp": "lsched.formulations.timed.milp",
    },
    "assignment": {
        "cpsat": "lsched.formulations.replicas.assignment.cpsat",
        "milp": "lsched.formulations.replicas.assignment.milp",
    },
    "joint": {"cpsat": "lsched.formulations.replicas.joint.cpsat"},
    "comigration": {
        "cpsat": "lsched.formulations.comigration.cpsat",
        "milp": "lsched.formulations.comigration.milp",
    },
}

#: The problem type of every model (a key of :data:`BACKENDS`), as
#: ``"module.Class"``: a problem's class is matched by name, so that no model's
#: package (nor its solvers) is imported to solve another's.
PROBLEM_TYPES: Mapping[str, str] = {
    "slot": "lsched.formulations.slot.problem.SlotProblem",
    "timed": "lsched.formulations.timed.problem.TimedProblem",
    "assignment": "lsched.formulations.replicas.assignment.problem.AssignmentProblem",
    "joint": "lsched.formulations.replicas.joint.model.JointProblem",
    "comigration": "lsched.formulations.comigration.problem.CoMigrationProblem",
}


def problem_type(model: str) -> type:
    """The class of ``model``'s problems (:data:`PROBLEM_TYPES`), imported now."""
    module, _, name = PROBLEM_TYPES[model].rpartition(".")
    kind: type = getattr(import_module(module), name)
    return kind


def model_of(problem: Any) -> str:
    """The model (a key of :data:`BACKENDS`) that solves ``problem``.

    Raises
    ------
    InputError
        If ``problem`` is of no registered problem type (field ``problem``).
    """
    names = {f"{kind.__module__}.{kind.__qualname__}" for kind in type(problem).__mro__}
    for model, path in PROBLEM_TYPES.items():
        if path in names:
            return model
    expected = " or ".join(
        f"a {path.rpartition('.')[2]}" for path in PROBLEM_TYPES.values()
    )
    raise InputError(f"got {shown(problem)}; expected {expected}", field="problem")


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


def solve(problem: Any, backend: str = "cpsat", **options: Any) -> SolveResult:
    """Solve ``problem`` with ``backend`` of its model; ``options`` go to ``solve()``.

    Parameters
    ----------
    problem
        A problem of a registered model (:data:`PROBLEM_TYPES`): a
        :class:`~lsched.formulations.slot.SlotProblem`,
        :class:`~lsched.formulations.timed.TimedProblem`,
        :class:`~lsched.formulations.replicas.AssignmentProblem`,
        :class:`~lsched.formulations.replicas.JointProblem` or
        :class:`~lsched.formulations.comigration.CoMigrationProblem`.
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
    "PROBLEM_TYPES",
    "backend_solve",
    "model_of",
    "problem_type",
    "replay_objective",
    "replay_timed_objective",
    "solve",
]
