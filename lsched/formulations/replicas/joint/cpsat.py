"""CP-SAT backend of the joint replica model
(:mod:`lsched.formulations.replicas.joint`).

Start slots ``S_i`` and replica booleans ``y_ic`` (:func:`_variables`), both
symmetry breakings (:func:`_symmetry`), per replica the optional KV staircase,
batch cap and token budget cumulatives (:func:`_replica_rules`), and the slot
objective (:func:`_objective`). The incumbent is the solution hint; CP-SAT's
objective is the slot model's integer one.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from lsched.formulations.driver import Attempt, SolveRun, backend
from lsched.formulations.replicas.joint.model import JOINT, JointProblem
from lsched.formulations.slot import SlotProblem
from lsched.formulations.solvers.cpsat import ProgressRecorder, solve_in_run

__all__ = ["SOLVER", "solve"]

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "cpsat/joint-interval"


def _variables(
    model: cp_model.CpModel, problem: JointProblem, latest_end: int
) -> tuple[list[Any], list[list[Any]]]:
    """``S_i`` in ``[r_i, latest_end - o_i]``, and ``y_ic`` with one replica each."""
    slot = problem.slot
    o, r = slot.output_tokens, slot.release
    start = [
        model.new_int_var(int(r[i]), latest_end - int(o[i]), f"S{i}")
        for i in range(len(slot))
    ]
    y = [
        [model.new_bool_var(f"y{i}_{c}") for c in range(problem.replicas)]
        for i in range(len(slot))
    ]
    for row in y:
        model.add_exactly_one(row)
    return start, y


def _symmetry(
    model: cp_model.CpModel, slot: SlotProblem, start: list[Any], y: list[list[Any]]
) -> None:
    """Replicas numbered by first use in position order; identical requests
    started in position order."""
    for i, row in enumerate(y):
        for c, var in enumerate(row):
            if c > i:
                model.add(var == 0)
            elif c > 0:
                model.add(var <= sum(y[k][c - 1] for k in range(i)))
    for group in slot.identical_groups():
        for a, b in itertools.pairwise(group.tolist()):
            model.add(start[a] <= start[b])


def _replica_rules(
    model: cp_model.CpModel, slot: SlotProblem, start: list[Any], on: list[Any], c: int
) -> None:
    """KV capacity, batch cap and token budget on replica ``c`` (``on[i]``:
    request ``i`` runs there), each as a cumulative of optional intervals."""
    n, o, s = len(slot), slot.output_tokens, slot.prompt_tokens
    seqs = slot.max_num_seqs is not None and slot.max_num_seqs < n
    budget = slot.max_num_batched_tokens is not None and (
        slot.max_num_batched_tokens < n + int((s - 1).sum())
    )
    steps, demands, whole, prefill, extra = [], [], [], [], []
    for i in range(n):
        rise = np.diff(slot.kv_table(i), prepend=0)
        for j in np.flatnonzero(rise).tolist():
            iv = model.new_optional_fixed_size_interval_var(
                start[i] + j, int(o[i]) - j, on[i], f"kv{i}_{j}_{c}"
            )
            steps.append(iv)
            demands.append(int(rise[j]))
            if j == 0:
                whole.append(iv)
        if budget and s[i] > 1:
            prefill.append(
                model.new_optional_fixed_size_interval_var(
                    start[i], 1, on[i], f"pf{i}_{c}"
                )
            )
            extra.append(int(s[i]) - 1)
    model.add_cumulative(steps, demands, slot.kv_capacity_blocks)
    if seqs:
        model.add_cumulative(whole, [1] * n, slot.max_num_seqs)
    if budget:
        model.add_cumulative(
            whole + prefill, [1] * n + extra, slot.max_num_batched_tokens
        )


def _objective(
    model: cp_model.CpModel, slot: SlotProblem, start: list[Any], latest_end: int
) -> None:
    """The slot model's integer objective (total latency, TTFT or makespan)."""
    n, o, r = len(slot), slot.output_tokens, slot.release
    end = [start[i] + int(o[i]) for i in range(n)]
    w = slot.weight.tolist()
    if slot.objective == "latency":
        model.minimize(sum(w[i] * end[i] for i in range(n)))
    elif slot.objective == "ttft":
        model.minimize(sum(w[i] * start[i] for i in range(n)))
    else:
        makespan = model.new_int_var(int((r + o).max()), latest_end, "makespan")
        model.add_max_equality(makespan, end)
        model.minimize(makespan)


def _latest_end(run: SolveRun) -> int:
    """The safe horizon, cut at the incumbent's makespan for that objective."""
    problem: JointProblem = run.problem
    if problem.slot.objective == "makespan":
        return min(problem.horizon, problem.slot.integer_objective(run.start[0]))
    return problem.horizon


@backend(JOINT)
def solve(run: SolveRun, **params: Any) -> Attempt:
    """The joint schedule (start slot and replica per request) with CP-SAT.

    Parameters
    ----------
    problem, time_limit, num_workers, seed, initial_solution, on_progress
        As :func:`lsched.formulations.driver.drive`; a schedule is the
        ``(2, n)`` array of start slots and replicas.
    **params
        Further CP-SAT parameters.
    """
    # the search: build the model, hint the incumbent, CP-SAT in the time left
    problem: JointProblem = run.problem
    slot, replicas = problem.slot, problem.replicas
    latest_end = _latest_end(run)
    model = cp_model.CpModel()
    start, y = _variables(model, problem, latest_end)
    _symmetry(model, slot, start, y)
    for c in range(replicas):
        _replica_rules(model, slot, start, [row[c] for row in y], c)
    _objective(model, slot, start, latest_end)
    hint_start, hint_where = run.start
    for i, var in enumerate(start):
        model.add_hint(var, int(hint_start[i]))
        for c in range(replicas):
            model.add_hint(y[i][c], int(hint_where[i] == c))
    offset = slot.objective_offset
    outcome = solve_in_run(run, model, params, ProgressRecorder(run, offset))
    solver = outcome.solver
    if outcome.found:
        found = [[solver.value(v) for v in start], [_replica(solver, row) for row in y]]
        run.offer(np.array(found, dtype=np.int64), "cpsat")
    bound = outcome.bound() + offset
    return Attempt(
        solver=SOLVER,
        stop=outcome.stop,
        bound=bound if math.isfinite(bound) else -math.inf,
        info={**outcome.info(), "horizon": latest_end},
    )


def _replica(solver: cp_model.CpSolver, row: list[Any]) -> int:
    """The replica whose ``y_ic`` is true in the solution."""
    return next(c for c, var in enumerate(row) if solver.value(var))
