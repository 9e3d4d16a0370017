"""The ``sglang`` policy (and ``fastserve`` where present).

Hand-built instances on the unit-slot profile (every iteration takes 1 s, KV in
tokens, ``max_model_len`` far above every request) whose schedules are derived in
the comments; then seeded random instances (tight KV, blocks of 1 and 16, binding
batch limits, with and without predictions, 1 and 3 replicas) must give the same
per-request records as the naive engine (which calls the policy every iteration and
so catches a false ``hold``) and pass the validator.
"""

from __future__ import annotations

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
    tight_profile,
)
from test_policies_engines import _times, _view

from lsched.errors import InputError
from lsched.instance import Instance
from lsched.policies import REGISTRY, ReplicaLimits, parse_policy
from lsched.policies.sglang import Sglang, SglangParams
from lsched.profile import load_profile

UNIT = load_profile("unit-slot")


def _predicted(
    arrival: list[float], prompt: list[int], output: list[int], pred: list[int]
) -> Instance:
    return Instance(arrival, prompt, output, predicted_output_tokens=pred)


# -- sglang ------------------------------------------------------------------------


def test_sglang_registered_and_validated() -> None:
    assert "sglang" in REGISTRY
    assert parse_policy("sglang").label == "sglang"
    spec = parse_policy("sglang:decay=0.01,clip_max_new_tokens=64")
    assert spec.params.decay == 0.01 and spec.params.clip_max_new_tokens == 64
    bad = {
        "sglang:init_new_token_ratio=0": "init_new_token_ratio",
        "sglang:init_new_token_ratio=1.5": "init_new_token_ratio",
        "sglang:min_new_token_ratio=0.8": "min_new_token_ratio",
        "sglang:decay=-1": "decay",
        "sglang:clip_max_new_tokens=0": "clip_max_new_tokens",
        "sglang:retract_decode_steps=-1": "retract_decode_steps",
    }
    for text, parameter in bad.items():
        with pytest.raises(InputError, match=parameter):
            parse_policy(text)


def test_sglang_reserves_ratio_times_remaining_output() -> None:
    # capacity 20 tokens; A, B (prompt 4, output 6, predicted 6) at 0.
    # it0: no running request: A's total 4 + 6 = 10 < 20 -> admitted; rem 10;
    #   B's total 10 >= 10 -> waits.
    # ratio 0.5 (no decay): it1: A decodes (KV 5 after), 5 tokens left to emit:
    #   rem = 20 - 5 - 0.5 * 5 = 12.5 > 10 -> B admitted at 1.
    #   A: prefill it0 + 5 decodes -> done at 6; B: token 1 at 2, done at 7.
    # ratio 1: rem = 20 - (4 + n) - (6 - n) = 10 at every n: B waits for A (6),
    #   then runs alone: done at 12.
    instance = _predicted([0.0, 0.0], [4, 4], [6, 6], [6, 6])
    profile = UNIT.replace(kv_capacity_tokens=20)
    half = "sglang:init_new_token_ratio=0.5,min_new_token_ratio=0.5,decay=0"
    assert _times(instance, profile, half)["done"] == [6.0, 7.0]
    full = "sglang:init_new_token_ratio=1,min_new_token_ratio=1,decay=0"
    assert _times(instance, profile, full)["done"] == [6.0, 12.0]


def test_sglang_ratio_decay_admits_later_requests() -> None:
    # capacity 27; A, B (prompt 4, output 10, predicted 10) at 0; ratio 1 - 0.1 n
    # at iteration n. it0: A total 14 < 27 admitted, rem 13 <= 14: B waits.
    # n = 1: 27 - 5 - 0.9 * 9 = 13.9 <= 14: waits.
    # n = 2: 27 - 6 - 0.8 * 8 = 14.6 > 14: B admitted at 2 (peaks 13 + 13 <= 27).
    # A done at 10 (prefill + 9 decodes); B token 1 at 3, done at 12.
    # With no decay rem = 27 - (4 + n) - (10 - n) = 13 forever: B done at 20.
    instance = _predicted([0.0, 0.0], [4, 4], [10, 10], [10, 10])
    profile = UNIT.replace(kv_capacity_tokens=27)
    base = "sglang:init_new_token_ratio=1,min_new_token_ratio=0,decay="
    assert _times(instance, profile, base + "0.1")["done"] == [10.0, 12.0]
    assert _times(instance, profile, base + "0")["done"] == [10.0, 20.0]


