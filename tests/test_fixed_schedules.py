"""Fixed offline schedules replayed through the evaluator (``lsched.evaluator.fixed``).

Start slots: times are the slot model's (admitted at ``S_i``, token 1 at
``S_i + 1``, done at ``S_i + o_i``), the policy holds decode stretches until the
next start and idles with a wake-up, the naive reference engine (which ignores
``hold``) agrees, and every way a schedule can be wrong (non-unit profile, early
start, KV or batch limits, multi-replica mix-ups) fails with a clear error.

Batch tables: hand-built tables on the unit-slot profile give hand-derived times
(waiting for arrivals and ``start_s``); the iteration log of an FCFS run, rebuilt
here as a table, replays to the very same per-request times and runs under real
profiles; malformed tables are rejected naming the column and row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from reference_engine import simulate_naive

from lsched.errors import InputError
from lsched.evaluator import SimulationResult, simulate
from lsched.evaluator.fixed import (
    BatchTable,
    BatchTableParams,
    ScheduleSpec,
    StartSlots,
    batch_table_spec,
    check_unit_slots,
    replay_batch_table,
    replay_start_slots,
    start_slots_spec,
)
from lsched.generators import LogNormal, Poisson, generate, jaillet
from lsched.instance import Instance
from lsched.policies import Batch, PolicyError, ReplicaView
from lsched.profile import FEATURES, IterationTime, load_profile
from lsched.validator import validate_schedule

UNIT = load_profile("unit-slot")
LLAMA = load_profile("llama2-70b-a100-tp4")


def _valid(result: SimulationResult, instance: Instance, profile: Any) -> None:
    assert result.runs is not None and result.members is not None
    validate_schedule(
        instance,
        profile,
        result.runs,
        result.members,
        result.preemptions,
        replicas=result.replicas,
        requests=result.requests,
        metrics=result.metrics,
    ).raise_if_invalid()


class _Spy:
    """Records every (now, batch) a wrapped policy returns."""

    def __init__(self, policy: Any, calls: list[tuple[float, Batch]]) -> None:
        self.policy, self.calls = policy, calls

    def decide(self, view: ReplicaView) -> Batch:
        batch = self.policy.decide(view)
        self.calls.append((view.now_s, batch))
        return batch


# -- start slots -------------------------------------------------------------------


def test_start_slot_times_are_the_slot_model() -> None:
    instance = Instance(
        arrival_s=[0.0, 0.0, 1.2, 2.0],
        prompt_tokens=[2, 3, 1, 4],
        output_tokens=[3, 2, 4, 1],
    )
    S = np.array([0, 0, 5, 2])
    profile = UNIT.replace(kv_capacity_tokens=10)
    result = replay_start_slots(instance, profile, S, log=True)
    records = result.requests
    np.testing.assert_array_equal(records["admitted_s"], S)
    np.testing.assert_array_equal(records["first_token_s"], S + 1)
    np.testing.assert_array_equal(records["completion_s"], S + instance.output_tokens)
    assert result.iterations == 3 + 4  # slots 0, 1, 2, then 5..8
    assert result.policy == "start-slots"
    _valid(result, instance, profile)


def test_policy_holds_until_the_next_start_and_idles_with_a_wake() -> None:
    instance = Instance(
        arrival_s=[0.0, 0.0], prompt_tokens=[1, 1], output_tokens=[3, 2]
    )
    profile = UNIT.replace(kv_capacity_tokens=10)
    calls: list[tuple[float, Batch]] = []
    spec = start_slots_spec(instance, profile, [0, 5])
    spied = ScheduleSpec(
        "start-slots",
        spec.params,
        build=lambda p: _Spy(StartSlots(p), calls),
        arrival_s=spec.arrival_s,
        prompt_tokens=spec.prompt_tokens,
    )
    result = simulate(instance, profile, spied, replicas=1)
    seen = [
        (t, b.prefill.tolist(), b.decode.tolist(), b.hold, b.wake_at_s)
        for t, b in calls
    ]
    assert seen == [
        (0.0, [0], [], False, None),  # start request 0
        (1.0, [], [0], True, 5.0),  # decode, held until request 1's start
        (3.0, [], [], False, 5.0),  # request 0 done at 0 + 3: idle until slot 5
        (5.0, [1], [], False, None),
        (6.0, [], [1], True, None),  # nothing left to start: held to completion
    ]
    assert result.requests["completion_s"].tolist() == [3.0, 7.0]


def test_a_held_stretch_stops_at_the_next_start() -> None:
    # request 0 decodes over slots 1..9; request 1 starts at 4 inside that stretch
    instance = Instance(
        arrival_s=[0.0, 0.0], prompt_tokens=[1, 2], output_tokens=[10, 2]
    )
    result = replay_start_slots(
        instance, UNIT.replace(kv_capacity_tokens=20), [0, 4], log=True
    )
    assert result.runs is not None
    starts = result.runs["start_s"].tolist()
    assert starts[:3] == [0.0, 1.0, 4.0]  # prefill, held decodes 1..3, start at 4
    assert result.requests["completion_s"].tolist() == [10.0, 6.0]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("overlap", [0, 2, 0.5])
def test_start_slots_agree_with_the_naive_engine(seed: int, overlap: float) -> None:
    # each request starts ``overlap`` slots (or that share of the previous output)
    # before the previous one ends; no overlap is always feasible
    instance = jaillet(8, seed=seed, arrivals=Poisson(rate_per_s=0.4))
    profile = UNIT.replace(
        kv_capacity_tokens=int(instance.params["kv_capacity_tokens"])
    )
    S, t = [], 0
    for a, o in zip(instance.arrival_s, instance.output_tokens, strict=True):
        t = max(t, int(np.ceil(a)))
        S.append(t)
        cut = int(o * overlap) if overlap < 1 else int(overlap)
        t += max(1, int(o) - cut)
    spec = start_slots_spec(instance, profile, S)
    try:
        fast = replay_start_slots(instance, profile, S)
    except PolicyError:
        assert overlap > 0
        with pytest.raises(PolicyError):
            simulate_naive(instance, profile, spec)
        return
    naive = simulate_naive(instance, profile, spec)
    np.testing.assert_array_equal(fast.requests["completion_s"], naive.completion_s)
    np.testing.assert_array_equal(fast.requests["first_token_s"], naive.first_token_s)
    np.testing.assert_array_equal(naive.completion_s, np.add(S, instance.output_tokens))
    assert fast.iterations == naive.iterations


def _weights(**per_feature: float) -> list[float]:
    return [per_feature.get(f, 0.0) for f in FEATURES]


@pytest.mark.parametrize(
    ("profile", "unit"),
    [
        (UNIT, True),
        (LLAMA, False),
        (
            UNIT.replace(
                iteration_time=IterationTime(
                    np.array([_weights(const=1.0), _weights(const=0.5)])
                )
            ),
            True,
        ),
        (
            UNIT.replace(
                iteration_time=IterationTime(
                    np.array(
                        [_weights(const=1.0), _weights(const=0.5, decode_steps=0.1)]
                    )
                )
            ),
            False,  # 0.5 + 0.1 D exceeds 1 from D = 6
        ),
        (
            UNIT.replace(
                iteration_time=IterationTime(
                    np.array([_weights(const=0.5)]), overhead_s=0.5
                )
            ),
            True,  # the overhead completes the unit
        ),
        (
            UNIT.replace(
                iteration_time=IterationTime(
                    np.array([_weights(const=1.0)]), overhead_per_token_s=0.01
                )
            ),
            False,
        ),
    ],
)
def test_unit_slot_check(profile: Any, unit: bool) -> None:
    if unit:
        check_unit_slots(profile)
        return
    with pytest.raises(InputError) as info:
        check_unit_slots(profile)
    assert info.value.field == "iteration_time"
    with pytest.raises(InputError):
        replay_start_slots(_one(), profile, [0])


def _one() -> Instance:
    return Instance(arrival_s=[0.0], prompt_tokens=[2], output_tokens=[3])


def test_the_policy_notices_iterations_longer_than_a_slot() -> None:
    # built for unit-slot, then (wrongly) simulated on a real profile
    instance = Instance(
        arrival_s=[0.0, 0.0], prompt_tokens=[8, 8], output_tokens=[4, 4]
    )
    spec = start_slots_spec(instance, UNIT, [0, 1])
    with pytest.raises(PolicyError, match="one time unit"):
        simulate(instance, LLAMA, spec, replicas=1)


@pytest.mark.parametrize(
    ("slots", "message"),
    [
        (
            [0, 1],
            "request 1 starts at slot 1, before its arrival at 1.5 (earliest slot 2)",
        ),
        ([0, 1.5], "expected whole slot numbers"),
        ([0], "expected (2,)"),
        ([-1, 2], "request 0 starts at slot -1"),
    ],
)
def test_bad_start_slots(slots: list[float], message: str) -> None:
    instance = Instance(
        arrival_s=[0.0, 1.5], prompt_tokens=[1, 1], output_tokens=[1, 1]
    )
    with pytest.raises(InputError) as info:
        replay_start_slots(instance, UNIT.replace(kv_capacity_tokens=4), slots)
    assert info.value.field == "start_slots"
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("changes", "rule", "where"),
    [
        ({"kv_capacity_tokens": 6}, "KV", "breaks kv at slot 1"),  # 5, then 7 tokens
        ({"max_num_seqs": 1}, "max_num_seqs", "breaks max_num_seqs at slot 0"),
        (
            {"max_num_batched_tokens": 4},  # 2 + 3 prompt tokens in slot 0
            "max_num_batched_tokens",
            "breaks max_num_batched_tokens at slot 0",
        ),
    ],
)
def test_infeasible_schedules_raise_policy_errors(
    changes: dict[str, int], rule: str, where: str
) -> None:
    instance = Instance(
        arrival_s=[0.0, 0.0], prompt_tokens=[2, 3], output_tokens=[3, 2]
    )
    profile = UNIT.replace(**({"kv_capacity_tokens": 10} | changes))
    with pytest.raises(PolicyError, match=rule) as info:
        replay_start_slots(instance, profile, [0, 0])
    assert where in str(info.value)
    # two replicas: a request (s=1, o=1) alone on replica 0, the pair on replica 1
    three = Instance(
        arrival_s=[0.0, 0.0, 0.0], prompt_tokens=[1, 2, 3], output_tokens=[1, 3, 2]
    )
    with pytest.raises(PolicyError, match=f"{where} on replica 1"):
        replay_start_slots(three, profile, [0, 0, 0], replicas=2, assignment=[0, 1, 1])


def test_several_replicas_need_and_follow_an_assignment() -> None:
    instance = Instance(
        arrival_s=[0.0, 0.0, 0.5, 1.0, 3.0],
        prompt_tokens=[2, 3, 1, 2, 2],
        output_tokens=[3, 2, 5, 2, 2],
    )
    profile = UNIT.replace(kv_capacity_tokens=8)
    S = np.array([0, 0, 1, 2, 3])
    with pytest.raises(InputError) as info:
        replay_start_slots(instance, profile, S, replicas=2)
    assert info.value.field == "assignment"
    # replica 0 holds 2, 3, 4 + 2, 3 tokens in slots 0..3; replica 1 holds
    # 3, 4 + 1, 2, 3 + 2, 4 + 3, 5 in slots 0..5: within M = 8 on both
    where = np.array([0, 1, 1, 0, 1])
    result = replay_start_slots(
        instance, profile, S, replicas=2, assignment=where, log=True
    )
    np.testing.assert_array_equal(result.requests["replica"], where)
    np.testing.assert_array_equal(result.requests["first_token_s"], S + 1)
    np.testing.assert_array_equal(
        result.requests["completion_s"], S + instance.output_tokens
    )
    _valid(result, instance, profile)
    # a spec prepared for one assignment, simulated under another: caught
    spec = start_slots_spec(instance, profile, S, replicas=2, assignment=where)
    with pytest.raises(PolicyError, match="prepared for replica 0"):
        simulate(instance, profile, spec, replicas=2, assignment=1 - where)


# -- batch tables ----------------------------------------------------------------------


def _table(rows: list[tuple], start_s: list[float] | None = None) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["iteration", "request", "kind", "tokens"])
    if start_s is not None:
        table["start_s"] = start_s
    return table


def _pair() -> Instance:
    return Instance(arrival_s=[0.0, 0.5], prompt_tokens=[3, 2], output_tokens=[2, 3])


def test_hand_built_table_on_unit_slots() -> None:
    # 0: r0 chunk 2              [0, 1]
    # 1: r0 chunk 1 (token 1), r1 prefill 2 (token 1; arrived at 0.5)   [1, 2]
    # 2: r0 decode (token 2: done), r1 decode (token 2)                  [2, 3]
    # 3: r1 decode (token 3: done), not before start_s = 5               [5, 6]
    nan = float("nan")
    table = _table(
        [
            (0, 0, "prefill", 2),
            (1, 0, "prefill", 1),
            (1, 1, "prefill", 2),
            (2, 0, "decode", 1),
            (2, 1, "decode", 1),
            (3, 1, "decode", 1),
        ],
        start_s=[nan, nan, nan, nan, nan, 5.0],
    )
    profile = UNIT.replace(kv_capacity_tokens=10)
    result = replay_batch_table(_pair(), profile, table, log=True)
    records = result.requests
    assert records["admitted_s"].tolist() == [0.0, 1.0]
    assert records["first_token_s"].tolist() == [2.0, 2.0]
    assert records["completion_s"].tolist() == [3.0, 6.0]
    assert result.iterations == 4
    assert result.policy == "batch-table"
    _valid(result, _pair(), profile)


def test_an_iteration_waits_for_its_members_to_arrive() -> None:
    # 0: r1 prefill, waits for r1's arrival at 0.5          [0.5, 1.5]
    # 1: r0 prefill 3 (token 1), r1 decode (token 2)        [1.5, 2.5]
    # 2: r0 decode (token 2: done), r1 decode (3: done)     [2.5, 3.5]
    table = _table(
        [
            (0, 1, "prefill", 2),
            (1, 0, "prefill", 3),
            (1, 1, "decode", 1),
            (2, 0, "decode", 1),
            (2, 1, "decode", 1),
        ]
    )
    result = replay_batch_table(_pair(), UNIT.replace(kv_capacity_tokens=10), table)
    assert result.requests["first_token_s"].tolist() == [2.5, 1.5]
    assert result.requests["completion_s"].tolist() == [3.5, 3.5]


def test_rows_in_any_order_give_the_same_replay() -> None:
    rows = [
        (0, 1, "prefill", 2),
        (1, 1, "decode", 1),
        (1, 0, "prefill", 3),
        (2, 1, "decode", 1),
        (2, 0, "decode", 1),
    ]
    profile = UNIT.replace(kv_capacity_tokens=10)
    forward = replay_batch_table(_pair(), profile, _table(rows))
    backward = replay_batch_table(_pair(), profile, _table(rows[::-1]))
    pd.testing.assert_frame_equal(forward.requests, backward.requests)


def _decode_run_then_late_arrival() -> tuple[Instance, pd.DataFrame]:
    """r0 (a=0, s=1, o=6) decodes in iterations 1..3, then the table waits for r1
    (a=10, s=1, o=1) before r0's last two decodes."""
    instance = Instance(
        arrival_s=[0.0, 10.0], prompt_tokens=[1, 1], output_tokens=[6, 1]
    )
    rows = [(0, 0, "prefill", 1)] + [(k, 0, "decode", 1) for k in (1, 2, 3)]
    rows += [(4, 1, "prefill", 1), (5, 0, "decode", 1), (6, 0, "decode", 1)]
    return instance, _table(rows)


