"""Jaillet et al.'s released-code convention (lsched.generators.jaillet_convention)
and their real-trace batch-time profile.

Their code (neurips2025-code, MC-SF_synthetic.py and Hindsight_IP.py) is
transcribed below, loop for loop, and compared with lsched's MC-SF, evaluator and
CP-SAT on instances mapped by ``convention="jaillet"``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import LinearConstraint, milp
from scipy.sparse import lil_matrix

from lsched.errors import InputError
from lsched.evaluator.fixed import replay_start_slots
from lsched.formulations.backends import solve
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.incumbent import policy_schedule
from lsched.generators import Poisson, jaillet, regenerate
from lsched.instance import Instance
from lsched.policies import PolicyError
from lsched.profile import batch_features, load_profile

UNIT = load_profile("unit-slot")


# -- their code, transcribed ----------------------------------------------------


def their_check(t: int, running: list, added: list, M: int, s: int) -> bool:
    """MC-SF_synthetic.py check_feasible: usage at every completion time."""
    points = {p + o for p, o in running} | {t + o for o in added}
    for x in sorted(points):
        use = sum(s + (x - p) for p, o in running if x <= p + o)
        use += sum(s + (x - t) for o in added if x <= t + o)
        if use > M:
            return False
    return True


def their_mcsf(M: int, a: list[int], o: list[int], s: int) -> list[int]:
    """MC-SF_synthetic.py online_semi_online_scheduling: start times."""
    start: dict[int, int] = {}
    running: dict[int, tuple[int, int]] = {}
    t = 0
    while len(start) < len(a) or running:
        running = {j: po for j, po in running.items() if t < po[0] + po[1]}
        waiting = sorted(
            (o[j], j) for j in range(len(a)) if a[j] <= t and j not in start
        )
        added: list[tuple[int, int]] = []
        for oj, j in waiting:
            if not their_check(
                t, list(running.values()), [x for x, _ in added] + [oj], M, s
            ):
                break
            added.append((oj, j))
        for oj, j in added:
            start[j], running[j] = t, (t, oj)
        t += 1
    return [start[j] for j in range(len(a))]


def their_usage(a: list[int], o: list[int], s: int, start: list[int], tau: int) -> int:
    """Hindsight_IP.py constraint (2) at time ``tau``: jobs started at
    ``max(a, tau - o) <= t <= tau - 1`` hold ``s + (tau - t)``."""
    return sum(
        s + (tau - t)
        for ai, oi, t in zip(a, o, start, strict=True)
        if ai <= tau and max(ai, tau - oi) <= t <= tau - 1
    )


def their_ip_optimum(M: int, a: list[int], o: list[int], s: int) -> int:
    """Hindsight_IP.py's IP, literally (horizon T = max a + sum o), in HiGHS."""
    n, T = len(a), max(a) + sum(o)
    index = {
        (i, t): k
        for k, (i, t) in enumerate((i, t) for i in range(n) for t in range(a[i], T + 1))
    }
    cost = np.array([t for (_i, t) in index], dtype=float)
    rows = lil_matrix((n + T + 1, len(index)))
    for (i, t), k in index.items():
        rows[i, k] = 1
        for tau in range(t + 1, min(t + o[i], T) + 1):
            rows[n + tau, k] = s + (tau - t)
    upper = np.r_[np.ones(n), np.full(T + 1, M)]
    lower = np.r_[np.ones(n), np.full(T + 1, -np.inf)]
    result = milp(
        cost,
        constraints=LinearConstraint(rows.tocsr(), lower, upper),
        integrality=np.ones(len(index)),
        bounds=(0, 1),
    )
    assert result.status == 0
    return round(result.fun) - sum(a) + sum(o)  # integer costs: round HiGHS's float


# -- helpers ----------------------------------------------------------------------


def mapped(M: int, a: list[int], o: list[int], s: int) -> SlotProblem:
    """lsched's slot problem of their instance: prompt s + 1, nothing else moved."""
    instance = Instance(
        arrival_s=np.array(a, float),
        prompt_tokens=np.full(len(a), s + 1),
        output_tokens=np.array(o),
    )
    return SlotProblem.from_instance(instance, UNIT.replace(kv_capacity_tokens=M))


