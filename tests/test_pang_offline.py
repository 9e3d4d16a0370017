"""Pang et al.'s offline stage as an MIP over assignment and order: both backends
(real HiGHS and CP-SAT) agree with each other, with brute force over all C^n
assignments and with the bin packing of :mod:`lsched.formulations.replicas`; the
returned order is a valid sequence per client; bound <= objective."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lsched.errors import InputError
from lsched.formulations import pang_offline, replicas
from lsched.formulations.result import Status
from lsched.generators.families import gsm8k
from lsched.instance import Instance
from lsched.profile import load_profile

UNIT = load_profile("unit-slot")


def _dummy(n: int) -> Instance:
    return Instance(
        arrival_s=np.zeros(n),
        prompt_tokens=np.ones(n, dtype=np.int64),
        output_tokens=np.ones(n, dtype=np.int64),
    )


def _brute(load, c: int) -> float:
    """min over all c^n assignments of the largest client load (no lsched code)."""
    load = np.asarray(load, dtype=np.float64)
    best = np.inf
    for every in itertools.product(range(c), repeat=len(load)):
        where = np.asarray(every)
        best = min(best, max(load[where == r].sum() for r in range(c)))
    return float(best)


def _check_order(result) -> None:
    """Positions on each client are 0..m-1 once each; the client's completion in
    that order is its load (order does not change it)."""
    for c in range(result.replicas):
        mine = np.flatnonzero(result.assignment == c)
        assert sorted(result.position[mine].tolist()) == list(range(len(mine)))
        ordered = mine[np.argsort(result.position[mine])]
        finish = np.cumsum(result.load_s[ordered])
        last = finish[-1] if len(finish) else 0.0
        assert last == pytest.approx(result.replica_load_s[c])


CASES = [(n, c, seed) for seed, (n, c) in enumerate([(6, 2), (7, 3), (9, 2), (12, 2)])]
CASES += [(10, 3, 7), (12, 3, 8)]


@pytest.mark.parametrize(("n", "c", "seed"), CASES)
def test_backends_agree_with_each_other_brute_force_and_the_packing(n, c, seed):
    load = np.random.default_rng(seed).integers(1, 40, size=n).astype(np.float64)
    optimum = _brute(load, c) if c**n <= 60_000 else None
    packing = replicas.assign(_dummy(n), UNIT, c, load=load, time_limit=20)
    found = {}
    for backend in replicas.BACKENDS:
        result = pang_offline.assign_ordered(
            _dummy(n), UNIT, c, backend=backend, load=load, time_limit=30
        )
        assert result.status == Status.OPTIMAL
        assert result.solver == f"{backend}/ordered"
        assert result.bound <= result.objective
        assert result.gap == 0.0
        _check_order(result)
        found[backend] = result.objective
    assert found["cpsat"] == found["milp"] == packing.objective
    if optimum is not None:
        assert found["cpsat"] == optimum


def test_the_solver_improves_on_lpt():
    # LPT: (3,2,2) | (3,2) = 7; the optimum is 3+3 | 2+2+2 = 6
    load = [3, 3, 2, 2, 2]
    for backend in replicas.BACKENDS:
        result = pang_offline.assign_ordered(
            _dummy(5), UNIT, 2, backend=backend, load=load
        )
        assert result.info["lpt_objective"] == 7
        assert result.status == Status.OPTIMAL
        assert result.objective == 6
        _check_order(result)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    load=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    c=st.integers(2, 3),
    backend=st.sampled_from(replicas.BACKENDS),
)
@example(load=[0], c=2, backend="milp")  # a client no request may use
@example(load=[7], c=3, backend="cpsat")
def test_ordered_model_equals_the_packing(load, c, backend):
    """The MIP with order is equivalent to the packing (module docstring): equal
    optima, and each one's bound is below the other's objective."""
    n = len(load)
    packing = replicas.assign(_dummy(n), UNIT, c, load=load, time_limit=20)
    ordered = pang_offline.assign_ordered(
        _dummy(n), UNIT, c, backend=backend, load=load, time_limit=20
    )
    assert ordered.status == packing.status == Status.OPTIMAL
    assert ordered.objective == packing.objective
    assert ordered.bound <= packing.objective
    assert packing.bound <= ordered.objective
    _check_order(ordered)


@pytest.mark.parametrize("backend", replicas.BACKENDS)
def test_profile_loads_bracket_the_packing(backend):
    instance = gsm8k(8, seed=3)
    profile = load_profile("llama-65b-pang2025")
    packing = replicas.assign(instance, profile, 3, time_limit=20)
    result = pang_offline.assign_ordered(
        instance, profile, 3, backend=backend, time_limit=30
    )
    assert not result.info["exact"]
    optimum = _brute(result.load_s, 3)
    assert result.bound <= optimum + 1e-12 <= result.objective + 2e-12
    assert result.objective - optimum <= 8 * result.info["load_step"] / 2
    assert abs(result.objective - packing.objective) <= 8 * result.info["load_step"]
    _check_order(result)


def test_rejects_bad_input():
    with pytest.raises(InputError):
        pang_offline.assign_ordered(_dummy(3), UNIT, 2, backend="gurobi", load=[1] * 3)
    with pytest.raises(InputError):
        pang_offline.assign_ordered(_dummy(3), UNIT, 0, load=[1, 2, 3])
    with pytest.raises(InputError):
        pang_offline.assign_ordered(_dummy(3), UNIT, 2, load=[1, -2, 3])
