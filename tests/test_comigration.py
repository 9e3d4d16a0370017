"""dLoRA's co-migration ILP: a hand-derived case, brute force on tiny instances,
the no-move warm start recomputed here, the plan, and bad data.

Every replica time below is recomputed in this file from the model's docstring
(:mod:`lsched.formulations.comigration`), request by request, without the
problem's own methods.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from lsched.errors import InputError
from lsched.formulations.backends import solve
from lsched.formulations.comigration import (
    CoMigrationProblem,
    MigrationPlan,
    Move,
    crowded_problem,
    free_bound,
)
from lsched.formulations.result import Status

BACKENDS = ("milp", "cpsat")


def _hand_case(**changes: Any) -> CoMigrationProblem:
    """The hand-derived case of :mod:`lsched.formulations.comigration`'s docstring
    (``beta = 2^30 / (10 x 2^30) = 0.1`` s per block)."""
    data: dict[str, Any] = {
        "replica": [0, 0, 0, 1],
        "adapter": [0, 0, 1, 1],
        "blocks": [4, 4, 4, 1],
        "exec_s": [1.0, 1.0, 1.0, 0.5],
        "capacity_blocks": [8, 8],
        "adapter_slots": [2, 1],
        "resident": np.array([[True, False], [True, True]]),
        "block_bytes": 2.0**30,
        "pcie_bytes_per_s": 10.0 * 2**30,
    }
    return CoMigrationProblem(**{**data, **changes})


def _times(problem: CoMigrationProblem, where: tuple[int, ...]) -> list[float] | None:
    """Every replica's time under ``where``, or ``None`` where it breaks a slot
    limit: the docstring's ``T_j`` with the least placement."""
    times = []
    for j in range(problem.replicas):
        on = [i for i, w in enumerate(where) if w == j]
        adapters = {int(problem.adapter[i]) for i in on}
        if len(adapters) > problem.adapter_slots[j]:
            return None
        held = sum(int(problem.blocks[i]) for i in on)
        overflow = max(0, held - int(problem.capacity_blocks[j]))
        times.append(
            sum(float(problem.exec_s[i]) for i in on)
            + problem.move_s * sum(1 for i in on if problem.replica[i] != j)
            + overflow * problem.block_bytes / problem.pcie_bytes_per_s
            + sum(
                float(problem.adapter_load_s[k])
                for k in adapters
                if not problem.resident[k, j]
            )
        )
    return times


def _brute_force(problem: CoMigrationProblem) -> float:
    """The least ``max_j T_j`` over every assignment that leaves each immovable
    request where it is."""
    best = math.inf
    choices = [
        range(problem.replicas) if problem.movable[i] else [int(problem.replica[i])]
        for i in range(len(problem))
    ]
    for where in itertools.product(*choices):
        times = _times(problem, where)
        if times is not None:
            best = min(best, max(times))
    return best