@pytest.mark.parametrize("with_profile", [True, False])
def test_a_held_run_stops_where_the_table_idles(with_profile: bool) -> None:
    # [0, 1] prefill r0; [1, 4] decodes; idle; [10, 11] r1; [11, 13] r0's last two
    instance, table = _decode_run_then_late_arrival()
    profile = UNIT.replace(kv_capacity_tokens=10)
    calls: list[tuple[float, Batch]] = []
    spec = batch_table_spec(table, instance, profile if with_profile else None)
    spied = ScheduleSpec(
        "batch-table",
        spec.params,
        build=lambda p: _Spy(BatchTable(p), calls),
        arrival_s=spec.arrival_s,
        prompt_tokens=spec.prompt_tokens,
    )
    result = simulate(instance, profile, spied, replicas=1, log=True)
    assert result.requests["first_token_s"].tolist() == [1.0, 11.0]
    assert result.requests["completion_s"].tolist() == [13.0, 11.0]
    _valid(result, instance, profile)
    held = [(now, b.hold, b.wake_at_s) for now, b in calls if b.hold]
    if with_profile:
        # held over iterations 1..3, waking in the middle of the last one
        assert held == [(1.0, True, 3.5), (11.0, True, None)]
    else:  # the run does not end with a completion: one iteration at a time
        assert held == [(11.0, True, None)]


