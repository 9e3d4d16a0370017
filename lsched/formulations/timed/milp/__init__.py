"""MILP of the timed model (Pyomo, solved by HiGHS).

Notation of :mod:`lsched.formulations.timed.problem`; start windows
``0 <= S_i <= L_i`` from :func:`lsched.formulations.timed.incumbent.latest_starts`,
iterations ``k = 0 .. K - 1`` with ``K = max_i (L_i + o_i)``; ``d_min``, ``d_max``
the cost model's bounds on an iteration's seconds.

The model, one module per part (:func:`build_model` puts them together):

* :mod:`~lsched.formulations.timed.milp.variables`: start binaries ``x[i,t]``
  and their running sums ``y[i,t]``, whether iteration ``k`` exists (``u_k``),
  its features, seconds ``d_k`` and start ``T_k`` (continuous), regime binaries
  ``z[k,r]`` for threshold cost models;
* :mod:`~lsched.formulations.timed.milp.constraints`: the slot model's
  per-iteration limits, no empty iteration, phi as linear functions of ``x``,
  ``d_k`` above every piece of the cost model, ``T_k`` after the previous end
  and the members' arrivals;
* :mod:`~lsched.formulations.timed.milp.objective`: makespan (the last end) or
  latency (completions as sums of iteration lengths, through local big-Ms).

Time unit
---------
Times are in units of ``10^floor(log10(d_min))`` seconds
(:func:`default_time_unit_s`), so that an iteration lasts 1 to 10 units: HiGHS's
absolute feasibility tolerance (``1e-6``) would otherwise let each ``d_k`` fall
short of ``t(phi_k)`` by up to ``1e-6`` seconds (seen: ``6e-7`` per iteration,
``4e-6`` on a latency of 9 s), more than the ``1e-6`` relative agreement asked of
the model.

Solving
-------
:func:`solve` runs through the solve driver (:mod:`lsched.formulations.driver`),
which gives it the best heuristic schedule (or ``initial_solution``) and reports
the *exact* objective
(:func:`~lsched.formulations.timed.problem.timed_objective`) of the best schedule
(HiGHS's, compacted, or the start). The backend cuts the windows with the
start's objective, builds the model, and passes it to HiGHS with that schedule
as MIP start (:mod:`lsched.formulations.solvers.highs`, wall-clock limit and
progress). The limit covers the build too: it checks the clock as it goes and
is given up, returning the start, when it would overrun
(:func:`lsched.formulations.solvers.highs.build_and_load`); HiGHS gets the time
left. Objectives are continuous: HiGHS stops at its ``mip_rel_gap`` (``1e-6`` by
default here, :data:`DEFAULT_OPTIONS`), and the driver calls the schedule
optimal when the bound meets the exact objective within
:data:`~lsched.formulations.result.OPTIMALITY_RTOL`.

HiGHS 1.16 was seen to report, for a MIP start, "feasible in the reduced space:
objective value 8.908" for a start of objective 8.953 (one ``M_l`` less), then
prune with that value and return "optimal 8.908" together with the start's
values. The backend therefore checks that HiGHS's objective is the objective of
the values it returns (``cost . x``) and, if not, solves again without the start
(``info["restarted_without_start"]``); the start's schedule is still kept if it
is the best.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC

from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.solvers import highs
from lsched.formulations.solvers.highs import BuildStopped, HighsOutcome, LoadedModel
from lsched.formulations.timed.incumbent import latest_starts, starting_schedule
from lsched.formulations.timed.milp.constraints import (
    add_assignment,
    add_durations,
    add_existence,
    add_features,
    add_limits,
    add_time,
)
from lsched.formulations.timed.milp.objective import add_objective
from lsched.formulations.timed.milp.variables import (
    MilpData,
    TimedModel,
    add_variables,
)
from lsched.formulations.timed.model import TIMED
from lsched.formulations.timed.problem import TimedProblem

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "milp/timed"

#: HiGHS options set by :func:`solve` (the caller's ``params`` override them).
DEFAULT_OPTIONS: dict[str, float] = {"mip_rel_gap": 1e-6, "mip_abs_gap": 1e-9}


def default_time_unit_s(problem: TimedProblem) -> float:
    """``10^floor(log10(d_min))`` seconds (``d_max`` if ``d_min = 0``): the MILP's
    time unit, so that an iteration lasts 1 to 10 units and HiGHS's absolute
    tolerances (``1e-6``) are small against it."""
    base = problem.min_duration_s or problem.max_duration_s or 1.0
    return 10.0 ** math.floor(math.log10(base))


def build_model(
    problem: TimedProblem,
    latest: npt.ArrayLike,
    *,
    time_unit_s: float | None = None,
    stop_at: float | None = None,
) -> TimedModel:
    """The timed MILP of ``problem`` with start windows ``[0, latest_i]``.

    Times are in units of ``time_unit_s`` seconds (:func:`default_time_unit_s` by
    default); the objective is ``sum_i w_i C_i`` (latency) or the last end
    (makespan) in those units, without the constant
    :attr:`~lsched.formulations.timed.problem.TimedProblem.objective_offset`.

    Past ``stop_at`` (``time.monotonic()``), or on a user's stop request, the
    build gives up with :class:`~lsched.formulations.solvers.highs.BuildStopped`
    (checked once per request or iteration of each family of rows).
    """
    unit = default_time_unit_s(problem) if time_unit_s is None else float(time_unit_s)
    # millions of small objects: Python's cyclic collector would walk the growing
    # model again and again (26-33 % of the build on Jaillet n = 20 and 30)
    with PauseGC():
        data = MilpData.of(problem, latest, unit, stop_at)
        m = pyo.ConcreteModel(name=f"timed:{problem.name}")
        add_variables(m, data)
        add_assignment(m, data)
        add_limits(m, data)
        add_existence(m, data)
        features = add_features(m, data)
        add_durations(m, data, features)
        add_time(m, data)
        add_objective(m, data)
    return TimedModel(
        model=m,
        problem=problem,
        latest=data.latest,
        time_unit_s=unit,
        counts=data.counts,
    )


def lp_bound(
    problem: TimedProblem,
    *,
    time_limit: float = 60.0,
    time_unit_s: float | None = None,
) -> float:
    """The LP relaxation of :func:`solve`'s model, in seconds of objective.

    A lower bound on the timed optimum: the start windows come from the best
    heuristic's objective (no optimal schedule starts later), the rest is the
    model with its binaries relaxed. ``-inf`` unless the model is built and the
    LP solved within ``time_limit`` wall-clock seconds (heuristic and build
    included), and no stop was requested.

    Measured against the closed forms of :mod:`lsched.formulations.bounds.work`
    (2 cores), it helps where prompts are short or every request is present at
    the start: on ``jaillet(n, seed=0)`` with ``llama2-70b-a100-tp4`` the latency
    LP is 1-4 % above them (24.30 s against 23.39 s at ``n = 20``, 0.4 s), and
    on the first 20 requests of ``instances/gsm8k-n100-s0.csv`` with
    ``llama-65b-pang2025`` the makespan LP is 15 % above (5.50 s against 4.77 s,
    7.5 s). With prompts of 50-800 tokens arriving over 5 s it is below them
    for both objectives (10 requests, 154 output tokens: makespan 4.59 s
    against 5.43 s; the latency LP, whose completions are big-M sums, even
    below zero), and its latency LP does not finish in 10 s from about 400
    output tokens in all. Threshold regimes (more big-M rows) weaken it too.
    """
    began = time.monotonic()
    deadline = began + float(time_limit)
    _, start, exact = starting_schedule(problem, None)
    latest = np.maximum(latest_starts(problem, exact), start)
    try:
        built, loaded = highs.build_and_load(
            lambda: build_model(
                problem, latest, time_unit_s=time_unit_s, stop_at=deadline
            ),
            lambda b: b.model,
            deadline=deadline,
            relax=True,
        )
    except BuildStopped:  # out of time in the build, or stopped by the user
        return -math.inf
    value = highs.lp_relaxation(loaded, deadline=deadline)
    return value * built.time_unit_s + problem.objective_offset


def _seconds(problem: TimedProblem, unit_s: float, value: float) -> float:
    """A model value (``unit_s`` time units, constant left out) in seconds of
    objective."""
    return value * unit_s + problem.objective_offset if math.isfinite(value) else value


def _run_highs(
    run: SolveRun,
    built: TimedModel,
    loaded: LoadedModel,
    options: dict[str, Any],
) -> tuple[HighsOutcome, LoadedModel, bool]:
    """HiGHS from the incumbent as MIP start, solved again without it if its
    objective is inconsistent (module docstring,
    :func:`~lsched.formulations.solvers.highs.run_in_from_start`): the outcome,
    the model it belongs to, and whether it was restarted."""
    problem: TimedProblem = run.problem
    unit = built.time_unit_s
    return highs.run_in_from_start(
        run,
        loaded,
        built.model,
        options=options,
        start=highs.column_values(loaded, built.values(run.start)),
        start_objective=(run.objective - problem.objective_offset) / unit,
        to_problem=lambda value: _seconds(problem, unit, value),
    )


@backend(TIMED)
def solve(run: SolveRun, *, time_unit_s: float | None = None, **params: Any) -> Attempt:
    """Solve the timed ``problem`` with HiGHS, within ``time_limit`` wall-clock seconds.

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`.
    time_unit_s
        Seconds per unit of the model's times (:func:`default_time_unit_s`).
    **params
        HiGHS options, applied last (e.g. ``mip_rel_gap=0.01``).

    Returns
    -------
    SolveResult
        ``solver="milp/timed"``; objective and bound in seconds, the objective
        recomputed exactly from ``start`` (start iterations); ``on_progress``
        gets HiGHS's model value for its incumbents. Never raises on a time-out.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a timed schedule.
    """
    # the search: build the model in the time left, then HiGHS from the incumbent
    problem: TimedProblem = run.problem
    latest = np.maximum(latest_starts(problem, run.objective), run.start)
    unit = default_time_unit_s(problem) if time_unit_s is None else float(time_unit_s)

    def search(built: TimedModel, loaded: LoadedModel, build_s: float) -> Attempt:
        outcome, loaded, restarted = _run_highs(
            run, built, loaded, {**DEFAULT_OPTIONS, **params}
        )
        if outcome.values is not None:
            found = built.start_of(highs.solution(loaded, outcome.values))
            run.offer(problem.canonical(found), "highs")
        return Attempt(
            solver=SOLVER,
            stop=outcome.stop,
            bound=_seconds(problem, unit, outcome.bound),
            infeasible=outcome.infeasible,
            info={
                **loaded.size,
                "rows": built.counts,
                "iterations": built.num_iterations,
                "nodes": outcome.nodes,
                "highs_status": outcome.model_status,
                "highs_objective": None
                if outcome.objective is None
                else _seconds(problem, unit, outcome.objective),
                "interrupted": outcome.interrupted,
                "restarted_without_start": restarted,
                "highs_runtime_s": outcome.runtime_s,
                "build_s": build_s,
                "time_unit_s": unit,
            },
        )

    return highs.search_built(
        run,
        lambda: build_model(problem, latest, time_unit_s=unit, stop_at=run.deadline),
        search,
        solver=SOLVER,
        time_unit_s=unit,
    )


__all__ = [
    "DEFAULT_OPTIONS",
    "SOLVER",
    "TimedModel",
    "build_model",
    "default_time_unit_s",
    "lp_bound",
    "solve",
]
