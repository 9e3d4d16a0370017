"""Every registered backend of every model reports the objective of its schedule.

The cases come from the registry itself
(:data:`lsched.formulations.backends.BACKENDS`), so a backend added there is
solved here with no change to this file. Each returned schedule is scored twice
without lsched's formulation code: replayed in the evaluator, and recomputed
here from the rules and objectives written in the models' docstrings (slot by
slot, or iteration by iteration with the profile's cost model). Both must equal
the reported objective. A new *model* needs its recomputation in :data:`CHECKS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from lsched.errors import InputError
from lsched.formulations import slot, timed
from lsched.formulations.backends import (
    BACKENDS,
    PROBLEM_TYPES,
    model_of,
    problem_type,
    replay_objective,
    replay_timed_objective,
    solve,
)
from lsched.formulations.comigration import CoMigrationProblem
from lsched.formulations.replicas import AssignmentProblem, JointProblem
from lsched.formulations.result import Status
from lsched.instance import Instance
from lsched.profile import IterationTime, load_profile

#: Five requests, one arrival off the slot grid, weights above one.
INSTANCE = Instance(
    arrival_s=[0.0, 0.0, 1.0, 2.0, 3.5],
    prompt_tokens=[3, 1, 4, 2, 2],
    output_tokens=[4, 6, 2, 3, 5],
)
WEIGHT = [1, 2, 1, 3, 1]
#: Every rule binds somewhere: KV blocks of two tokens, a batch cap, a budget.
LIMITS: dict[str, Any] = {
    "kv_capacity_tokens": 12,
    "block_tokens": 2,
    "max_num_seqs": 3,
    "max_num_batched_tokens": 6,
}
#: Iteration times that depend on every feature (the timed model's seconds).
ROOFLINE = IterationTime(
    regimes=(
        np.array([[0.5, 0.05, 0.002, 0.1, 0.01, 0.3], [0.2, 0.12, 0, 0.3, 0.02, 0]]),
    ),
    overhead_s=0.05,
)


def _slot_rules(problem: slot.SlotProblem, start: np.ndarray) -> None:
    """Assert the slot model's rules for ``start``, slot by slot."""
    a, s, o = problem.arrival, problem.prompt_tokens, problem.output_tokens
    b = problem.block_tokens
    end = start + o
    assert np.all(start >= np.ceil(a)), "a request starts before its release"
    for t in range(int(end.max(initial=0))):
        members = [i for i in range(len(a)) if start[i] <= t < end[i]]
        blocks = sum(math.ceil((s[i] + t - start[i]) / b) for i in members)
        tokens = sum(int(s[i]) if start[i] == t else 1 for i in members)
        assert blocks <= problem.kv_capacity_blocks, f"KV over capacity at {t}"
        assert len(members) <= (problem.max_num_seqs or len(a)), f"batch cap at {t}"
        assert tokens <= (problem.max_num_batched_tokens or tokens), f"budget at {t}"


def _slot_value(problem: slot.SlotProblem, start: np.ndarray) -> float:
    """The slot model's objective of ``start`` (rules not checked)."""
    a, w, end = problem.arrival, problem.weight, start + problem.output_tokens
    if problem.objective == "latency":
        return float(np.dot(w, end - a))
    if problem.objective == "ttft":
        return float(np.dot(w, start + 1 - a))
    return float(end.max() - a.min())


def _slot_objective(problem: slot.SlotProblem, start: np.ndarray) -> float:
    """The slot model's objective of ``start``, its rules checked slot by slot."""
    _slot_rules(problem, start)
    return _slot_value(problem, start)


def _load_makespan(problem: AssignmentProblem, where: np.ndarray) -> float:
    """The largest replica's load (integer loads: the model's objective)."""
    assert np.all((where >= 0) & (where < problem.replicas))
    return float(np.bincount(where, weights=problem.load_s, minlength=2).max())


