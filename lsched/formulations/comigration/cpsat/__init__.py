"""CP-SAT backend of the co-migration model (OR-Tools), on integer time.

The model of :mod:`lsched.formulations.comigration`, one module per part:
:mod:`~.variables`, :mod:`~.constraints`, :mod:`~.objective`, with its times
scaled to integers by :mod:`~.scale` (units of ``1 / U`` seconds, ``U = 10^9``
unless the data is too large, every coefficient rounded to the nearest unit;
the rounding bound ``Delta`` is subtracted from CP-SAT's bound).

:func:`solve` runs through the solve driver (:mod:`lsched.formulations.driver`):
the incumbent (no move, or ``initial_solution``) is the hint and its integer
time the upper end of ``T``; every assignment CP-SAT finds is offered to the
run, which scores it exactly. With data on the unit grid CP-SAT's optimum is
the driver's ``optimal``; otherwise within ``2 Delta`` of the optimum, the
driver's status deciding by the certified gap.
"""

from __future__ import annotations

from typing import Any

from ortools.sat.python import cp_model

from lsched.formulations.comigration.cpsat.constraints import add_constraints
from lsched.formulations.comigration.cpsat.objective import add_objective
from lsched.formulations.comigration.cpsat.scale import TimeScale
from lsched.formulations.comigration.cpsat.variables import CpVariables, add_variables
from lsched.formulations.comigration.model import COMIGRATION
from lsched.formulations.comigration.problem import CoMigrationProblem
from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.solvers.cpsat import ProgressRecorder, solve_in_run

__all__ = ["SOLVER", "TimeScale", "solve"]

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "cpsat/comigration"


class _Recorder(ProgressRecorder):
    """Offers CP-SAT's assignments to the run and logs its bounds in seconds."""

    def __init__(self, run: SolveRun, v: CpVariables, scale: TimeScale) -> None:
        super().__init__(run)
        self._v = v
        self._scale = scale

    def on_solution_callback(self) -> None:
        self._run.offer(self._v.assignment(self.value), "cpsat")

    def on_bound(self, bound: float) -> None:
        self._run.record(None, self._scale.seconds(bound))


@backend(COMIGRATION)
def solve(run: SolveRun, *, time_unit_s: float | None = None, **params: Any) -> Attempt:
    """dLoRA's co-migration with CP-SAT on integer time, from the incumbent.

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`; ``initial_solution`` is a
        replica per request (no move by default).
    time_unit_s
        Seconds per integer time unit (:mod:`~.scale` chooses by default).
    **params
        Further CP-SAT parameters.

    Returns
    -------
    SolveResult
        ``solver="cpsat/comigration"``; ``start`` a replica per request, the
        objective its exact ``max_j T_j`` in seconds, the bound valid for it
        (CP-SAT's less ``Delta``). ``info`` holds ``time_unit_s`` and
        ``rounding_bound_s``. Never raises on a time-out.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a feasible assignment, or on a bad
        parameter.
    """
    # the search: the model on integer time, the incumbent as hint, CP-SAT in the
    # time left
    problem: CoMigrationProblem = run.problem
    scale = TimeScale.choose(problem, time_unit_s)
    model = cp_model.CpModel()
    v = add_variables(model, problem, scale.integer_objective(problem, run.start))
    add_constraints(model, problem, v)
    add_objective(model, problem, v, scale)
    v.hint(model, problem, run.start)
    outcome = solve_in_run(run, model, params, _Recorder(run, v, scale))
    if outcome.found:
        run.offer(v.assignment(outcome.solver.value), "cpsat")
    return Attempt(
        solver=SOLVER,
        stop=outcome.stop,
        bound=scale.seconds(outcome.bound()),
        infeasible=outcome.infeasible,
        info={
            **outcome.info(),
            "conflicts": outcome.solver.num_conflicts,
            "time_unit_s": 1.0 / scale.units_per_s,
            "rounding_bound_s": scale.error_bound_s,
        },
    )