def their_view(instance: Instance) -> tuple[int, list[int], list[int], int]:
    """(M, a, o, s) of a ``convention="jaillet"`` instance."""
    return (
        instance.params["kv_capacity_tokens"],
        [int(x) for x in instance.arrival_s],
        [int(x) for x in instance.output_tokens],
        int(instance.prompt_tokens[0]) - 1,
    )


CASES = [(n, seed, rate) for seed in range(6) for n, rate in ((8, None), (9, 0.8))]


# -- the generator ----------------------------------------------------------------


def test_code_convention_draws_one_prompt_and_integer_arrivals() -> None:
    for seed in range(20):
        inst = jaillet(30, seed=seed, arrivals=Poisson(1.0), convention="jaillet")
        M, _, o, s = their_view(inst)
        assert 1 <= s <= 5 and np.all(inst.prompt_tokens == s + 1)
        assert np.all(inst.arrival_s == np.floor(inst.arrival_s))
        assert min(o) >= 1 and max(o) <= M - s  # peak s + o <= M: fits alone
        assert inst.params["convention"] == "jaillet"
        again = regenerate("jaillet", n=30, seed=seed, params=inst.params)
        assert np.array_equal(again.output_tokens, inst.output_tokens)
        assert np.array_equal(again.arrival_s, inst.arrival_s)
    assert "convention" not in jaillet(5, seed=0).params  # default unchanged


def test_a_bad_convention_names_the_field() -> None:
    with pytest.raises(InputError) as info:
        jaillet(5, seed=0, convention="paper")
    assert info.value.field == "convention" and "'jaillet'" in info.value.message


def test_the_sweep_builder_takes_the_convention() -> None:
    from lsched.sweep.cases import _generate

    built = _generate("jaillet", 6, 3, {"convention": "jaillet", "rate": 1.0})
    direct = jaillet(6, seed=3, arrivals=Poisson(1.0), convention="jaillet")
    assert np.array_equal(built.output_tokens, direct.output_tokens)
    assert np.array_equal(built.prompt_tokens, direct.prompt_tokens)


# -- the map, by hand -------------------------------------------------------------


def test_hand_instance_latency_and_optimum() -> None:
    # M = 6, s = 1, outputs 2, 2, 3, all at 0. Their model: a request started at
    # t holds 2..o+1 at t+1..t+o. All three at 0 hold 3+3+3 = 9 > 6 at time 2;
    # delaying any one request by 1 still gives 8 > 6 there (3+3+2), so the
    # optimum is 7 + 2 = 9, reached by MC-SF: the two 2's at 0 (3+3 = 6 at
    # time 2), the 3 fails at t = 1 (3+3+2 = 8) and starts at 2: 2 + 2 + 5 = 9.
    M, a, o, s = 6, [0, 0, 0], [2, 2, 3], 1
    assert their_mcsf(M, a, o, s) == [0, 0, 2]
    problem = mapped(M, a, o, s)
    start = policy_schedule(problem, "mc-sf")
    assert start.tolist() == [0, 0, 2] and problem.objective_value(start) == 9
    result = solve(problem, "cpsat", time_limit=10, num_workers=1)
    assert result.status.value == "optimal" and result.objective == 9
    assert their_ip_optimum(M, a, o, s) == 9
    # in lsched's own convention (prompt s = 1, KV 1..o) all three fit at 0: 7
    own = SlotProblem.from_instance(
        Instance(
            arrival_s=np.zeros(3),
            prompt_tokens=np.ones(3, int),
            output_tokens=np.array(o),
        ),
        UNIT.replace(kv_capacity_tokens=M),
    )
    assert own.objective_value([0, 0, 0]) == 7


# -- the map, against their code --------------------------------------------------


