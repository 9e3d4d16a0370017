"""The one solve driver: every backend of every model runs through :func:`drive`.

PyJobShop's layout: per model the problem data (immutable, validated), per
backend its variables, constraints and objective, and one driver that owns what
every solve shares. A **model** (:class:`Model`) says what a schedule of its
problem is worth: its exact objective, its feasibility rule, the warm start, the
bounds that cost nothing and how a proven bound may be rounded. A **backend** is
a function ``search(run, **options) -> Attempt``: it builds its model inside the
time that :class:`SolveRun` says is left, runs its solver, logs progress
(:meth:`SolveRun.record`), offers the schedule it found (:meth:`SolveRun.offer`)
and says why it stopped and what bound it proved (:class:`Attempt`).

The driver does the rest, once, for every backend:

1. checks the arguments (problem type, ``time_limit``, ``num_workers``,
   ``seed``) and opens an interruption session (:mod:`lsched.interrupt`: a
   Ctrl-C stops the solver and keeps what it has);
2. starts the wall clock: ``time_limit`` covers the warm start, the build and
   the solver (and what the caller did before, if it passes ``began``);
3. takes the warm start: ``initial_solution`` (checked) or the model's best
   heuristic;
4. keeps the incumbent: a schedule offered replaces it only if the model finds
   it feasible and strictly better, so a solver bug can cost time but never
   a wrong answer;
5. takes the bound as the larger of the backend's and the model's free bound,
   rounded by the model (integer objectives round up), and never above the
   objective;
6. decides the status in one place
   (:func:`~lsched.formulations.result.decide_status`, with its one tolerance
   :data:`~lsched.formulations.result.OPTIMALITY_RTOL`);
7. returns the :class:`~lsched.formulations.result.SolveResult` with the log of
   objective and bound over time.

A **schedule** is an int64 array in the model's own form: a start slot per
request for the slot model, a replica per request for the replica assignment,
a ``(2, n)`` array of start slots and replicas for the joint replica model
(:mod:`lsched.formulations.replicas`). The driver never reads it: it hands it
to the model's functions and returns it as :attr:`SolveResult.start`.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.checks import check_solver_options, check_type
from lsched.formulations.result import (
    LOG_COLUMNS,
    SolveResult,
    Status,
    Stop,
    decide_status,
)
from lsched.interrupt import session

IntArray = npt.NDArray[np.int64]
#: ``on_progress(time_s, objective, bound)``, problem units, ``time_s`` from the call.
Progress = Callable[[float, float | None, float], None]


def _no_rounding(problem: Any, bound: float) -> float:
    return bound


def _no_free_bound(problem: Any) -> float:
    return -math.inf


@dataclass(frozen=True)
class Model:
    """What the driver needs to know of one model's schedules (int64 arrays in
    the model's own form, module docstring).

    Attributes
    ----------
    name
        The model's name in the backend registry, e.g. ``"slot"``.
    problem_type
        The class of its problems.
    start
        ``start(problem, initial_solution) -> (source, schedule)``: the warm
        start, ``initial_solution`` checked (raising
        :class:`~lsched.errors.InputError`) or the best heuristic's.
    objective
        ``objective(problem, schedule) -> float``, exact, in problem units.
    is_feasible
        ``is_feasible(problem, schedule) -> bool``.
    free_bound
        ``free_bound(problem) -> float``: a bound valid for every schedule that
        costs next to nothing (closed forms); ``-inf`` if none.
    round_bound
        ``round_bound(problem, bound) -> float``: the strongest value a proven
        ``bound`` implies (integer objectives round up).
    """

    name: str
    problem_type: type
    start: Callable[[Any, Any], tuple[str, IntArray]]
    objective: Callable[[Any, IntArray], float]
    is_feasible: Callable[[Any, IntArray], bool]
    free_bound: Callable[[Any], float] = _no_free_bound
    round_bound: Callable[[Any, float], float] = _no_rounding


@dataclass(frozen=True)
class Attempt:
    """What a backend reports when its solver has stopped.

    Attributes
    ----------
    solver
        :attr:`SolveResult.solver`, e.g. ``"cpsat/events"``.
    stop
        Why its solver stopped (:class:`~lsched.formulations.result.Stop`).
    bound
        The lower bound it proved, in problem units (``-inf`` if none).
    infeasible
        Whether it proved that no schedule exists (not expected: the warm start
        is one).
    info
        Solver-specific figures for :attr:`SolveResult.info`.
    """

    solver: str
    stop: Stop
    bound: float = -math.inf
    infeasible: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class SolveRun:
    """One solve in progress: its clock, incumbent and log, handed to the backend.

    Attributes
    ----------
    problem
        The problem being solved.
    num_workers, seed
        Checked solver threads and seed.
    began, deadline
        :func:`time.monotonic` at the call (or the caller's ``began``) and at
        its time limit.
    source, start, objective
        The incumbent: where it came from, its schedule and its objective.
    initial_source, initial_objective
        The warm start's.
    """

    def __init__(
        self,
        model: Model,
        problem: Any,
        *,
        time_limit: float,
        num_workers: int,
        seed: int,
        initial_solution: Any,
        on_progress: Progress | None,
        began: float | None = None,
    ) -> None:
        self.model = model
        self.problem = problem
        self.num_workers = num_workers
        self.seed = seed
        self.began = time.monotonic() if began is None else began
        self.deadline = self.began + time_limit
        self._on_progress = on_progress
        self._rows: list[tuple[float, float | None, float]] = []
        self._bound = -math.inf
        self.source, self.start = model.start(problem, initial_solution)
        self.objective = model.objective(problem, self.start)
        self.initial_source, self.initial_objective = self.source, self.objective
        self.record(self.objective, -math.inf)

    def elapsed_s(self) -> float:
        """Seconds since the call."""
        return time.monotonic() - self.began

    def remaining_s(self) -> float:
        """Seconds left of the time limit (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def bound_of(self, bound: float) -> float:
        """``bound`` rounded by the model and never above the incumbent."""
        rounded = self.model.round_bound(self.problem, bound)
        return min(rounded, self.objective) if math.isfinite(rounded) else rounded

    def record(self, objective: float | None, bound: float) -> None:
        """Log an improvement of either side (problem units); calls ``on_progress``.

        The log keeps the best objective and bound seen so far, so it is
        monotone whatever order the solver reports them in, and a row that
        rounding leaves unchanged is not repeated.
        """
        best = self._rows[-1][1] if self._rows else None
        if objective is not None and (best is None or objective < best):
            best = objective
        self._bound = max(self._bound, self.model.round_bound(self.problem, bound))
        shown = self._bound if best is None else min(self._bound, best)
        row = (self.elapsed_s(), best, shown)
        if self._rows and self._rows[-1][1:] == row[1:]:
            return
        self._rows.append(row)
        if self._on_progress is not None:
            self._on_progress(*row)

    def offer(self, schedule: npt.ArrayLike | None, source: str) -> bool:
        """Keep ``schedule`` as the incumbent if it is feasible and strictly better.

        Returns whether it was kept.
        """
        if schedule is None:
            return False
        candidate = np.asarray(schedule, dtype=np.int64)
        if not self.model.is_feasible(self.problem, candidate):
            return False
        value = self.model.objective(self.problem, candidate)
        if value >= self.objective:
            return False
        self.source, self.start, self.objective = source, candidate, value
        self.record(value, -math.inf)
        return True

    def result(self, attempt: Attempt) -> SolveResult:
        """The :class:`SolveResult` of this run once the backend has stopped."""
        free = self.model.free_bound(self.problem)
        bound = self.bound_of(max(attempt.bound, free))
        objective = None if attempt.infeasible else self.objective
        status = decide_status(
            attempt.stop, objective, bound, infeasible=attempt.infeasible
        )
        info = {
            **attempt.info,
            "initial_source": self.initial_source,
            "initial_objective": self.initial_objective,
            "source": self.source,
        }
        if status is Status.INFEASIBLE:
            objective, bound, start = None, math.inf, None
        else:
            self.record(objective, bound)
            start = self.start
        return SolveResult(
            status=status,
            objective=objective,
            bound=bound,
            runtime_s=self.elapsed_s(),
            start=start,
            solver=attempt.solver,
            log=pd.DataFrame(self._rows, columns=list(LOG_COLUMNS), dtype=np.float64),
            info=info,
        )


Search = Callable[..., Attempt]
#: A backend's public ``solve(problem, *, time_limit, ..., **options)``.
Solve = Callable[..., SolveResult]


def drive(
    model: Model,
    search: Search,
    problem: Any,
    *,
    time_limit: float,
    num_workers: int,
    seed: int,
    initial_solution: Any = None,
    on_progress: Progress | None = None,
    began: float | None = None,
    **options: Any,
) -> SolveResult:
    """Solve ``problem`` with the backend ``search(run, **options)``.

    Parameters
    ----------
    model
        The model ``problem`` belongs to.
    search
        The backend (module docstring).
    problem
        An instance of ``model.problem_type``.
    time_limit
        Wall-clock seconds for the whole call: warm start, model build and
        solver. A backend whose build would overrun it gives the build up
        (:func:`lsched.formulations.solvers.highs.search_built`): the incumbent
        comes back with status ``time_limit`` (``interrupted`` on a user's stop)
        and ``info["stopped_in"]`` says where.
    num_workers, seed
        The solver's threads (CP-SAT workers, HiGHS ``threads``) and random
        seed.
    initial_solution
        A feasible schedule in the model's form (module docstring) to start
        from, checked by the model; its best heuristic's by default.
    on_progress
        ``on_progress(time_s, objective, bound)`` on every improvement of the
        incumbent or the bound, in problem units, ``time_s`` from the call
        (:data:`Progress`).
    began
        :func:`time.monotonic` that ``time_limit``, ``runtime_s`` and the log's
        times count from; the call by default. A public function that builds
        its problem first (computes loads, say) passes when it was called, so
        that its ``time_limit`` covers the whole call.
    **options
        The backend's own options.

    Returns
    -------
    SolveResult
        Never raises on a time-out, an interruption or a solver failure.

    Raises
    ------
    InputError
        On a bad argument or ``initial_solution``.
    """
    what = f"a {model.problem_type.__name__}"
    check_type(problem, "problem", model.problem_type, what)
    time_limit, num_workers, seed = check_solver_options(time_limit, num_workers, seed)
    with session():
        run = SolveRun(
            model,
            problem,
            time_limit=float(time_limit),
            num_workers=num_workers,
            seed=seed,
            initial_solution=initial_solution,
            on_progress=on_progress,
            began=began,
        )
        return run.result(search(run, **options))


def _solve_parameters(num_workers: int) -> list[inspect.Parameter]:
    """``solve``'s parameters that every backend shares (:func:`drive`'s)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("problem", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("time_limit", keyword, default=60.0, annotation="float"),
        inspect.Parameter(
            "num_workers", keyword, default=num_workers, annotation="int"
        ),
        inspect.Parameter("seed", keyword, default=0, annotation="int"),
        inspect.Parameter("initial_solution", keyword, default=None),
        inspect.Parameter("on_progress", keyword, default=None),
    ]


def backend(model: Model, *, num_workers: int = 2) -> Callable[[Search], Solve]:
    """Make a backend's search into its public ``solve``.

    ``@backend(MODEL)`` on ``search(run, *, option=default, ..., **params)``
    gives ``solve(problem, *, time_limit=60.0, num_workers=num_workers, seed=0,
    initial_solution=None, on_progress=None, option=default, ..., **params)``,
    which runs the search through :func:`drive`. The search's docstring is
    written for that ``solve`` (its keyword options and the solver parameters
    that ``**params`` takes); ``solve.search`` is the search itself, for a
    backend that finishes with another's (:mod:`lsched.formulations.slot.lns`).
    """

    def make(search: Search) -> Solve:
        def solve(
            problem: Any,
            *,
            time_limit: float = 60.0,
            num_workers: int = num_workers,
            seed: int = 0,
            initial_solution: Any = None,
            on_progress: Progress | None = None,
            **options: Any,
        ) -> SolveResult:
            return drive(
                model,
                search,
                problem,
                time_limit=time_limit,
                num_workers=num_workers,
                seed=seed,
                initial_solution=initial_solution,
                on_progress=on_progress,
                **options,
            )

        own = list(inspect.signature(search).parameters.values())[1:]
        shared = _solve_parameters(num_workers)
        solve.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*shared, *own], return_annotation="SolveResult"
        )
        solve.__doc__ = search.__doc__
        solve.__module__ = search.__module__
        solve.search = search  # type: ignore[attr-defined]
        return solve

    return make


__all__ = [
    "Attempt",
    "Model",
    "Progress",
    "Search",
    "Solve",
    "SolveRun",
    "backend",
    "drive",
]
