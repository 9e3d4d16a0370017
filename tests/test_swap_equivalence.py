"""Swap preemption: the fast evaluator agrees with the naive reference engine.

The fast engine (:mod:`lsched.evaluator.engine`) swaps KV to a replica's host tier
(:mod:`lsched.tiers`) in two modes: *blocking* copies that lengthen the iteration
they run before, and *async* copies on a first-come-first-served link per
direction that overlap the iterations, with GPU blocks pinned while they run.
``tests/reference_engine.py`` restates both modes from the docstrings alone, one
iteration at a time with the policy called at every boundary, its own host-block
arithmetic and its own links.

On Hypothesis-drawn small instances (2 to 25 requests in one to three bursts, so
that KV runs out; block sizes 1 and 16; a KV capacity between the largest peak and
twice it; a host tier between one and three peaks; ``unit-slot``, where a copy's
time is a dyadic fraction of an iteration so that copies end exactly on
boundaries, and ``opt-13b-a100-tp1-vllm``, with bandwidths that make a copy take
5 % to 3 iterations) both engines must give every request the same admission,
first-token and completion times (relative error <= 1e-9), preemptions,
recomputed tokens and swap-outs, the same iterations, busy time and KV
token-seconds, and the same swap metrics (``swap_out_bytes``, ``swap_in_bytes``,
``swap_stall_s``, ``recompute_avoided_tokens``); or both fail with
:class:`PolicyError`. Policies: ``vllm-v0:preemption=swap`` (blocking),
``fastserve:swap=true`` (async) and ``fastserve:swap=true,swap_mode=blocking``;
1 or 2 replicas, a single one sometimes under ``least-outstanding`` so that the
fast engine takes its joint path (:class:`lsched.evaluator.cluster.JointEngine`).
Each policy's test counts what its examples did and fails if too few examples ran
or swapped, or if blocking copies (blocking modes) or decisions with a copy in
flight (async) never happened.

Hand-derived cases pin the naive engine to the docstrings' numbers, and one checks
that an empty batch with a past wake-up still waits for a copy in flight.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference_engine import NaiveResult, simulate_naive
from test_engine_equivalence import assert_same as assert_records_same

from lsched.cluster import Cluster, Pool
from lsched.evaluator import SimulationResult, simulate
from lsched.instance import Instance
from lsched.policies import Batch, PolicyError, ReplicaView
from lsched.profile import DeploymentProfile, load_profile
from lsched.tiers import HostTier
from lsched.validator import validate_cluster

RTOL = 1e-9
POLICIES = (
    "vllm-v0:preemption=swap",
    "fastserve:swap=true",
    "fastserve:swap=true,swap_mode=blocking",
)
#: base profiles and a typical iteration time of each, seconds
BASES = {
    "unit-slot": (load_profile("unit-slot"), 1.0),
    "opt-13b-a100-tp1-vllm": (load_profile("opt-13b-a100-tp1-vllm"), 0.03),
}
SWAP_METRICS = ("swap_out_bytes", "swap_in_bytes", "swap_stall_s")
EXAMPLES = 40


@dataclass(frozen=True)
class Case:
    """One random simulation set-up."""

    instance: Instance
    profile: DeploymentProfile
    policy: str
    replicas: int
    dispatch: str | None = None  # least-outstanding: the fast engine's joint path

    def describe(self) -> str:
        """Everything needed to reproduce the case, for failure messages."""
        p, inst = self.profile, self.instance
        return (
            f"profile={p.name} block_tokens={p.block_tokens} "
            f"kv_capacity_tokens={p.kv_capacity_tokens} "
            f"max_num_seqs={p.max_num_seqs} "
            f"max_num_batched_tokens={p.max_num_batched_tokens} host={p.host} "
            f"policy={self.policy!r} replicas={self.replicas} "
            f"dispatch={self.dispatch}"
            f"\narrival_s={inst.arrival_s.tolist()}"
            f"\nprompt_tokens={inst.prompt_tokens.tolist()}"
            f"\noutput_tokens={inst.output_tokens.tolist()}"
        )


def _blocks(tokens: int, block: int) -> int:
    return -(-tokens // block)


@st.composite
def cases(draw: st.DrawFn, policy: str) -> Case:
    """A few to 25 requests in one to three bursts on a tight replica."""
    name = draw(st.sampled_from(sorted(BASES)))
    base, scale = BASES[name]
    exact = name == "unit-slot"  # every boundary an integer: ties are exact
    n = draw(st.integers(2, 25))
    prompts = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))
    # bursts: each request arrives at its burst's start plus a little jitter
    bursts = draw(st.integers(1, 3))
    if exact:
        starts = draw(st.lists(st.integers(0, 40), min_size=bursts, max_size=bursts))
        jitters = st.sampled_from([0.0, 0.0, 0.5, 0.25])
    else:
        starts = draw(
            st.lists(st.floats(0, 40 * scale), min_size=bursts, max_size=bursts)
        )
        jitters = st.floats(0, 2 * scale)
    arrivals = sorted(
        starts[draw(st.integers(0, bursts - 1))] + draw(jitters) for _ in range(n)
    )
    instance = Instance(
        arrival_s=np.array(arrivals, dtype=float),
        prompt_tokens=np.array(prompts),
        output_tokens=np.array(outputs),
    )
    block = draw(st.sampled_from([1, 16]))
    bytes_per_token = base.kv_bytes_per_token
    peak = max(_blocks(s + o - 1, block) for s, o in zip(prompts, outputs, strict=True))
    kv_blocks = draw(st.integers(peak, 2 * peak))
    host_blocks = draw(st.integers(peak, 3 * peak))
    # a copy of 16 tokens takes a fraction of an iteration: a power of two on
    # unit-slot (copies end on boundaries), 5 % to 3 iterations on OPT
    if exact:
        fractions = st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0])
    else:
        fractions = st.sampled_from([0.05, 0.3, 1.0, 3.0])
    d2h = 16 * bytes_per_token / (draw(fractions) * scale)
    h2d = 16 * bytes_per_token / (draw(fractions) * scale)
    host = HostTier(
        memory_bytes=host_blocks * block * bytes_per_token
        + draw(st.integers(0, block * bytes_per_token - 1)),
        h2d_bytes_per_s=h2d,
        d2h_bytes_per_s=d2h,
    )
    profile = base.replace(
        block_tokens=block,
        kv_capacity_tokens=kv_blocks * block + draw(st.integers(0, block - 1)),
        host=host,
        max_num_seqs=draw(st.sampled_from([2, 2, 3, 4, 8, 256])),
        max_num_batched_tokens=draw(st.sampled_from([128, 2048])),
    )
    replicas = draw(st.sampled_from([1, 1, 1, 2]))
    # one replica under a router that reads replica state: the same schedule,
    # through the fast engine's joint path (lsched.evaluator.cluster.JointEngine)
    joint = replicas == 1 and draw(st.booleans())
    return Case(
        instance, profile, policy, replicas, "least-outstanding" if joint else None
    )


def run_both(
    case: Case, validate: bool = False
) -> tuple[NaiveResult | None, SimulationResult | None]:
    """Both engines' results; if the naive one raises PolicyError so must the
    fast one (then None, None). With ``validate`` the fast run also passes the
    validator."""
    kwargs: dict[str, Any] = {"replicas": case.replicas}
    try:
        naive = simulate_naive(case.instance, case.profile, case.policy, **kwargs)
    except PolicyError:
        with pytest.raises(PolicyError):
            simulate(
                case.instance,
                case.profile,
                case.policy,
                dispatch=case.dispatch,
                engine="python",
                **kwargs,
            )
        return None, None
    fast = simulate(
        case.instance,
        case.profile,
        case.policy,
        dispatch=case.dispatch,
        engine="python",
        log=validate,
        **kwargs,
    )
    if validate:  # KV and host within capacity at every instant, no decode
        # while swapped, copies where the rules put them
        cluster = Cluster((Pool(case.profile, case.policy, case.replicas),))
        validate_cluster(case.instance, cluster, fast).raise_if_invalid()
    return naive, fast


def assert_same(case: Case, naive: NaiveResult, fast: SimulationResult) -> None:
    """Every per-request record, the schedule totals and the swap totals agree."""
    assert_records_same(case, naive, fast)
    where = case.describe()
    got, m = fast.requests, fast.metrics
    assert naive.swap_outs is not None
    if naive.swap_outs.sum() == 0:
        # no swap: the fast engine adds neither the column nor the metrics
        assert "swap_outs" not in got.columns, where
        assert not any(k in m for k in (*SWAP_METRICS, "recompute_avoided_tokens"))
        return
    np.testing.assert_array_equal(
        got["swap_outs"].to_numpy(), naive.swap_outs, err_msg=f"swap_outs\n{where}"
    )
    for name in SWAP_METRICS:
        assert m[name] == pytest.approx(getattr(naive, name), rel=RTOL, abs=0), (
            f"{name}\n{where}"
        )
    assert m["recompute_avoided_tokens"] == naive.recompute_avoided_tokens, where
    # every request is done, so every swapped request came back
    assert naive.swap_in_bytes == naive.swap_out_bytes, where


def _check(case: Case, seen: Counter[str]) -> None:
    """Compare ``case`` on both engines and count what it did into ``seen``."""
    # every third example through the validator too (it costs as much as both
    # engines together)
    naive, fast = run_both(case, validate=seen["examples"] % 3 == 0)
    seen["examples"] += 1
    if naive is None or fast is None:
        seen["both stalled"] += 1
        event("both engines refused (policy stalled)")
        return
    assert_same(case, naive, fast)
    assert naive.swap_outs is not None and naive.swap_ins is not None
    assert naive.max_host_blocks_seen is not None
    # every request completed, so every swap-out was swapped back in
    np.testing.assert_array_equal(naive.swap_ins, naive.swap_outs)
    assert naive.max_host_blocks_seen.max() <= case.profile.host_capacity_blocks
    outs = int(naive.swap_outs.sum())
    happened = {
        "compared": True,
        "swapped": outs > 0,
        "swapped more than once": bool((naive.swap_outs > 1).any()),
        "recomputed": bool(naive.recomputed_tokens.sum() > 0),
        "blocking stall": naive.swap_stall_s > 0,
        "copies in flight at a boundary": naive.async_waits > 0,
        "opt profile": case.profile.name.startswith("opt"),
        "block 16": case.profile.block_tokens == 16,
        "joint path": case.dispatch is not None,
    }
    for what, yes in happened.items():
        if yes:
            seen[what] += 1
            event(what)


@pytest.mark.parametrize("policy", POLICIES)
def test_random_swapping_instances_agree(policy: str) -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases(policy))
    def check(case: Case) -> None:
        _check(case, seen)

    check()
    # the comparisons must not pass vacuously: every example runs to its end (a
    # shipped policy never stalls: a swapped request always comes back), and
    # most of them swap
    compared = seen["compared"]
    assert seen["both stalled"] == 0 and compared == seen["examples"], seen
    assert seen["swapped"] >= max(3, compared // 4), seen
    mode = "async" if policy == "fastserve:swap=true" else "blocking"
    if mode == "async":
        assert seen["copies in flight at a boundary"] >= 1, seen
        assert seen["blocking stall"] == 0, seen
    else:
        assert seen["blocking stall"] >= 1, seen
        assert seen["copies in flight at a boundary"] == 0, seen


# -- hand-derived cases ------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """A PolicySpec look-alike for a test policy."""

    factory: Any
    label: str = "scripted"
    params: Any = None  # what a PolicySpec's params would say: nothing

    def make(self) -> Any:
        return self.factory()


class _Scripted:
    """A (prompt 3, output 4), B (prompt 2, output 2), both at t = 0.

    Boundary 0: prefill both. Boundary 1: swap A out, decode B. Later: once A is
    swapped, swap it in (decoding it at once where blocking allows); then decode
    whatever runs. Records what it saw at each call.
    """

    def __init__(self, mode: str, seen: list[tuple[Any, ...]]) -> None:
        self.swap_mode = mode
        self.seen = seen

    def decide(self, view: ReplicaView) -> Batch:
        running, swapped = view.running.tolist(), view.swapped.tolist()
        self.seen.append(
            (view.now_s, view.limits.kv_capacity_blocks, running, swapped,
             view.host_used_blocks)
        )  # fmt: skip
        if len(view.waiting):
            ids = view.waiting
            return Batch(prefill=ids, prefill_tokens=view.prompt_tokens[ids])
        if view.iteration == 1:
            return Batch(decode=np.array([1]), swap_out=np.array([0]))
        if swapped:
            blocking = self.swap_mode == "blocking"
            decode = np.array(swapped if blocking else [], dtype=np.int64)
            return Batch(swap_in=np.array(swapped), decode=decode)
        return Batch(decode=view.running)


def _two_requests(d2h: float, h2d: float) -> tuple[Instance, DeploymentProfile]:
    """A and B on unit-slot (1 s iterations, 1 byte per token), 10 tokens of KV,
    100 bytes of host memory."""
    instance = Instance(np.zeros(2), np.array([3, 2]), np.array([4, 2]))
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=10,
        host=HostTier(100, h2d_bytes_per_s=h2d, d2h_bytes_per_s=d2h),
    )
    return instance, profile


def test_naive_blocking_swap_by_hand() -> None:
    """d2h 1 B/s, h2d 2 B/s: [0, 1] prefills A and B; [1, 5] is B's decode step
    (1 s) after A's swap-out (3 tokens, 3 s): B completes at 5; [5, 7.5] is A's
    swap-in (1.5 s) and its decode step; then [7.5, 8.5], [8.5, 9.5]. The copies
    added 4.5 s."""
    instance, profile = _two_requests(d2h=1.0, h2d=2.0)
    for engine in (simulate_naive, simulate):
        seen: list[tuple[Any, ...]] = []
        spec = _Spec(lambda seen=seen: _Scripted("blocking", seen))
        result = engine(instance, profile, spec)
        if isinstance(result, NaiveResult):
            assert result.completion_s.tolist() == [9.5, 5.0]
            assert result.swap_outs.tolist() == [1, 0]  # type: ignore[union-attr]
            assert result.swap_stall_s == 4.5
            assert (result.swap_out_bytes, result.swap_in_bytes) == (3.0, 3.0)
            assert result.busy_s == 9.5 and result.iterations == 5
        else:
            assert result.requests["completion_s"].tolist() == [9.5, 5.0]
            assert result.metrics["swap_stall_s"] == 4.5
        # at t = 5, A is swapped (3 host blocks) and nothing is pinned
        assert seen[2] == (5.0, 10, [], [0], 3)
    logged = simulate(instance, profile, _Spec(lambda: _Scripted("blocking", [])),
                      log=True)  # fmt: skip
    assert logged.swaps is not None and logged.runs is not None
    copies = logged.swaps[["direction", "tokens", "start_s", "end_s"]]
    assert copies.values.tolist() == [["out", 3, 1.0, 4.0], ["in", 3, 5.0, 6.5]]
    runs = logged.runs[["start_s", "end_s"]].values.tolist()
    assert runs == [[0.0, 1.0], [1.0, 5.0], [5.0, 7.5], [7.5, 8.5], [8.5, 9.5]]


def test_naive_async_swap_by_hand() -> None:
    """d2h 1 B/s, h2d 2 B/s: A's swap-out copy runs [1, 4] beside B's decode step
    [1, 2], its 3 blocks pinned: at t = 2 the policy sees a capacity of 7 and
    nothing swapped; the replica then waits for the copy's end (t = 4), where A
    is swapped; its swap-in copy runs [4, 5.5] (its blocks pinned again) and A
    decodes from 5.5: tokens 2-4 end at 6.5, 7.5, 8.5."""
    instance, profile = _two_requests(d2h=1.0, h2d=2.0)
    for engine in (simulate_naive, simulate):
        seen: list[tuple[Any, ...]] = []
        spec = _Spec(lambda seen=seen: _Scripted("async", seen))
        result = engine(instance, profile, spec)
        completion = (
            result.completion_s.tolist()
            if isinstance(result, NaiveResult)
            else result.requests["completion_s"].tolist()
        )
        assert completion == [8.5, 2.0]
        by_time = {now: rest for now, *rest in seen}
        assert by_time[2.0] == [7, [], [], 3]
        assert by_time[4.0] == [10, [], [0], 3]
        assert by_time[5.5] == [10, [0], [], 0]
        assert 4.5 not in by_time  # no spinning while the swap-in copy runs
    naive = simulate_naive(instance, profile, _Spec(lambda: _Scripted("async", [])))
    assert naive.swap_stall_s == 0.0 and naive.busy_s == 5.0
    logged = simulate(instance, profile, _Spec(lambda: _Scripted("async", [])),
                      log=True)  # fmt: skip
    assert logged.swaps is not None and logged.runs is not None
    copies = logged.swaps[["direction", "tokens", "start_s", "end_s"]]
    assert copies.values.tolist() == [["out", 3, 1.0, 4.0], ["in", 3, 4.0, 5.5]]
    assert ((logged.runs["end_s"] - logged.runs["start_s"]) == 1.0).all()


class _PastWake:
    """Async: prefills A and B; at t = 1 swaps A out and decodes B; while nothing
    runs, returns an empty batch whose wake-up time has passed (t = 0); once A is
    swapped, swaps it in; decodes whatever runs."""

    swap_mode = "async"

    def decide(self, view: ReplicaView) -> Batch:
        if len(view.waiting):
            ids = view.waiting
            return Batch(prefill=ids, prefill_tokens=view.prompt_tokens[ids])
        if view.iteration == 1:
            return Batch(decode=np.array([1]), swap_out=np.array([0]))
        if len(view.swapped):
            return Batch(swap_in=view.swapped)
        if len(view.running) == 0:
            return Batch(wake_at_s=0.0)
        return Batch(decode=view.running)


def test_an_empty_batch_with_a_past_wake_still_waits_for_a_copy() -> None:
    """A wake-up time that has passed is no event, but a copy in flight is: at
    t = 2 (B done, A's copy running until 4) the replica must wait for the copy,
    not stall. Then as by hand above: A completes at 8.5."""
    instance, profile = _two_requests(d2h=1.0, h2d=2.0)
    spec = _Spec(_PastWake)
    naive = simulate_naive(instance, profile, spec)
    assert naive.completion_s.tolist() == [8.5, 2.0]
    for dispatch in ("round-robin", "least-outstanding"):  # both fast paths
        fast = simulate(instance, profile, spec, dispatch=dispatch)
        assert fast.requests["completion_s"].tolist() == [8.5, 2.0], dispatch


def test_both_engines_refuse_broken_swaps() -> None:
    """Swap-out of a request not running, swap-in of one not swapped, a full host
    tier and a blocking swap with an empty batch: PolicyError from both."""

    class Broken:
        def __init__(self, mode: str, batch: Batch) -> None:
            self.swap_mode = mode
            self.batch = batch

        def decide(self, view: ReplicaView) -> Batch:
            if len(view.waiting):
                ids = view.waiting
                return Batch(prefill=ids, prefill_tokens=view.prompt_tokens[ids])
            return self.batch

    instance = Instance(np.zeros(2), np.array([3, 3]), np.array([3, 3]))
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=10, host=HostTier(100, 1.0, 1.0)
    )
    one = np.array([1])
    zero = np.array([0])
    broken = [
        ("blocking", Batch(decode=zero, swap_out=one)),  # 1 is not running
        ("async", Batch(decode=zero, swap_in=zero)),  # 0 is not swapped
        ("blocking", Batch(swap_out=zero)),  # blocking, nothing runs
        ("async", Batch(decode=zero, swap_out=zero)),  # 0 swapping, not running
    ]
    for mode, batch in broken:
        spec = _Spec(lambda mode=mode, batch=batch: Broken(mode, batch))
        for engine in (simulate_naive, simulate):
            with pytest.raises(PolicyError):
                engine(instance, profile, spec)
    full = profile.replace(host=HostTier(2, 1.0, 1.0))  # 2 blocks; A holds 3
    spec = _Spec(lambda: Broken("async", Batch(swap_out=zero)))
    for engine in (simulate_naive, simulate):
        with pytest.raises(PolicyError):
            engine(instance, full, spec)
