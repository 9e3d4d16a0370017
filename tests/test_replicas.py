"""Replicas (Pang et al. 2025): the minimum-makespan assignment against brute force
over all C^n assignments (both backends), its lower bound and LPT, the per-request
loads against a hand-written loop, sequencing through the evaluator, and the joint
slot model against brute force and against the two-stage decomposition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from slot_brute import brute_force

from lsched.errors import InputError
from lsched.formulations import replicas
from lsched.formulations.result import Status
from lsched.generators.families import gsm8k, jaillet
from lsched.instance import Instance
from lsched.predictors import oracle
from lsched.profile import load_profile

UNIT = load_profile("unit-slot")


def _instance(prompt, output, arrival=None) -> Instance:
    n = len(prompt)
    return Instance(
        arrival_s=np.zeros(n) if arrival is None else np.asarray(arrival, float),
        prompt_tokens=np.asarray(prompt),
        output_tokens=np.asarray(output),
    )


def _dummy(n: int) -> Instance:
    return _instance([1] * n, [1] * n)


def _brute_assignment(load, c: int) -> float:
    """min over all c^n assignments of the largest replica load (no lsched code)."""
    load = np.asarray(load, dtype=np.float64)
    every = np.array(list(itertools.product(range(c), repeat=len(load))))
    per = np.stack([((every == r) * load).sum(axis=1) for r in range(c)], axis=1)
    return float(per.max(axis=1).min())


def _random_loads(seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 9))
    c = int(rng.integers(2, 4))
    if n == 8:
        c = 2  # 3^8 is fine too, but keep the enumeration small
    return rng.integers(1, 30, size=n).astype(np.float64), c


# -- the assignment problem ----------------------------------------------------------


@pytest.mark.parametrize("backend", replicas.BACKENDS)
@pytest.mark.parametrize("seed", range(10))
def test_assignment_optimum_equals_brute_force(backend, seed):
    load, c = _random_loads(seed)
    optimum = _brute_assignment(load, c)
    result = replicas.assign(
        _dummy(len(load)), UNIT, c, backend=backend, time_limit=20, load=load
    )
    assert result.status == Status.OPTIMAL
    assert result.objective == optimum
    assert result.bound == optimum
    assert result.gap == 0.0
    # the reported loads are those of the returned assignment
    recomputed = [load[result.assignment == r].sum() for r in range(c)]
    np.testing.assert_allclose(result.replica_load_s, recomputed)
    assert result.replica_load_s.max() == result.objective
    assert replicas.assignment_lower_bound(load, c) <= optimum
    lpt = replicas.lpt(load, c)
    assert np.bincount(lpt, weights=load, minlength=c).max() >= optimum


@pytest.mark.parametrize("backend", replicas.BACKENDS)
def test_solver_beats_lpt_where_lpt_is_suboptimal(backend):
    # LPT: 3 | 3 | 2 -> (3,2) | 2 -> (3,2,2)=7 vs (3,2)=5; the optimum is 3+3 | 2+2+2
    load = [3, 3, 2, 2, 2]
    assert np.bincount(replicas.lpt(load, 2), weights=load).max() == 7
    result = replicas.assign(_dummy(5), UNIT, 2, backend=backend, load=load)
    assert result.solver == backend  # LPT missed the bound, so the solver ran
    assert result.info["lpt_objective"] == 7
    assert result.status == Status.OPTIMAL
    assert result.objective == 6
    assert sorted(result.replica_load_s.tolist()) == [6, 6]


@pytest.mark.parametrize("backend", replicas.BACKENDS)
def test_float_profile_loads_bracket_the_brute_force_optimum(backend):
    instance = gsm8k(7, seed=3)
    profile = load_profile("llama-65b-pang2025")
    load = replicas.request_loads_s(instance, profile)
    optimum = _brute_assignment(load, 3)
    result = replicas.assign(instance, profile, 3, backend=backend, time_limit=20)
    assert not result.info["exact"]
    np.testing.assert_array_equal(result.load_s, load)
    assert result.bound <= optimum + 1e-12 <= result.objective + 2e-12
    # the rounding to the grid q costs at most n q / 2
    assert result.objective - optimum <= len(load) * result.info["load_step"] / 2
    assert result.gap is not None and result.gap < 1e-3


def test_assignment_on_gsm8k_is_near_its_bound():
    instance = gsm8k(200, seed=1)
    profile = load_profile("llama-65b-pang2025")
    result = replicas.assign(instance, profile, 4, time_limit=10)
    assert result.status in (Status.OPTIMAL, Status.TIME_LIMIT)
    assert result.bound <= result.objective <= result.info["lpt_objective"]
    assert result.gap < 1e-3
    assert np.bincount(result.assignment, minlength=4).min() > 0


def test_lower_bound_by_hand():
    # total/C = 7.5 -> 8 for integers; the 2nd + 3rd largest = 10 is the optimum
    assert replicas.assignment_lower_bound([5, 5, 5], 2) == 10
    # k = 2 of the pigeonhole family: of the 5 largest, some replica gets 3 -> 12
    assert replicas.assignment_lower_bound([4, 4, 4, 4, 4], 2) == 12
    assert replicas.assignment_lower_bound([9, 1, 1], 2) == 9  # the largest load
    assert replicas.assignment_lower_bound([1, 2, 4], 2) == 4
    assert replicas.assignment_lower_bound([0.5, 0.25], 1) == 0.75
    assert replicas.assignment_lower_bound([3, 3, 3], 2) == 6


@pytest.mark.parametrize("seed", range(30))
def test_lpt_is_within_its_guarantee_and_breaks_symmetry(seed):
    load, c = _random_loads(100 + seed)
    optimum = _brute_assignment(load, c)
    assert replicas.assignment_lower_bound(load, c) <= optimum
    where = replicas.lpt(load, c)
    assert where.dtype == np.int64 and where.min() >= 0 and where.max() < c
    # Graham's bound: LPT <= (4/3 - 1/(3C)) OPT
    lpt_value = np.bincount(where, weights=load, minlength=c).max()
    assert optimum <= lpt_value <= (4 / 3 - 1 / (3 * c)) * optimum + 1e-9
    # rank k (decreasing load, ties by position) only on replicas 0..k
    order = np.lexsort((np.arange(len(load)), -load))
    assert np.all(where[order] <= np.arange(len(load)))


def test_assign_rejects_bad_input():
    with pytest.raises(InputError) as err:
        replicas.assign(_dummy(3), UNIT, 2, backend="gurobi")
    assert err.value.field == "backend"
    with pytest.raises(InputError) as err:
        replicas.assign(_dummy(3), UNIT, 2, load=[1, 2])
    assert err.value.field == "load"
    with pytest.raises(InputError) as err:
        replicas.assign(_dummy(3), UNIT, 2, load=[1, -2, 3])
    assert err.value.field == "load"
    with pytest.raises(InputError) as err:
        replicas.assign(_dummy(3), UNIT, 0)
    assert err.value.field == "replicas"
    with pytest.raises(InputError) as err:
        replicas.assign(_dummy(3), UNIT, 2, time_limit=0)
    assert err.value.field == "time_limit"
    with pytest.raises(InputError) as err:
        replicas.assign(_dummy(3), UNIT, 2, load="bytes")
    assert err.value.field == "load"


# -- loads ---------------------------------------------------------------------------


def test_unit_slot_load_is_kv_area_over_capacity():
    instance = _instance([2, 1, 4], [3, 1, 2])
    profile = UNIT.replace(kv_capacity_tokens=10)
    # areas: 2+3+4 = 9, 1, 4+5 = 9 token-slots
    np.testing.assert_array_equal(replicas.kv_areas(instance), [9, 1, 9])
    np.testing.assert_allclose(
        replicas.request_loads_s(instance, profile), [0.9, 0.1, 0.9]
    )
    # blocks of 2 tokens: ceil(2/2)+ceil(3/2)+ceil(4/2) = 5, 1, 2+3 = 5
    np.testing.assert_array_equal(replicas.kv_areas(instance, 2), [5, 1, 5])


def test_profile_load_matches_a_hand_written_loop():
    profile = load_profile("llama-65b-pang2025")
    instance = _instance([700, 30, 1], [5, 40, 1])
    pieces = np.concatenate(profile.iteration_time.effective_regimes)
    m, n_cap, b_cap = (
        profile.kv_capacity_blocks, profile.max_num_seqs,
        profile.max_num_batched_tokens,
    )  # fmt: skip
    expected = []
    for s, o in zip([700, 30, 1], [5, 40, 1], strict=True):
        total = 0.0
        for j in range(o):
            held = s + j
            tokens = s if j == 0 else 1
            share = max(-(-held // profile.block_tokens) / m, 1 / n_cap, tokens / b_cap)
            if j == 0:
                phi = [share, s, s * s, 0, 0, share]
            else:
                phi = [share, 0, 0, 1, held, 0]
            total += max(float(np.dot(w, phi)) for w in pieces)
        expected.append(total)
    np.testing.assert_allclose(
        replicas.request_loads_s(instance, profile), expected, rtol=1e-12
    )
    # token counts, and predicted lengths in place of the true ones
    assert replicas.assign(instance, profile, 2, load="tokens").load_s.tolist() == [
        705,
        70,
        2,
    ]
    predicted = instance.replace(predicted_output_tokens=[1, 1, 1])
    np.testing.assert_allclose(
        replicas.request_loads_s(predicted, profile, predicted=True),
        replicas.request_loads_s(instance.replace(output_tokens=[1, 1, 1]), profile),
    )
    with pytest.raises(InputError) as err:
        replicas.request_loads_s(instance, profile, predicted=True)
    assert err.value.field == "predicted_output_tokens"


def test_loads_do_not_depend_on_the_block_size(monkeypatch):
    instance = gsm8k(50, seed=5)
    profile = load_profile("opt-13b-a100-tp1-distserve")  # two regimes, overheads
    whole = replicas.request_loads_s(instance, profile)
    areas = replicas.kv_areas(instance, 16)
    monkeypatch.setattr(replicas.loads, "_BLOCK_ITERATIONS", 37)
    np.testing.assert_array_equal(replicas.request_loads_s(instance, profile), whole)
    np.testing.assert_array_equal(replicas.kv_areas(instance, 16), areas)
    assert np.all(whole > 0)


# -- sequencing through the evaluator ------------------------------------------------


def test_sequence_respects_the_assignment_and_picks_the_best_policy():
    instance = oracle(gsm8k(40, seed=2))
    profile = load_profile("llama-65b-pang2025")
    packing = replicas.assign(instance, profile, 3, time_limit=5)
    result = replicas.sequence(instance, profile, packing, policy=["mc-sf", "fcfs"])
    replica = result.simulation.requests["replica"].to_numpy()
    np.testing.assert_array_equal(replica, packing.assignment)
    np.testing.assert_array_equal(result.assignment, packing.assignment)
    assert list(result.table.index) == ["mc-sf", "fcfs"]
    assert result.makespan_s == result.table["makespan_s"].min()
    assert result.policy == result.table["makespan_s"].idxmin()
    assert result.simulation.metrics["makespan_s"] == result.makespan_s
    assert 0 < result.busy_fraction <= 1
    assert result.replicas == 3
    # everything on one replica is slower than the balanced packing
    lopsided = replicas.sequence(
        instance, profile, np.zeros(40, dtype=np.int64), policy="fcfs", replicas=3
    )
    assert np.all(lopsided.simulation.requests["replica"].to_numpy() == 0)
    balanced_fcfs = result.table.loc["fcfs", "makespan_s"]
    assert lopsided.makespan_s > 1.5 * balanced_fcfs  # batching shares the rest
    with pytest.raises(InputError):
        replicas.sequence(instance, profile, packing, policy=[])


def test_sequence_slots_is_optimal_per_replica_and_replays():
    instance = _instance([2, 1, 3, 1, 2, 2, 1, 3], [3, 4, 2, 3, 1, 2, 4, 1])
    profile = UNIT.replace(kv_capacity_tokens=6)
    where = np.array([0, 1] * 4)
    schedule = replicas.sequence_slots(instance, profile, where, replicas=2)
    assert schedule.status == Status.OPTIMAL
    assert schedule.info["feasible"]
    assert schedule.info["replayed_objective"] == schedule.objective
    np.testing.assert_array_equal(schedule.assignment, where)
    # each replica's makespan is its brute-force optimum
    per = []
    for c in range(2):
        ids = np.flatnonzero(where == c)
        value = brute_force(
            [0.0] * len(ids), instance.prompt_tokens[ids],
            instance.output_tokens[ids], [1] * len(ids),
            profile.kv_capacity_tokens, 1, None, None, "makespan",
        )  # fmt: skip
        per.append(value)
    assert schedule.objective == max(per)
    with pytest.raises(InputError) as err:
        replicas.sequence_slots(
            instance, load_profile("llama-65b-pang2025"), where, replicas=2
        )
    assert err.value.field == "iteration_time"


# -- the joint slot model ------------------------------------------------------------


def _brute_joint(prompt, output, arrival, capacity, c, objective):
    """Joint optimum: every assignment, each replica's slot optimum by brute force."""
    n = len(prompt)
    best = np.inf
    for where in itertools.product(range(c), repeat=n):
        values = []
        for r in range(c):
            ids = [i for i in range(n) if where[i] == r]
            if not ids:
                continue
            value = brute_force(
                [arrival[i] for i in ids], [prompt[i] for i in ids],
                [output[i] for i in ids], [1] * len(ids), capacity, 1, None, None,
                objective,
            )  # fmt: skip
            if objective == "makespan":  # back to max E - min a over everything
                value += min(arrival[i] for i in ids) - min(arrival)
            values.append(value)
        best = min(best, max(values) if objective == "makespan" else sum(values))
    return best


