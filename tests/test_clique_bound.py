"""The conflict-clique LP bound (issue 22): the pairwise conflict rule against a
direct check, the bound against a brute-force optimum, the cuts against the plain
LP, a hand-derived case the cuts close, and its place in the bound report."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from slot_brute import brute_force, make_problem, random_case

from lsched.formulations.bounds.clique import (
    ConflictRule,
    clique_lp,
    completion_columns,
)
from lsched.formulations.bounds.suite import bound_report
from lsched.formulations.slot.horizon import no_idle_horizon
from lsched.formulations.slot.incumbent import starting_schedule
from lsched.generators.families import jaillet
from lsched.profile import load_profile


def _case(seed: int, objective: str):
    """A random small case (``random_case``'s) with ``objective``, and its optimum."""
    case = (*random_case(seed)[:-1], objective)
    arrival, prompt, output, weight, capacity, block, seqs, budget, _ = case
    problem = make_problem(
        arrival, prompt, output, weight=weight, capacity=capacity, block=block,
        seqs=seqs, budget=budget, objective=objective,
    )  # fmt: skip
    return problem, brute_force(*case)


def _pair_feasible(problem, i: int, c_i: int, k: int, c_k: int) -> bool:
    """Whether requests i and k alone, completing at c_i and c_k, keep every
    per-slot rule (written from the slot model's rules, slot by slot)."""
    o, s = problem.output_tokens, problem.prompt_tokens
    start = {i: c_i - o[i], k: c_k - o[k]}
    for t in range(min(start.values()), max(c_i, c_k)):
        running = [j for j in (i, k) if start[j] <= t < start[j] + o[j]]
        blocks = sum(-(-(s[j] + t - start[j]) // problem.block_tokens) for j in running)
        tokens = sum(s[j] if t == start[j] else 1 for j in running)
        if blocks > problem.kv_capacity_blocks:
            return False
        if problem.max_num_seqs is not None and len(running) > problem.max_num_seqs:
            return False
        budget = problem.max_num_batched_tokens
        if budget is not None and tokens > budget:
            return False
    return True


@pytest.mark.parametrize("seed", range(20))
def test_conflicts_are_exactly_the_infeasible_pairs(seed):
    problem, _ = _case(seed, "latency")
    rule = ConflictRule(problem)
    cols = completion_columns(problem, np.full(len(problem), no_idle_horizon(problem)))
    placements = list(zip(cols.request.tolist(), cols.completion.tolist(), strict=True))
    for (i, c_i), (k, c_k) in itertools.combinations(placements, 2):
        expected = c_i != c_k if i == k else not _pair_feasible(problem, i, c_i, k, c_k)
        got = rule.conflicts(np.array(i), np.array(c_i), np.array(k), np.array(c_k))
        assert bool(got) == expected, (i, c_i, k, c_k)


@pytest.mark.parametrize("objective", ["latency", "ttft"])
@pytest.mark.parametrize("seed", range(30))
def test_clique_lp_is_valid_and_above_the_plain_lp(seed, objective):
    problem, optimum = _case(seed, objective)
    upper = problem.integer_objective(starting_schedule(problem, None)[1])
    found = clique_lp(problem, time_limit=20, upper_bound=upper)
    plain = clique_lp(problem, time_limit=20, upper_bound=upper, cliques=False)
    assert found.converged and plain.converged
    assert plain.bound == found.lp_bound
    assert plain.bound <= found.bound <= optimum + 1e-9


def test_cliques_close_two_requests_that_cannot_overlap_at_the_end():
    # M = 6, two requests of prompt 3 and output 2: each holds 3 then 4 blocks.
    # Together they hold 3 + 3 = 6, then 8; one slot apart 4 + 3 = 7: they cannot
    # share a slot, so the optimum runs them one after the other, E = 2 and 4:
    # latency 6. The LP puts 3/4 of each at E = 2 and 1/4 at E = 4 (slot 1 holds
    # 4 * 1.5 = 6): value 2 * (3/4 * 2 + 1/4 * 4) = 5. The clique
    # {(A,2), (A,3), (B,2), (B,3)} allows one of them, which forces 6.
    problem = make_problem([0, 0], [3, 3], [2, 2], capacity=6)
    assert brute_force([0, 0], [3, 3], [2, 2], [1, 1], 6, 1, None, None,
                       "latency") == 6.0  # fmt: skip
    found = clique_lp(problem, time_limit=10)
    assert found.lp_bound == 5.0
    assert found.bound == 6.0
    assert found.cuts >= 1 and found.converged


def test_makespan_is_out_of_scope():
    problem = make_problem([0, 0], [3, 3], [2, 2], capacity=6, objective="makespan")
    assert clique_lp(problem).bound == -np.inf


def test_the_report_lists_the_clique_lp_above_the_lp():
    instance = jaillet(6, seed=1)
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    report = bound_report(instance, profile, "latency")
    values = {b.name: b.value for b in report.bounds}
    assert values["slot.clique_lp"] >= values["slot.lp"] - 1.0  # rounded vs not
    (bound,) = [b for b in report.bounds if b.name == "slot.clique_lp"]
    assert bound.scope == "slot"
    makespan = bound_report(instance, profile, "makespan")
    reasons = {s.name: s.reason for s in makespan.skipped}
    assert reasons["slot.clique_lp"] == "out_of_scope"
