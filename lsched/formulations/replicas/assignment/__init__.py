"""The assignment problem: Pang et al.'s minimum-makespan bin packing (:func:`assign`).

Its data and LPT heuristic are in :mod:`.problem`, what the solve driver
(:mod:`lsched.formulations.driver`) sees of it in :mod:`.model`, and its two
backends in :mod:`.cpsat` (OR-Tools) and :mod:`.milp` (Pyomo + HiGHS), each with
its variables, constraints and objective.

Loads ``l_i >= 0``, replicas ``c = 0..C-1``, booleans ``x_ic`` (``i`` on ``c``)::

    min T   s.t.   sum_c x_ic = 1              (every request on one replica)
                   sum_i l_i x_ic <= T         (every replica's load)

Replicas are identical, so with requests ranked by decreasing load (LPT order, ties
by position) the request of rank ``k`` may go only to replicas ``0..k``
(``x_ic = 0`` for ``c > rank(i)``): relabelling the replicas in the order in which
they first receive a request, in rank order, turns any assignment into one that
meets this, with the same loads. Both backends start from LPT (each request, largest
first, to the least-loaded replica, ties to the lowest id), which meets it too.

The solvers see integer loads: the loads themselves when they are integers (token
counts, KV areas), else ``w_i = round(l_i / q)`` on a grid ``q = max_i l_i / G``
(``load_steps``, ``G = 1000`` by default). An integer objective lets both backends
stop at an absolute gap below one unit (CP-SAT natively; HiGHS with ``mip_abs_gap =
1 - 1e-6``). The reported objective is always the true ``max_c sum_{i on c} l_i`` of
the returned assignment (the solver's or LPT's, whichever is smaller on the true
loads), and the reported bound stays valid for the true loads: the larger of
:func:`assignment_lower_bound` and ``q B - E+``, with ``B`` the solver's integer bound
and ``E+ = sum_i max(0, q w_i - l_i)`` the most rounding can have added to a
replica. ``OPTIMAL`` means optimal for the integer loads: exactly optimal when the
loads are integers, otherwise within the reported certified gap, which is then at
most ``sum_i |q w_i - l_i| <= n q / 2`` in absolute terms. Why ``G = 1000``: the
loads are estimates good to a few per cent, and on 100-1000 GSM8K requests over 4
replicas the rounded problem is proved optimal in under 2 s by CP-SAT with
certified gaps below 1e-4 (HiGHS in 2-13 s), while ``G = 10^6`` (gaps near 1e-7)
was not proved by either in 30 s (``benchmarks/replicas/README.md``).

When LPT already meets the free bound (:attr:`AssignmentProblem.lower`) no solver
runs (``solver="lpt"``). The status is the driver's, for the integer loads.
"""

from __future__ import annotations

import time
from typing import Any

import numpy.typing as npt

from lsched.checks import check_int, check_seed, check_time_limit, check_workers
from lsched.errors import InputError
from lsched.formulations.driver import Attempt, Model, Search, SolveRun, drive
from lsched.formulations.replicas.assignment import cpsat, milp
from lsched.formulations.replicas.assignment.model import (
    ASSIGNMENT,
    lpt_is_better,
    packing_fields,
)
from lsched.formulations.replicas.assignment.problem import (
    DEFAULT_LOAD_STEPS,
    AssignmentProblem,
    assignment_lower_bound,
    lpt,
)
from lsched.formulations.replicas.loads import resolve_loads
from lsched.formulations.replicas.results import AssignmentResult
from lsched.formulations.result import SolveResult, Stop
from lsched.instance import Instance
from lsched.profile import DeploymentProfile

__all__ = [
    "BACKENDS",
    "DEFAULT_LOAD_STEPS",
    "AssignmentProblem",
    "assign",
    "assignment_lower_bound",
    "lpt",
    "solve_packing",
]