def test_a_start_time_inside_a_run_cuts_the_hold() -> None:
    # r0 (s=1, o=6): decodes 1..5, iteration 3 not before t = 7
    instance = Instance(arrival_s=[0.0], prompt_tokens=[1], output_tokens=[6])
    rows = [(0, 0, "prefill", 1)] + [(k, 0, "decode", 1) for k in range(1, 6)]
    start_s = [float("nan")] * 3 + [7.0, float("nan"), float("nan")]
    result = replay_batch_table(
        instance, UNIT.replace(kv_capacity_tokens=10), _table(rows, start_s), log=True
    )
    assert result.runs is not None
    assert result.runs["start_s"].tolist() == [0.0, 1.0, 7.0]  # prefill, 2, 3
    assert result.runs["iterations"].tolist() == [1, 2, 3]
    assert result.requests["completion_s"].tolist() == [10.0]


def test_a_spec_for_another_profile_leaves_the_table_loudly() -> None:
    # wake-ups computed for one-second iterations let a fast profile run past the
    # end of the decode run; the policy notices at its next decision
    instance, table = _decode_run_then_late_arrival()
    spec = batch_table_spec(table, instance, UNIT)
    with pytest.raises(PolicyError, match="left the table"):
        simulate(instance, LLAMA, spec, replicas=1)