@pytest.mark.parametrize(
    ("prompt", "output", "arrival", "capacity", "c"),
    [
        ([3, 1, 2, 3, 3], [2, 5, 1, 2, 2], [0, 0, 0, 0, 0], 6, 2),
        ([1, 2, 2, 1], [3, 2, 3, 1], [0, 0, 1, 2], 5, 2),
        ([2, 1, 1, 2], [2, 3, 2, 2], [0, 0, 0, 0], 4, 3),
    ],
)
@pytest.mark.parametrize("objective", ["makespan", "latency"])
def test_joint_model_equals_brute_force(
    prompt, output, arrival, capacity, c, objective
):
    instance = _instance(prompt, output, arrival)
    profile = UNIT.replace(kv_capacity_tokens=capacity)
    optimum = _brute_joint(prompt, output, arrival, capacity, c, objective)
    joint = replicas.solve_joint(
        instance, profile, c, objective=objective, time_limit=20
    )
    assert joint.status == Status.OPTIMAL
    assert joint.objective == optimum
    assert joint.bound == optimum
    assert joint.info["feasible"]
    assert joint.info["replayed_objective"] == pytest.approx(optimum)
    parts = replicas.decompose(instance, profile, c, objective=objective)
    assert parts.info["feasible"]
    assert parts.info["replayed_objective"] == pytest.approx(parts.objective)
    assert joint.objective <= parts.objective