#: Two replicas of 8 blocks, one slot on replica 1; 0.1 s per overflow block.
COMIGRATION = {
    "replica": [0, 0, 0, 1],
    "adapter": [0, 0, 1, 1],
    "blocks": [4, 4, 4, 1],
    "exec_s": [1.0, 1.0, 1.0, 0.5],
    "capacity_blocks": [8, 8],
    "adapter_slots": [2, 1],
    "resident": np.array([[True, False], [True, True]]),
    "block_bytes": 1e8,
    "pcie_bytes_per_s": 1e9,
    "adapter_load_s": [0.2, 0.3],
}


def _comigration_time(problem: CoMigrationProblem, where: np.ndarray) -> float:
    """The largest replica time of the co-migration docstring, replica by
    replica, with each replica's adapter slots asserted."""
    times = []
    for j in range(problem.replicas):
        on = np.flatnonzero(where == j)
        adapters = set(problem.adapter[on].tolist())
        assert len(adapters) <= problem.adapter_slots[j], f"slots of replica {j}"
        overflow = max(0, int(problem.blocks[on].sum()) - problem.capacity_blocks[j])
        loads = [
            problem.adapter_load_s[k] for k in adapters if not problem.resident[k, j]
        ]
        moved = int(np.sum(problem.replica[on] != j))
        times.append(
            float(problem.exec_s[on].sum()) + 0.05 * moved + 0.1 * overflow + sum(loads)
        )
    return max(times)


def _joint_objective(problem: JointProblem, schedule: np.ndarray) -> float:
    """The joint model's objective: the slot rules on every replica, the slot
    objective over all requests."""
    start, where = schedule
    assert np.all((where >= 0) & (where < problem.replicas))
    for c in range(problem.replicas):
        ids = np.flatnonzero(where == c)
        _slot_rules(problem.slot.subproblem(ids), start[ids])
    return _slot_value(problem.slot, start)


def _joint_replay(problem: JointProblem, schedule: np.ndarray) -> float:
    """The joint objective from the evaluator's replay of every replica."""
    start, where = schedule
    parts = []
    for c in range(problem.replicas):
        ids = np.flatnonzero(where == c)
        if len(ids):
            sub = problem.slot.subproblem(ids)
            parts.append((replay_objective(sub, start[ids]), sub.arrival.min()))
    if problem.slot.objective != "makespan":  # weighted sums add up
        return float(sum(value for value, _ in parts))
    first = problem.slot.arrival.min()
    return float(max(value + arrival for value, arrival in parts) - first)