@pytest.mark.parametrize(("n", "seed", "rate"), CASES)
def test_mcsf_is_their_rule_and_latency_replays(n: int, seed: int, rate) -> None:
    arrivals = None if rate is None else Poisson(rate)
    inst = jaillet(n, seed=seed, arrivals=arrivals, convention="jaillet")
    M, a, o, s = their_view(inst)
    theirs = their_mcsf(M, a, o, s)
    problem = mapped(M, a, o, s)
    ours = policy_schedule(problem, "mc-sf")
    assert ours.tolist() == theirs
    latency = sum(t + oi - ai for t, oi, ai in zip(theirs, o, a, strict=True))
    replay = replay_start_slots(problem.unit_instance(), problem.unit_profile(), ours)
    total = float((replay.requests["completion_s"].to_numpy() - np.array(a)).sum())
    assert total == latency == problem.objective_value(ours)


@pytest.mark.parametrize("seed", range(8))
def test_feasibility_is_theirs_slot_by_slot(seed: int) -> None:
    # random start vectors near MC-SF's: their memory check (every tau, uncut)
    # accepts exactly those the evaluator replays without a KV violation
    inst = jaillet(7, seed=seed, arrivals=Poisson(0.7), convention="jaillet")
    M, a, o, s = their_view(inst)
    problem = mapped(M, a, o, s)
    rng = np.random.default_rng(seed)
    base = np.array(their_mcsf(M, a, o, s))
    outcomes = set()
    for k in range(12):  # MC-SF's own schedule first: feasible
        shift = rng.integers(-3, 3, size=7) if k else 0
        start = np.maximum(base + shift, a).tolist()
        horizon = max(t + oi for t, oi in zip(start, o, strict=True)) + 1
        theirs = all(their_usage(a, o, s, start, tau) <= M for tau in range(horizon))
        try:
            replay_start_slots(problem.unit_instance(), problem.unit_profile(), start)
            ours = True
        except PolicyError:
            ours = False
        assert ours == theirs
        outcomes.add(ours)
    assert outcomes == {True, False}  # both kinds were tried


@pytest.mark.parametrize(
    ("n", "seed", "rate"), [(4, 0, None), (5, 1, 1.0), (4, 2, None), (5, 3, 0.6)]
)
def test_optimum_is_their_ip_optimum(n: int, seed: int, rate) -> None:
    arrivals = None if rate is None else Poisson(rate)
    inst = jaillet(n, seed=seed, arrivals=arrivals, convention="jaillet")
    M, a, o, s = their_view(inst)
    result = solve(mapped(M, a, o, s), "cpsat", time_limit=20, num_workers=1)
    assert result.status.value == "optimal"
    assert result.objective == their_ip_optimum(M, a, o, s)


# -- their real-trace batch time ---------------------------------------------------


def their_batch_ms(prompts: list[int], contexts: list[int]) -> float:
    """MC-SF.py l. 207-220: prompts count in the batch with context 0."""
    size = len(prompts) + len(contexts)
    mean = sum(contexts) / size
    return (0.0027 * mean + 0.52) * size + 44.6 + 0.378 * sum(prompts)


@pytest.mark.parametrize(
    ("prompts", "decode_kv", "expected_ms"),
    [
        # one 100-token prompt: 0.52 + 44.6 + 37.8
        ([100], [], 82.92),
        # decode steps reading 10 and 20 tokens: 1.04 + 44.6 + 0.0027 * 30
        ([], [10, 20], 45.721),
        # both: 0.0027 * 30 + 0.52 * 3 + 44.6 + 37.8
        ([100], [10, 20], 84.041),
    ],
)
def test_jaillet_profile_is_their_formula(prompts, decode_kv, expected_ms) -> None:
    # their formula with the decode context read as lsched's K (prompt included);
    # the profile's header states where their code differs
    profile = load_profile("llama2-70b-a100-tp2-jaillet")
    phi = batch_features(
        1,
        prefill_batch=[0] * len(prompts),
        prefill_tokens=prompts,
        decode_batch=[0] * len(decode_kv),
        decode_kv_tokens=decode_kv,
    )
    assert their_batch_ms(prompts, decode_kv) == pytest.approx(expected_ms, rel=1e-12)
    assert profile.iteration_time_s(phi)[0] * 1000 == pytest.approx(
        expected_ms, rel=1e-12
    )
    assert profile.kv_capacity_tokens == 16492 and profile.block_tokens == 1