def test_sglang_retracts_fewest_emitted_then_longest_prompt() -> None:
    # capacity 12, predictions of 1 token: A (prompt 3, output 6), B (prompt 2,
    # output 6) at 0; ratio 0.5. it0: A total 3 + 1 = 4 < 12 -> admitted (rem 8);
    # B total 3 < 8 -> admitted. KV 5, 7, 9, 11 after it0..it3.
    # it4 needs 13 > 12: both emitted 4, A has the longer prompt -> A retracted
    #   (vllm would preempt B, the newest). B -> token 5; it5 token 6, done at 6.
    # t = 5: A's total 3 + 4 + 1 = 8 >= 12 - 7 = 5: waits. t = 6: alone, A
    #   re-prefills 7 tokens -> token 5 at 7, token 6 at 8.
    instance = _predicted([0.0, 0.0], [3, 2], [6, 6], [1, 1])
    profile = UNIT.replace(kv_capacity_tokens=12)
    spec = "sglang:init_new_token_ratio=0.5,min_new_token_ratio=0.5,decay=0"
    got = _times(instance, profile, spec)
    assert got["done"] == [8.0, 6.0]
    assert got["preemptions"] == [1, 0]
    assert simulate_naive(instance, profile, spec).recomputed_tokens.tolist() == [6, 0]
    assert _times(instance, profile, "vllm")["preemptions"] == [0, 1]


def test_sglang_retraction_sets_the_estimated_ratio() -> None:
    # 0 and 1 run with 5 tokens each, capacity 10: decoding both needs 12 ->
    # retract 0 (fewer emitted). M = clip = 100 (no max_model_len, no
    # predictions); survivor 1: estimate (3 + 20 * 1) / (100 + 1).
    limits = ReplicaLimits(10, 1, 100, 100)
    view = _view(
        running=[0, 1],
        waiting=[],
        arrival_s=[0.0, 0.0],
        prompt_tokens=[4, 3],
        emitted_tokens=[2, 3],
        processed_tokens=[5, 5],
        prefill_target_tokens=[4, 3],
        limits=limits,
    )
    policy = Sglang(SglangParams(clip_max_new_tokens=100))
    batch = policy.decide(view)
    assert batch.preempt.tolist() == [0]
    assert batch.decode.tolist() == [1]
    assert not batch.hold
    estimate = 23 / 101
    assert policy.ratio(0) == pytest.approx(estimate)
    assert policy.ratio(10) == pytest.approx(estimate - 0.01)
    assert policy.ratio(1000) == pytest.approx(0.1)  # the floor


# -- random instances: both engines and the validator -------------------------------

POLICIES = (
    "sglang",
    "sglang:decay=0.05,min_new_token_ratio=0.2",
    "sglang:init_new_token_ratio=1,min_new_token_ratio=1,clip_max_new_tokens=30",
    "sglang:decay=0,clip_max_new_tokens=8,retract_decode_steps=0",
)
CASES = 40


def _case(rng: np.random.Generator, policy: str) -> Case:
    name = str(rng.choice(list(PROFILES)))
    instance = random_instance(
        rng,
        int(rng.integers(1, 13)),
        TIME_SCALE_S[name],
        exact_clock=name == "unit-slot",
    )
    kind = rng.integers(0, 3)  # no predictions, exact, or noisy ones
    if kind:
        out = instance.output_tokens
        noise = rng.integers(-10, 11, size=len(out)) if kind == 2 else 0
        instance = Instance(
            instance.arrival_s,
            instance.prompt_tokens,
            out,
            predicted_output_tokens=np.maximum(out + noise, 1),
        )
    profile = tight_profile(rng, PROFILES[name], instance)
    if rng.random() < 0.5:
        # a max_model_len covering every request: M = L - s is used
        peak = int((instance.prompt_tokens + instance.output_tokens).max())
        profile = profile.replace(max_model_len=peak + int(rng.integers(0, 20)))
    return Case(instance, profile, policy, int(rng.choice([1, 3])), None)