def _timed_objective(problem: timed.TimedProblem, start: np.ndarray) -> float:
    """The timed model's objective of ``start``: every iteration's batch checked,
    its features summed one request at a time and priced by the profile, the
    clock advanced as "previous end, or the latest member's arrival"."""
    profile = problem.profile
    a, s = problem.arrival_s, problem.prompt_tokens
    w = np.ones(len(a)) if problem.weight is None else problem.weight
    end = start + problem.output_tokens
    clock, completion = -math.inf, np.zeros(len(a))
    for k in range(int(end.max())):
        members = [i for i in range(len(a)) if start[i] <= k < end[i]]
        assert members, f"iteration {k} is empty"
        held = [s[i] + k - start[i] for i in members]
        assert sum(-(-h // profile.block_tokens) for h in held) <= (
            profile.kv_capacity_blocks
        )
        assert len(members) <= profile.max_num_seqs
        prefill = [i for i in members if start[i] == k]
        decode = [i for i in members if start[i] < k]
        assert sum(s[i] for i in prefill) + len(decode) <= (
            profile.max_num_batched_tokens
        )
        phi = [
            1.0,
            sum(float(s[i]) for i in prefill),
            sum(float(s[i]) ** 2 for i in prefill),
            float(len(decode)),
            sum(float(s[i] + k - start[i]) for i in decode),
            float(bool(prefill)),
        ]
        ready = max((a[i] for i in prefill), default=-math.inf)
        clock = max(clock, ready) + float(profile.iteration_time_s(np.array(phi)))
        for i in members:
            if end[i] == k + 1:
                completion[i] = clock
    if problem.objective == "latency":
        return float(np.dot(w, completion - a))
    return float(completion.max() - a.min())


@dataclass(frozen=True)
class ModelCheck:
    """How one model is set up and scored here, independently of its backends."""

    objectives: tuple[str, ...]
    problem: Callable[[str], Any]
    recompute: Callable[[Any, np.ndarray], float]
    replay: Callable[[Any, np.ndarray], float] | None


SLOT_PROFILE = load_profile("unit-slot").replace(**LIMITS)
TIMED_PROFILE = SLOT_PROFILE.replace(iteration_time=ROOFLINE)
#: LPT's counterexample: LPT puts 3 + 2 + 2 on one replica, the optimum 3 + 3.
LOADS = np.array([3.0, 3.0, 2.0, 2.0, 2.0])


def _slot_problem(objective: str) -> slot.SlotProblem:
    return slot.SlotProblem.from_instance(
        INSTANCE, SLOT_PROFILE, objective=objective, weight=WEIGHT
    )


#: Per model: its objectives, problems and the independent scorings (a replay in
#: the evaluator where the objective is one of its metrics).
CHECKS: dict[str, ModelCheck] = {
    "slot": ModelCheck(
        slot.OBJECTIVES, _slot_problem, _slot_objective, replay_objective
    ),
    "timed": ModelCheck(
        timed.OBJECTIVES,
        lambda objective: timed.TimedProblem.from_instance(
            INSTANCE, TIMED_PROFILE, objective=objective, weight=WEIGHT
        ),
        _timed_objective,
        replay_timed_objective,
    ),
    "assignment": ModelCheck(
        ("makespan",), lambda _: AssignmentProblem(LOADS, 2), _load_makespan, None
    ),
    "joint": ModelCheck(
        slot.OBJECTIVES,
        lambda objective: JointProblem(_slot_problem(objective), 2),
        _joint_objective,
        _joint_replay,
    ),
    "comigration": ModelCheck(
        ("makespan",),
        lambda _: CoMigrationProblem(**COMIGRATION),
        _comigration_time,
        None,
    ),
}

#: Every (model, backend) of the registry.
REGISTERED = [(model, name) for model, names in BACKENDS.items() for name in names]


def test_every_model_has_a_problem_type_and_a_check() -> None:
    assert set(PROBLEM_TYPES) == set(BACKENDS)
    assert set(CHECKS) == set(BACKENDS), "a new model needs its ModelCheck here"
    for model, check in CHECKS.items():
        assert isinstance(check.problem(check.objectives[0]), problem_type(model))


@pytest.mark.parametrize(("model", "backend"), REGISTERED)
def test_the_reported_objective_is_the_schedules(model: str, backend: str) -> None:
    check = CHECKS[model]
    for objective in check.objectives:
        problem = check.problem(objective)
        result = solve(problem, backend, time_limit=3.0, num_workers=1)
        assert isinstance(result.status, Status)
        assert result.start is not None and result.objective is not None
        start = np.asarray(result.start)
        recomputed = check.recompute(problem, start)
        assert recomputed == pytest.approx(result.objective, rel=1e-9), objective
        if check.replay is not None:
            replayed = check.replay(problem, start)
            assert replayed == pytest.approx(result.objective, rel=1e-9), objective
        assert result.bound <= result.objective, objective


@pytest.mark.parametrize("model", sorted(BACKENDS))
def test_an_unknown_backend_names_the_field_and_the_models_backends(
    model: str,
) -> None:
    check = CHECKS[model]
    problem = check.problem(check.objectives[0])
    with pytest.raises(InputError) as error:
        solve(problem, "gurobi")
    assert error.value.field == "backend"
    assert all(name in str(error.value) for name in BACKENDS[model])
    assert model_of(problem) == model


def test_a_problem_of_no_registered_type_names_the_field() -> None:
    with pytest.raises(InputError) as error:
        solve(INSTANCE)  # an instance, not a problem
    assert error.value.field == "problem"
