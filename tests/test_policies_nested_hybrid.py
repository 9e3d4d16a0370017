"""Nested WAIT and the hybrid Lagrangian policy.

Hand-built instances whose decisions are derived in the comments (unit-slot
profile: every iteration takes 1 s, KV in tokens, so a request admitted at ``t``
with output ``o`` completes at ``t + o`` if it runs every iteration); the hybrid
rule on hand-built replica states where inserting the prefill must win, and where
continuing the decodes must win; and on seeded random instances both policies give
the same records as the naive reference engine and pass the validator.
"""

from __future__ import annotations

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
from lsched.instance import Instance
from lsched.policies import ReplicaLimits, ReplicaView, parse_policy
from lsched.policies.hybrid import Hybrid, HybridParams
from lsched.policies.nested_wait import guessed_remaining

UNIT = PROFILES["unit-slot"]


# -- nested-wait ---------------------------------------------------------------------


def test_guesses_follow_the_segments() -> None:
    """Bounds 4/16: e=0 guesses 4; e=3 one token left; e=4 moves to segment 2
    (guess 16); past 16 the guess doubles (32, then 64)."""
    got = guessed_remaining(np.array([4, 16]), np.array([0, 3, 4, 15, 16, 40]))
    assert got.tolist() == [4, 1, 12, 1, 16, 24]


def test_nested_wait_never_reads_output_lengths() -> None:
    """threshold 2, max_wait_s 100; A, B at 0, C at 1, D at 2 (s=2).

    t=0: two waiting in segment 1: A and B admitted. t=1: C alone (1 < 2) and
    C has waited 0 < 100: closed. t=2: C, D: admitted. Nothing depends on A's
    output length (6 or 40) nor on the predictions (none, or 1 for everyone)."""
    policy = "nested-wait:segments=4/16,thresholds=2,max_wait_s=100"
    records = []
    for out_a in (6, 40):
        inst = Instance([0, 0, 1, 2], [2, 2, 2, 2], [out_a, 6, 3, 3])
        for variant in (inst, inst.replace(predicted_output_tokens=[1, 1, 1, 1])):
            got = run_checked(variant, UNIT, policy)
            assert request_column(got, "admitted_s") == [0.0, 0.0, 2.0, 2.0]
            records.append(request_column(got, "completion_s")[1:])
    assert all(r == [6.0, 5.0, 5.0] for r in records)


def test_nested_wait_keeps_a_safety_buffer() -> None:
    """KV 10 tokens, segments 4, threshold 2; A, B at 0 (s=2, o=2).

    Guess 4 each, base s - 1 = 1: at the guessed completion (K=4) both hold
    5 + 5 = 10 tokens. buffer 0 plans with 10: both admitted at 0. buffer 0.5
    plans with 5: A alone (5); at t=1 B has waited max_wait_s=1, but with A (base 2,
    3 left) the load at K=3 is 5 + 4 = 9 > 5; A completes at 2 and B is admitted
    on the idle replica at 2."""
    inst = Instance([0, 0], [2, 2], [2, 2])
    profile = UNIT.replace(kv_capacity_tokens=10)
    got = run_checked(inst, profile, "nested-wait:segments=4,thresholds=2,buffer=0")
    assert request_column(got, "admitted_s") == [0.0, 0.0]
    got = run_checked(inst, profile, "nested-wait:segments=4,thresholds=2,buffer=0.5")
    assert request_column(got, "admitted_s") == [0.0, 2.0]
    assert sum(request_column(got, "preemptions")) == 0


def test_nested_wait_parameters() -> None:
    spec = parse_policy("nested-wait:segments=8/32,thresholds=3/1,buffer=0.2")
    assert spec.params.bounds == (8, 32) and spec.params.threshold_list == (3, 1)
    assert parse_policy("nested-wait:thresholds=2").params.threshold_list == (2,) * 4
    for bad, field in (
        ("nested-wait:segments=4/4", "segments"),
        ("nested-wait:segments=4/x", "segments"),
        ("nested-wait:segments=0", "segments"),
        ("nested-wait:segments=4/16,thresholds=1/2/3", "thresholds"),
        ("nested-wait:buffer=1", "buffer"),
        ("nested-wait:max_wait_s=-1", "max_wait_s"),
    ):
        with pytest.raises(InputError, match=field):
            parse_policy(bad)


# -- hybrid ----------------------------------------------------------------------------