def table_from_log(result: SimulationResult) -> pd.DataFrame:
    """A one-replica iteration log as a batch table: a run of n iterations
    becomes n iterations with the same members (only decode runs have n > 1)."""
    runs, members = result.runs, result.members
    assert runs is not None and members is not None
    n_of_run = runs["iterations"]
    first_of_run = n_of_run.cumsum() - n_of_run
    rows = []
    for m in members.itertuples(index=False):
        for j in range(int(n_of_run[m.run])):
            rows.append((int(first_of_run[m.run]) + j, m.request, m.kind, m.tokens))
    return _table(rows)


@pytest.mark.parametrize(
    ("profile_name", "policy", "seed"),
    [
        ("llama2-70b-a100-tp4", "fcfs", 0),
        ("llama2-70b-a100-tp4", "fcfs:chunked=false", 1),
        ("llama2-70b-a100-tp4", "fcfs", 2),
        ("opt-13b-a100-tp1-vllm", "fcfs", 3),
    ],
)
def test_an_fcfs_log_replays_to_identical_times(
    profile_name: str, policy: str, seed: int
) -> None:
    profile = load_profile(profile_name)
    instance = generate(
        40,
        prompt=LogNormal(median=600, sigma=1.0, max_tokens=2000),
        output=LogNormal(median=80, sigma=1.0, max_tokens=600),
        arrivals=Poisson(rate_per_s=4.0),
        seed=seed,
    )
    online = simulate(instance, profile, policy, log=True)
    assert online.preemptions is not None and len(online.preemptions) == 0
    table = table_from_log(online)
    assert table["iteration"].max() + 1 == online.iterations
    replay = replay_batch_table(instance, profile, table, log=True)
    # the same iterations from the same boundaries: equal to the last bit
    pd.testing.assert_frame_equal(replay.requests, online.requests, check_exact=True)
    assert replay.runs is not None
    pd.testing.assert_frame_equal(replay.runs, online.runs, check_exact=True)
    _valid(replay, instance, profile)