def test_decomposition_loses_where_the_area_packing_is_unique_and_wrong():
    # areas 7, 15, 2, 7, 7 (sum 38): the only optimal packing is {15, 2} | {7, 7, 7}
    # (loads 17 | 21). Three (s=3, o=2) requests cannot overlap in M = 6 (slot 1
    # would hold 4 + 3 or 4 + 4), so that replica needs 6 slots. Jointly,
    # {(1,5), (3,2)} | {(3,2), (3,2), (2,1)} finish in 5.
    instance = _instance([3, 1, 2, 3, 3], [2, 5, 1, 2, 2])
    profile = UNIT.replace(kv_capacity_tokens=6)
    np.testing.assert_array_equal(replicas.kv_areas(instance), [7, 15, 2, 7, 7])
    result = replicas.decomposition_loss(instance, profile, 2, time_limit=20)
    packing = result.decomposition.info["assignment"]
    assert packing.status == Status.OPTIMAL and packing.objective == 21
    assert result.decomposition.status == Status.OPTIMAL
    assert result.decomposition.objective == 6
    assert result.joint.status == Status.OPTIMAL
    assert result.joint.objective == 5
    assert result.loss == pytest.approx(0.2)
    assert result.loss_upper == pytest.approx(0.2)
    assert result.joint.info["replayed_objective"] == 5