def _state(prompt_b: int, pred_a: int) -> ReplicaView:
    """A (s=1) running, one token emitted, predicted ``pred_a``; B (prompt
    ``prompt_b``, predicted 2) waiting. KV 1000 tokens, 8 seqs, budget 64."""
    return ReplicaView(
        now_s=1.0,
        iteration=1,
        num_arrived=2,
        running=np.array([0]),
        waiting=np.array([1]),
        arrival_s=np.array([0.0, 1.0]),
        prompt_tokens=np.array([1, prompt_b]),
        predicted_output_tokens=np.array([pred_a, 2]),
        emitted_tokens=np.array([1, 0]),
        processed_tokens=np.array([1, 0]),
        prefill_target_tokens=np.array([1, 0]),
        limits=ReplicaLimits(1000, 1, 8, 64),
    )


def test_hybrid_inserts_the_prefill_where_it_must() -> None:
    """A has 19 predicted steps left, B (2 prompt tokens, 2 to emit) rides along:
    Delta = 64 * min(2, 19) - 0.1 * 2 * 1 - 0 = 127.8 > 0."""
    policy = Hybrid()
    assert policy.benefit(2, 2, 1, 1, 19, 1000) == pytest.approx(127.8)
    batch = policy.decide(_state(2, 20))
    assert batch.prefill.tolist() == [1] and batch.decode.tolist() == [0]


def test_hybrid_continues_the_decodes_where_it_must() -> None:
    """A finishes in 2 steps; B's 30 prompt tokens would delay it: with A = 1,
    theta = 1, Delta = 1 * min(2, 2) - 1 * 30 * 1 = -28 < 0: decode only, held."""
    policy = Hybrid(HybridParams(overhead_tokens=1, delay_weight=1))
    batch = policy.decide(_state(30, 3))
    assert batch.prefill.tolist() == [] and batch.decode.tolist() == [0]
    assert batch.hold


def test_hybrid_kv_price_rises_with_use_and_blocks_insertion() -> None:
    """target 0: every non-held step raises lambda by step * u (u > 0); a large
    lambda prices B's KV (2 iterations x ~2 tokens / 1000) above its gain."""
    policy = Hybrid(HybridParams(target_kv=0.0, step=10))
    policy.decide(_state(2, 20))  # inserts B: not held
    assert policy.lam == pytest.approx(10 * 4 / 1000)  # A 2 tokens + B 2 tokens
    blocked = Hybrid(HybridParams(lambda0=1e6))
    assert blocked.decide(_state(2, 20)).prefill.tolist() == []


def test_hybrid_end_to_end() -> None:
    """A (s=1, o=3) at 0, B (s=30, o=2) at 1, oracle predictions. Defaults insert B
    at 1; with A = 1, theta = 1 (the case above) B waits for A to finish at 3."""
    inst = predictors.oracle(Instance([0, 1], [1, 30], [3, 2]))
    assert request_column(run_checked(inst, UNIT, "hybrid"), "admitted_s") == [0.0, 1.0]
    slow = "hybrid:overhead_tokens=1,delay_weight=1"
    assert request_column(run_checked(inst, UNIT, slow), "admitted_s") == [0.0, 3.0]


def test_hybrid_parameters() -> None:
    assert parse_policy("hybrid:step=5").params.step == 5.0
    for bad, field in (
        ("hybrid:overhead_tokens=-1", "overhead_tokens"),
        ("hybrid:target_kv=1.5", "target_kv"),
        ("hybrid:step=inf", "step"),
        ("hybrid:lambda0=-2", "lambda0"),
    ):
        with pytest.raises(InputError, match=field):
            parse_policy(bad)
    with pytest.raises(InputError, match=r"predictors\.oracle"):
        simulate(Instance([0.0], [3], [4]), UNIT, "hybrid")


# -- agreement with the reference engine on random instances ----------------------


@pytest.mark.parametrize(
    "policy",
    [
        "nested-wait",
        "nested-wait:segments=4/16,thresholds=2/1,buffer=0.3,max_wait_s=0",
        "hybrid",
        "hybrid:step=50,target_kv=0.3,delay_weight=2,overhead_tokens=4",
    ],
)
def test_random_instances_agree_with_the_reference_engine(policy: str) -> None:
    rng = np.random.default_rng([20250710, len(policy)])
    for _ in range(50):
        name = str(rng.choice(list(PROFILES)))
        instance = random_instance(
            rng,
            int(rng.integers(1, 16)),
            TIME_SCALE_S[name],
            exact_clock=name == "unit-slot",
        )
        if rng.random() < 0.5:
            seed = int(rng.integers(1 << 30))
            instance = predictors.lognormal_noise(instance, 0.5, seed)
        profile = tight_profile(rng, PROFILES[name], instance)
        replicas = int(rng.choice([1, 2]))
        agree_and_validate(Case(instance, profile, policy, replicas, None))
