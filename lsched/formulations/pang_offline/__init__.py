"""Pang et al.'s offline stage as an MIP over assignment *and* order per client.

B. Pang, K. Li, R. She, F. Wang, arXiv:2502.15763 (2025) frame the offline stage as
a mixed-integer program that assigns every request (all present at ``t = 0``) to one
of ``C`` identical clients and orders each client's requests, minimising the
makespan; they then solve it as a minimum-makespan bin packing
(:func:`lsched.formulations.replicas.assign`). This package states the MIP with the
order explicit, beside that packing, on the same data: the per-request load ``l_i``
of :func:`lsched.formulations.replicas.request_loads_s` (each request's estimated
processing time on one client, seconds; the paper's cost model is a processing time
per request), rounded to the same integer grid ``w_i`` as the packing.

The model (:func:`assign_ordered`)
----------------------------------
Requests ``i = 0..n-1``, clients ``c = 0..C-1``, positions ``k = 0..n-1``.

Pyomo + HiGHS (``backend="milp"``), positional: booleans ``z_ick`` (request ``i`` is
the ``k``-th on client ``c``), completion times ``F_ck >= 0`` of position ``k`` and
the makespan ``T``::

    min T   s.t.   sum_{c,k} z_ick = 1                     (each request placed once)
                   sum_i z_ick <= 1                         (a position holds one)
                   sum_i z_ick <= sum_i z_ic(k-1),  k >= 1  (positions fill in order)
                   F_ck >= F_c(k-1) + sum_i w_i z_ick       (F_c(-1) = 0)
                   T >= F_c(n-1)

CP-SAT (``backend="cpsat"``), disjunctive: booleans ``x_ic``, ``sum_c x_ic = 1``,
one optional interval ``[S_ic, S_ic + w_i)`` present iff ``x_ic``, one
``no_overlap`` per client (the order is the order of the starts), ``T >= S_ic +
w_i`` when ``x_ic``, and the implied ``sum_i w_i x_ic <= T`` (every present
interval fits in ``[0, T)`` without overlap) to give the LP the packing's bound.

Both models use the packing's symmetry breaking (the request of LPT rank ``r`` may
go only to clients ``0..r``; :mod:`lsched.formulations.replicas.assignment`), its
data (:class:`~lsched.formulations.replicas.AssignmentProblem`), its LPT start
(each client's requests in LPT order), its lower bound
(:func:`~lsched.formulations.replicas.assignment_lower_bound`) and its conversion
of the integer objective and bound back to the true loads (objective: the true
largest client load of the returned assignment, or LPT's if smaller; bound:
``max(assignment_lower_bound, q B - E+)``). Both run through the solve driver
(:mod:`lsched.formulations.driver`; the model in :mod:`.model`, the backends in
:mod:`.milp` and :mod:`.cpsat`), which decides the status for the integer loads.

Order does not change the makespan: the MIP *is* the packing
-------------------------------------------------------------------------------
Under this cost model a request's processing time does not depend on where it
stands in its client's sequence, so a client's completion time is the sum of its
loads in every order. Formally, in the positional model ``F_c(n-1) >= sum_k sum_i
w_i z_ick = sum_{i on c} w_i`` by chaining the completion rows, so every feasible
``T`` is at least the largest client load, i.e. at least the packing's objective
for the same assignment; and every assignment with any order (``F`` the prefix
sums) reaches exactly that load. In the disjunctive model, the intervals of a
client do not overlap inside ``[0, T)``, so ``T >= sum_{i on c} w_i``, and the
back-to-back schedule reaches it. Hence both MIPs have the same optimum as
the packing, and their bounds are bounds on the packing (and conversely). The
order variables are free at every optimum: the MIP adds ``n C`` to ``n^2 C``
variables and no information. The tests check this numerically (both backends
agree with each other, with the packing and with brute force on ``n <= 12``,
``C = 2, 3``); ``benchmarks/replicas/bench_pang_offline.py`` reports it on GSM8K
cases (``benchmarks/replicas/README.md``): same objectives and bounds as the
packing, but slower to prove, since the free order multiplies the symmetric optima
(at ``n = 1000, C = 2`` the ordered CP-SAT model stops at a 10 s limit where the
packing is proved in under 1 s; the positional MILP already hits 10 s at ``n = 10``
once). What the paper's order would add must come from an order-dependent cost
(batching, KV occupancy, prefill/decode interference), which their offline cost
model does not have and which lsched prices in the online stage and in the slot
models (:func:`lsched.formulations.replicas.solve_joint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.driver import Attempt, SolveRun
from lsched.formulations.pang_offline import cpsat, milp
from lsched.formulations.pang_offline.model import ORDERED, lpt_positions
from lsched.formulations.replicas.assignment import (
    DEFAULT_LOAD_STEPS,
    solve_packing,
)
from lsched.formulations.replicas.assignment.model import (
    lpt_is_better,
    packing_fields,
)
from lsched.formulations.replicas.results import AssignmentResult
from lsched.instance import Instance
from lsched.profile import DeploymentProfile

__all__ = ["OrderedAssignmentResult", "assign_ordered", "lpt_positions"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class OrderedAssignmentResult(AssignmentResult):
    """:class:`~lsched.formulations.replicas.AssignmentResult` plus the order.

    Attributes
    ----------
    position
        Position of every request in its client's sequence (0 first; int64).
        Free at the optimum (module docstring): any order has the same makespan.
    """

    position: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        super().__post_init__()
        position = np.array(self.position, dtype=np.int64)
        if position.shape != self.assignment.shape:
            raise InputError("expected one position per request", field="position")
        position.flags.writeable = False
        object.__setattr__(self, "position", position)


def _search(run: SolveRun, *, backend: str, params: dict[str, Any]) -> Attempt:
    """The ``backend``'s search (no LPT shortcut: the solver always runs)."""
    search = cpsat.search if backend == "cpsat" else milp.search
    return search(run, params)


def assign_ordered(
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
) -> OrderedAssignmentResult:
    """Minimum-makespan assignment and order per client (module docstring).

    Same parameters, loads, grid and conversions as
    :func:`lsched.formulations.replicas.assign`; the solver always runs (no LPT
    shortcut), on the ordered model. Positional MILP size grows as ``n^2 C``:
    meant for small cases and for checking the equivalence with the packing.

    Returns
    -------
    OrderedAssignmentResult
        Status decided by the solve driver for the integer loads; LPT (in LPT
        order) at worst.
    """
    options = {"time_limit": time_limit, "num_workers": num_workers, "seed": seed}
    problem, result = solve_packing(
        ORDERED, _search, instance, profile, replicas, options,
        backend=backend, load=load, load_steps=load_steps, params=params,
    )  # fmt: skip
    assert result.start is not None  # LPT is always a feasible schedule
    where, position = result.start
    if lpt_is_better(problem, where):  # rounding: LPT better on the true loads
        where = problem.lpt_assignment
        position = lpt_positions(problem.load_s, where)
    return OrderedAssignmentResult(
        solver=result.solver,
        position=position,
        **packing_fields(problem, result, where),
    )
