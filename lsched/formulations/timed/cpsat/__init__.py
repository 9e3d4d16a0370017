"""CP-SAT backend of the timed model: integer time, durations rounded up.

Notation of :mod:`lsched.formulations.timed.problem` and of the MILP
(:mod:`lsched.formulations.timed.milp`): windows ``0 <= S_i <= L_i``, iterations
``k < K = max_i (L_i + o_i)``, booleans ``x[i,t]`` (``S_i = t``), ``u_k``
(iteration k exists), ``H_k`` (it has a prefill), ``z[k,r]`` (regime r, for
threshold cost models with several reachable regimes); the per-iteration limits,
features and existence rules are the MILP's, written as CP-SAT linear constraints
(``H_k = max_i x[i,k]``, ``x[i,t] => u_{t + o_i - 1}``).

The model, one module per part (:func:`build` puts them together):

* :mod:`~lsched.formulations.timed.cpsat.scale`: integer time, the durations'
  coefficients rounded up, and the rounding bound ``Delta`` that this costs;
* :mod:`~lsched.formulations.timed.cpsat.variables`: the variables, and the
  hints of a schedule;
* :mod:`~lsched.formulations.timed.cpsat.constraints`: the rules;
* :mod:`~lsched.formulations.timed.cpsat.objective`: makespan or latency in
  integer time.

Solving
-------
:func:`solve` runs through the solve driver (:mod:`lsched.formulations.driver`),
which gives it the best heuristic schedule (or ``initial_solution``). The
backend cuts the windows with its objective, hints it, and runs CP-SAT in the
time left; every schedule CP-SAT finds is compacted, put in canonical order and
offered to the driver, which keeps it if its *exact* objective
(:func:`~lsched.formulations.timed.problem.timed_objective`) is better, never
CP-SAT's ``objective'``. CP-SAT's bound on ``objective'``, minus ``Delta``, is
the bound reported, so a proof of CP-SAT (``info["cpsat_status"]``
``"OPTIMAL"``) makes the schedule optimal up to ``Delta``; the driver calls it
``OPTIMAL`` only where that gap is within
:data:`~lsched.formulations.result.OPTIMALITY_RTOL` of the objective, and
``FEASIBLE`` otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.solvers.cpsat import ProgressRecorder, solve_in_run
from lsched.formulations.timed.cpsat.constraints import (
    add_assignment,
    add_durations,
    add_existence,
    add_iterations,
    add_time,
)
from lsched.formulations.timed.cpsat.objective import add_objective
from lsched.formulations.timed.cpsat.scale import RESOLUTION, TimeScale
from lsched.formulations.timed.cpsat.variables import (
    CpData,
    TimedCpModel,
    add_variables,
)
from lsched.formulations.timed.incumbent import latest_starts
from lsched.formulations.timed.model import TIMED
from lsched.formulations.timed.problem import TimedProblem, compact

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "cpsat/timed"


def build(
    problem: TimedProblem, latest: npt.ArrayLike, scale: TimeScale
) -> TimedCpModel:
    """The CP-SAT model of ``problem`` with start windows ``[0, latest_i]``."""
    data = CpData.of(problem, latest, scale)
    model = cp_model.CpModel()
    variables = add_variables(model, data)
    add_assignment(model, data, variables)
    add_existence(model, data, variables)
    features = add_iterations(model, data, variables)
    add_durations(model, data, variables, features)
    add_time(model, data, variables)
    completion = add_objective(model, data, variables)
    return TimedCpModel(
        model=model, data=data, variables=variables, completion=completion
    )


class _Recorder(ProgressRecorder):
    """Offers CP-SAT's schedules to the run and logs its bounds in seconds."""

    def __init__(self, run: SolveRun, built: TimedCpModel, delta_s: float) -> None:
        super().__init__(run)
        self._built = built
        self._delta_s = delta_s

    def seconds(self, units: float) -> float:
        """A bound on ``objective'`` (units, constant left out) as a bound on the
        exact objective: seconds, less the rounding bound."""
        problem: TimedProblem = self._run.problem
        scale = self._built.scale
        return units / scale.units_per_s + problem.objective_offset - self._delta_s

    def on_solution_callback(self) -> None:
        problem: TimedProblem = self._run.problem
        start = np.array([self.value(v) for v in self._built.start], dtype=np.int64)
        self._run.offer(problem.canonical(compact(problem, start)), "cpsat")

    def on_bound(self, bound: float) -> None:
        self._run.record(None, self.seconds(bound))


@backend(TIMED)
def solve(
    run: SolveRun,
    *,
    time_unit_s: float | None = None,
    resolution: float = RESOLUTION,
    **params: Any,
) -> Attempt:
    """Solve the timed ``problem`` with CP-SAT on integer time.

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`.
    time_unit_s
        Seconds per integer time unit; chosen from ``resolution`` by default.
    resolution
        ``rho`` of :mod:`~lsched.formulations.timed.cpsat.scale` (ignored with
        ``time_unit_s``).
    **params
        Further CP-SAT parameters.

    Returns
    -------
    SolveResult
        ``solver="cpsat/timed"``; the exact objective of ``start``, and a bound
        valid for the exact objective. ``info`` holds ``time_unit_s``,
        ``rounding_bound_s`` (``Delta``) and ``rounded_objective_s`` (CP-SAT's own
        value of the schedule). ``on_progress`` gets the exact objective of
        CP-SAT's schedules, and its bound minus the rounding bound. Never raises
        on a time-out.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a timed schedule, or on a bad parameter.
    """
    # the search: the model on integer time, the incumbent as hint, CP-SAT in the
    # time left
    problem: TimedProblem = run.problem
    latest = np.maximum(latest_starts(problem, run.objective), run.start)
    scale = TimeScale.choose(problem, time_unit_s=time_unit_s, resolution=resolution)
    built = build(problem, latest, scale)
    built.hints(run.start)
    delta = scale.error_bound_s(problem, latest)
    recorder = _Recorder(run, built, delta)
    outcome = solve_in_run(run, built.model, params, recorder)
    rounded_s = scale.objective_units(problem, run.start) / scale.units_per_s
    return Attempt(
        solver=SOLVER,
        stop=outcome.stop,
        bound=recorder.seconds(outcome.bound()),
        # impossible with a feasible hint in the windows
        infeasible=outcome.infeasible,
        info={
            **outcome.info(),
            "conflicts": outcome.solver.num_conflicts,
            "iterations": int((latest + problem.output_tokens).max()),
            "time_unit_s": 1.0 / scale.units_per_s,
            "coefficient_scale": scale.coefficient_scale,
            "duration_error_s": scale.duration_error_s,
            "rounding_bound_s": delta,
            "rounded_objective_s": rounded_s + problem.objective_offset,
        },
    )


__all__ = ["RESOLUTION", "SOLVER", "TimeScale", "TimedCpModel", "build", "solve"]