@pytest.mark.parametrize("seed", range(3))
def test_held_table_runs_agree_with_the_naive_engine(seed: int) -> None:
    # the naive engine ignores hold: a false promise would show up here
    instance = generate(
        25,
        prompt=LogNormal(median=300, sigma=1.0, max_tokens=2000),
        output=LogNormal(median=60, sigma=1.0, max_tokens=400),
        arrivals=Poisson(rate_per_s=6.0),
        seed=seed,
    )
    table = table_from_log(simulate(instance, LLAMA, "fcfs", log=True))
    fast = replay_batch_table(instance, LLAMA, table)
    naive = simulate_naive(instance, LLAMA, batch_table_spec(table, instance))
    for column in ("first_token_s", "completion_s"):
        np.testing.assert_allclose(
            fast.requests[column], getattr(naive, column), rtol=1e-9
        )
    assert fast.iterations == naive.iterations


def _good_rows() -> list[tuple]:
    return [
        (0, 0, "prefill", 3),
        (0, 1, "prefill", 2),
        (1, 0, "decode", 1),
        (1, 1, "decode", 1),
        (2, 1, "decode", 1),
    ]


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda t: t.drop(columns="kind"), "kind", "missing column(s) ['kind']"),
        (
            lambda t: t.assign(iteration=t["iteration"].replace(2, 3)),
            "iteration",
            "iteration 3, but iteration 2 has no rows",
        ),
        (
            lambda t: t.assign(iteration=t["iteration"] + 1),
            "iteration",
            "iteration 1, but iteration 0 has no rows",
        ),
        (
            lambda t: t.assign(iteration=t["iteration"] + 0.5),
            "iteration",
            "row 0: got 0.5; expected an integer",
        ),
        (
            lambda t: t.assign(
                kind=["prefill", "prefill", "decode", "decode", "chunk"]
            ),
            "kind",
            "row 4: got 'chunk'",
        ),
        (
            lambda t: t.assign(tokens=[3, 2, 1, 2, 1]),
            "tokens",
            "row 3: a decode step has 2 tokens",
        ),
        (lambda t: t.assign(tokens=[3, 0, 1, 1, 1]), "tokens", "row 1: got 0"),
        (
            lambda t: t.assign(request=[0, 1, 0, 1, 2]),
            "request",
            "row 4: got 2; expected a request in 0..1",
        ),
        (
            lambda t: t.assign(request=[0, 0, 0, 1, 1]),
            "request",
            "request 0 appears twice in iteration 0",
        ),
        (
            lambda t: t.assign(start_s=[0.0, 1.0, 2.0, 2.0, 3.0]),
            "start_s",
            "start_s 1.0 differs from 0.0 in the same iteration 0",
        ),
        (
            lambda t: t.assign(start_s=-1.0),
            "start_s",
            "row 0: got -1.0; expected a finite number >= 0 (or NaN",
        ),
        (
            lambda t: t.assign(iteration=[0, 1, 1, 0, 2]),
            "kind",  # decode first
            "row 3: request 1 decodes in iteration 0 before its prefill is complete "
            "(0 of its 2 prompt tokens processed)",
        ),
        (
            lambda t: t.assign(tokens=[2, 2, 1, 1, 1]),
            "kind",  # prefill too short
            "row 2: request 0 decodes in iteration 1 before its prefill is complete "
            "(2 of its 3 prompt tokens processed)",
        ),
        (
            lambda t: t.iloc[:4],
            "request",
            "request 1 has 2 prefill tokens and 1 decode step(s); expected 2 prefill "
            "tokens (its prompt) and 2 decode step(s)",
        ),
        (
            lambda t: pd.concat([t, _table([(3, 0, "decode", 1)])], ignore_index=True),
            "request",
            "request 0 has 3 prefill tokens and 2 decode step(s); expected "
            "3 prefill tokens (its prompt) and 1 decode step(s) (output 2 - 1)",
        ),
        (
            lambda t: t[t["request"] == 0].assign(iteration=[0, 1]),
            "request",
            "request 1 never appears",
        ),
        (
            lambda t: t.assign(tokens=[4, 2, 1, 1, 1]),
            "tokens",
            "request 0's prefill chunks reach 4 tokens",
        ),
        (lambda t: t.iloc[:0], "batch_table", "no rows"),
    ],
)
def test_bad_tables_are_rejected(edit: Any, field: str, message: str) -> None:
    table = edit(_table(_good_rows()))
    with pytest.raises(InputError) as info:
        replay_batch_table(_pair(), UNIT.replace(kv_capacity_tokens=10), table)
    assert info.value.field == field
    assert message in str(info.value)