@pytest.mark.parametrize("policy", POLICIES)
def test_random_instances_agree_and_validate(policy: str) -> None:
    rng = np.random.default_rng([20250622, POLICIES.index(policy)])
    preempting = 0
    for _ in range(CASES):
        case = _case(rng, policy)
        naive, _ = agree_and_validate(case)
        preempting += int(naive.preemptions.sum() > 0)
    if "init_new_token_ratio=1" not in policy:
        assert preempting >= 1  # tight KV made the policy retract


@pytest.mark.parametrize("policy", POLICIES)
def test_large_instances_agree(policy: str) -> None:
    """120 requests on the OPT profile, roomy and at 70 % of the KV peak."""
    rng = np.random.default_rng([20250623, POLICIES.index(policy)])
    instance = random_instance(rng, 120, 0.001)
    roomy = PROFILES["opt-13b-a100-tp1-vllm"].replace(block_tokens=16)
    peak = simulate_naive(instance, roomy, "fcfs").max_kv_blocks_seen[0]
    tight = roomy.replace(kv_capacity_tokens=int(0.7 * peak) * 16)
    for profile in (roomy, tight):
        case = Case(instance, profile, policy, 1, None)
        naive, fast = run_both(case)
        assert naive is not None, case.describe()
        assert_same(case, naive, fast)


# -- fastserve -----------------------------------------------------------------------


def test_fastserve_registered_and_validated() -> None:
    assert parse_policy("fastserve").label == "fastserve"
    for parameter in ("levels", "base_quantum", "prefill_tokens_per_unit"):
        with pytest.raises(InputError, match=parameter):
            parse_policy(f"fastserve:{parameter}=0")


def test_fastserve_new_request_preempts_a_demoted_one() -> None:
    # max_num_seqs 1; quanta Q0 = 1, Q1 = 2 iterations; prompts of 4 tokens cost
    # 1 unit -> join level 0. A (output 6) at 0, B (output 2) at 2.5.
    # it0: A prefilled, token 1; service 1 >= Q0 -> level 1. it1, it2: A tokens 2,
    # 3. t = 3: B (level 0) ranks first: B prefilled (token 1 at 4), A paused with
    # its KV. t = 4: B has service 1 -> level 1; tie on level, A arrived first:
    # A tokens 4, 5, 6 at 5, 6, 7; B token 2 at 8.
    # With one level (plain FCFS) A runs to 6 and B gets token 1 at 7.
    instance = Instance([0.0, 2.5], [4, 4], [6, 2])
    profile = UNIT.replace(max_num_seqs=1)
    got = _times(instance, profile, "fastserve:levels=2,base_quantum=1")
    assert got["first"] == [1.0, 4.0]
    assert got["done"] == [7.0, 8.0]
    assert got["preemptions"] == [0, 0]  # paused, not recomputed
    one = _times(instance, profile, "fastserve:levels=1")
    assert one["first"] == [1.0, 7.0]
    assert one["done"] == [6.0, 8.0]


FASTSERVE = (
    "fastserve",
    "fastserve:levels=3,base_quantum=1,prefill_tokens_per_unit=4",
    "fastserve:levels=1",
)


@pytest.mark.parametrize("policy", FASTSERVE)
def test_fastserve_random_instances_agree_and_validate(policy: str) -> None:
    rng = np.random.default_rng([20250624, FASTSERVE.index(policy)])
    for _ in range(CASES):
        case = _case(rng, policy)
        agree_and_validate(case)
