"""Properties of the fast evaluator, and hand-derived schedules of both engines.

The properties run :func:`lsched.evaluator.simulate` on Hypothesis-drawn small
instances and check its iteration log against the rules of DESIGN.md ("The
iteration model") by replaying the log independently: KV within capacity (in
blocks) after every iteration, every request emitting exactly ``o_i`` tokens and
completing once, run features and durations matching the cost model, records
matching the log; plus agreement with the naive reference engine's own KV
bookkeeping, and determinism.

The hand-derived tests check the reference engine itself (and the fast one) on
schedules written out iteration by iteration in the comments.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_engine import simulate_naive

from lsched.evaluator import simulate
from lsched.instance import Instance
from lsched.policies import ARRIVAL_TOLERANCE_S, Batch, ReplicaView, parse_policy
from lsched.profile import FEATURES, DeploymentProfile, IterationTime, load_profile

PROFILES = {
    name: load_profile(name)
    for name in ("unit-slot", "llama2-70b-a100-tp4", "opt-13b-a100-tp1-vllm")
}
TIME_SCALE_S = {
    "unit-slot": 1.0,
    "llama2-70b-a100-tp4": 0.05,
    "opt-13b-a100-tp1-vllm": 0.03,
}
UNIT = PROFILES["unit-slot"]


@dataclass(frozen=True)
class Scenario:
    instance: Instance
    profile: DeploymentProfile
    policy: str
    replicas: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Up to 8 requests on a profile with tight KV and batch limits."""
    n = draw(st.integers(1, 8))
    name = draw(st.sampled_from(sorted(PROFILES)))
    prompts = np.array(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n)))
    outputs = np.array(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n)))
    if draw(st.booleans()):
        arrival = np.zeros(n)
    else:
        gaps = draw(st.lists(st.floats(0, 6), min_size=n, max_size=n))
        arrival = np.cumsum(gaps) * TIME_SCALE_S[name]
    instance = Instance(arrival, prompts, outputs)
    block = draw(st.sampled_from([1, 4, 16]))
    peak = int((-(-(prompts + outputs - 1) // block)).max())
    blocks = draw(st.integers(peak, 3 * peak))
    chunked = draw(st.booleans())
    # the unchunked policy stalls on a (recomputed) prompt over the budget:
    # give it room for the longest one
    smallest_budget = 1 if chunked else int((prompts + outputs - 1).max())
    profile = PROFILES[name].replace(
        block_tokens=block,
        kv_capacity_tokens=blocks * block,
        max_num_seqs=draw(st.sampled_from([1, 2, 3, 5, 1000])),
        max_num_batched_tokens=draw(st.integers(smallest_budget, 64)),
    )
    policy = "fcfs" if chunked else "fcfs:chunked=false"
    return Scenario(instance, profile, policy, draw(st.integers(1, 3)))


def _blocks(tokens: int, block: int) -> int:
    return -(-tokens // block)


def replay_log(result: Any, instance: Instance, profile: DeploymentProfile) -> None:
    """Replay the iteration log under the model's rules; assert it is consistent.

    Tracks each running request's KV from the members and preemptions tables
    alone, and checks every run's features, KV, duration and emissions, then that
    the per-request records are the ones the log implies.
    """
    runs, members, preempted = result.runs, result.members, result.preemptions
    s, o = instance.prompt_tokens, instance.output_tokens
    n = len(instance)
    block, capacity = profile.block_tokens, profile.kv_capacity_blocks
    by_run: dict[int, list[tuple]] = defaultdict(list)
    for m in members.itertuples(index=False):
        member = (int(m.request), m.kind, int(m.tokens), int(m.processed_before))
        by_run[int(m.run)].append(member)
    preempted_before: dict[int, list[int]] = defaultdict(list)
    for p in preempted.itertuples(index=False):
        preempted_before[int(p.run)].append(int(p.request))

    held: dict[int, dict[int, int]] = defaultdict(dict)  # replica -> request -> KV
    target = np.zeros(n, dtype=np.int64)
    emitted = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    admitted = np.full(n, np.nan)
    first = np.full(n, np.nan)
    completion = np.full(n, np.nan)
    preemptions = np.zeros(n, dtype=np.int64)
    recomputed = np.zeros(n, dtype=np.int64)
    last_end: dict[int, float] = {}
    replica_of = result.requests["replica"].to_numpy()
    for run in runs.itertuples():
        rep, iters = int(run.replica), int(run.iterations)
        kv = held[rep]
        assert iters >= 1
        assert run.start_s >= last_end.get(rep, -math.inf)  # runs do not overlap
        for r in preempted_before[run.Index]:
            assert r in kv, f"run {run.Index}: preempted request {r} not running"
            recomputed[r] += kv.pop(r)
            preemptions[r] += 1
        p = q = d = k = 0
        emits: list[tuple[int, int]] = []
        for r, kind, tokens, before in by_run[run.Index]:
            assert replica_of[r] == rep and not done[r]
            if kind == "prefill":
                assert iters == 1  # a batch with prefill runs one iteration
                if r not in kv:  # admission
                    target[r] = s[r] + emitted[r]
                    kv[r] = 0
                    if math.isnan(admitted[r]):
                        admitted[r] = run.start_s
                assert kv[r] == before < target[r]
                kv[r] = before + tokens
                assert kv[r] <= target[r]
                p, q = p + tokens, q + tokens * (before + tokens)
                if kv[r] == target[r]:  # the chunk that ends the prefill emits
                    emits.append((r, 1))
            else:
                assert kind == "decode" and tokens == 1
                assert r in kv and kv[r] == before >= target[r]
                kv[r] = before + iters
                d, k = d + 1, k + before + 1
                emits.append((r, iters))
        features = (p, q, d, k, int(p > 0))
        logged = tuple(
            int(getattr(run, f))
            for f in (
                "prefill_tokens",
                "prefill_attention",
                "decode_steps",
                "kv_read_tokens",
                "has_prefill",
            )
        )
        assert features == logged, f"run {run.Index}"
        # KV only grows inside a run: its last iteration holds the most
        assert sum(kv.values()) == run.kv_tokens + (iters - 1) * d
        assert sum(_blocks(x, block) for x in kv.values()) <= capacity
        phi = np.zeros((iters, len(FEATURES)))
        phi[:] = [1, p, q, d, k, int(p > 0)]
        phi[:, FEATURES.index("kv_read_tokens")] += d * np.arange(iters)
        expected_s = float(profile.iteration_time_s(phi).sum())
        assert run.end_s - run.start_s == pytest.approx(expected_s, rel=1e-9)
        for r, tokens in emits:
            if emitted[r] == 0:
                first[r] = run.end_s
            emitted[r] += tokens
            assert emitted[r] <= o[r], f"request {r} emits more than o_i"
            if emitted[r] == o[r]:
                done[r] = True
                completion[r] = run.end_s
                del kv[r]
        last_end[rep] = run.end_s
    assert done.all() and np.array_equal(emitted, o)
    assert runs["iterations"].sum() == result.iterations
    records = result.requests
    for column, mine in (
        ("admitted_s", admitted),
        ("first_token_s", first),
        ("completion_s", completion),
        ("preemptions", preemptions),
        ("recomputed_tokens", recomputed),
    ):
        np.testing.assert_array_equal(records[column].to_numpy(), mine, column)


def _simulate(sc: Scenario, **kwargs: Any) -> Any:
    return simulate(sc.instance, sc.profile, sc.policy, replicas=sc.replicas, **kwargs)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_log_obeys_the_iteration_model(sc: Scenario) -> None:
    result = _simulate(sc, log=True)
    replay_log(result, sc.instance, sc.profile)
    rec, a = result.requests, sc.instance.arrival_s
    assert np.all(rec["admitted_s"] >= a - ARRIVAL_TOLERANCE_S)
    assert np.all(rec["first_token_s"] > rec["admitted_s"])
    assert np.all(rec["completion_s"] >= rec["first_token_s"])
    assert np.all(rec["completion_s"] > a)
    # a request emitting one token completes with its first token
    single = sc.instance.output_tokens == 1
    assert np.array_equal(rec["completion_s"][single], rec["first_token_s"][single])


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_kv_bookkeeping_matches_the_naive_engine(sc: Scenario) -> None:
    fast = _simulate(sc, log=True)
    naive = simulate_naive(sc.instance, sc.profile, sc.policy, replicas=sc.replicas)
    assert np.all(naive.max_kv_blocks_seen <= sc.profile.kv_capacity_blocks)
    runs = fast.runs
    peak = runs["kv_tokens"] + (runs["iterations"] - 1) * runs["decode_steps"]
    per_replica = peak.groupby(runs["replica"]).max()
    for replica in range(sc.replicas):
        assert per_replica.get(replica, 0) == naive.max_kv_tokens_seen[replica]
    m = fast.metrics
    kv = m["kv_utilization"] * sc.replicas * sc.profile.kv_capacity_tokens
    assert kv * m["makespan_s"] == pytest.approx(naive.kv_token_seconds, rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(scenarios())
def test_same_input_same_result(sc: Scenario) -> None:
    one, two = _simulate(sc, log=True), _simulate(sc, log=True)
    pd.testing.assert_frame_equal(one.requests, two.requests, check_exact=True)
    for table in ("runs", "members", "preemptions"):
        pd.testing.assert_frame_equal(getattr(one, table), getattr(two, table))
    assert one.metrics.keys() == two.metrics.keys()
    for key, value in one.metrics.items():
        assert value == two.metrics[key] or (
            math.isnan(value) and math.isnan(two.metrics[key])
        )
    # keeping the log does not change the schedule (the log is the Python path's;
    # tests/test_compiled.py compares the compiled path with it)
    quiet = _simulate(sc, engine="python")
    records = one.requests.drop(columns="tbt_s")  # the log's TBT: with the log only
    pd.testing.assert_frame_equal(records, quiet.requests, check_exact=True)
    assert quiet.runs is None and quiet.iterations == one.iterations


# -- hand-derived schedules ----------------------------------------------------------


def both_engines(
    instance: Instance, profile: DeploymentProfile, policy: str = "fcfs", **kw: Any
) -> list[dict[str, Any]]:
    """Per-request records and totals from the naive and the fast engine."""
    columns = (
        "admitted_s",
        "first_token_s",
        "completion_s",
        "preemptions",
        "recomputed_tokens",
        "replica",
    )
    naive = simulate_naive(instance, profile, policy, **kw)
    mine = {c: getattr(naive, c).tolist() for c in columns}
    mine |= {
        "iterations": naive.iterations,
        "busy_s": naive.busy_s,
        "kv_token_seconds": naive.kv_token_seconds,
    }
    fast = simulate(instance, profile, policy, **kw)
    m = fast.metrics
    span = m["makespan_s"] * fast.replicas
    theirs = {c: fast.requests[c].tolist() for c in columns}
    theirs |= {
        "iterations": fast.iterations,
        "busy_s": m["busy_fraction"] * span,
        "kv_token_seconds": m["kv_utilization"] * profile.kv_capacity_tokens * span,
    }
    return [mine, theirs]


def test_hand_two_requests_no_preemption() -> None:
    # unit-slot, capacity 10; r0 (s=2, o=3), r1 (s=3, o=2), both at t=0.
    # it 1 [0,1): admit both, prefill 2 + 3 -> both emit token 1 at 1; KV 2+3 = 5
    # it 2 [1,2): decode both -> KV 3+4 = 7; r1 emits token 2 = o: done at 2
    # it 3 [2,3): decode r0 -> KV 4; token 3 = o: done at 3
    # busy 3; KV token-seconds 5 + 7 + 4 = 16
    instance = Instance([0.0, 0.0], [2, 3], [3, 2])
    for got in both_engines(instance, UNIT.replace(kv_capacity_tokens=10)):
        assert got["admitted_s"] == [0.0, 0.0]
        assert got["first_token_s"] == [1.0, 1.0]
        assert got["completion_s"] == [3.0, 2.0]
        assert got["preemptions"] == [0, 0]
        assert got["iterations"] == 3
        assert got["busy_s"] == pytest.approx(3.0)
        assert got["kv_token_seconds"] == pytest.approx(16.0)


def test_hand_recompute_preemption() -> None:
    # the same requests with capacity 6:
    # it 1 [0,1): prefill 2 + 3 (KV 5); both emit token 1 at 1
    # it 2 [1,2): both decoding would need 3 + 4 = 7 > 6: FCFS preempts the newest,
    #   r1 (3 tokens recomputed, back to waiting); decode r0 -> KV 3
    # it 3 [2,3): decode r0 -> 4 tokens, done at 3; admitting r1 (s + e = 3 + 1 = 4
    #   tokens) would need 4 + 4 = 8 > 6: it waits
    # it 4 [3,4): admit r1 again with a 4-token prefill, which emits its token 2 =
    #   o: done at 4. admitted_s stays 0 (first admission), first token stays 1
    # KV token-seconds 5 + 3 + 4 + 4 = 16
    instance = Instance([0.0, 0.0], [2, 3], [3, 2])
    for got in both_engines(instance, UNIT.replace(kv_capacity_tokens=6)):
        assert got["admitted_s"] == [0.0, 0.0]
        assert got["first_token_s"] == [1.0, 1.0]
        assert got["completion_s"] == [3.0, 4.0]
        assert got["preemptions"] == [0, 1]
        assert got["recomputed_tokens"] == [0, 3]
        assert got["iterations"] == 4
        assert got["kv_token_seconds"] == pytest.approx(16.0)


def test_hand_blocks_not_tokens() -> None:
    # blocks of 4 tokens, capacity 8 tokens = 2 blocks; r0 (s=4, o=2), r1 (s=2,
    # o=2) at 0. In tokens (4+1) + (2+1) = 8 would fit; in blocks it does not.
    # it 1 [0,1): prefill 4 + 2 -> 1 + 1 blocks; both emit token 1
    # it 2 [1,2): r0's decode needs a second block (5 tokens): 2 + 1 > 2, so FCFS
    #   preempts r1 (2 tokens recomputed); r0 decodes: token 2 = o, done at 2
    # it 3 [2,3): admit r1 with s + e = 3 tokens (1 block): token 2, done at 3
    instance = Instance([0.0, 0.0], [4, 2], [2, 2])
    profile = UNIT.replace(block_tokens=4, kv_capacity_tokens=8)
    for got in both_engines(instance, profile):
        assert got["completion_s"] == [2.0, 3.0]
        assert got["preemptions"] == [0, 1]
        assert got["recomputed_tokens"] == [0, 2]
    # with blocks of one token the same capacity needs no preemption
    for got in both_engines(instance, profile.replace(block_tokens=1)):
        assert got["completion_s"] == [2.0, 2.0]
        assert got["preemptions"] == [0, 0]


def test_hand_chunked_prefill_features() -> None:
    # t = 1 + 0.1 P + 0.01 Q + 0.2 D + 0.001 K + 0.5 H; budget 4 tokens/iteration;
    # r0 (s=6, o=2), r1 (s=1, o=2) at 0.
    # it 1: r0 chunk 4 (ctx 0): P=4, Q=4*4=16, H=1 -> 1 + .4 + .16 + .5 = 2.06
    # it 2: r0 chunk 2 (ctx 4) + admit r1 chunk 1: P=3, Q=2*6 + 1*1 = 13, H=1
    #   -> 1 + .3 + .13 + .5 = 1.93; both emit token 1 at 3.99
    # it 3: decode both: D=2, K=(6+1)+(1+1)=9 -> 1 + .4 + .009 = 1.409; both done
    #   at 5.399. KV token-s: 4*2.06 + 7*1.93 + 9*1.409 = 34.431
    weights = np.array([[1.0, 0.1, 0.01, 0.2, 0.001, 0.5]])
    profile = UNIT.replace(
        iteration_time=IterationTime(regimes=(weights,)),
        kv_capacity_tokens=100,
        max_num_batched_tokens=4,
    )
    instance = Instance([0.0, 0.0], [6, 1], [2, 2])
    for got in both_engines(instance, profile):
        assert got["admitted_s"] == pytest.approx([0.0, 2.06])
        assert got["first_token_s"] == pytest.approx([3.99, 3.99])
        assert got["completion_s"] == pytest.approx([5.399, 5.399])
        assert got["busy_s"] == pytest.approx(5.399)
        assert got["kv_token_seconds"] == pytest.approx(34.431)


def test_hand_idle_gap_and_replicas() -> None:
    # two replicas, round robin: r0 (a=0, s=1, o=2) and r2 (a=10.5, s=2, o=1) on
    # replica 0; r1 (a=0.5, s=3, o=1) on replica 1.
    # replica 0: it [0,1) prefills r0, it [1,2) decodes it: done at 2; idle until
    #   10.5; it [10.5,11.5) prefills r2: token 1 = o, done at 11.5
    # replica 1: starts at its first arrival, 0.5; one prefill: done at 1.5
    instance = Instance([0.0, 0.5, 10.5], [1, 3, 2], [2, 1, 1])
    for got in both_engines(instance, UNIT, replicas=2):
        assert got["replica"] == [0, 1, 0]
        assert got["admitted_s"] == [0.0, 0.5, 10.5]
        assert got["completion_s"] == [2.0, 1.5, 11.5]
        assert got["iterations"] == 4
        assert got["busy_s"] == pytest.approx(4.0)
    # an explicit assignment puts everything on replica 1: r1 arrives while r0
    # decodes and is admitted at the next boundary, 1
    for got in both_engines(instance, UNIT, replicas=2, assignment=[1, 1, 1]):
        assert got["replica"] == [1, 1, 1]
        assert got["admitted_s"] == [0.0, 1.0, 10.5]
        assert got["completion_s"] == [2.0, 2.0, 11.5]


def test_hand_arrival_exactly_at_a_boundary_inside_a_held_stretch() -> None:
    # unit-slot (every boundary an exact integer); r0 (a=0, s=1, o=5), r1 (a=3,
    # s=1, o=1). [0,1) prefills r0; [1,2) and [2,3) decode it (a held batch); at
    # the boundary t=3, a_1 <= t, so r1 is admitted there: [3,4) decodes r0 and
    # prefills r1 (done at 4); [4,5) emits r0's token 5 (done at 5)
    instance = Instance([0.0, 3.0], [1, 1], [5, 1])
    for got in both_engines(instance, UNIT):
        assert got["admitted_s"] == [0.0, 3.0]
        assert got["first_token_s"] == [1.0, 4.0]
        assert got["completion_s"] == [5.0, 4.0]
        assert got["iterations"] == 5


class _Counting:
    """FCFS (which holds its decode-only batches) counting its calls."""

    calls = 0

    def __init__(self) -> None:
        self.inner = parse_policy("fcfs").make()

    def decide(self, view: ReplicaView) -> Batch:
        _Counting.calls += 1
        return self.inner.decide(view)


@dataclass(frozen=True)
class _CountingSpec:
    label: str = "counting"

    def make(self) -> _Counting:
        return _Counting()


def test_naive_engine_calls_the_policy_every_iteration() -> None:
    # all at 0 and nothing stalls: one call per iteration, held batches included
    instance = Instance([0.0] * 3, [3, 5, 2], [9, 4, 12])
    _Counting.calls = 0
    naive = simulate_naive(
        instance, UNIT.replace(kv_capacity_tokens=20), _CountingSpec()
    )
    assert naive.iterations > 12 and _Counting.calls == naive.iterations