#: Backends of :func:`assign`.
BACKENDS: tuple[str, ...] = ("cpsat", "milp")


def solve_packing(
    model: Model,
    search: Search,
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    options: dict[str, Any],
    *,
    backend: str,
    load: npt.ArrayLike | str | None,
    load_steps: int,
    params: dict[str, Any],
) -> tuple[AssignmentProblem, SolveResult]:
    """A packing model (:func:`assign`,
    :func:`lsched.formulations.pang_offline.assign_ordered`) solved through the
    driver: its arguments checked, its problem built and its ``search`` run, all
    within ``options["time_limit"]`` (``options`` also holds ``num_workers`` and
    ``seed``).

    Raises
    ------
    InputError
        On a bad time limit, backend, replica count, worker count, seed, load or
        ``load_steps``.
    """
    began = time.monotonic()
    time_limit, num_workers, seed = (
        options["time_limit"],
        options["num_workers"],
        options["seed"],
    )
    check_time_limit(time_limit)
    if backend not in BACKENDS:
        raise InputError(
            f"got {backend!r}; expected one of {', '.join(BACKENDS)}", field="backend"
        )
    replicas = check_int(replicas, "replicas", 1)
    check_workers(num_workers)
    check_seed(seed)
    load_s = resolve_loads(instance, profile, load)
    problem = AssignmentProblem(load_s, replicas, load_steps)
    result = drive(
        model,
        search,
        problem,
        began=began,
        backend=backend,
        params=params,
        **options,
    )
    return problem, result


def _search(run: SolveRun, *, backend: str, params: dict[str, Any]) -> Attempt:
    """LPT when it meets the free bound, else the ``backend``'s search."""
    if run.objective <= run.problem.lower:
        return Attempt(solver="lpt", stop=Stop.FINISHED)
    search = cpsat.solve.search if backend == "cpsat" else milp.solve.search
    return search(run, **params)


def assign(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    backend: str = "cpsat",
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    load: npt.ArrayLike | str | None = None,
    load_steps: int = DEFAULT_LOAD_STEPS,
    **params: Any,
) -> AssignmentResult:
    """Minimum-makespan assignment of requests to ``replicas`` identical replicas.

    Parameters
    ----------
    instance
        The requests (Pang et al.: all present at time 0; arrivals are ignored).
    profile
        Prices the default loads
        (:func:`~lsched.formulations.replicas.loads.request_loads_s`).
    replicas
        ``C >= 1``.
    backend
        ``"cpsat"`` (OR-Tools) or ``"milp"`` (Pyomo + HiGHS).
    time_limit
        Wall-clock seconds for the whole call.
    num_workers
        CP-SAT workers or HiGHS threads.
    seed
        The solver's random seed.
    load
        ``None`` or ``"profile"``
        (:func:`~lsched.formulations.replicas.loads.request_loads_s`), ``"tokens"``
        (``s_i + o_i``) or one load ``>= 0`` per request.
    load_steps
        Grid steps of the largest load when the loads are not integers (module
        docstring): finer is more exact and slower to prove.
    **params
        Further CP-SAT parameters or HiGHS options.

    Returns
    -------
    AssignmentResult
        Never raises on a time-out: LPT's assignment at worst. When LPT already
        meets :func:`assignment_lower_bound` no solver runs (``solver="lpt"``).

    Raises
    ------
    InputError
        On a bad backend, replica count, time limit or load.
    """
    options = {"time_limit": time_limit, "num_workers": num_workers, "seed": seed}
    problem, result = solve_packing(
        ASSIGNMENT, _search, instance, profile, replicas, options,
        backend=backend, load=load, load_steps=load_steps, params=params,
    )  # fmt: skip
    found = result.start
    assert found is not None  # LPT is always a feasible assignment
    best = problem.lpt_assignment if lpt_is_better(problem, found) else found
    return AssignmentResult(
        solver=result.solver, **packing_fields(problem, result, best)
    )
