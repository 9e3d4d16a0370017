"""Requests that do not fit ``max_model_len`` (DESIGN.md, "Rejection").

The evaluator (:mod:`lsched.evaluator.length`) rejects a prompt over ``L`` at
arrival and stops a served request after ``min(o_i, L - s_i + 1)`` tokens (vLLM
V0's ``StopChecker``: ``seq.get_len() > max_model_len``). The naive reference
engine (``tests/reference_engine.py``) states both rules on its own, the second as
a stop check in its iteration loop; on Hypothesis-drawn instances whose prompts
and outputs straddle ``L`` both engines must agree on rejections, truncations and
times, on one replica or several (round robin, or a router that reads state: the
joint path), on a disaggregated cluster, and on the compiled path; the validator
must accept the fast engine's log. A hand-derived case pins the numbers, and a
stall names the request and the limit it breaks on both paths.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference_engine import simulate_naive, simulate_naive_cluster
from test_engine_equivalence import assert_request_times_same

from lsched.cluster import Cluster, Pool
from lsched.errors import InputError
from lsched.evaluator import check_fits, simulate, simulate_cluster
from lsched.evaluator.length import cut_to_length, served_requests
from lsched.instance import Instance
from lsched.policies import PolicyError
from lsched.profile import DeploymentProfile, load_profile
from lsched.validator import validate_cluster, validate_schedule

RTOL = 1e-9
UNIT = load_profile("unit-slot")
OPT = load_profile("opt-13b-a100-tp1-vllm")
POLICIES = ("fcfs", "fcfs:chunked=false", "vllm", "vllm-v0", "orca")


def _instance(arrival: list[float], prompt: list[int], output: list[int]) -> Instance:
    return Instance(
        np.asarray(arrival, dtype=float),
        np.asarray(prompt, dtype=np.int64),
        np.asarray(output, dtype=np.int64),
    )


# -- hand-derived -------------------------------------------------------------------


def test_hand_derived_rejection_and_truncation() -> None:
    """unit-slot (every iteration 1 s), ``L = 8``, all three at t = 0, FCFS:

    - A: prompt 9 > 8: rejected at arrival, never routed;
    - B: prompt 5, output 10: emits at most ``8 - 5 + 1 = 4`` tokens (after
      token 4 its sequence is 5 + 4 = 9 > 8 tokens), so 6 are cut;
    - C: prompt 2, output 2: fits (it could emit 7).

    Iteration [0, 1] prefills B and C: token 1 of both at t = 1. [1, 2] decodes
    both: C emits token 2 of 2 and completes at 2; B has 2. [2, 3] and [3, 4]
    decode B: tokens 3 and 4, so B completes at t = 4, its KV peaking at
    5 + 4 - 1 = 8 = L tokens. Throughput counts the 4 + 2 tokens emitted over
    the makespan of 4 s: 1.5 tokens/s; B's TPOT is (4 - 1) / (4 - 1) = 1 s.
    """
    profile = UNIT.replace(max_model_len=8, kv_capacity_tokens=100)
    instance = _instance([0, 0, 0], [9, 5, 2], [3, 10, 2])
    fast = simulate(instance, profile, "fcfs", log=True)
    naive = simulate_naive(instance, profile, "fcfs")
    records = fast.requests
    assert records["replica"].tolist() == [-1, 0, 0]
    assert records["rejected"][0] == "prompt 9 tokens > max_model_len 8"
    assert records["rejected"][1:].tolist() == ["", ""]
    assert records["truncated_tokens"].tolist() == [0, 6, 0]
    np.testing.assert_array_equal(records["first_token_s"], [np.nan, 1.0, 1.0])
    np.testing.assert_array_equal(records["completion_s"], [np.nan, 4.0, 2.0])
    assert fast.metrics["num_rejected"] == 1
    assert fast.metrics["num_truncated"] == 1
    assert fast.metrics["num_completed"] == 2
    assert fast.metrics["throughput_tok_s"] == 1.5
    assert fast.metrics["tpot_mean_s"] == 1.0  # C's TPOT is 1 s too
    # B alone from t = 2: its last iteration holds 5 + 4 - 1 = 8 tokens
    last = fast.runs.iloc[-1]
    assert last["kv_tokens"] + (last["iterations"] - 1) * last["decode_steps"] == 8
    # the naive engine, on its own rules
    assert naive.replica.tolist() == [-1, 0, 0]
    assert naive.rejected == ("prompt 9 tokens > max_model_len 8", "", "")
    assert naive.emitted_tokens is not None
    assert naive.emitted_tokens.tolist() == [0, 4, 2]
    np.testing.assert_array_equal(naive.completion_s, [np.nan, 4.0, 2.0])
    assert naive.max_kv_tokens_seen.max() == 9  # [1, 2]: B's 6 and C's 3
    report = validate_schedule(
        instance,
        profile,
        fast.runs,
        fast.members,
        fast.preemptions,
        replicas=1,
        requests=records,
        metrics=fast.metrics,
    )
    report.raise_if_invalid()
    # round robin still deals by position: A's turn (replica 0) is skipped
    two = simulate(instance, profile, "fcfs", replicas=2)
    assert two.requests["replica"].tolist() == [-1, 1, 0]
    assert simulate_naive(instance, profile, "fcfs", replicas=2).replica.tolist() == [
        -1,
        1,
        0,
    ]


def test_the_kv_checks_count_the_cut_outputs() -> None:
    """A request whose uncut peak (s + o - 1) exceeds the capacity runs when its
    cut peak (at most L) fits; a prompt over L is not counted at all."""
    profile = UNIT.replace(max_model_len=8, kv_capacity_tokens=8)
    instance = _instance([0, 0, 0], [5, 30, 2], [100, 1, 3])
    check_fits(instance, profile)  # 5 + 100 - 1 > 8, but it stops at 8 tokens
    result = simulate(instance, profile, "fcfs")
    assert result.requests["truncated_tokens"].tolist() == [96, 0, 0]
    assert result.requests["replica"].tolist() == [0, -1, 0]
    with pytest.raises(InputError, match="peak"):
        check_fits(instance, profile.replace(kv_capacity_tokens=7))


def test_the_cut_instance() -> None:
    """Outputs cut to L - s + 1, predictions too; a rejected request keeps its
    own; ``served_requests`` drops the rejected."""
    instance = _instance([0, 1, 2], [9, 5, 8], [3, 10, 2]).replace(
        predicted_output_tokens=np.array([7, 12, 1])
    )
    cut = cut_to_length(instance, 8)
    assert cut.rejected.tolist() == [True, False, False]
    assert cut.served.output_tokens.tolist() == [3, 4, 1]
    assert cut.served.predicted_output_tokens.tolist() == [7, 4, 1]
    assert cut.truncated.tolist() == [0, 6, 1]
    assert cut.reasons == {0: "prompt 9 tokens > max_model_len 8"}
    served = served_requests(instance, 8)
    assert served.prompt_tokens.tolist() == [5, 8]
    assert served.output_tokens.tolist() == [4, 1]
    assert cut_to_length(instance, 100).served is instance  # nothing to cut
    with pytest.raises(InputError, match="every prompt"):
        served_requests(instance, 4)


# -- stalls -------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_a_stall_names_the_request_and_the_limit(engine: str) -> None:
    """A prompt of 12 tokens within L = 100 but over a token budget of 10 can
    never be prefilled whole: the stall names request 1 (its instance position,
    on replica 0 of two) and max_num_batched_tokens."""
    profile = UNIT.replace(max_model_len=100, max_num_batched_tokens=10)
    instance = _instance([0, 0, 1, 1], [3, 12, 4, 2], [2, 2, 2, 2])
    with pytest.raises(PolicyError) as caught:
        simulate(
            instance,
            profile,
            "fcfs:chunked=false",
            replicas=2,
            assignment=[1, 0, 1, 1],
            engine=engine,
        )
    message = str(caught.value)
    assert "policy stalled" in message
    assert "the oldest waiting, request 1, needs 12 tokens (prompt 12)" in message
    assert "over max_num_batched_tokens = 10" in message


def test_a_stall_of_a_policy_that_holds_a_request_back() -> None:
    """A request that breaks no limit, which a policy never schedules: the
    message says so."""

    class Never:
        def decide(self, view: Any) -> Any:
            from lsched.policies import Batch

            return Batch()

    @dataclass(frozen=True)
    class Spec:
        label: str = "never"
        params: Any = None

        def make(self) -> Any:
            return Never()

    with pytest.raises(PolicyError, match=r"request 0, needs 3 tokens.*own rule"):
        simulate(_instance([0], [3], [2]), UNIT, Spec())  # type: ignore[arg-type]


# -- the engines agree --------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    instance: Instance
    profile: DeploymentProfile
    policy: str
    replicas: int
    dispatch: str | None

    def describe(self) -> str:
        p, inst = self.profile, self.instance
        return (
            f"profile={p.name} L={p.max_model_len} block={p.block_tokens} "
            f"kv={p.kv_capacity_tokens} seqs={p.max_num_seqs} "
            f"budget={p.max_num_batched_tokens} policy={self.policy} "
            f"replicas={self.replicas} dispatch={self.dispatch}"
            f"\narrival_s={inst.arrival_s.tolist()}"
            f"\nprompt_tokens={inst.prompt_tokens.tolist()}"
            f"\noutput_tokens={inst.output_tokens.tolist()}"
        )


def _lengths(draw: st.DrawFn, n: int, cap: int) -> tuple[list[int], list[int]]:
    """Prompts and outputs around ``cap``: a prompt within a few tokens of it
    (over it: rejected; at it: one token), or short; outputs that often run
    past it."""
    near = st.integers(max(1, cap - 4), cap + 2)
    prompts = draw(
        st.lists(st.one_of(near, st.integers(1, cap)), min_size=n, max_size=n)
    )
    outputs = draw(st.lists(st.integers(1, cap + 6), min_size=n, max_size=n))
    return prompts, outputs


@st.composite
def cases(draw: st.DrawFn) -> Case:
    name = draw(st.sampled_from(["unit-slot", "opt"]))
    base, scale = (UNIT, 1.0) if name == "unit-slot" else (OPT, 0.03)
    cap = draw(st.integers(3, 40))
    n = draw(st.integers(2, 14))
    prompts, outputs = _lengths(draw, n, cap)
    if draw(st.booleans()):
        arrivals = (
            np.sort(draw(st.lists(st.integers(0, 3 * n), min_size=n, max_size=n)))
            * scale
        )
    else:
        arrivals = np.zeros(n)
    instance = _instance(list(arrivals), prompts, outputs)
    block = draw(st.sampled_from([1, 4, 16]))
    need = -(-cap // block)  # every served peak is at most L tokens
    kv_blocks = draw(st.integers(need, 3 * need))
    profile = base.replace(
        name=f"{name}-L{cap}",
        max_model_len=cap,
        block_tokens=block,
        kv_capacity_tokens=kv_blocks * block,
        max_num_seqs=draw(st.sampled_from([2, 4, 256])),
        # >= L: a whole-prompt policy can always prefill what it may serve
        max_num_batched_tokens=draw(st.sampled_from([cap, 2 * cap, 2048])),
    )
    policy = draw(st.sampled_from(POLICIES))
    replicas = draw(st.sampled_from([1, 1, 2]))
    joint = draw(st.booleans())
    return Case(
        instance,
        profile,
        policy,
        replicas,
        "least-outstanding" if joint and replicas == 1 else None,
    )


def _compare(case: Case, seen: Counter[str]) -> None:
    where = case.describe()
    kwargs: dict[str, Any] = {"replicas": case.replicas}
    try:
        naive = simulate_naive(case.instance, case.profile, case.policy, **kwargs)
    except InputError:  # every prompt over L: nothing to serve, for both
        with pytest.raises(InputError, match="every prompt"):
            simulate(case.instance, case.profile, case.policy, **kwargs)
        seen["all rejected"] += 1
        return
    fast = simulate(
        case.instance,
        case.profile,
        case.policy,
        log=True,
        dispatch=case.dispatch,
        engine="python",
        **kwargs,
    )
    got = fast.requests
    np.testing.assert_array_equal(got["replica"], naive.replica, err_msg=where)
    assert tuple(got["rejected"]) == naive.rejected, where
    served = naive.replica >= 0
    assert naive.emitted_tokens is not None
    cut = np.where(served, case.instance.output_tokens - naive.emitted_tokens, 0)
    np.testing.assert_array_equal(got["truncated_tokens"], cut, err_msg=where)
    assert_request_times_same(got, naive, where)
    assert fast.iterations == naive.iterations, where
    assert fast.metrics["num_rejected"] == (~served).sum(), where
    assert fast.metrics["num_truncated"] == np.count_nonzero(cut), where
    # every served peak fits L: the naive engine never held more per request
    report = validate_schedule(
        case.instance,
        case.profile,
        fast.runs,
        fast.members,
        fast.preemptions,
        replicas=case.replicas,
        requests=got,
        metrics=fast.metrics,
    )
    assert report.ok, f"{report.violations[:5]}\n{where}"
    for what, yes in (
        ("rejected", (~served).any()),
        ("truncated", np.count_nonzero(cut) > 0),
        (
            "one token at L",
            (
                served & (case.instance.prompt_tokens == case.profile.max_model_len)
            ).any(),
        ),
        ("preempted", got["preemptions"].sum() > 0),
        ("joint path", case.dispatch is not None),
    ):
        if yes:
            seen[what] += 1
            event(what)


def test_random_instances_around_max_model_len_agree() -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases())
    def check(case: Case) -> None:
        _compare(case, seen)

    check()
    # not vacuous: the examples reject, cut, reach L exactly and preempt
    for what in ("rejected", "truncated", "one token at L", "joint path"):
        assert seen[what] >= 5, seen
    assert seen["preempted"] >= 1, seen


@pytest.mark.parametrize("policy", ["fcfs", "vllm", "sarathi", "orca", "vllm-v0"])
def test_the_compiled_path_cuts_the_same(policy: str) -> None:
    """The compiled path runs the cut instance: the same records as Python."""
    rng = np.random.default_rng(5)
    n, cap = 60, 24
    prompts = rng.integers(cap - 6, cap + 3, size=n)
    prompts[::3] = rng.integers(1, cap, size=len(prompts[::3]))
    instance = _instance(
        list(np.sort(rng.uniform(0, 3, size=n))),
        list(prompts),
        list(rng.integers(1, cap + 8, size=n)),
    )
    profile = OPT.replace(max_model_len=cap, kv_capacity_tokens=4 * cap, block_tokens=4)
    python = simulate(instance, profile, policy, replicas=2, engine="python")
    compiled = simulate(instance, profile, policy, replicas=2, engine="compiled")
    assert compiled.engine == "compiled"
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(python.requests, compiled.requests, rtol=RTOL)
    assert python.metrics["num_rejected"] == compiled.metrics["num_rejected"] > 0
    assert python.metrics["num_truncated"] == compiled.metrics["num_truncated"] > 0


# -- a disaggregated cluster --------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> tuple[Instance, Cluster]:
    cap = draw(st.integers(3, 16))
    n = draw(st.integers(2, 8))
    prompts, outputs = _lengths(draw, n, cap)
    arrivals = np.sort(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)))
    instance = _instance(list(arrivals.astype(float)), prompts, outputs)
    block = draw(st.sampled_from([1, 2, 4]))
    need = -(-cap // block)

    def profile(name: str, extra: int, own_cap: int) -> DeploymentProfile:
        return UNIT.replace(
            name=name,
            max_model_len=own_cap,
            block_tokens=block,
            kv_capacity_tokens=(need + extra) * block,
            max_num_seqs=draw(st.sampled_from([2, 1000])),
            max_num_batched_tokens=1000,
        )

    # pools with different max_model_len: the smallest, L = cap, holds for all
    prefill = profile("pp", draw(st.integers(0, 2)), cap)
    decode = profile("dp", draw(st.integers(0, 4)), cap + draw(st.integers(0, 5)))
    policy = st.sampled_from(["fcfs", "vllm", "vllm-v0"])
    pools = [
        Pool(prefill, draw(policy), 1, name="p", role="prefill"),
        Pool(
            decode,
            draw(policy),
            draw(st.integers(1, 2)),
            name="d",
            role="decode",
            pull=draw(st.sampled_from([None, 0.3])),
        ),
    ]
    if draw(st.booleans()):
        pools.append(Pool(profile("cc", 2, cap + 3), draw(policy), 1, name="c"))
    routers = st.sampled_from(["round-robin", "least-outstanding"])
    return instance, Cluster(tuple(pools), draw(routers), decode_router=draw(routers))


def test_random_disaggregated_clusters_around_max_model_len_agree() -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(clusters())
    def check(case: tuple[Instance, Cluster]) -> None:
        _compare_cluster(*case, seen)

    check()
    for what in ("rejected", "truncated", "one token at L"):
        assert seen[what] >= 3, seen


def _compare_cluster(instance: Instance, cluster: Cluster, seen: Counter[str]) -> None:
    try:
        naive = simulate_naive_cluster(instance, cluster)
    except InputError:  # every prompt over L: nothing to serve, for both
        with pytest.raises(InputError, match="every prompt"):
            simulate_cluster(instance, cluster)
        return
    fast = simulate_cluster(instance, cluster, log=True)
    got = fast.requests
    np.testing.assert_array_equal(got["replica"], naive.replica)
    np.testing.assert_array_equal(got["decode_replica"], naive.decode_replica)
    assert tuple(got["rejected"]) == naive.rejected
    served = naive.replica >= 0
    cut = np.where(served, instance.output_tokens - naive.emitted_tokens, 0)
    np.testing.assert_array_equal(got["truncated_tokens"], cut)
    for column in (
        "admitted_s",
        "first_token_s",
        "completion_s",
        "transfer_start_s",
        "transfer_end_s",
        "decode_admitted_s",
    ):
        np.testing.assert_allclose(
            got[column].to_numpy(dtype=float),
            getattr(naive, column),
            rtol=RTOL,
            atol=0,
            err_msg=column,
        )
    assert fast.iterations == naive.iterations
    cap = min(p.profile.max_model_len for p in cluster.pools)
    at_cap = served & (instance.prompt_tokens == cap)
    for what, yes in (
        ("rejected", (~served).any()),
        ("truncated", cut.any()),
        ("one token at L", at_cap.any()),
    ):
        if yes:
            seen[what] += 1
            event(what)
    validate_cluster(instance, cluster, fast).raise_if_invalid()


# -- who else reads the evaluator ---------------------------------------------------


def test_compare_scores_the_requests_the_evaluator_serves() -> None:
    """compare() cuts the instance as the evaluator serves it before any bound:
    the bounds hold for the cut runs and every gap is certified."""
    from lsched.comparison import compare
    from lsched.predictors import oracle

    profile = UNIT.replace(max_model_len=8, kv_capacity_tokens=40)
    instance = _instance([0, 0, 1, 2, 3], [9, 5, 2, 7, 3], [3, 30, 2, 9, 4])
    result = compare(instance, profile, policies=["fcfs", "sjf"], backend=None)
    served = served_requests(instance, 8)
    assert len(served) == 4 and served.output_tokens.tolist() == [4, 2, 2, 4]
    for row in result.policies:
        assert row.result.metrics["num_rejected"] == 0  # already left out
        direct = simulate(oracle(served), profile, row.policy)
        assert row.objective_value == float(
            (direct.requests["completion_s"] - served.arrival_s).sum()
        )
        assert row.gap is not None and row.gap >= 0
        assert result.best_bound <= row.objective_value


def test_improve_refuses_what_the_evaluator_would_cut() -> None:
    from lsched.formulations.scale import improve

    profile = UNIT.replace(max_model_len=8, kv_capacity_tokens=40)
    for instance in (_instance([0, 1], [9, 2], [1, 2]), _instance([0], [5], [9])):
        with pytest.raises(InputError, match="max_model_len 8"):
            improve(instance, profile, time_limit_s=1.0, seed=0)


def test_fixed_schedules_serve_what_the_evaluator_serves() -> None:
    """A batch table's decode steps are checked against the cut outputs (an
    online log with a cut request replays exactly); a prompt over L, and a
    start-slot schedule of an output that would be cut, are refused."""
    import pandas as pd

    from lsched.evaluator.fixed import replay_batch_table, replay_start_slots

    profile = UNIT.replace(max_model_len=8, kv_capacity_tokens=40)
    instance = _instance([0, 0], [5, 2], [10, 2])  # request 0 emits 4 of 10
    online = simulate(instance, profile, "fcfs:chunked=false", log=True)
    rows = [  # (iteration, request, kind, tokens): the online log, expanded
        (0, 0, "prefill", 5), (0, 1, "prefill", 2),
        (1, 0, "decode", 1), (1, 1, "decode", 1),
        (2, 0, "decode", 1), (3, 0, "decode", 1),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["iteration", "request", "kind", "tokens"])
    replay = replay_batch_table(instance, profile, table)
    # the online log adds every token's TBT (tbt_s); the records are the same
    pd.testing.assert_frame_equal(
        replay.requests, online.requests.drop(columns="tbt_s")
    )
    with pytest.raises(InputError, match="over max_model_len 8"):
        replay_batch_table(_instance([0, 0], [9, 2], [1, 2]), profile, table)
    with pytest.raises(InputError, match="emit 4 of its 10 tokens"):
        replay_start_slots(instance, profile, [0, 0])