def _random_case(seed: int, masked: bool = False) -> CoMigrationProblem:
    """2-3 replicas, 3-5 requests, 2-3 adapters; times on a 10 ms grid and
    ``beta`` a whole number of milliseconds, so that CP-SAT's integer time is
    exact; slots that let every request stay, sometimes one more; where
    ``masked``, each request immovable with probability 1/2."""
    rng = np.random.default_rng(seed)
    c, n, k = int(rng.integers(2, 4)), int(rng.integers(3, 6)), int(rng.integers(2, 4))
    replica = rng.integers(0, c, n)
    adapter = rng.integers(0, k, n)
    needed = np.zeros((k, c), dtype=bool)
    needed[adapter, replica] = True
    return CoMigrationProblem(
        replica=replica,
        adapter=adapter,
        blocks=rng.integers(0, 6, n),
        exec_s=rng.integers(0, 100, n) / 100,
        capacity_blocks=rng.integers(0, 10, c),
        adapter_slots=needed.sum(axis=0) + rng.integers(0, 2, c),
        resident=rng.random((k, c)) < 0.5,
        block_bytes=float(rng.integers(1, 50)) * 1e6,
        pcie_bytes_per_s=1e9,
        adapter_load_s=rng.integers(0, 30, k) / 100,
        movable=rng.random(n) < 0.5 if masked else None,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_derived_case(backend: str) -> None:
    problem = _hand_case()
    result = solve(problem, backend, time_limit=10.0, num_workers=1)
    assert result.status is Status.OPTIMAL
    assert result.objective == pytest.approx(2.0, abs=1e-12)
    assert result.info["initial_objective"] == pytest.approx(3.4, abs=1e-12)
    plan = MigrationPlan.of(problem, result.start)
    assert plan.moves == (Move(2, 0, 1),)
    assert plan.loads == ((), ())
    assert plan.replica_time_s.tolist() == pytest.approx([2.0, 1.55], abs=1e-12)


@pytest.mark.parametrize(
    ("seed", "masked"), [(s, False) for s in range(20)] + [(s, True) for s in range(6)]
)
def test_both_backends_meet_brute_force(seed: int, masked: bool) -> None:
    problem = _random_case(seed, masked)
    optimum = _brute_force(problem)
    assert free_bound(problem) <= optimum + 1e-12
    for backend in BACKENDS:
        result = solve(problem, backend, time_limit=10.0, num_workers=1, seed=seed)
        assert result.status is Status.OPTIMAL, backend
        assert result.objective == pytest.approx(optimum, rel=1e-9, abs=1e-12)
        assert result.bound <= optimum + 1e-9, backend
        times = _times(problem, tuple(result.start.tolist()))
        assert times is not None and max(times) == pytest.approx(result.objective)
        stays = ~problem.movable
        assert np.array_equal(result.start[stays], problem.replica[stays]), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_immovable_request_stays_in_the_hand_derived_case(backend: str) -> None:
    # request 2, the docstring's one move, must stay on replica 0. Replica 1
    # (one slot) can take requests 0 and 1 (adapter 0) only if request 3
    # (adapter 1) leaves it: T_1 = 1 + 1 + 2 x 0.05 = 2.1 (8 blocks, no
    # overflow), T_0 = 1 + 0.5 + 0.05 = 1.55. Every other assignment keeps 0
    # and 1 beside 2 on replica 0 (T_0 >= 3 + 0.1 x 4 = 3.4), or one of them
    # beside 2 and the other on replica 1, whose one slot then holds adapter 0,
    # so 3 moves to replica 0 too (T_0 >= 2.5 + 0.05).
    problem = _hand_case(movable=np.array([True, True, False, True]))
    result = solve(problem, backend, time_limit=10.0, num_workers=1)
    assert result.status is Status.OPTIMAL
    assert result.objective == pytest.approx(2.1, abs=1e-12)
    assert MigrationPlan.of(problem, result.start).moves == (
        Move(0, 0, 1),
        Move(1, 0, 1),
        Move(3, 1, 0),
    )


@pytest.mark.parametrize("seed", range(5))
def test_the_no_move_start_is_scored_as_recomputed_here(seed: int) -> None:
    problem = _random_case(seed)
    stay = tuple(problem.replica.tolist())
    times = _times(problem, stay)
    assert times is not None  # the problem refuses data where staying is infeasible
    result = solve(problem, "cpsat", time_limit=10.0, num_workers=1)
    assert result.info["initial_source"] == "no_move"
    assert result.info["initial_objective"] == pytest.approx(max(times), rel=1e-12)


def test_the_plan_lists_adapters_to_load() -> None:
    # adapter 0 is resident nowhere but replica 0, which is full: the only way to
    # relieve it is to send request 1 to replica 1 and load adapter 0 there
    problem = _hand_case(
        adapter=[0, 0, 1, 1],
        adapter_slots=[2, 2],
        exec_s=[2.0, 2.0, 0.0, 0.0],
        adapter_load_s=[0.3, 0.0],
    )
    result = solve(problem, "milp", time_limit=10.0, num_workers=1)
    plan = MigrationPlan.of(problem, result.start)
    # requests 0 and 1 apart: 2 + 0.05 + 0.3 on the one that moved
    assert plan.objective_s == pytest.approx(2.35, abs=1e-12)
    (move,) = [m for m in plan.moves if problem.adapter[m.request] == 0]
    assert plan.loads[move.target] == (0,) and move.target == 1
    assert plan.placement[0].tolist() == [True, True]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"blocks": [4, -1, 4, 1]}, "blocks"),
        ({"adapter": [0, 0, 1, 2]}, "adapter"),
        ({"capacity_blocks": [8, -8]}, "capacity_blocks"),
        ({"adapter_slots": [2, -1]}, "adapter_slots"),
        ({"adapter_slots": [1, 1]}, "adapter_slots"),  # replica 0 needs 2 now
        ({"exec_s": [1.0, 1.0, -1.0, 0.5]}, "exec_s"),
        ({"replica": [0, 0, 0, 2]}, "replica"),
        ({"adapter_load_s": [0.1]}, "adapter_load_s"),
        ({"block_bytes": 0.0}, "block_bytes"),
        ({"resident": np.array([[1, 0], [1, 1]])}, "resident"),
        ({"movable": np.array([1, 1, 1, 1])}, "movable"),
        ({"movable": np.array([True, True])}, "movable"),
    ],
)
def test_bad_data_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as error:
        _hand_case(**changes)
    assert error.value.field == field
    assert "\n" not in str(error.value)


def test_an_infeasible_initial_solution_names_the_field() -> None:
    # requests 0 and 2 on replica 1 need adapters 0 and 1 there: one slot
    with pytest.raises(InputError) as error:
        solve(_hand_case(), "milp", initial_solution=np.array([1, 0, 1, 1]))
    assert error.value.field == "initial_solution"


def test_highs_answers_past_a_wrong_mip_start() -> None:
    """HiGHS 1.16 answers this case, from the no-move start, "optimal" with the
    start's own values and a smaller objective (its presolve mis-maps the start):
    the backend must solve again without the start and find better. Its root
    node alone (``mip_max_nodes=1``) finds 102.9 s against no move's 149.7 s."""
    problem = crowded_problem(48, 8, 2)  # benchmarks/comigration's family
    result = solve(problem, "milp", time_limit=60.0, num_workers=1, mip_max_nodes=1)
    assert result.objective is not None
    assert result.objective <= 0.75 * result.info["initial_objective"]
    assert result.bound <= result.objective
    times = _times(problem, tuple(result.start.tolist()))
    assert times is not None and max(times) == pytest.approx(result.objective)
