"""``hybrid-lr``: Pang et al.'s rule re-derived (prefill to the balance point).

Hand-built states where the rule must insert a prefill and where it must only
decode, the balance point and the KV check, and a small GSM8K case of the
Pang et al. setting where its makespan is below the vLLM baseline's.
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
    tight_profile,
)

from lsched import predictors
from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.generators import gsm8k
from lsched.instance import Instance
from lsched.policies import ReplicaLimits, ReplicaView, parse_policy
from lsched.policies.hybrid_lr import (
    HybridLr,
    HybridLrParams,
    roofline_params,
    roofline_spec,
)
from lsched.profile import load_profile

# a toy roofline: compute 1 s per token, memory 10 s + 0 per KV token; the
# balance point is at 10 tokens: N = ceil((10 - D) / 1)
TOY = HybridLrParams(token_s=1.0, attention_s=0.0, overhead_s=10.0, kv_s=0.0)


def _state(decoding: int, prompt_w: int, capacity_blocks: int = 1000) -> ReplicaView:
    """``decoding`` running requests (s=1, one token emitted, 5 predicted), one
    waiting request W (prompt ``prompt_w``, 3 predicted). Blocks of 1 token,
    256 seqs, budget 64."""
    m = decoding + 1
    w = decoding
    prompt = np.ones(m, np.int64)
    prompt[w] = prompt_w
    emitted = np.ones(m, np.int64)
    emitted[w] = 0
    processed = np.ones(m, np.int64)
    processed[w] = 0
    target = processed.copy()
    return ReplicaView(
        now_s=1.0,
        iteration=1,
        num_arrived=m,
        running=np.arange(decoding),
        waiting=np.array([w]),
        arrival_s=np.zeros(m),
        prompt_tokens=prompt,
        predicted_output_tokens=np.where(np.arange(m) == w, 3, 5),
        emitted_tokens=emitted,
        processed_tokens=processed,
        prefill_target_tokens=target,
        limits=ReplicaLimits(capacity_blocks, 1, 256, 64),
    )


def test_balance_point() -> None:
    """N = ceil((m0 + (m1 - b) K - a D) / (a - m1)), at least 1 when idle."""
    policy = HybridLr(TOY)
    assert [policy.prefill_target(d, 0) for d in (0, 3, 10, 12)] == [10, 7, 0, 0]
    pang = HybridLr()  # llama-65b-pang2025: 125 tokens with nothing decoding
    assert pang.prefill_target(0, 0) == 126
    assert pang.prefill_target(20, 20_000) == pytest.approx(157, abs=1)
    idle = HybridLr(HybridLrParams(overhead_s=0.0))
    assert idle.prefill_target(0, 0) == 1


def test_inserts_the_prefill_where_it_must() -> None:
    """3 decodes fill 3 of the 10 tokens of the balance point: W's 30-token
    prompt gets the other 7 (memory-bound slack, a free prefill)."""
    batch = HybridLr(TOY).decide(_state(3, 30))
    assert batch.decode.tolist() == [0, 1, 2]
    assert batch.prefill.tolist() == [3] and batch.prefill_tokens.tolist() == [7]
    assert not batch.hold


def test_continues_the_decodes_where_it_must() -> None:
    """10 decodes reach the balance point on their own: the iteration is
    compute-bound and a prefill token costs as much now as later, so W waits."""
    batch = HybridLr(TOY).decide(_state(10, 30))
    assert batch.prefill.tolist() == [] and batch.decode.tolist() == list(range(10))


def test_the_kv_check_holds_the_prefill_back() -> None:
    """With room for the running requests' predicted peak (3 x (1 + 4) = 15
    tokens... plus W's) only, the future-KV check refuses W."""
    batch = HybridLr(TOY).decide(_state(3, 30, capacity_blocks=20))
    assert batch.prefill.tolist() == []
    fits = HybridLr(TOY).decide(_state(3, 30, capacity_blocks=60))
    assert fits.prefill.tolist() == [3]


def test_longest_first_and_continuing_prefills_first() -> None:
    """Nothing running: A (o=2) and B (o=9), prompts 4; the target is 10 tokens:
    longest first admits B (4) then A (4); shortest first A then B."""
    inst = predictors.oracle(Instance([0, 0], [4, 4], [2, 9]))
    unit = PROFILES["unit-slot"]
    spec = "hybrid-lr:token_s=1,attention_s=0,overhead_s=10,kv_s=0"
    for order, first in (("longest", 1), ("shortest", 0)):
        got = simulate(inst, unit, f"{spec},order={order}", log=True)
        members = got.members[got.members["run"] == 0]
        assert members["request"].tolist()[0] == first


def test_roofline_params_of_the_pang_profile() -> None:
    profile = load_profile("llama-65b-pang2025")
    params = roofline_params(profile)
    defaults = HybridLrParams()
    assert params == pytest.approx(
        {
            "token_s": defaults.token_s,
            "attention_s": defaults.attention_s,
            "overhead_s": defaults.overhead_s,
            "kv_s": defaults.kv_s,
        }
    )
    assert parse_policy(roofline_spec(profile)).params == defaults
    with pytest.raises(InputError, match="iteration_time"):
        roofline_params(PROFILES["unit-slot"])


def test_parameters() -> None:
    assert parse_policy("hybrid-lr:order=shortest").params.order == "shortest"
    for bad, field in (
        ("hybrid-lr:token_s=0", "token_s"),
        ("hybrid-lr:kv_s=-1", "kv_s"),
        ("hybrid-lr:kv_s=1", "kv_s"),
        ("hybrid-lr:order=random", "order"),
        ("hybrid-lr:min_prefill_tokens=0", "min_prefill_tokens"),
    ):
        with pytest.raises(InputError, match=field):
            parse_policy(bad)
    with pytest.raises(InputError, match=r"predictors\.oracle"):
        simulate(Instance([0.0], [3], [4]), PROFILES["unit-slot"], "hybrid-lr")


def test_small_pang_case_beats_the_baseline() -> None:
    """40 GSM8K-like requests on one llama-65b-pang2025 replica: hybrid-lr
    finishes well before vllm (7.80 s against 12.10 s when written)."""
    profile = load_profile("llama-65b-pang2025")
    instance = predictors.oracle(gsm8k(40, seed=3))
    base = simulate(instance, profile, "vllm", replicas=1).metrics["makespan_s"]
    new = simulate(instance, profile, "hybrid-lr", replicas=1).metrics["makespan_s"]
    assert new < 0.9 * base


@pytest.mark.parametrize(
    "policy",
    ["hybrid-lr", "hybrid-lr:token_s=1,attention_s=0,overhead_s=10,kv_s=0.01"],
)
def test_random_instances_agree_with_the_reference_engine(policy: str) -> None:
    rng = np.random.default_rng([20260123, len(policy)])
    for _ in range(30):
        name = str(rng.choice(list(PROFILES)))
        instance = random_instance(
            rng,
            int(rng.integers(1, 16)),
            TIME_SCALE_S[name],
            exact_clock=name == "unit-slot",
        )
        instance = predictors.oracle(instance)
        if rng.random() < 0.5:
            seed = int(rng.integers(1 << 30))
            instance = predictors.lognormal_noise(instance, 0.5, seed)
        profile = tight_profile(rng, PROFILES[name], instance)
        replicas = int(rng.choice([1, 2]))
        agree_and_validate(Case(instance, profile, policy, replicas, None))
