"""The MILP backend (time-indexed Pyomo model, HiGHS) against hand-derived optima
and a brute-force enumeration that shares no code with lsched."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from lsched.errors import InputError
from lsched.formulations.incumbent import is_feasible
from lsched.formulations.milp import Strengthening, lp_bound, solve
from lsched.formulations.result import LOG_COLUMNS, Status
from lsched.formulations.slot import SlotProblem
from lsched.generators.families import jaillet
from lsched.profile import load_profile


def _problem(
    arrival,
    prompt,
    output,
    *,
    capacity,
    weight=None,
    block=1,
    seqs=None,
    budget=None,
    objective="latency",
):
    n = len(arrival)
    return SlotProblem(
        arrival=np.asarray(arrival, dtype=np.float64),
        prompt_tokens=np.asarray(prompt, dtype=np.int64),
        output_tokens=np.asarray(output, dtype=np.int64),
        weight=np.ones(n, dtype=np.int64) if weight is None else np.asarray(weight),
        kv_capacity_blocks=capacity,
        block_tokens=block,
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
        objective=objective,
    )


def _check(problem, result):
    """Properties every answer must have: a feasible schedule, consistent values."""
    assert result.solver == "milp/time-indexed"
    assert result.start is not None
    assert is_feasible(problem, result.start)
    assert np.all(result.start >= problem.release)
    assert result.objective == pytest.approx(problem.objective_value(result.start))
    assert result.bound <= result.objective + 1e-9
    assert list(result.log.columns) == list(LOG_COLUMNS)
    for key in ("variables", "constraints", "nonzeros", "nodes", "highs_status"):
        assert key in result.info


# -- (a) hand-derived optima -------------------------------------------------
#
# Two requests, a = 0, s = 1, o = 3, b = 1, M = 4. The KV table is
# k_j = s + j = 1, 2, 3 (offsets j = 0, 1, 2). Put the first at S = 0; it holds
# 1, 2, 3 blocks in slots 0, 1, 2.
#   * second at S = 0: slot 1 holds 2 + 2 = 4, slot 2 holds 3 + 3 = 6 > 4: no;
#   * second at S = 1: slot 2 holds 3 + 2 = 5 > 4: no;
#   * second at S = 2: slot 2 holds 3 + 1 = 4 <= 4, later slots only it: yes.
# Starting the first later only delays both, so the optimum is S = (0, 2):
# completions E = (3, 5), latency 3 + 5 = 8, TTFT (0+1) + (2+1) = 4, makespan 5.
@pytest.mark.parametrize(
    ("objective", "value"),
    [
        ("latency", 8.0),
        ("ttft", 4.0),
        ("makespan", 5.0),
    ],
)
def test_hand_two_requests_kv(objective, value):
    problem = _problem([0, 0], [1, 1], [3, 3], capacity=4, objective=objective)
    result = solve(problem, time_limit=10)
    _check(problem, result)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(value)
    assert result.bound == pytest.approx(value)
    assert sorted(result.start.tolist()) == [0, 2]


# Batch cap N = 1, M large: two requests with o = 2 run one after the other,
# S = (0, 2), E = (2, 4): latency 6. With weights (1, 3) the heavier goes first:
# E = (4, 2), weighted latency 1*4 + 3*2 = 10 (the other order gives 2 + 12 = 14).
def test_hand_batch_cap_weighted():
    problem = _problem([0, 0], [1, 1], [2, 2], capacity=100, seqs=1)
    result = solve(problem, time_limit=10)
    _check(problem, result)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(6.0)
    weighted = _problem([0, 0], [1, 1], [2, 2], capacity=100, seqs=1, weight=[1, 3])
    result = solve(weighted, time_limit=10)
    _check(weighted, result)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(10.0)
    assert result.start.tolist() == [2, 0]


# Token budget B = 3, M large: two requests with s = 2, o = 2. Both at S = 0 would
# process 2 + 2 = 4 > 3 tokens in slot 0; S = (0, 1) processes 2 in slot 0 and
# 1 (decode) + 2 (prefill) = 3 in slot 1: feasible. E = (2, 3), latency 5.
# With an arrival of 0.5 for the second (release 1) the same schedule is optimal
# and the latency is 2 + (3 - 0.5) = 4.5.
def test_hand_token_budget_and_arrival():
    problem = _problem([0, 0], [2, 2], [2, 2], capacity=100, budget=3)
    result = solve(problem, time_limit=10)
    _check(problem, result)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(5.0)
    late = _problem([0, 0.5], [2, 2], [2, 2], capacity=100, budget=3)
    result = solve(late, time_limit=10)
    _check(late, result)
    assert result.status == Status.OPTIMAL
    assert result.start.tolist() == [0, 1]
    assert result.objective == pytest.approx(4.5)


# -- (b) brute force ----------------------------------------------------------


def _brute_force(arrival, prompt, output, weight, capacity, block, seqs, budget, obj):
    """Optimal integer objective by enumerating all start slots, with a
    feasibility check written from the slot model's rules (no lsched code).

    Any optimal schedule has no idle slot after the last release (R), so every
    completion is at most R + sum(o): starts range over [r_i, R + sum(o) - o_i].
    """
    release = np.ceil(np.asarray(arrival)).astype(int)
    prompt, output = np.asarray(prompt), np.asarray(output)
    weight = np.asarray(weight)
    horizon = int(release.max() + output.sum())
    ranges = [
        range(int(r), horizon - int(o) + 1)
        for r, o in zip(release, output, strict=True)
    ]
    starts = np.array(list(itertools.product(*ranges)), dtype=np.int64)  # (m, n)
    ok = np.ones(len(starts), dtype=bool)
    for tau in range(horizon):
        age = tau - starts  # offset j of each request in slot tau
        running = (age >= 0) & (age < output)
        blocks = -(-(prompt + age) // block) * running
        ok &= blocks.sum(axis=1) <= capacity
        if seqs is not None:
            ok &= running.sum(axis=1) <= seqs
        if budget is not None:
            tokens = np.where(age == 0, prompt, 1) * running
            ok &= tokens.sum(axis=1) <= budget
    starts = starts[ok]
    if obj == "latency":
        values = (starts + output) @ weight
    elif obj == "ttft":
        values = starts @ weight
    else:
        values = (starts + output).max(axis=1)
    a = np.asarray(arrival, dtype=np.float64)
    offset = {
        "latency": -float(weight @ a),
        "ttft": float(weight @ (1 - a)),
        "makespan": -float(a.min()),
    }[obj]
    return float(values.min()) + offset


def _random_case(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    objective = ("latency", "ttft", "makespan")[seed % 3]
    # a few (prompt, output) kinds, so that identical requests occur
    kinds = [(int(rng.integers(1, 4)), int(rng.integers(1, 5))) for _ in range(3)]
    chosen = [kinds[k] for k in rng.integers(0, len(kinds), size=n)]
    prompt = [p for p, _ in chosen]
    output = [o for _, o in chosen]
    if n == 5:  # keep the enumeration small
        output = [min(o, 3) for o in output]
    arrival = np.sort(rng.choice([0.0, 0.0, 0.5, 1.0, 2.0], size=n))
    weight = rng.integers(1, 4, size=n) if seed % 2 else np.ones(n, dtype=np.int64)
    block = int(rng.choice([1, 2]))
    peak = max(-(-(p + o - 1) // block) for p, o in zip(prompt, output, strict=True))
    capacity = peak + int(rng.integers(0, peak + 1))
    seqs = int(rng.integers(1, 4)) if seed % 4 == 1 else None
    budget = max(prompt) + int(rng.integers(0, 3)) if seed % 5 == 2 else None
    return arrival, prompt, output, weight, capacity, block, seqs, budget, objective


@pytest.mark.parametrize("seed", range(15))
def test_random_small_matches_brute_force(seed):
    arrival, prompt, output, weight, capacity, block, seqs, budget, objective = (
        _random_case(seed)
    )
    problem = _problem(
        arrival,
        prompt,
        output,
        weight=weight,
        capacity=capacity,
        block=block,
        seqs=seqs,
        budget=budget,
        objective=objective,
    )
    expected = _brute_force(
        arrival, prompt, output, weight, capacity, block, seqs, budget, objective
    )
    result = solve(problem, time_limit=10)
    _check(problem, result)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(expected)
    assert result.bound == pytest.approx(expected)
    # (c) the LP relaxation is a lower bound on the optimum
    assert lp_bound(problem) <= expected + 1e-6
    # every strengthening is valid: the plain model has the same optimum
    plain = solve(
        problem,
        time_limit=10,
        strengthening=Strengthening(
            skip_rows=False, symmetry=False, cliques=False, energy=False
        ),
    )
    assert plain.objective == pytest.approx(expected)
    assert lp_bound(problem, strengthening=Strengthening(cliques=False)) <= (
        expected + 1e-6
    )


# -- (c), (d), (e) on a larger instance ----------------------------------------


def _jaillet(n, seed, objective="latency"):
    instance = jaillet(n, seed=seed)
    capacity = instance.params["kv_capacity_tokens"]
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=capacity)
    return SlotProblem.from_instance(instance, profile, objective=objective)


def test_time_limit_returns_feasible_schedule():
    problem = _jaillet(40, seed=1)
    began = time.monotonic()
    result = solve(problem, time_limit=0.5)
    elapsed = time.monotonic() - began
    _check(problem, result)
    assert result.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    assert result.runtime_s < 0.5 + 10
    assert elapsed < 0.5 + 10
    assert math.isfinite(result.objective)


def test_progress_callback_and_initial_solution():
    problem = _problem([0, 0, 0], [1, 1, 2], [3, 3, 2], capacity=5)
    events = []
    # a feasible but poor start: one request after the other
    initial = np.array([0, 3, 6], dtype=np.int64)
    result = solve(
        problem,
        time_limit=10,
        initial_solution=initial,
        on_progress=lambda t, obj, bound: events.append((t, obj, bound)),
    )
    _check(problem, result)
    assert result.status == Status.OPTIMAL
    assert events, "on_progress was never called"
    assert events[0][1] == pytest.approx(problem.objective_value([0, 3, 6]))
    assert events[-1][1] == pytest.approx(result.objective)
    assert len(result.log) == len(events)
    objectives = [obj for _, obj, _ in events if obj is not None]
    assert objectives == sorted(objectives, reverse=True)
    assert result.objective < problem.objective_value(initial)


def test_infeasible_initial_solution_raises():
    problem = _problem([0, 0], [1, 1], [3, 3], capacity=4)
    with pytest.raises(InputError):
        solve(problem, initial_solution=np.array([0, 0], dtype=np.int64))


def test_relaxed_gap_is_not_reported_optimal_unless_closed():
    problem = _jaillet(8, seed=3)
    result = solve(problem, time_limit=3, mip_rel_gap=0.5)
    _check(problem, result)
    if result.status == Status.OPTIMAL:
        assert math.floor(result.objective - result.bound + 1e-6) == 0
    else:
        assert result.status in (Status.FEASIBLE, Status.TIME_LIMIT)


def test_thread_count_can_change_between_solves():
    # HiGHS's thread pool is per process; a new ``threads`` value must still run.
    problem = _problem([0, 0], [1, 1], [3, 3], capacity=4)
    for workers in (1, 2, 1):
        result = solve(problem, time_limit=10, num_workers=workers)
        _check(problem, result)
        assert result.status == Status.OPTIMAL
        assert result.info["highs_status"] == "Optimal"