def test_the_good_table_replays() -> None:
    result = replay_batch_table(
        _pair(), UNIT.replace(kv_capacity_tokens=10), _table(_good_rows())
    )
    # iteration 0 waits for request 1 (0.5): iterations end at 1.5, 2.5, 3.5
    assert result.requests["completion_s"].tolist() == [2.5, 3.5]


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"kv_capacity_tokens": 6}, "KV"),  # 5 tokens, then 7
        ({"max_num_seqs": 1}, "max_num_seqs"),
        ({"max_num_batched_tokens": 4}, "max_num_batched_tokens"),
    ],
)
def test_tables_breaking_limits_raise_policy_errors(
    changes: dict[str, int], rule: str
) -> None:
    profile = UNIT.replace(**({"kv_capacity_tokens": 10} | changes))
    with pytest.raises(PolicyError, match=rule):
        replay_batch_table(_pair(), profile, _table(_good_rows()))


def _raw_spec(params: BatchTableParams, instance: Instance) -> ScheduleSpec:
    return ScheduleSpec(
        "batch-table",
        (params,),
        build=BatchTable,
        arrival_s=(instance.arrival_s,),
        prompt_tokens=(instance.prompt_tokens,),
    )


def test_unchecked_params_still_fail_clearly() -> None:
    # parameters built by hand skip the table checks; the policy still refuses a
    # decode before the prefill and a table that ends too early
    instance = _pair()
    decode_first = BatchTableParams(
        offsets=np.array([0, 1, 2]),
        request=np.array([0, 0]),
        prefill=np.array([False, True]),
        tokens=np.array([1, 3]),
        start_s=np.full(2, np.nan),
    )
    profile = UNIT.replace(kv_capacity_tokens=10)
    with pytest.raises(PolicyError, match="decode of request 0 before its prefill"):
        simulate(instance, profile, _raw_spec(decode_first, instance), replicas=1)
    too_short = BatchTableParams(
        offsets=np.array([0, 2]),
        request=np.array([0, 1]),
        prefill=np.array([True, True]),
        tokens=np.array([3, 2]),
        start_s=np.full(1, np.nan),
    )
    with pytest.raises(PolicyError, match="all 1 iterations of the table have run"):
        simulate(instance, profile, _raw_spec(too_short, instance), replicas=1)