def test_joint_never_worse_than_decomposition_on_jaillet():
    instance = jaillet(8, seed=0)
    profile = UNIT.replace(kv_capacity_tokens=instance.params["kv_capacity_tokens"])
    result = replicas.decomposition_loss(instance, profile, 2, time_limit=20)
    assert result.joint.status == Status.OPTIMAL
    assert result.joint.objective <= result.decomposition.objective
    assert result.loss >= 0
    assert result.joint.info["replayed_objective"] == result.joint.objective
    # the energy bound: on each replica, makespan >= its KV area / M (all at 0)
    area = replicas.kv_areas(instance)
    for c in range(2):
        on = result.joint.assignment == c
        end = (result.joint.start + instance.output_tokens)[on].max()
        assert end >= area[on].sum() / profile.kv_capacity_tokens


def test_solve_joint_rejects_an_infeasible_initial_schedule():
    instance = _instance([3, 3], [2, 2])
    profile = UNIT.replace(kv_capacity_tokens=6)
    with pytest.raises(InputError) as err:
        replicas.solve_joint(instance, profile, 1, initial=([0, 0], [0, 0]))
    assert err.value.field == "initial"
    ok = replicas.solve_joint(instance, profile, 1, initial=([0, 2], [0, 0]))
    assert ok.objective == 4 and ok.status == Status.OPTIMAL
    two = replicas.solve_joint(instance, profile, 2)
    assert two.objective == 2 and sorted(two.assignment.tolist()) == [0, 1]
