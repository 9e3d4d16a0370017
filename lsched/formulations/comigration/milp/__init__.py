"""MILP backend of the co-migration model (Pyomo, solved by HiGHS).

The model of :mod:`lsched.formulations.comigration`, one module per part:
:mod:`~.variables` (``x``, ``y``, ``o``, ``T``), :mod:`~.constraints` (assignment,
placement, slots, overflow) and :mod:`~.objective` (the epigraph of the max).
Times are in seconds: the coefficients are seconds per request (``e_i``, ``m``),
per block (``beta``) and per adapter (``l_k``), of the order of 1e-4 to 10, well
above HiGHS's absolute tolerances (1e-6), so no time unit is needed.

:func:`solve` runs through the solve driver (:mod:`lsched.formulations.driver`):
HiGHS starts from the incumbent (no move, or ``initial_solution``) as MIP start,
with ``mip_rel_gap = 1e-7`` (:data:`DEFAULT_OPTIONS`, inside the driver's
optimality tolerance); its assignment is read off ``x`` (the largest
``x[i, j]`` per request) and offered to the run, which scores it exactly.
HiGHS 1.16 was seen to answer "optimal" with the start's values and a wrong
objective and bound (988 s for a start of 2,256 s whose optimum is 1,623 s, at
512 requests in ``benchmarks/comigration``): such an answer is solved again
without the start (:func:`~lsched.formulations.solvers.highs.run_in_from_start`,
``info["restarted_without_start"]``).
"""

from __future__ import annotations

from typing import Any

import pyomo.environ as pyo

from lsched.formulations.comigration.milp.constraints import add_constraints
from lsched.formulations.comigration.milp.objective import add_objective
from lsched.formulations.comigration.milp.variables import (
    CoMigrationModel,
    add_variables,
)
from lsched.formulations.comigration.model import COMIGRATION
from lsched.formulations.comigration.problem import CoMigrationProblem
from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.solvers import highs
from lsched.formulations.solvers.highs import LoadedModel

__all__ = ["DEFAULT_OPTIONS", "SOLVER", "build_model", "solve"]

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "milp/comigration"
#: HiGHS options set by :func:`solve` (the caller's ``params`` override them).
DEFAULT_OPTIONS: dict[str, float] = {"mip_rel_gap": 1e-7, "mip_abs_gap": 1e-9}


def build_model(problem: CoMigrationProblem) -> CoMigrationModel:
    """The co-migration MILP of ``problem``."""
    m = pyo.ConcreteModel(name="comigration")
    used = add_variables(m, problem)
    add_constraints(m, problem, used)
    add_objective(m, problem, used)
    return CoMigrationModel(model=m, problem=problem, used=used)


@backend(COMIGRATION)
def solve(run: SolveRun, **params: Any) -> Attempt:
    """dLoRA's co-migration with HiGHS, from the incumbent.

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`; ``initial_solution`` is a
        replica per request (no move by default).
    **params
        HiGHS options, applied last.

    Returns
    -------
    SolveResult
        ``solver="milp/comigration"``; ``start`` a replica per request
        (:class:`~lsched.formulations.comigration.MigrationPlan` turns it into
        moves and loads), the objective its exact ``max_j T_j`` in seconds.
        Never raises on a time-out.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a feasible assignment.
    """
    # the search: build the model, then HiGHS from the incumbent
    problem: CoMigrationProblem = run.problem

    def search(built: CoMigrationModel, loaded: LoadedModel, build_s: float) -> Attempt:
        outcome, loaded, restarted = highs.run_in_from_start(
            run,
            loaded,
            built.model,
            options={**DEFAULT_OPTIONS, **params},
            start=highs.column_values(loaded, built.values(run.start)),
            start_objective=run.objective,
        )
        if outcome.values is not None:
            found = built.assignment(highs.solution(loaded, outcome.values))
            run.offer(found, "highs")
        return Attempt(
            solver=SOLVER,
            stop=outcome.stop,
            bound=outcome.bound,
            infeasible=outcome.infeasible,
            info={
                **loaded.size,
                "nodes": outcome.nodes,
                "highs_status": outcome.model_status,
                "interrupted": outcome.interrupted,
                "restarted_without_start": restarted,
                "build_s": build_s,
            },
        )

    return highs.search_built(run, lambda: build_model(problem), search, solver=SOLVER)
