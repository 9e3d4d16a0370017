"""The ``priority`` policy and the scale search (:mod:`lsched.formulations.scale`).

Policy: hand-built unit-slot instances whose schedules are derived in the
docstrings (every iteration takes 1 s, KV in tokens); seeded random instances on
tight profiles where the fast engine, the naive reference engine (which ignores
``hold``) and the independent validator must agree for every key rule, budget
order, preemption and chunk cap; ``key=output, order=admission`` reproduces
``sjf`` and ``srpt`` request by request. Search: replaying from a window's stored
boundary state gives exactly what a fresh evaluator run of the changed point
gives, and ``improve`` on a prefix of the Azure code trace returns a point the
evaluator reproduces, no worse than its starts, within its time limit, with a
bound below it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_engine_equivalence import (
    PROFILES,
    TIME_SCALE_S,
    Case,
    agree_and_validate,
    random_instance,
    request_column,
    run_checked,
    tight_profile,
)

from lsched import predictors
from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.formulations.bounds.work import work_bounds
from lsched.formulations.scale import (
    ReplicaReplay,
    improve,
    window_starts,
)
from lsched.instance import Instance
from lsched.policies import REGISTRY, PolicySpec, parse_policy
from lsched.policies.priority import (
    KeyArray,
    PriorityParams,
    work_keys,
    work_params,
    work_weights,
)
from lsched.profile import load_profile
from lsched.traces import read_trace

UNIT = PROFILES["unit-slot"]
LLAMA = load_profile("llama2-70b-a100-tp4")
AZURE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_code_2023.csv"
)


def _spec(**params: Any) -> PolicySpec:
    return PolicySpec("priority", PriorityParams(**params))


def _total(result: Any, instance: Instance) -> float:
    return float(
        (result.requests["completion_s"].to_numpy() - instance.arrival_s).sum()
    )


@pytest.fixture(scope="module")
def azure() -> Instance:
    if not AZURE.exists():
        pytest.skip(f"real trace {AZURE} not present (../shared/traces)")
    # cut to the profile's context, so that the evaluator serves every request
    # whole (improve refuses what it would reject or cut)
    instance, _ = read_trace(AZURE, max_model_len=LLAMA.max_model_len)
    return instance


# -- parameters ------------------------------------------------------------------


def test_priority_is_registered_and_parses() -> None:
    spec = parse_policy("priority:key=prompt,order=admission,preemptive=true")
    assert "priority" in REGISTRY
    assert spec.params == PriorityParams(
        key="prompt", order="admission", preemptive=True
    )
    assert spec.label == "priority:key=prompt,order=admission,preemptive=true"
    capped = parse_policy("priority:chunk_tokens=256")
    assert capped.params.chunk_tokens == 256
    # an array parameter shows its size, not its values
    keys = _spec(key="explicit", keys=[3.0, 1.0, 2.0])
    assert keys.label == "priority:key=explicit,keys=KeyArray(n=3)"
    assert keys.params == PriorityParams(key="explicit", keys=KeyArray([3, 1, 2]))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("priority:key=bogus", "policy priority"),
        ("priority:order=random", "policy priority"),
        ("priority:chunk_tokens=0", "policy priority"),
        ("priority:prefill_s_per_token=-1", "policy priority"),
        ("priority:key=explicit", "policy priority"),
        ("priority:keys=1", "policy priority"),
    ],
)
def test_bad_parameters_are_input_errors(text: str, field: str) -> None:
    with pytest.raises(InputError) as err:
        parse_policy(text)
    assert err.value.field == field


def test_bad_parameter_arrays_name_their_field() -> None:
    with pytest.raises(InputError) as err:
        PriorityParams(chunk_caps=[4, 0])
    assert err.value.field == "chunk_caps"
    with pytest.raises(InputError) as err:
        PriorityParams(offsets=[0.0, math.nan])
    assert err.value.field == "offsets"
    # arrays must match the replica's requests
    inst = Instance([0, 0], [1, 1], [1, 1])
    with pytest.raises(InputError) as err:
        simulate(inst, UNIT, _spec(key="arrival", offsets=[0.0, 1.0, 2.0]))
    assert err.value.field == "offsets"


def test_work_weights_are_the_profile_gradient_at_a_full_prefill() -> None:
    """llama2-70b-a100-tp4 is one affine piece (models/*.toml): the weights are
    its coefficients, the constant shared over the budget's B tokens."""
    w = LLAMA.iteration_time.effective_regimes[0][0]
    budget = LLAMA.max_num_batched_tokens
    got = work_weights(LLAMA)
    assert got["prefill_s_per_token"] == pytest.approx(w[1] + w[0] / budget)
    assert got["attention_s_per_token2"] == pytest.approx(w[2])
    assert got["decode_s_per_step"] == pytest.approx(w[3] + w[0] / budget)
    assert got["kv_read_s_per_token"] == pytest.approx(w[4])
    assert w[0] == pytest.approx(0.042037910563971326)  # from the TOML


def test_work_key_of_a_fresh_request_by_hand() -> None:
    """s = 3, o = 4: prefill 3 tokens (one chunk: Q = 3 * 3), then 3 decode steps
    emitting tokens 2, 3, 4 and reading 3+1, 3+2, 3+3 = 15 KV tokens."""
    params = PriorityParams(
        prefill_s_per_token=2.0,
        attention_s_per_token2=0.5,
        decode_s_per_step=7.0,
        kv_read_s_per_token=0.25,
    )
    got = work_keys(params, [3, 1], [4, 1])
    assert got[0] == pytest.approx(2.0 * 3 + 0.5 * 9 + 7.0 * 3 + 0.25 * 15)
    assert got[1] == pytest.approx(2.0 * 1 + 0.5 * 1)  # o = 1: no decode step


# -- hand cases ------------------------------------------------------------------


def test_explicit_keys_force_the_order() -> None:
    """One sequence at a time; A, B, C at t=0, prompts 1, outputs 2 (prefill +
    one decode: 2 slots each). Keys 3, 1, 2 serve B [0,2), C [2,4), A [4,6);
    offsets that reverse them serve A, C, B."""
    inst = Instance([0, 0, 0], [1, 1, 1], [2, 2, 2])
    profile = UNIT.replace(max_num_seqs=1)
    got = run_checked(inst, profile, _spec(key="explicit", keys=[3.0, 1.0, 2.0]))
    assert request_column(got, "completion_s") == [6.0, 2.0, 4.0]
    flipped = _spec(key="explicit", keys=[3.0, 1.0, 2.0], offsets=[-10.0, 5.0, 0.0])
    got = run_checked(inst, profile, flipped)
    assert request_column(got, "completion_s") == [2.0, 6.0, 4.0]
    # the instance's priority column, through key=priority
    ranked = inst.replace(priority=np.array([2, 3, 1]))
    got = run_checked(ranked, profile, _spec(key="priority"))
    assert request_column(got, "completion_s") == [4.0, 6.0, 2.0]


def test_key_order_pauses_a_running_prefill_admission_order_does_not() -> None:
    """Budget 4 tokens, key = remaining prompt. A (a=0, s=8, o=1), B (a=1, s=2,
    o=1). t=0: A gets 4 tokens. t=1: B (2 left) before A (4 left): B 2 tokens, A
    the other 2; B's prefill emits its only token at 2. t=2: A's last 2 tokens,
    done at 3. In admission order A (running) takes the whole budget at t=1 and
    finishes at 2; B waits and finishes at 3."""
    inst = Instance([0, 1], [8, 2], [1, 1])
    profile = UNIT.replace(max_num_batched_tokens=4)
    by_key = run_checked(inst, profile, _spec(key="prompt"))
    assert request_column(by_key, "completion_s") == [3.0, 2.0]
    assert request_column(by_key, "admitted_s") == [0.0, 1.0]
    by_admission = run_checked(inst, profile, _spec(key="prompt", order="admission"))
    assert request_column(by_admission, "completion_s") == [2.0, 3.0]
    # equal keys: the running request goes first, so A keeps the budget at t=1
    tied = inst.replace(priority=np.array([0, 0]))
    got = run_checked(tied, profile, _spec(key="priority"))
    assert request_column(got, "completion_s") == [2.0, 3.0]


def test_chunk_caps_spread_a_prefill() -> None:
    """A (s=8, o=2) alone: with chunks of at most 3 its prefill takes 3, 3, 2
    tokens in [0,3), emitting token 1 at 3 and token 2 at 4; uncapped it emits
    them at 1 and 2. A per-request cap of 5 for B (s=6, o=1) gives chunks 5, 1."""
    inst = Instance([0], [8], [2])
    capped = run_checked(inst, UNIT, _spec(key="arrival", chunk_tokens=3))
    assert request_column(capped, "first_token_s") == [3.0]
    assert request_column(capped, "completion_s") == [4.0]
    plain = run_checked(inst, UNIT, _spec(key="arrival"))
    assert request_column(plain, "completion_s") == [2.0]
    two = Instance([0, 0], [8, 6], [2, 1])
    got = run_checked(two, UNIT, _spec(key="arrival", chunk_caps=[8, 5]))
    assert request_column(got, "completion_s") == [2.0, 2.0]
    assert request_column(got, "first_token_s") == [1.0, 2.0]


def test_prefill_budget_shortens_iterations() -> None:
    """Key = arrival, unit slots. A (a=0, s=8, o=3), B (a=1, s=6, o=1) with at
    most 4 prefill tokens per iteration: A prefills 4 + 4 tokens in [0,2) (B gets
    nothing at t=1), emits token 1 at 2; then A decodes while B prefills 4 + 2
    tokens: A's tokens 2, 3 at 3 and 4, B's only token at 4. Unbudgeted: A's
    prefill takes [0,1), B's [1,2), A done at 3. With per-arrival budgets 4 (while
    A is the latest arrival) and 100 (from B's arrival on): A 4 tokens at t=0,
    then A's last 4 and B's 6 together in [1,2)."""
    inst = Instance([0, 1], [8, 6], [3, 1])
    budgeted = run_checked(inst, UNIT, _spec(key="arrival", prefill_budget=4))
    assert request_column(budgeted, "completion_s") == [4.0, 4.0]
    assert request_column(budgeted, "first_token_s") == [2.0, 4.0]
    plain = run_checked(inst, UNIT, _spec(key="arrival"))
    assert request_column(plain, "completion_s") == [3.0, 2.0]
    varying = _spec(key="arrival", prefill_budgets=[4, 100])
    assert request_column(run_checked(inst, UNIT, varying), "completion_s") == [
        4.0,
        2.0,
    ]
    with pytest.raises(InputError) as err:
        PriorityParams(order="admission", prefill_budget=4)
    assert err.value.field == "prefill_budget"


def test_kv_shortage_preempts_the_largest_key() -> None:
    """A (a=0, s=2, o=10) and B (a=1, s=2, o=5), capacity 11 tokens, key =
    predicted remaining output, as in test_policies_length's sjf case: at t=5 A
    (5 left) is preempted rather than B (1 left); explicit keys that rank A first
    preempt B instead."""
    inst = predictors.oracle(Instance([0, 1], [2, 2], [10, 5]))
    profile = UNIT.replace(kv_capacity_tokens=11)
    got = run_checked(inst, profile, _spec(key="output", order="admission"))
    assert request_column(got, "preemptions") == [1, 0]
    assert request_column(got, "completion_s") == [11.0, 6.0]
    got = run_checked(inst, profile, _spec(key="explicit", keys=[0.0, 1.0]))
    assert request_column(got, "preemptions") == [0, 1]


# -- random instances against the reference engine -------------------------------


def _random_params(rng: np.random.Generator, n: int, one_replica: bool) -> Any:
    key = str(rng.choice(["work", "prompt", "output", "arrival", "priority"]))
    params: dict[str, Any] = {
        "key": key,
        "order": str(rng.choice(["key", "admission"])),
        "preemptive": bool(rng.random() < 0.5),
    }
    if rng.random() < 0.4:
        params["chunk_tokens"] = int(rng.integers(1, 6))
    if key == "work":
        params |= {
            "attention_s_per_token2": float(rng.choice([0.0, 0.01])),
            "kv_read_s_per_token": float(rng.choice([0.0, 0.1])),
        }
    if params["order"] == "key" and rng.random() < 0.4:
        params["prefill_budget"] = int(rng.integers(1, 8))
    if one_replica and params["order"] == "key" and rng.random() < 0.3:
        params["prefill_budgets"] = rng.integers(1, 8, size=n)
    if one_replica and rng.random() < 0.5:
        params["offsets"] = rng.normal(0.0, 5.0, size=n)
        if rng.random() < 0.5:
            params["chunk_caps"] = rng.integers(1, 8, size=n)
    if one_replica and rng.random() < 0.2:
        params = params | {"key": "explicit", "keys": rng.random(n)}
    return _spec(**params)


def test_random_instances_agree_with_the_reference_engine() -> None:
    rng = np.random.default_rng(20250801)
    preempted = chunked = 0
    for _ in range(80):
        name = str(rng.choice(list(PROFILES)))
        n = int(rng.integers(1, 11))
        inst = random_instance(
            rng, n, TIME_SCALE_S[name], exact_clock=name == "unit-slot"
        )
        inst = inst.replace(priority=rng.integers(0, 4, size=n))
        profile = tight_profile(rng, PROFILES[name], inst)
        replicas = int(rng.choice([1, 3]))
        spec = _random_params(rng, n, replicas == 1)
        naive, fast = agree_and_validate(Case(inst, profile, spec, replicas, None))
        preempted += int(naive.preemptions.sum() > 0)
        prefills = fast.members[fast.members["kind"] == "prefill"]
        chunked += int(prefills.groupby("request").size().max() >= 2)
    assert preempted >= 10, preempted
    assert chunked >= 20, chunked


def test_output_key_in_admission_order_is_sjf_and_srpt() -> None:
    rng = np.random.default_rng(20250802)
    for _ in range(60):
        name = str(rng.choice(list(PROFILES)))
        n = int(rng.integers(1, 11))
        inst = random_instance(
            rng, n, TIME_SCALE_S[name], exact_clock=name == "unit-slot"
        )
        profile = tight_profile(rng, PROFILES[name], inst)
        for preemptive, reference in ((False, "sjf"), (True, "srpt")):
            spec = _spec(key="output", order="admission", preemptive=preemptive)
            ours = simulate(inst, profile, spec)
            theirs = simulate(inst, profile, reference)
            for column in ("completion_s", "first_token_s", "preemptions"):
                np.testing.assert_array_equal(
                    ours.requests[column], theirs.requests[column], err_msg=column
                )


# -- the search ------------------------------------------------------------------


def test_window_starts() -> None:
    got = window_starts(np.array([0.0, 1.0, 5.0, 12.0, 13.0]), 5.0)
    assert got.tolist() == [0, 2, 3]  # [0,5): 0, 1; [5,10): 5; [10,15): 12, 13
    assert window_starts(np.array([3.0, 3.0]), 1.0).tolist() == [0]


def test_replay_from_a_window_state_is_the_evaluator_of_the_changed_point(
    azure: Instance,
) -> None:
    """Replays carry the engine state at each window start; changing one window's
    offsets and caps and replaying from its state must give, request by request,
    what a fresh evaluator run of the changed parameters gives."""
    inst = predictors.oracle(azure.subset(np.arange(700)))
    params = work_params(LLAMA)
    starts = window_starts(inst.arrival_s, 30.0)
    assert len(starts) >= 5
    rr = ReplicaReplay(inst, LLAMA, params, starts)
    value, taken = rr.replay(0, math.inf)
    rr.accept(0, value, taken)
    plain = simulate(inst, LLAMA, PolicySpec("priority", params))
    assert value == _total(plain, inst)

    rng = np.random.default_rng(3)
    for k in (len(starts) // 2, len(starts) - 2, 1):
        lo, hi = int(starts[k]), int(starts[k + 1])
        rr.offsets[lo:hi] += rng.normal(0.0, 0.3, size=hi - lo)
        rr.chunk_caps[lo:hi] = 256
        rr.prefill_budgets[lo:hi] = 2048
        value, taken = rr.replay(k, math.inf)
        rr.accept(k, value, taken)
        changed = PriorityParams(
            **(
                work_weights(LLAMA)
                | {
                    "offsets": rr.offsets.copy(),
                    "chunk_caps": rr.chunk_caps.copy(),
                    "prefill_budgets": rr.prefill_budgets.copy(),
                }
            )
        )
        fresh = simulate(inst, LLAMA, PolicySpec("priority", changed))
        np.testing.assert_array_equal(
            rr.engine.completion_s, fresh.requests["completion_s"].to_numpy()
        )
        assert value == _total(fresh, inst)
        assert value != _total(plain, inst)  # the move did change the schedule


def test_priority_work_beats_the_length_policies_on_a_real_trace(
    azure: Instance,
) -> None:
    """On the Azure code trace prompts dominate the work: shortest *work* first
    beats shortest *output* first and FCFS on a 1,500-request prefix."""
    inst = predictors.oracle(azure.subset(np.arange(1500)))
    work = _total(
        simulate(inst, LLAMA, PolicySpec("priority", work_params(LLAMA))), inst
    )
    assert work < _total(simulate(inst, LLAMA, "sjf"), inst)
    assert work < _total(simulate(inst, LLAMA, "fcfs"), inst)
    assert work >= work_bounds(inst, LLAMA)["work"]


def test_improve_on_a_real_trace(azure: Instance) -> None:
    inst = azure.subset(np.arange(600))
    seen: list[tuple[float, float | None, float]] = []
    limit = 6.0
    began = time.perf_counter()
    result = improve(
        inst,
        LLAMA,
        time_limit_s=limit,
        seed=0,
        window_s=20.0,
        on_progress=lambda t, o, b: seen.append((t, o, b)),
    )
    elapsed = time.perf_counter() - began
    assert result.runtime_s <= elapsed
    assert result.objective is not None and result.rule is not None
    assert result.objective <= min(result.start_objectives.values())
    # the evaluator reproduces it from the returned parameters (the keys read the
    # true output lengths: an oracle); exactly when the search had the time to
    # verify it itself, else to the replay's rounding
    again = simulate(predictors.oracle(inst), LLAMA, result.specs()[0])
    if result.info["verified"]:
        assert _total(again, inst) == result.objective
    else:
        assert _total(again, inst) == pytest.approx(result.objective, rel=1e-9)
    # bound and certified gap
    bounds = work_bounds(inst, LLAMA)
    assert result.bound == max(bounds.values())
    assert result.bound <= result.objective
    assert result.gap == pytest.approx(
        (result.objective - result.bound) / result.objective
    )
    # progress: the bound first, then non-increasing objectives, as logged
    assert seen[0][1] is None
    values = [o for _, o, _ in seen if o is not None]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(result.objective, rel=1e-12)
    assert result.log["objective"].dropna().tolist() == values
    assert result.keys is not None and len(result.keys) == len(inst)
    fcfs = _total(simulate(inst, LLAMA, "fcfs"), inst)
    assert result.objective < fcfs


def test_improve_with_replicas_and_start_keys(azure: Instance) -> None:
    inst = azure.subset(np.arange(300))
    keys = inst.prompt_tokens.astype(float)[::-1].copy()  # a poor order on purpose
    result = improve(inst, LLAMA, time_limit_s=4.0, seed=1, start_keys=keys, replicas=2)
    assert result.objective is not None
    assert any(label.startswith("explicit") for label in result.start_objectives)
    assert result.assignment.tolist() == (np.arange(len(inst)) % 2).tolist()
    total = 0.0
    for c, spec in enumerate(result.specs()):
        part = inst.subset(np.flatnonzero(result.assignment == c))
        part = predictors.oracle(part)
        total += _total(simulate(part, LLAMA, spec, replicas=1), part)
    assert total == pytest.approx(result.objective, rel=1e-12)
    assert result.bound == max(work_bounds(inst, LLAMA, replicas=2).values())


def test_improve_stops_at_a_tiny_time_limit(azure: Instance) -> None:
    """Too little time for even one replay: no schedule is a status."""
    inst = azure.subset(np.arange(3000))
    result = improve(inst, LLAMA, time_limit_s=0.01, seed=0)
    assert result.objective is None and result.gap is None
    assert result.status.value == "time_limit"
    assert math.isfinite(result.bound)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"objective": "makespan"}, "objective"),
        ({"time_limit_s": 0.0}, "time_limit_s"),
        ({"time_limit_s": math.inf}, "time_limit_s"),
        ({"window_s": -1.0}, "window_s"),
        ({"start_keys": [1.0, 2.0]}, "start_keys"),
        ({"seed": 1.5}, "seed"),
        ({"replicas": 0}, "replicas"),
    ],
)
def test_improve_rejects_bad_input(kwargs: dict[str, Any], field: str) -> None:
    inst = Instance([0, 1, 2], [1, 2, 3], [1, 1, 1])
    args: dict[str, Any] = {"time_limit_s": 1.0, "seed": 0} | kwargs
    with pytest.raises(InputError) as err:
        improve(inst, UNIT, **args)
    assert err.value.field == field


def test_improve_rejects_a_request_that_never_fits() -> None:
    inst = Instance([0], [10], [5])
    with pytest.raises(InputError) as err:
        improve(inst, UNIT.replace(kv_capacity_tokens=8), time_limit_s=1.0, seed=0)
    assert err.value.field == "kv_capacity_tokens"
