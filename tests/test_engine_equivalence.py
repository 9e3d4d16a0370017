"""The fast evaluator agrees with the naive reference engine on random instances.

``tests/reference_engine.py`` replays a schedule one iteration at a time, calling
the policy at every boundary; :func:`lsched.evaluator.simulate` advances held
decode stretches in closed form. On seeded random small instances, over profiles
with block sizes 1 and 16, KV capacities tight enough to force preemption, batch
limits that bind, both FCFS variants and 1 or 3 replicas, both engines must give
every request the same admission, first-token and completion times (relative
error <= 1e-9), the same preemption and recomputed-token counts, the same number
of iterations, busy time and KV token-seconds; and fail alike where the policy
cannot run an instance.

Besides the shipped profiles, two synthetic unit-scale ones reach the parts of
the closed form that small instances on real profiles rarely do: a three-piece
convex max whose active piece changes inside a decode stretch, and regimes that
switch on K (which grows during a stretch) with both overhead terms. A test
policy that waits on a clock (``wake_at_s``) covers wake-ups inside held
stretches and while idle, which FCFS never asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from reference_engine import NaiveResult, simulate_naive

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.instance import Instance
from lsched.policies import Batch, PolicyError, ReplicaView, parse_policy
from lsched.policies.base import holds_running_when_idle
from lsched.profile import FEATURES, DeploymentProfile, IterationTime, load_profile
from lsched.validator import validate_schedule

RTOL = 1e-9


def _weights(**per_feature: float) -> list[float]:
    return [per_feature.get(f, 0.0) for f in FEATURES]


def _synthetic(name: str, iteration_time: IterationTime) -> DeploymentProfile:
    return load_profile("unit-slot").replace(name=name, iteration_time=iteration_time)


PROFILES = {
    name: load_profile(name)
    for name in ("unit-slot", "llama2-70b-a100-tp4", "opt-13b-a100-tp1-vllm")
} | {
    # max of three pieces: constant, then K-bound, then D/K-bound as K grows
    "synthetic-roofline": _synthetic(
        "synthetic-roofline",
        IterationTime(
            regimes=(
                np.array(
                    [
                        _weights(const=1.0),
                        _weights(const=0.2, kv_read_tokens=0.02),
                        _weights(
                            decode_steps=0.3, kv_read_tokens=0.005, prefill_tokens=0.01
                        ),
                    ]
                ),
            )
        ),
    ),
    # three regimes on K (thresholds 40 and 90), the last a two-piece max
    "synthetic-k-switch": _synthetic(
        "synthetic-k-switch",
        IterationTime(
            regimes=(
                np.array([_weights(const=1.0, kv_read_tokens=0.01)]),
                np.array([_weights(const=0.5, kv_read_tokens=0.03)]),
                np.array(
                    [_weights(const=2.0), _weights(const=0.1, kv_read_tokens=0.02)]
                ),
            ),
            switch_feature="kv_read_tokens",
            thresholds=(40, 90),
            overhead_s=0.1,
            overhead_per_token_s=0.001,
        ),
    ),
}
#: A typical iteration time per profile, to scale Poisson inter-arrival gaps so
#: that arrivals land both inside decode stretches and in idle gaps.
TIME_SCALE_S = {
    "unit-slot": 1.0,
    "llama2-70b-a100-tp4": 0.05,
    "opt-13b-a100-tp1-vllm": 0.03,
    "synthetic-roofline": 1.0,
    "synthetic-k-switch": 1.0,
}
POLICIES = ("fcfs", "fcfs:chunked=false")
GROUPS = 10
PER_GROUP = 75


@dataclass(frozen=True)
class Case:
    """One random simulation set-up."""

    instance: Instance
    profile: DeploymentProfile
    policy: Any  # a policy string, or a spec with make() for test policies
    replicas: int
    assignment: np.ndarray | None

    def describe(self) -> str:
        """Everything needed to reproduce the case, for failure messages."""
        p, inst = self.profile, self.instance
        assignment = None if self.assignment is None else self.assignment.tolist()
        return (
            f"profile={p.name} block_tokens={p.block_tokens} "
            f"kv_capacity_tokens={p.kv_capacity_tokens} "
            f"max_num_seqs={p.max_num_seqs} "
            f"max_num_batched_tokens={p.max_num_batched_tokens} "
            f"policy={self.policy!r} replicas={self.replicas} "
            f"assignment={assignment}"
            f"\narrival_s={inst.arrival_s.tolist()}"
            f"\nprompt_tokens={inst.prompt_tokens.tolist()}"
            f"\noutput_tokens={inst.output_tokens.tolist()}"
        )


def random_instance(
    rng: np.random.Generator, n: int, time_scale_s: float, *, exact_clock: bool = False
) -> Instance:
    """``n`` requests, prompts and outputs 1..40, all at 0 or Poisson arrivals.

    With ``exact_clock`` (unit-slot: every boundary is an integer, exactly, in
    both engines) some Poisson arrivals are floored to whole seconds so that they
    fall exactly on iteration boundaries. Not otherwise: where iteration times are
    not integers, an arrival equal to a boundary in exact arithmetic is a tie that
    the last bit of a float sum decides, and the two engines sum differently (per
    iteration vs closed form). Predicted output lengths are the true ones (an
    oracle, for test policies).
    """
    kinds = ["zero", "poisson", "whole"] if exact_clock else ["zero", "poisson"]
    kind = rng.choice(kinds)
    if kind == "zero":
        arrival = np.zeros(n)
    else:
        mean_gap = time_scale_s * rng.choice([0.3, 1.0, 4.0, 30.0])
        arrival = np.cumsum(rng.exponential(mean_gap, size=n))
        if kind == "whole":
            arrival = np.floor(arrival)
    output = rng.integers(1, 41, size=n)
    return Instance(
        arrival_s=arrival,
        prompt_tokens=rng.integers(1, 41, size=n),
        output_tokens=output,
        predicted_output_tokens=output,
    )


def tight_profile(
    rng: np.random.Generator,
    base: DeploymentProfile,
    instance: Instance,
    *,
    limits: bool = True,
) -> DeploymentProfile:
    """``base`` with a KV capacity between the largest peak and 3x it (in blocks)
    and, when ``limits``, batch limits small enough to bind."""
    block = int(rng.choice([1, 16]))
    peaks = instance.prompt_tokens + instance.output_tokens - 1
    peak_blocks = int((-(-peaks // block)).max())
    blocks = int(rng.integers(peak_blocks, 3 * peak_blocks + 1))
    # a remainder below one block checks that capacity is floored to whole blocks
    tokens = blocks * block + int(rng.integers(0, block))
    changes: dict[str, Any] = {"block_tokens": block, "kv_capacity_tokens": tokens}
    if limits:
        changes["max_num_seqs"] = int(rng.choice([1, 2, 3, 5, 8, 1000]))
        changes["max_num_batched_tokens"] = int(rng.choice([4, 9, 16, 30, 64, 4096]))
    return base.replace(**changes)


def random_case(rng: np.random.Generator) -> Case:
    name = str(rng.choice(list(PROFILES)))
    instance = random_instance(
        rng,
        int(rng.integers(1, 13)),
        TIME_SCALE_S[name],
        exact_clock=name == "unit-slot",
    )
    profile = tight_profile(rng, PROFILES[name], instance)
    replicas = int(rng.choice([1, 3]))
    assignment = None
    if replicas > 1 and rng.random() < 0.3:
        assignment = rng.integers(0, replicas, size=len(instance))
    return Case(instance, profile, str(rng.choice(POLICIES)), replicas, assignment)


def run_both(case: Case) -> tuple[NaiveResult | None, Any]:
    """Run both engines; if the naive one raises PolicyError so must the fast one."""
    kwargs = {"replicas": case.replicas, "assignment": case.assignment}
    try:
        naive = simulate_naive(case.instance, case.profile, case.policy, **kwargs)
    except PolicyError:
        with pytest.raises(PolicyError):
            simulate(case.instance, case.profile, case.policy, **kwargs)
        return None, None
    return naive, simulate(case.instance, case.profile, case.policy, **kwargs)


def agree_and_validate(case: Case) -> tuple[NaiveResult, Any]:
    """Both engines agree and the validator accepts the fast engine's log.

    The fast engine runs once, keeping its log (keeping it does not change the
    schedule: ``test_engine_properties`` checks that). Returns both results.
    """
    kwargs = {"replicas": case.replicas, "assignment": case.assignment}
    naive = simulate_naive(case.instance, case.profile, case.policy, **kwargs)
    fast = simulate(case.instance, case.profile, case.policy, log=True, **kwargs)
    assert_same(case, naive, fast)
    report = validate_schedule(
        case.instance,
        case.profile,
        fast.runs,
        fast.members,
        fast.preemptions,
        replicas=case.replicas,
        requests=fast.requests,
        metrics=fast.metrics,
    )
    assert report.ok, f"{report}\n{case.describe()}"
    assert naive.tbt_s is not None  # every token's time: Mooncake's TBT
    np.testing.assert_allclose(
        fast.requests["tbt_s"].to_numpy(), naive.tbt_s, rtol=1e-9,
        err_msg=f"tbt_s\n{case.describe()}",
    )  # fmt: skip
    return naive, fast


def run_checked(instance: Instance, profile: Any, policy: str) -> Any:
    """One replica: both engines agree and the validator accepts; the fast result."""
    return agree_and_validate(Case(instance, profile, policy, 1, None))[1]


def request_column(result: Any, name: str) -> list[Any]:
    """A per-request column of a result, as a list."""
    return result.requests[name].tolist()


def assert_request_times_same(got: Any, naive: NaiveResult, where: str) -> None:
    """Per request: admission, first-token and completion times to ``RTOL``,
    preemptions and recomputed tokens exactly (``got``: the fast records)."""
    for column in ("admitted_s", "first_token_s", "completion_s"):
        np.testing.assert_allclose(
            got[column].to_numpy(),
            getattr(naive, column),
            rtol=RTOL,
            atol=0,
            err_msg=f"{column}\n{where}",
        )
    for column in ("preemptions", "recomputed_tokens"):
        np.testing.assert_array_equal(
            got[column].to_numpy(), getattr(naive, column), err_msg=f"{column}\n{where}"
        )


def assert_same(case: Case, naive: NaiveResult, fast: Any) -> None:
    """Every per-request record and the schedule totals agree."""
    where = case.describe()
    got = fast.requests
    np.testing.assert_array_equal(got["replica"], naive.replica, err_msg=where)
    assert_request_times_same(got, naive, where)
    assert fast.iterations == naive.iterations, where
    m = fast.metrics
    span = m["makespan_s"]
    busy = m["busy_fraction"] * case.replicas * span
    assert busy == pytest.approx(naive.busy_s, rel=RTOL), where
    kv = m["kv_utilization"] * case.replicas * case.profile.kv_capacity_tokens * span
    assert kv == pytest.approx(naive.kv_token_seconds, rel=RTOL), where
    assert m["preemptions"] == naive.preemptions.sum(), where


@pytest.mark.parametrize("group", range(GROUPS))
def test_random_small_instances_agree(group: int) -> None:
    rng = np.random.default_rng([20250611, group])
    compared = stalled = 0
    for _ in range(PER_GROUP):
        case = random_case(rng)
        naive, fast = run_both(case)
        budget = case.profile.max_num_batched_tokens
        if naive is None:
            # only the unchunked policy may fail: a prompt (or a recomputed
            # prompt + emitted tokens) over the token budget can never be admitted
            inst = case.instance
            assert case.policy == "fcfs:chunked=false", case.describe()
            assert (inst.prompt_tokens + inst.output_tokens - 1).max() > budget
            stalled += 1
            continue
        if case.policy == "fcfs:chunked=false":
            assert case.instance.prompt_tokens.max() <= budget, case.describe()
        assert_same(case, naive, fast)
        compared += 1
    assert compared >= PER_GROUP // 2  # the group mostly compares, not skips
    assert stalled + compared == PER_GROUP


def test_random_cases_cover_what_they_are_meant_to() -> None:
    """Over all groups the generator makes preemptions, idle gaps, chunked
    prefills, stalls of the unchunked policy, every profile and the upper K regime
    (naive engine only; the group tests would pass vacuously without these)."""
    seen: dict[str, int] = dict.fromkeys(
        ["preempted", "idle", "chunked", "stalled", "upper-k", *PROFILES], 0
    )
    for group in range(GROUPS):
        rng = np.random.default_rng([20250611, group])
        for _ in range(PER_GROUP):
            case = random_case(rng)
            inst, profile = case.instance, case.profile
            try:
                naive = simulate_naive(
                    inst,
                    profile,
                    case.policy,
                    replicas=case.replicas,
                    assignment=case.assignment,
                )
            except PolicyError:
                seen["stalled"] += 1
                continue
            seen[profile.name] += 1
            seen["preempted"] += int(naive.preemptions.sum() > 0)
            if case.replicas == 1:  # busy from its first arrival on, unless idle
                span = naive.completion_s.max() - inst.arrival_s.min()
                seen["idle"] += int(naive.busy_s < span * (1 - 1e-9))
            chunks = inst.prompt_tokens.max() > profile.max_num_batched_tokens
            seen["chunked"] += int(chunks and case.policy == "fcfs")
            # KV above the last K threshold (90) means decode batches reading
            # about as much: the K-switch profile ran in its upper regimes
            high = naive.max_kv_tokens_seen.max() >= 120
            seen["upper-k"] += int(profile.name == "synthetic-k-switch" and high)
    assert min(seen.values()) >= 10, seen


@pytest.mark.parametrize("seed", range(4))
def test_large_batches_cross_the_regime_threshold(seed: int) -> None:
    """100+ requests on the OPT profile, whose decode fit switches at D = 95: with
    room for the unconstrained KV peak (batches of 95+ decodes occur) and with
    70 % of it (preemptions occur)."""
    rng = np.random.default_rng([20250612, seed])
    base = PROFILES["opt-13b-a100-tp1-vllm"]
    threshold = base.iteration_time.thresholds[0]
    instance = random_instance(rng, int(rng.integers(100, 141)), 0.001)
    block = int(rng.choice([1, 16]))
    roomy = base.replace(block_tokens=block)  # 66144 tokens: never binds here
    peak = simulate_naive(instance, roomy, "fcfs").max_kv_blocks_seen[0]
    tight = roomy.replace(kv_capacity_tokens=int(0.7 * peak) * block)
    for profile in (roomy, tight):
        for policy in POLICIES:
            case = Case(instance, profile, policy, 1, None)
            naive, fast = run_both(case)
            assert naive is not None  # budget 2048 > any prompt: both policies run
            assert_same(case, naive, fast)
            if profile is roomy:
                assert naive.max_decode_steps[0] >= threshold
            else:
                assert naive.preemptions.sum() > 0


def test_both_engines_reject_a_request_that_never_fits() -> None:
    instance = Instance([0.0, 0.0], [5, 30], [4, 20])  # peaks 8 and 49 tokens
    profile = PROFILES["unit-slot"].replace(kv_capacity_tokens=40)
    for engine in (simulate_naive, simulate):
        with pytest.raises(InputError, match="request 1") as err:
            engine(instance, profile, "fcfs")
        assert err.value.field == "kv_capacity_tokens"
    # in blocks: 49 tokens need 4 blocks of 16; 63 tokens hold only 3
    blocks = profile.replace(block_tokens=16, kv_capacity_tokens=63)
    for engine in (simulate_naive, simulate):
        with pytest.raises(InputError, match="request 1"):
            engine(instance, blocks, "fcfs")
    fits = profile.replace(kv_capacity_tokens=49)
    assert simulate_naive(instance, fits, "fcfs").completion_s.max() > 0


# -- broken policies: both engines must refuse the same batches ----------------------


@dataclass(frozen=True)
class _Spec:
    """A PolicySpec look-alike for unregistered test policies."""

    factory: Any
    label: str = "broken"

    def make(self) -> Any:
        return self.factory()


def _batch(**fields: list[int]) -> Batch:
    return Batch(**{k: np.array(v, dtype=np.int64) for k, v in fields.items()})


class _Scripted:
    """Admits request 0 whole, then returns ``later(view)`` at every boundary."""

    def __init__(self, later: Any) -> None:
        self.later = later

    def decide(self, view: ReplicaView) -> Batch:
        if view.iteration == 0:
            return _batch(prefill=[0], prefill_tokens=[int(view.prompt_tokens[0])])
        return self.later(view)


# Each breaks exactly one rule on three 4-token prompts at t = 0, after request 0
# was admitted whole; the limits are 2 requests, 7 tokens and 100 KV tokens (10
# for "over KV": 4 held + 4 + 3 new = 11).
BROKEN = {
    "decode of a waiting request": lambda v: _batch(decode=[1]),
    "unknown request": lambda v: _batch(decode=[7]),
    "duplicate": lambda v: _batch(decode=[0, 0]),
    "prefill of a decoding request": lambda v: _batch(prefill=[0], prefill_tokens=[1]),
    "chunk over the prompt": lambda v: _batch(prefill=[1], prefill_tokens=[5]),
    "zero chunk": lambda v: _batch(prefill=[1], prefill_tokens=[0]),
    "over max_num_seqs": lambda v: _batch(
        prefill=[1, 2], prefill_tokens=[1, 1], decode=[0]
    ),
    "over the token budget": lambda v: _batch(prefill=[1, 2], prefill_tokens=[4, 4]),
    "over KV": lambda v: _batch(prefill=[1, 2], prefill_tokens=[4, 3]),
    "preempt a waiting request": lambda v: _batch(preempt=[1], decode=[0]),
    "stalls": lambda v: Batch(),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_both_engines_reject_broken_batches(name: str) -> None:
    instance = Instance([0.0, 0.0, 0.0], [4, 4, 4], [3, 3, 3])
    profile = PROFILES["unit-slot"].replace(
        kv_capacity_tokens=10 if name == "over KV" else 100,
        max_num_seqs=2,
        max_num_batched_tokens=7,
    )
    spec = _Spec(lambda: _Scripted(BROKEN[name]))
    for engine in (simulate_naive, simulate):
        with pytest.raises(PolicyError):
            engine(instance, profile, spec)


class _FalseHold:
    """Decodes request 0 and 1 alternately while promising to hold (a lie)."""

    def decide(self, view: ReplicaView) -> Batch:
        waiting = view.waiting.tolist()
        if waiting:
            tokens = [int(view.prompt_tokens[w]) for w in waiting]
            return _batch(prefill=waiting, prefill_tokens=tokens)
        running = view.running.tolist()
        pick = running[view.iteration % len(running)]
        return Batch(decode=np.array([pick], dtype=np.int64), hold=True)


def test_a_false_hold_shows_up_as_a_difference() -> None:
    """The naive engine ignores hold, so a policy that breaks its promise gives a
    different schedule: the equivalence tests can catch such policies."""
    instance = Instance([0.0, 0.0], [3, 3], [6, 6])
    profile = PROFILES["unit-slot"]
    spec = _Spec(_FalseHold)
    naive = simulate_naive(instance, profile, spec)
    fast = simulate(instance, profile, spec)
    # naive, by hand: iteration 0 prefills both (ends t=1); iteration k >= 1
    # decodes request k % 2 and ends at t = k + 1. Each needs 5 decode steps:
    # request 1 gets iterations 1, 3, ..., 9 (done at 10), request 0 gets 2, ...,
    # 10 (done at 11). An engine trusting the hold decodes request 1 alone up to
    # its completion instead.
    assert naive.completion_s.tolist() == [11.0, 10.0]
    assert fast.requests["completion_s"].tolist() != [11.0, 10.0]


class _FalseStanding:
    """Declares the standing decision but decodes only the oldest running request
    when nothing waits (a lie the engine would act on without asking)."""

    holds_running_when_idle = True

    def decide(self, view: ReplicaView) -> Batch:
        waiting = view.waiting.tolist()
        if waiting:
            tokens = [int(view.prompt_tokens[w]) for w in waiting]
            return _batch(prefill=waiting, prefill_tokens=tokens)
        return Batch(decode=view.running[:1].copy())


def test_a_false_standing_decision_shows_up_as_a_difference() -> None:
    instance = Instance([0.0, 0.0], [3, 3], [4, 4])
    profile = PROFILES["unit-slot"]
    spec = _Spec(_FalseStanding)
    naive = simulate_naive(instance, profile, spec)
    fast = simulate(instance, profile, spec)
    # naive, by hand: iteration 0 prefills both (t=1); then request 0 alone decodes
    # its 3 steps (done at 4), then request 1 its 3 (done at 7). An engine that
    # trusts the declaration decodes both together: both done at 4.
    assert naive.completion_s.tolist() == [4.0, 7.0]
    assert fast.requests["completion_s"].tolist() != [4.0, 7.0]


class _Counting:
    """fcfs, counting its calls."""

    def __init__(self) -> None:
        self.policy = parse_policy("fcfs").make()
        self.holds_running_when_idle = holds_running_when_idle(self.policy)
        self.calls = 0

    def decide(self, view: ReplicaView) -> Batch:
        self.calls += 1
        return self.policy.decide(view)


def test_the_standing_decision_saves_policy_calls() -> None:
    rng = np.random.default_rng(0)
    instance = random_instance(rng, 12, 0.5)
    counting = _Counting()
    assert counting.holds_running_when_idle  # fcfs declares it
    result = simulate(instance, PROFILES["unit-slot"], _Spec(lambda: counting))
    assert counting.calls < result.iterations


# -- a policy that waits on a clock ----------------------------------------------


class _Periodic:
    """Admits only at the first boundary of each period of ``period`` seconds.

    Whole prompts, in arrival order, while the requests' peak KV (from the oracle
    predictions) fits, so it never preempts. A decode-only batch is held with a
    wake-up at the next period while requests wait; with nothing to run it idles
    until then. The hold is honest: between events the batch cannot change, and
    the state (the last period admitted in) changes only on a call that admits,
    which both engines make.
    """

    def __init__(self, period: float) -> None:
        self.period = period  # a power of two: now / period is exact
        self.window = -1

    def decide(self, view: ReplicaView) -> Batch:
        limits = view.limits
        assert view.predicted_output_tokens is not None
        peak = view.kv.blocks(view.prompt_tokens + view.predicted_output_tokens - 1)
        running = view.running.tolist()
        window = math.floor(view.now_s / self.period)
        wake = (window + 1) * self.period
        reserved = int(peak[running].sum())
        budget = limits.max_num_batched_tokens - len(running)
        prefill: list[int] = []
        if window > self.window:
            for w in view.waiting.tolist():
                c = int(view.prompt_tokens[w])
                if (
                    len(running) + len(prefill) >= limits.max_num_seqs
                    or c > budget
                    or reserved + peak[w] > limits.kv_capacity_blocks
                ):
                    break
                prefill.append(w)
                reserved += int(peak[w])
                budget -= c
        decode = np.array(running, dtype=np.int64)  # every prefill is whole
        if prefill:
            self.window = window
            return Batch(
                prefill=np.array(prefill, dtype=np.int64),
                prefill_tokens=view.prompt_tokens[prefill],
                decode=decode,
            )
        waiting = len(view.waiting) > 0
        return Batch(decode=decode, hold=True, wake_at_s=wake if waiting else None)


@pytest.mark.parametrize("seed", range(2))
def test_clock_policy_agrees(seed: int) -> None:
    rng = np.random.default_rng([20250613, seed])
    names = ["unit-slot", "synthetic-roofline", "opt-13b-a100-tp1-vllm"]
    woke = 0
    for _ in range(40):
        name = str(rng.choice(names))
        scale = TIME_SCALE_S[name]
        instance = random_instance(
            rng, int(rng.integers(1, 13)), scale, exact_clock=name == "unit-slot"
        )
        profile = tight_profile(rng, PROFILES[name], instance, limits=False)
        period = 2.0 ** (int(rng.integers(-1, 4)) + round(math.log2(scale)))
        spec = _Spec(lambda period=period: _Periodic(period), label="periodic")
        case = Case(instance, profile, spec, int(rng.choice([1, 3])), None)
        naive, fast = run_both(case)
        assert naive is not None, case.describe()
        assert_same(case, naive, fast)
        # admissions only ever happen at a boundary in a new period; with all
        # requests at 0 that means nothing waits past the first period boundary
        woke += int(np.any(naive.admitted_s > instance.arrival_s))
    assert woke >= 10  # the clock made requests wait
