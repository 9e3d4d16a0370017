"""Pang et al.'s offline stage as an MIP over assignment *and* order per client.

B. Pang, K. Li, R. She, F. Wang, arXiv:2502.15763 (2025) frame the offline stage as
a mixed-integer program that assigns every request (all present at ``t = 0``) to one
of ``C`` identical clients and orders each client's requests, minimising the
makespan; they then solve it as a minimum-makespan bin packing
(:func:`lsched.formulations.replicas.assign`). This module states the MIP with the
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
go only to clients ``0..r``; :mod:`lsched.formulations.replicas`), its LPT start
(each client's requests in LPT order), its lower bound
(:func:`~lsched.formulations.replicas.assignment_lower_bound`) and its conversion
of the integer objective and bound back to the true loads (objective: the true
largest client load of the returned assignment, or LPT's if smaller; bound:
``max(assignment_lower_bound, q B - E+)``).

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

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from ortools.sat.python import cp_model

from lsched.errors import InputError
from lsched.formulations.replicas import (
    DEFAULT_LOAD_STEPS,
    AssignmentResult,
    _allowed,
    _Outcome,
    _packing_inputs,
    _rank_order,
    assignment_lower_bound,
    lpt,
)
from lsched.formulations.result import (
    CPSAT_OTHER_LIMITS,
    cpsat_stop,
    decide_status,
)
from lsched.formulations.solvers import highs as _highs
from lsched.formulations.solvers.cpsat import configured_solver, solve_stoppable
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


def lpt_positions(load_s: npt.ArrayLike, where: IntArray) -> IntArray:
    """Each request's position on its client, the client's requests in LPT order."""
    load = np.asarray(load_s, dtype=np.float64)
    position = np.zeros(len(load), dtype=np.int64)
    seen: dict[int, int] = {}
    for i in _rank_order(load).tolist():
        c = int(where[i])
        position[i] = seen.get(c, 0)
        seen[c] = position[i] + 1
    return position


def _ordered_cpsat(
    w: IntArray,
    allowed: list[list[int]],
    replicas: int,
    lower: int,
    upper: int,
    hint: IntArray,
    hint_position: IntArray,
    time_limit: float,
    num_workers: int,
    seed: int,
    params: dict[str, Any],
) -> tuple[_Outcome, IntArray | None]:
    model = cp_model.CpModel()
    n = len(w)
    makespan = model.new_int_var(lower, upper, "makespan")
    x: list[dict[int, Any]] = []
    start: list[dict[int, Any]] = []
    per_client: list[list[Any]] = [[] for _ in range(replicas)]
    for i in range(n):
        x.append({})
        start.append({})
        for c in allowed[i]:
            present = model.new_bool_var(f"x{i}_{c}")
            begin = model.new_int_var(0, max(0, upper - int(w[i])), f"s{i}_{c}")
            interval = model.new_optional_fixed_size_interval_var(
                begin, int(w[i]), present, f"iv{i}_{c}"
            )
            model.add(makespan >= begin + int(w[i])).only_enforce_if(present)
            x[i][c], start[i][c] = present, begin
            per_client[c].append(interval)
        model.add_exactly_one(x[i].values())
    for c in range(replicas):
        model.add_no_overlap(per_client[c])
        on_c = [(int(w[i]), x[i][c]) for i in range(n) if c in x[i]]
        model.add(sum(k * v for k, v in on_c) <= makespan)  # implied (docstring)
    model.minimize(makespan)
    # hint: LPT, each client's requests back to back in LPT order
    begins = np.zeros(n, dtype=np.int64)
    for c in range(replicas):
        mine = np.flatnonzero(hint == c)
        order = mine[np.argsort(hint_position[mine], kind="stable")]
        begins[order] = np.cumsum(w[order]) - w[order]
    for i in range(n):
        for c, v in x[i].items():
            model.add_hint(v, int(hint[i] == c))
            model.add_hint(start[i][c], int(begins[i]) if hint[i] == c else 0)
    solver = configured_solver(max(0.0, time_limit), num_workers, seed, params)
    code, interrupted = solve_stoppable(solver, model)
    where = position = None
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        where = np.array(
            [next(c for c, v in x[i].items() if solver.value(v)) for i in range(n)],
            dtype=np.int64,
        )
        at = np.array([solver.value(start[i][int(where[i])]) for i in range(n)])
        position = np.zeros(n, dtype=np.int64)
        for c in range(replicas):
            mine = np.flatnonzero(where == c)
            position[mine[np.lexsort((mine, at[mine]))]] = np.arange(len(mine))
    stop = cpsat_stop(
        solver.status_name(code),
        interrupted=interrupted,
        other_limits=bool(CPSAT_OTHER_LIMITS & params.keys()),
    )
    bound = float(solver.best_objective_bound)
    if not math.isfinite(bound):
        bound = -math.inf
    info = {
        "cpsat_status": solver.status_name(code),
        "branches": solver.num_branches,
        "variables": 2 * sum(len(a) for a in allowed) + 1,
    }
    return _Outcome(stop, where, bound, info), position


def _ordered_milp(
    w: IntArray,
    allowed: list[list[int]],
    replicas: int,
    lower: int,
    upper: int,
    hint: IntArray,
    hint_position: IntArray,
    deadline: float,
    num_workers: int,
    seed: int,
    params: dict[str, Any],
) -> tuple[_Outcome, IntArray | None]:
    n = len(w)
    slots = range(n)
    triples = [(i, c, k) for i in range(n) for c in allowed[i] for k in slots]
    on = [[i for i in range(n) if c in allowed[i]] for c in range(replicas)]
    model = pyo.ConcreteModel()
    model.z = pyo.Var(triples, within=pyo.Binary)
    model.finish = pyo.Var(range(replicas), slots, within=pyo.NonNegativeReals)
    model.makespan = pyo.Var(within=pyo.NonNegativeIntegers, bounds=(lower, upper))

    def held(m: pyo.ConcreteModel, c: int, k: int) -> Any:
        return sum(m.z[i, c, k] for i in on[c])

    model.placed = pyo.Constraint(
        range(n),
        rule=lambda m, i: sum(m.z[i, c, k] for c in allowed[i] for k in slots) == 1,
    )
    # a client no request may use (symmetry breaking with few requests) has no
    # position rows: they would be the constant 0 <= 1
    model.one_per_position = pyo.Constraint(
        range(replicas),
        slots,
        rule=lambda m, c, k: held(m, c, k) <= 1 if on[c] else pyo.Constraint.Skip,
    )
    model.in_order = pyo.Constraint(
        range(replicas),
        slots,
        rule=lambda m, c, k: (
            held(m, c, k) <= held(m, c, k - 1) if k and on[c] else pyo.Constraint.Skip
        ),
    )
    model.completion = pyo.Constraint(
        range(replicas),
        slots,
        rule=lambda m, c, k: (
            m.finish[c, k]
            >= (m.finish[c, k - 1] if k else 0)
            + sum(int(w[i]) * m.z[i, c, k] for i in on[c])
        ),
    )
    model.last = pyo.Constraint(
        range(replicas), rule=lambda m, c: m.makespan >= m.finish[c, n - 1]
    )
    model.objective = pyo.Objective(expr=model.makespan, sense=pyo.minimize)
    loaded = _highs.load(model)
    # MIP start: LPT, each client's requests in LPT order, completions the prefix sums
    value: dict[int, float] = {id(model.makespan): float(upper)}
    for i, c, k in triples:
        value[id(model.z[i, c, k])] = float(hint[i] == c and hint_position[i] == k)
    for c in range(replicas):
        mine = np.flatnonzero(hint == c)
        order = mine[np.argsort(hint_position[mine], kind="stable")]
        done = np.cumsum(w[order])
        for k in slots:
            reached = float(done[min(k, len(done) - 1)]) if len(done) else 0.0
            value[id(model.finish[c, k])] = reached
    start = np.array([value[id(v)] for v in loaded.columns], dtype=np.float64)
    outcome = _highs.run(
        loaded,
        deadline=deadline,
        threads=num_workers,
        seed=seed,
        options={"mip_rel_gap": 0.0, "mip_abs_gap": 1.0 - 1e-6, **params},
        start=start,
        start_objective=float(upper),
    )
    where = position = None
    if outcome.values is not None:
        got = dict(zip((id(v) for v in loaded.columns), outcome.values, strict=True))
        where = np.zeros(n, dtype=np.int64)
        position = np.zeros(n, dtype=np.int64)
        for i in range(n):
            c, k = max(
                ((c, k) for c in allowed[i] for k in slots),
                key=lambda ck: got[id(model.z[i, ck[0], ck[1]])],
            )
            where[i], position[i] = c, k
    bound = outcome.bound
    bound = float(math.ceil(bound - 1e-6)) if math.isfinite(bound) else -math.inf
    info = {
        **loaded.size,
        "highs_status": outcome.model_status,
        "nodes": outcome.nodes,
        "interrupted": outcome.interrupted,
    }
    return _Outcome(outcome.stop, where, bound, info), position


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
        Status via :func:`~lsched.formulations.result.decide_status`; LPT (in LPT
        order) at worst.
    """
    began, deadline, replicas, num_workers, seed, load_s, w, q, excess, rank = (
        _packing_inputs(
            instance, profile, replicas, backend, time_limit, num_workers, seed,
            load, load_steps,
        )
    )  # fmt: skip
    hint = lpt(load_s, replicas)
    hint_position = lpt_positions(load_s, hint)
    float_bound = assignment_lower_bound(load_s, replicas)
    lower = math.ceil(assignment_lower_bound(w, replicas) - 1e-9)
    upper = int(np.bincount(hint, weights=w, minlength=replicas).max())

    def loads_of(where: IntArray) -> npt.NDArray[np.float64]:
        return np.bincount(where, weights=load_s, minlength=replicas)

    allowed = _allowed(rank, replicas)
    args = (w, allowed, replicas, lower, upper, hint, hint_position)
    if backend == "cpsat":
        remaining = deadline - time.monotonic()
        outcome, position = _ordered_cpsat(*args, remaining, num_workers, seed, params)
    else:
        outcome, position = _ordered_milp(*args, deadline, num_workers, seed, params)
    found, found_position = hint, hint_position
    if outcome.where is not None and position is not None:
        found, found_position = outcome.where, position
    integer_objective = int(np.bincount(found, weights=w, minlength=replicas).max())
    integer_bound = max(float(lower), min(outcome.bound, float(integer_objective)))
    status = decide_status(outcome.stop, float(integer_objective), integer_bound)
    if loads_of(hint).max() < loads_of(found).max():  # rounding: LPT better on l
        found, found_position = hint, hint_position
    replica_load = loads_of(found)
    objective = float(replica_load.max())
    bound = min(objective, max(float_bound, q * integer_bound - excess))
    info: dict[str, Any] = {
        "load_step": q,
        "exact": excess == 0.0 and bool(np.all(q * w == load_s)),
        "lpt_objective": float(loads_of(hint).max()),
        **outcome.info,
    }
    return OrderedAssignmentResult(
        status=status,
        objective=objective,
        bound=bound,
        runtime_s=time.monotonic() - began,
        assignment=found,
        replica_load_s=replica_load,
        load_s=load_s,
        replicas=replicas,
        solver=f"{backend}/ordered",
        info=info,
        position=np.asarray(found_position, dtype=np.int64),
    )
