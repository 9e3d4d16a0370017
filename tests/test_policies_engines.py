"""The schedulers of real engines: static, orca, vllm-v0, vllm, sarathi.

Hand-built instances on the unit-slot profile (every iteration takes 1 s, KV in
tokens) whose schedules are derived by hand in the comments; then every policy on
seeded random instances (five profiles, tight KV, blocks of 1 and 16, binding batch
limits, 1 and 3 replicas) must give the same per-request times as the naive engine
(which calls the policy every iteration and so catches a false ``hold``), pass the
validator, and keep its own promise (sarathi's budget, orca's no preemption,
static's no admission mid-batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from reference_engine import simulate_naive
from test_engine_equivalence import (
    PROFILES,
    TIME_SCALE_S,
    Case,
    agree_and_validate,
    assert_same,
    random_instance,
    run_both,
    run_checked,
    tight_profile,
)

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.instance import Instance
from lsched.policies import REGISTRY, ReplicaLimits, ReplicaView, parse_policy
from lsched.policies.vllm import Vllm, VllmParams
from lsched.profile import load_profile

UNIT = load_profile("unit-slot")


def _times(instance: Instance, profile: Any, policy: str) -> dict[str, list[float]]:
    """Completion and first-token times from both engines (which must agree)."""
    naive = simulate_naive(instance, profile, policy)
    fast = simulate(instance, profile, policy)
    for column in ("first_token_s", "completion_s"):
        np.testing.assert_allclose(fast.requests[column], getattr(naive, column))
    return {
        "first": naive.first_token_s.tolist(),
        "done": naive.completion_s.tolist(),
        "preemptions": naive.preemptions.tolist(),
    }


# -- registry and parameters ------------------------------------------------------


def test_registered_names() -> None:
    for name in ("static", "orca", "vllm-v0", "vllm", "sarathi"):
        assert name in REGISTRY
        assert parse_policy(name).label == name


def test_parameters_are_parsed_and_validated() -> None:
    spec = parse_policy("vllm-v0:kv_limit=false,prefill_token_budget=64")
    assert spec.params.prefill_token_budget == 64
    assert spec.params.decode_context_cap is None
    assert (
        parse_policy("vllm-v0:decode_context_cap=none").params.decode_context_cap
        is None
    )
    assert parse_policy("orca:max_batch=4").params.max_batch == 4
    assert parse_policy("vllm-v0").params.back_pressure_tokens is None
    spec = parse_policy("vllm-v0:back_pressure_tokens=100")
    assert spec.params.back_pressure_tokens == 100
    bad = {
        "sarathi:chunk=0": "chunk",
        "sarathi:watermark=1.5": "watermark",
        "vllm:long_prefill_token_threshold=-1": "long_prefill_token_threshold",
        "vllm-v0:prefill_token_budget=abc": "prefill_token_budget",
        "vllm-v0:decode_context_cap=0": "decode_context_cap",
        "vllm-v0:back_pressure_tokens=0": "back_pressure_tokens",
        "vllm-v0:back_pressure_tokens=abc": "back_pressure_tokens",
        "orca:reserve=always": "reserve",
        "orca:max_batch=0": "max_batch",
        "static:batch_size=0": "batch_size",
    }
    for text, parameter in bad.items():
        with pytest.raises(InputError, match=parameter):
            parse_policy(text)


# -- hand cases -----------------------------------------------------------------------


def test_vllm_preempts_the_newest_running_request() -> None:
    # capacity 10 tokens; A and B (prompt 4, output 5) at t = 0.
    # it0 [0,1): both admitted whole (8 tokens), token 1 each.
    # it1 [1,2): both decode (10 tokens), token 2 each.
    # it2 [2,3): A needs an 11th token: B, the newest, is preempted (5 tokens
    #   recomputed); nothing is admitted in that step; A -> token 3.
    # it3 [3,4): A -> token 4 (7 tokens); B needs 4 + 2 = 6 > 10 - 7 free: waits.
    # it4 [4,5): A -> token 5, done at 5.
    # it5 [5,6): B re-prefills 6 tokens -> token 3; it6 token 4; it7 token 5: 8.
    instance = Instance([0.0, 0.0], [4, 4], [5, 5])
    profile = UNIT.replace(kv_capacity_tokens=10)
    got = _times(instance, profile, "vllm")
    assert got["done"] == [5.0, 8.0]
    assert got["preemptions"] == [0, 1]
    naive = simulate_naive(instance, profile, "vllm")
    assert naive.recomputed_tokens.tolist() == [0, 5]


def _view(**fields: Any) -> ReplicaView:
    frozen = {
        k: np.asarray(v, dtype=np.float64 if k == "arrival_s" else np.int64)
        for k, v in fields.items()
        if k not in ("limits", "now_s", "num_arrived", "priority")
    }
    return ReplicaView(
        now_s=fields.get("now_s", 0.0),
        iteration=0,
        num_arrived=len(frozen["arrival_s"]),
        predicted_output_tokens=None,
        limits=fields["limits"],
        priority=fields.get("priority"),
        **frozen,
    )


def test_vllm_priority_preempts_the_lowest_priority_and_admits_the_highest() -> None:
    limits = ReplicaLimits(10, 1, 100, 100)
    # 0, 1, 2 run, 3 processed tokens each (9 of 10); 2 is the newest but 1 has
    # the largest priority value: 0's decode needs a 10th block, then 1's an 11th
    # -> preempt 1 (priority 5), not 2 (priority 1); 1 preempted, 0 and 2 decode.
    view = _view(
        running=[0, 1, 2],
        waiting=[3, 4],
        arrival_s=[0.0, 0.1, 0.2, 0.3, 0.4],
        prompt_tokens=[3, 3, 3, 1, 1],
        emitted_tokens=[1, 1, 1, 0, 0],
        processed_tokens=[3, 3, 3, 0, 0],
        prefill_target_tokens=[3, 3, 3, 0, 0],
        limits=limits,
        priority=np.array([0, 5, 1, 9, 2]),
    )
    policy = Vllm(VllmParams(priority=True))
    batch = policy.decide(view)
    assert batch.preempt.tolist() == [1]
    assert batch.decode.tolist() == [0, 2]
    assert len(batch.prefill) == 0  # nothing admitted in a step that preempted
    # FCFS preempts the newest (2) instead
    assert Vllm().decide(view).preempt.tolist() == [2]
    # with room, the waiting queue is taken by priority: 4 (2) before 3 (9)
    roomy = replace(view, limits=ReplicaLimits(100, 1, 4, 100))
    batch = policy.decide(roomy)
    assert batch.prefill.tolist() == [4]  # max_num_seqs 4: 3 running + 1


def test_vllm_priority_runs_end_to_end_like_the_naive_engine() -> None:
    # four requests at t=0, room for two at a time (KV 12 tokens, peaks 6):
    # priorities put 3 and 1 first, then 2, then 0
    instance = Instance([0.0] * 4, [3] * 4, [4] * 4, priority=[7, 2, 5, 1])
    profile = UNIT.replace(kv_capacity_tokens=12)
    fast = simulate(instance, profile, "vllm:priority=true")
    naive = simulate_naive(instance, profile, "vllm:priority=true")
    done = fast.requests["completion_s"].to_numpy()
    assert np.allclose(done, naive.completion_s, rtol=1e-9)
    assert done[3] <= done[2] and done[1] <= done[2] and done[2] <= done[0]


def test_vllm_priority_needs_priorities() -> None:
    instance = Instance([0.0, 0.0], [4, 4], [2, 2])
    with pytest.raises(InputError, match="priority"):
        simulate(instance, UNIT, "vllm:priority=true")


def test_sarathi_chunks_within_its_budget() -> None:
    # chunk 4; A (prompt 10, output 3) and B (prompt 3, output 2) at t = 0.
    # it0: A chunk 4 (budget spent).   it1: A chunk 4.
    # it2: A chunk 2 -> token 1 at 3; 2 left: B admitted with 2.
    # it3: A decodes (token 2), B's last prefill token -> token 1 at 4.
    # it4: both decode: A token 3, B token 2, done at 5.
    instance = Instance([0.0, 0.0], [10, 3], [3, 2])
    got = _times(instance, UNIT, "sarathi:chunk=4")
    assert got["first"] == [3.0, 4.0]
    assert got["done"] == [5.0, 5.0]
    r = simulate(instance, UNIT, "sarathi:chunk=4", log=True)
    assert (r.runs["prefill_tokens"] + r.runs["decode_steps"]).max() == 4


def test_orca_reserves_max_model_len() -> None:
    # capacity 20 tokens, L = 10: two requests run at once. Three requests
    # (prompt 3, output 5, peak 7) at t = 0: 0 and 1 admitted at 0, done at 5
    # (prefill + 4 decodes); 2 admitted at 5, done at 10. vllm runs all three
    # until their 4th decode needs 3 x 7 = 21 > 20 tokens: it preempts 2 (6
    # tokens) at t = 4, which re-prefills 3 + 4 tokens at 5 and is done at 6.
    instance = Instance([0.0] * 3, [3, 3, 3], [5, 5, 5])
    profile = UNIT.replace(kv_capacity_tokens=20)
    got = _times(instance, profile, "orca:max_model_len=10")
    assert got["done"] == [5.0, 5.0, 10.0]
    assert got["preemptions"] == [0, 0, 0]
    vllm = _times(instance, profile, "vllm")
    assert vllm["done"] == [5.0, 5.0, 6.0]
    assert vllm["preemptions"] == [0, 0, 1]


def test_static_never_admits_mid_batch() -> None:
    # batch_size 2: A (prompt 2, output 4) and B (2, 1) at 0 form the batch;
    # B is done at 1; C (2, 1) arrives at 0.5 but waits for A (done at 4) and
    # runs in [4, 5). Orca would admit C at t = 1.
    instance = Instance([0.0, 0.0, 0.5], [2, 2, 2], [4, 1, 1])
    spec = "static:batch_size=2,max_model_len=10"
    assert _times(instance, UNIT, spec)["done"] == [4.0, 1.0, 5.0]
    orca = _times(instance, UNIT, "orca:max_model_len=10")
    assert orca["done"] == [4.0, 1.0, 2.0]


def test_vllm_v0_runs_prefill_only_iterations() -> None:
    # A (prompt 2, output 4) at 0, B (3, 2) at 1.5.
    # it0: prefill A -> token 1.  it1: decode A -> token 2 (B not here yet).
    # it2 [2,3): B waits -> prefill-only: B token 1; A does not decode.
    # it3: decode A (token 3), B (token 2, done at 4).  it4: A token 4, done at 5.
    # vllm (V1) mixes B's prefill with A's decode: both done at 4.
    instance = Instance([0.0, 1.5], [2, 3], [4, 2])
    assert _times(instance, UNIT, "vllm-v0")["done"] == [5.0, 4.0]
    assert _times(instance, UNIT, "vllm")["done"] == [4.0, 4.0]


def test_vllm_v0_watermark_holds_back_admission() -> None:
    # 100 blocks, watermark 0.1 -> 10 blocks spare. A (prompt 85) fits
    # (15 free after); B (prompt 10) would leave 5 < 10: prefill A alone; at t = 1
    # still 15 free, so A decodes (done at 2); B is prefilled at 2, done at 4.
    instance = Instance([0.0, 0.0], [85, 10], [2, 2])
    profile = UNIT.replace(kv_capacity_tokens=100)
    assert _times(instance, profile, "vllm-v0:watermark=0.1")["done"] == [2.0, 4.0]
    assert _times(instance, profile, "vllm-v0:watermark=0")["done"] == [2.0, 2.0]


def test_distserve_mode_rotates_the_decode_queue_under_the_context_cap() -> None:
    # A, B, C (prompt 4, output 3) at 0; no KV limit; decode context cap 10.
    # it0: all prefilled (12 tokens) -> token 1; queue A B C.
    # it1: A (5) + B (5) = 10 fit, C would make 15: decode A, B; queue C A B.
    # it2: C (5) + A (6) = 11 > 10: decode C; queue A B C.
    # it3: A (6) + B (6) > 10: A -> token 3, done at 4; queue B C.
    # it4: B (6) + C (6) > 10: B done at 5.   it5: C done at 6.
    instance = Instance([0.0] * 3, [4, 4, 4], [3, 3, 3])
    spec = "vllm-v0:kv_limit=false,decode_context_cap=10"
    assert _times(instance, UNIT, spec)["done"] == [4.0, 5.0, 6.0]
    # without the cap all three decode together and finish at 3
    assert _times(instance, UNIT, "vllm-v0:kv_limit=false")["done"] == [3.0] * 3


def test_the_context_cap_ends_a_held_stretch_where_it_binds() -> None:
    # A, B (prompt 4, output 10) at 0; no KV limit; decode context cap 14.
    # it0: both prefilled -> token 1; context 8.
    # it1-it3 [1, 4): both decode, leaving 10, 12, 14 <= 14: one held stretch.
    # it4: 8 + 8 = 16 > 14: A alone (token 5); queue B A.  it5: B alone; ...
    # A decodes at 4, 6, ..., 14 (token 10, done at 15), B at 5, ..., 15 (16).
    # A stretch run past the cap would finish both at 10.
    instance = Instance([0.0, 0.0], [4, 4], [10, 10])
    spec = "vllm-v0:kv_limit=false,decode_context_cap=14"
    got = _times(instance, UNIT, spec)
    assert got["first"] == [1.0, 1.0]
    assert got["done"] == [15.0, 16.0]
    fast = run_checked(instance, UNIT, spec)  # the validator accepts its log too
    held = fast.runs[fast.runs["iterations"] > 1]
    assert held[["start_s", "end_s", "iterations"]].values.tolist() == [[1, 4, 3]]


def test_distserve_back_pressure_blocks_prefill_above_the_threshold() -> None:
    # simdistserve's Worker.has_back_pressure: no prefill while the running
    # requests' context tokens (prompt + decode steps done) are > 6 (strictly).
    # A (prompt 4, output 4) at 0, B (2, 3) at 0.5, C (1, 1) at 1.5, D (1, 1) at 3.5.
    # t0: prefill A -> A token 1 at 1; context A 4.
    # t1: B waits; 4 <= 6: prefill B -> token 1 at 2; context 4 + 2 = 6.
    # t2: C waits; 6 is not > 6: prefill C -> token 1, done at 3.
    # t3: nothing waits: decode A (token 2), B (token 2); context 5 + 3 = 8.
    # t4: D waits, but 8 > 6: decode A (token 3), B (token 3, done at 5).
    # t5: context A 6, not > 6: prefill D -> token 1, done at 6.
    # t6: decode A -> token 4, done at 7.
    # Without back pressure D is prefilled at t4 (done at 5) and B finishes at 6.
    instance = Instance([0.0, 0.5, 1.5, 3.5], [4, 2, 1, 1], [4, 3, 1, 1])
    got = _times(instance, UNIT, "vllm-v0:kv_limit=false,back_pressure_tokens=6")
    assert got["first"] == [1.0, 2.0, 3.0, 6.0]
    assert got["done"] == [7.0, 5.0, 3.0, 6.0]
    off = _times(instance, UNIT, "vllm-v0:kv_limit=false")
    assert off["first"] == [1.0, 2.0, 3.0, 5.0]
    assert off["done"] == [7.0, 6.0, 3.0, 5.0]


# -- random instances: both engines, the validator, each policy's promise -------------

POLICIES = (
    "sarathi",
    "sarathi:chunk=7",
    "sarathi:chunk=20,watermark=0",
    "vllm",
    "vllm:long_prefill_token_threshold=5",
    "vllm-v0",
    "vllm-v0:watermark=0.1,decode_context_cap=60",
    "vllm-v0:kv_limit=false,prefill_token_budget=50,decode_context_cap=60",
    "vllm-v0:back_pressure_tokens=40",
    "vllm-v0:kv_limit=false,prefill_token_budget=50,back_pressure_tokens=60",
    "orca",
    "orca:reserve=predicted",
    "orca:max_model_len=60,max_batch=3",
    "static",
    "static:batch_size=3,reserve=predicted",
)
#: Policies that prefill whole prompts: a prompt over the token budget would stall.
WHOLE = ("vllm-v0", "orca", "static")
CASES = 40


def _case(rng: np.random.Generator, policy: str) -> tuple[Case, bool]:
    """A random case for ``policy``; also whether predictions are exact."""
    name = str(rng.choice(list(PROFILES)))
    instance = random_instance(
        rng,
        int(rng.integers(1, 13)),
        TIME_SCALE_S[name],
        exact_clock=name == "unit-slot",
    )
    exact = True
    if "predicted" in policy and rng.random() < 0.5:
        # predictions of 1 token: orca/static outgrow their reservations
        exact = False
        instance = Instance(
            instance.arrival_s,
            instance.prompt_tokens,
            instance.output_tokens,
            predicted_output_tokens=np.ones(len(instance), dtype=np.int64),
        )
    profile = tight_profile(rng, PROFILES[name], instance)
    peaks = instance.prompt_tokens + instance.output_tokens - 1
    if policy.split(":")[0] in WHOLE:
        # a recomputed prompt s + e is at most the peak: never over the budget
        budget = max(profile.max_num_batched_tokens, int(peaks.max()))
        profile = profile.replace(max_num_batched_tokens=budget)
    if "kv_limit=false" in policy:
        # DistServe's mode has no KV limit: give the engine room for every peak
        b = profile.block_tokens
        profile = profile.replace(kv_capacity_tokens=int((-(-peaks // b)).sum()) * b)
    replicas = int(rng.choice([1, 3]))
    return Case(instance, profile, policy, replicas, None), exact


def _replays(result: Any) -> Iterator[tuple[Any, set[int], list[int]]]:
    """Per run, in order on each replica: the run, the requests running before it
    (after its preemptions) and the requests it admits."""
    members = result.members
    last_run = members.groupby("request")["run"].max()
    preempted = result.preemptions.groupby("run")["request"].apply(set)
    for _, runs in result.runs.groupby("replica"):
        running: set[int] = set()
        for run in runs.sort_values("start_s").index:
            running -= preempted.get(run, set())
            rows = members[members["run"] == run]
            new = rows[(rows["kind"] == "prefill") & (rows["processed_before"] == 0)]
            admitted = new["request"].tolist()
            yield runs.loc[run], set(running), admitted
            running |= set(admitted)
            running -= {r for r in rows["request"] if last_run[r] == run}


@pytest.mark.parametrize("policy", POLICIES)
def test_random_instances_agree_and_validate(policy: str) -> None:
    rng = np.random.default_rng([20250620, POLICIES.index(policy)])
    preempting = 0
    for _ in range(CASES):
        case, exact = _case(rng, policy)
        where = case.describe()
        naive, r = agree_and_validate(case)
        inst, profile = case.instance, case.profile
        preempting += int(naive.preemptions.sum() > 0)
        params = parse_policy(policy).params
        tokens = r.runs["prefill_tokens"] + r.runs["decode_steps"]
        if policy.startswith("sarathi"):
            budget = min(params.chunk, profile.max_num_batched_tokens)
            assert tokens.max() <= budget, where
        peak = int((inst.prompt_tokens + inst.output_tokens - 1).max())
        covered = policy.startswith(("orca", "static")) and (
            exact
            if params.reserve == "predicted"
            else params.max_model_len is None or params.max_model_len >= peak
        )
        if covered:
            # reservations cover every peak: no preemption, KV never short
            assert naive.preemptions.sum() == 0, where
            assert naive.max_kv_blocks_seen.max() <= profile.kv_capacity_blocks
        if policy.startswith("orca") and params.max_model_len is not None:
            per_request = -(-params.max_model_len // profile.block_tokens)
            most = max(1, profile.kv_capacity_blocks // per_request)
            for _, running, admitted in _replays(r):
                assert len(running) + len(admitted) <= most, where
        if policy.startswith("static"):
            for _, running, admitted in _replays(r):
                assert not (running and admitted), f"admitted mid-batch\n{where}"
    if not policy.startswith(("orca", "static", "vllm-v0:kv_limit=false")):
        assert preempting >= 3  # tight KV made these policies preempt
    if "predicted" in policy:
        assert preempting >= 1  # too-small predictions outgrew reservations


@pytest.mark.parametrize("policy", POLICIES)
def test_large_instances_agree(policy: str) -> None:
    """120 requests on the OPT profile: long held stretches, and with 70 % of the
    unconstrained KV peak, preemption storms (DistServe's mode gets room)."""
    rng = np.random.default_rng([20250621, POLICIES.index(policy)])
    instance = random_instance(rng, 120, 0.001)
    roomy = PROFILES["opt-13b-a100-tp1-vllm"].replace(block_tokens=16)
    peak = simulate_naive(instance, roomy, "fcfs").max_kv_blocks_seen[0]
    tight = roomy.replace(kv_capacity_tokens=int(0.7 * peak) * 16)
    for profile in (roomy, tight) if "kv_limit=false" not in policy else (roomy,):
        case = Case(instance, profile, policy, 1, None)
        naive, fast = run_both(case)
        assert naive is not None, case.describe()
        assert_same(case, naive, fast)
