"""The slot model's branch-and-cut (issue 22): optima against brute force and
CP-SAT, the CP-SAT finisher, reduced-cost fixing against an optimal schedule,
a tiny time limit, the progress log and a stop request."""

from __future__ import annotations

import math

import numpy as np
import pytest
from slot_brute import brute_force, make_problem, random_case
from test_slot_model import _random_jaillet_like

from lsched import interrupt
from lsched.errors import InputError
from lsched.formulations.bounds.clique import column_cost
from lsched.formulations.result import Status
from lsched.formulations.slot import bnc, cpsat
from lsched.formulations.slot.bnc.fixing import fixed_by_cost
from lsched.formulations.slot.bnc.relaxation import LPSolution, Relaxation
from lsched.formulations.slot.bnc.state import columns_below
from lsched.formulations.slot.incumbent import is_feasible

#: A random case whose root LP leaves a gap that the tree closes in about a second.
GAPPED = 20


@pytest.mark.parametrize("seed", range(100, 130))
def test_bnc_matches_brute_force(seed):
    # every objective, block sizes, batch caps and token budgets
    case = random_case(seed)
    arrival, prompt, output, weight, capacity, block, seqs, budget, objective = case
    problem = make_problem(
        arrival, prompt, output, weight=weight, capacity=capacity, block=block,
        seqs=seqs, budget=budget, objective=objective,
    )  # fmt: skip
    result = bnc.solve(problem, time_limit=20, lns_share=0.0)
    assert result.status is Status.OPTIMAL
    assert result.objective == pytest.approx(brute_force(*case))
    assert is_feasible(problem, result.start)


def test_cpsat_finisher_proves_the_same_optimum():
    solvers = set()
    for seed in (0, 2, 3, 9, 20):  # latency, makespan, TTFT
        problem = _random_jaillet_like(seed)
        exact = cpsat.solve(problem, time_limit=30)
        finished = bnc.solve(problem, time_limit=30, finisher="cpsat")
        assert exact.status is finished.status is Status.OPTIMAL
        assert finished.objective == pytest.approx(exact.objective)
        assert is_feasible(problem, finished.start)
        solvers.add(finished.solver)  # "bnc/highs" where the root proved it
    assert "bnc/cpsat-events" in solvers


@pytest.mark.parametrize("seed", [GAPPED, 33, 39, 45])
def test_root_fixing_keeps_an_optimal_schedule(seed):
    # the fixing may remove only schedules costing >= U; with U = optimum + 1
    # every optimal schedule must keep all of its columns
    problem = _random_jaillet_like(seed)
    exact = cpsat.solve(problem, time_limit=30)
    optimum = problem.integer_objective(exact.start)
    cols = columns_below(problem, optimum + 1)
    relax = Relaxation(problem, cols, column_cost(problem, cols), max_cuts=20)
    root = relax.cut_rounds(math.inf, 50, math.inf)
    assert isinstance(root, LPSolution) and root.value <= optimum + 1e-6
    keep = fixed_by_cost(cols, root, np.ones(len(cols), dtype=bool), optimum)
    end = exact.start + problem.output_tokens
    used = cols.completion == end[cols.request]
    assert used.sum() == len(problem)
    assert keep[used].all()
    # and against U = optimum it fixes something, or the LP already proves it
    tight = fixed_by_cost(cols, root, np.ones(len(cols), dtype=bool), optimum - 1)
    assert tight.sum() < len(cols) or math.ceil(root.value - 1e-6) >= optimum


def test_a_tiny_time_limit_returns_a_valid_bound_and_a_feasible_schedule():
    problem = _random_jaillet_like(GAPPED)
    optimum = cpsat.solve(problem, time_limit=30)
    assert optimum.status is Status.OPTIMAL
    for limit in (0.05, 0.5):
        result = bnc.solve(problem, time_limit=limit, lns_share=0.0)
        assert result.status in (Status.TIME_LIMIT, Status.OPTIMAL)
        assert is_feasible(problem, result.start)
        assert result.bound <= optimum.objective + 1e-9
        assert result.objective >= optimum.objective - 1e-9


def test_the_progress_log_is_monotone_and_ends_at_the_result():
    problem = _random_jaillet_like(GAPPED)
    rows = []
    result = bnc.solve(
        problem, time_limit=30, lns_share=0.0, on_progress=lambda *r: rows.append(r)
    )
    assert result.status is Status.OPTIMAL
    objective = [r[1] for r in rows]
    bound = [r[2] for r in rows]
    assert objective == sorted(objective, reverse=True)
    assert bound == sorted(bound)
    assert rows[-1][1:] == (result.objective, result.bound)
    assert any(-math.inf < b < result.objective for b in bound)  # a gap, closed


def test_a_stop_request_after_the_root_keeps_the_incumbent():
    problem = _random_jaillet_like(GAPPED)

    def stop(time_s, objective, bound):
        if math.isfinite(bound):
            interrupt.request()

    with interrupt.session():
        result = bnc.solve(problem, time_limit=60, on_progress=stop)
    assert result.status in (Status.INTERRUPTED, Status.OPTIMAL)
    assert is_feasible(problem, result.start)
    assert result.bound <= result.objective


@pytest.mark.parametrize(
    ("option", "value"),
    [("finisher", "gurobi"), ("lns_share", 1.5), ("node_rounds", -1)],
)
def test_bad_options_name_their_field(option, value):
    with pytest.raises(InputError) as error:
        bnc.solve(_random_jaillet_like(0), time_limit=1, **{option: value})
    assert error.value.field == option
