"""Tenant-fair and threshold policies: vtc, wait, nested-wait.

Hand-built instances whose schedules are derived in the comments (unit-slot
profile: every iteration takes 1 s, KV in tokens); on seeded random instances every
policy gives the same per-request records as the naive reference engine (which
calls the policy every iteration and ignores ``hold``, so a false hold promise or
state that depends on how often the policy is called shows up) and passes the
independent validator; and VTC's fairness bound on a two-tenant overload case.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reference_engine import simulate_naive
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
from lsched.policies import REGISTRY, parse_policy

UNIT = PROFILES["unit-slot"]


# -- vtc: hand cases ---------------------------------------------------------------


def test_vtc_serves_the_least_served_tenant_first() -> None:
    """One sequence at a time; A0, A1, A2 then B3 at t=0, all s=1, o=2.

    Weights 1 (input) and 2 (output). t=0: counters 0, 0; the tie goes to the
    tenant whose oldest waiting request came first: A0 runs [0, 2) (prefill emits
    token 1, one decode emits token 2); c_A = 1 + 2*2 = 5. t=2: c_B = 0 < 5: B3
    runs [2, 4), c_B = 5. t=4: B has nothing waiting: A1 [4, 6), A2 [6, 8).
    FCFS runs B3 last, [6, 8)."""
    inst = Instance([0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], tenant=list("AAAB"))
    profile = UNIT.replace(max_num_seqs=1)
    got = run_checked(inst, profile, "vtc")
    assert request_column(got, "completion_s") == [2.0, 6.0, 8.0, 4.0]
    fcfs = run_checked(inst, profile, "fcfs")
    assert request_column(fcfs, "completion_s") == [2.0, 4.0, 6.0, 8.0]


def test_vtc_lifts_a_newly_backlogged_tenant() -> None:
    """One sequence at a time; A0..A3 at t=0, B4, B5 at t=4; all s=1, o=2.

    Each request adds 1 + 2*2 = 5 to its tenant's counter. A0 [0, 2), A1 [2, 4):
    c_A = 10. t=4: B arrives with no waiting request while A is backlogged, so
    c_B = max(0, min{c_A}) = 10 (the lift). Tie 10 = 10: A's oldest waiting
    request (A2) came first: A2 [4, 6), c_A = 15. t=6: c_B = 10: B4 [6, 8),
    c_B = 15. t=8: tie, A3 [8, 10); t=10: B5 [10, 12).

    Without the lift B (counter 0) would take both B4 [4, 6) and B5 [6, 8), and
    A2, A3 would wait to 10 and 12: the idle tenant would have banked credit."""
    inst = Instance([0, 0, 0, 0, 4, 4], [1] * 6, [2] * 6, tenant=["A"] * 4 + ["B"] * 2)
    got = run_checked(inst, UNIT.replace(max_num_seqs=1), "vtc")
    assert request_column(got, "completion_s") == [2.0, 4.0, 6.0, 10.0, 8.0, 12.0]


def test_vtc_weights_change_the_order() -> None:
    """One sequence at a time; A0 (s=6, o=1), B1 (s=1, o=3), A2 (s=1, o=1),
    B3 (s=1, o=1), all at t=0 (no later arrival, so no lift).

    t=0: tie 0 = 0, A's oldest request first: A0 runs [0, 1) (its prefill emits
    its only token), c_A = 6 w_in + w_out. t=1: c_B = 0 < c_A: B1 runs [1, 4),
    c_B = w_in + 3 w_out. t=4, A2 against B3:
    weights (1, 2): c_A = 8 > c_B = 7: B3 [4, 5), then A2 [5, 6);
    weights (0, 1): c_A = 1 < c_B = 3: A2 [4, 5), then B3 [5, 6)."""
    inst = Instance([0, 0, 0, 0], [6, 1, 1, 1], [1, 3, 1, 1], tenant=list("ABAB"))
    profile = UNIT.replace(max_num_seqs=1)
    got = run_checked(inst, profile, "vtc")
    assert request_column(got, "completion_s") == [1.0, 4.0, 6.0, 5.0]
    got = run_checked(inst, profile, "vtc:input_weight=0,output_weight=1")
    assert request_column(got, "completion_s") == [1.0, 4.0, 5.0, 6.0]


# -- vtc: the paper's fairness bound -------------------------------------------------


def _service(result: Any, inst: Instance, weights: tuple[float, float]) -> Any:
    """Weighted service per tenant per iteration, as the counters charge it:
    ``w_in * s`` at a request's first prefill chunk, ``w_out`` per token emitted.

    Returns (boundaries, {tenant: cumulative service at each boundary})."""
    runs, members = result.runs, result.members
    w_in, w_out = weights
    rows = []  # (start_s, iterations, end_s)
    per_run: dict[int, dict[str, float]] = {}
    seen: set[int] = set()
    for m in members.itertuples():
        r, req = int(m.run), int(m.request)
        u = str(inst.tenant[req])
        gain = per_run.setdefault(r, {})
        if m.kind == "prefill":
            g = 0.0
            if req not in seen:
                seen.add(req)
                g += w_in * int(inst.prompt_tokens[req])
            # chunks here are whole prompts (budget >= prompt): one token emitted
            g += w_out
            gain[u] = gain.get(u, 0.0) + g
        else:
            gain[u] = gain.get(u, 0.0) + w_out  # per iteration of the run
    for run in runs.itertuples():
        rows.append((int(run.Index), float(run.start_s), int(run.iterations)))
    times = [0.0]
    total = {str(u): [0.0] for u in set(inst.tenant.tolist())}
    for r, start, n in sorted(rows, key=lambda x: x[1]):
        times_start = start
        for k in range(n):
            times.append(times_start + k + 1)  # unit-slot: 1 s per iteration
            for u in total:
                total[u].append(total[u][-1] + per_run.get(r, {}).get(u, 0.0))
    return np.array(times), {u: np.array(v) for u, v in total.items()}


def test_vtc_service_gap_of_backlogged_tenants_stays_within_2u() -> None:
    """Sheng et al.'s Theorem (VTC): for tenants f, g both backlogged during
    [t1, t2), |W_f(t1, t2) - W_g(t1, t2)| <= 2U, U = max(w_p * L_input, w_q * M),
    L_input the longest prompt and M the most tokens a batch holds.

    Overload case: tenant A sends 30 requests (s=1, o=8), then tenant B 30
    requests (s=6, o=2), all at t=0, unit-slot, KV capacity 16 tokens, at most 4
    sequences. U = max(1 * 6, 2 * 16) = 32. Every boundary while both tenants
    still have waiting requests is checked, over every interval [t1, t2). FCFS
    (all of A first) breaks the bound by far."""
    n = 30
    inst = Instance(
        [0.0] * (2 * n),
        [1] * n + [6] * n,
        [8] * n + [2] * n,
        tenant=["A"] * n + ["B"] * n,
    )
    profile = UNIT.replace(kv_capacity_tokens=16, max_num_seqs=4)
    bound = 2 * max(1 * 6, 2 * 16)
    gaps = {}
    for policy in ("vtc", "fcfs"):
        got = simulate(inst, profile, policy, log=True)
        if policy == "vtc":
            got = run_checked(inst, profile, policy)
        times, total = _service(got, inst, (1.0, 2.0))
        admitted = got.requests["admitted_s"].to_numpy()
        # both backlogged: before the last admission of either tenant
        end = min(admitted[:n].max(), admitted[n:].max())
        k = int(np.searchsorted(times, end, side="right"))
        diff = total["A"][:k] - total["B"][:k]
        # max over t1 < t2 of |diff(t2) - diff(t1)|
        gaps[policy] = float(diff.max() - diff.min())
    assert gaps["vtc"] <= bound, gaps
    assert gaps["fcfs"] > bound, gaps


def test_vtc_needs_tenants_and_valid_weights() -> None:
    inst = Instance([0.0], [3], [4])
    for engine in (simulate, simulate_naive):
        with pytest.raises(InputError, match="tenant") as err:
            engine(inst, UNIT, "vtc")
        assert err.value.field == "tenant"
    assert "vtc" in REGISTRY
    assert parse_policy("vtc:output_weight=4").params.output_weight == 4.0
    assert parse_policy("vtc").label == "vtc"
    for bad, field in (
        ("vtc:input_weight=-1", "input_weight"),
        ("vtc:output_weight=nan", "output_weight"),
        ("vtc:input_weight=0,output_weight=0", "output_weight"),
    ):
        with pytest.raises(InputError, match=field):
            parse_policy(bad)


# -- agreement with the reference engine on random instances ----------------------


def _random_case(rng: np.random.Generator, policy: str) -> Case:
    name = str(rng.choice(list(PROFILES)))
    instance = random_instance(
        rng,
        int(rng.integers(1, 16)),
        TIME_SCALE_S[name],
        exact_clock=name == "unit-slot",
    )
    tenants = int(rng.integers(1, 4))
    instance = instance.replace(
        tenant=[f"t{k}" for k in rng.integers(0, tenants, size=len(instance))]
    )
    profile = tight_profile(rng, PROFILES[name], instance)
    replicas = int(rng.choice([1, 2]))
    return Case(instance, profile, policy, replicas, None)


@pytest.mark.parametrize(
    "policy", ["vtc", "vtc:input_weight=0,output_weight=1", "vtc:output_weight=0"]
)
def test_random_instances_agree_with_the_reference_engine(policy: str) -> None:
    rng = np.random.default_rng([20250702, len(policy)])
    preempted = 0
    for _ in range(40):
        case = _random_case(rng, policy)
        naive, _ = agree_and_validate(case)
        preempted += int(naive.preemptions.sum() > 0)
    assert preempted >= 3, preempted


# -- wait: hand cases ----------------------------------------------------------------


def _oracle(arrival: list[float], prompt: list[int], output: list[int]) -> Instance:
    return predictors.oracle(Instance(arrival, prompt, output))


def test_wait_accumulates_the_threshold_before_admitting() -> None:
    """threshold 2, max_wait_s 10; A (a=0) and B (a=3), s=1, o=2.

    t=0: one waiting < 2 and A has waited 0 < 10: empty batch, wake at 10; the
    replica idles to B's arrival at 3. t=3: two waiting: both admitted, [3, 4)
    emits token 1 of each, [4, 5) token 2: both complete at 5. FCFS runs A
    [0, 2) and B [3, 5)."""
    inst = _oracle([0, 3], [1, 1], [2, 2])
    got = run_checked(inst, UNIT, "wait:threshold=2,max_wait_s=10")
    assert request_column(got, "admitted_s") == [3.0, 3.0]
    assert request_column(got, "completion_s") == [5.0, 5.0]
    assert request_column(run_checked(inst, UNIT, "fcfs"), "completion_s") == [2.0, 5.0]


def test_wait_flushes_after_max_wait_and_caps_each_batch() -> None:
    """threshold 2, max_wait_s 4.

    (a) One request (a=0, s=1, o=2): never two waiting; at t=4 it has waited
    4 s and admission opens (the engine wakes the idle replica at 4): it runs
    [4, 6).
    (b) Three requests at t=0 (s=1, o=1): three >= 2 waiting, but at most 2 per
    batch: R0, R1 run [0, 1). t=1: one waiting < 2, R2 has waited 1 < 4: wake
    at 4; R2 runs [4, 5)."""
    policy = "wait:threshold=2,max_wait_s=4"
    got = run_checked(_oracle([0], [1], [2]), UNIT, policy)
    assert request_column(got, "admitted_s") == [4.0]
    assert request_column(got, "completion_s") == [6.0]
    got = run_checked(_oracle([0, 0, 0], [1, 1, 1], [1, 1, 1]), UNIT, policy)
    assert request_column(got, "completion_s") == [1.0, 1.0, 5.0]


def test_wait_checks_the_known_lengths_kv_at_admission() -> None:
    """threshold 3, KV capacity 8 tokens; A (s=2, o=2), B (2, 3), C (2, 6) at 0.

    As in the mc-sf case: the predicted KV at A's completion (iteration 2) with
    all three is 3 + 3 + 3 = 9 > 8, so C waits; {A, B} fits (6, then 4).
    t=1: one waiting < 3, but C has waited 1 s >= max_wait_s (default 1), so
    the flush opens admission; loads with C: 3+3+2 = 8, 4+3 = 7, 7: C admitted at 1. No
    preemption, unlike fcfs-like admission of all three at 0."""
    inst = _oracle([0, 0, 0], [2, 2, 2], [2, 3, 6])
    got = run_checked(inst, UNIT.replace(kv_capacity_tokens=8), "wait:threshold=3")
    assert request_column(got, "admitted_s") == [0.0, 0.0, 1.0]
    assert request_column(got, "completion_s") == [2.0, 3.0, 7.0]
    assert sum(request_column(got, "preemptions")) == 0


def test_wait_parameters() -> None:
    assert parse_policy("wait:threshold=8").params.threshold == 8
    for bad, field in (
        ("wait:threshold=0", "threshold"),
        ("wait:max_wait_s=-1", "max_wait_s"),
        ("wait:max_wait_s=inf", "max_wait_s"),
    ):
        with pytest.raises(InputError, match=field):
            parse_policy(bad)
    inst = Instance([0.0], [3], [4])
    with pytest.raises(InputError, match=r"predictors\.oracle"):
        simulate(inst, UNIT, "wait")


def _random_wait_case(rng: np.random.Generator, policy: str) -> Case:
    name = str(rng.choice(list(PROFILES)))
    instance = random_instance(
        rng,
        int(rng.integers(1, 16)),
        TIME_SCALE_S[name],
        exact_clock=name == "unit-slot",
    )
    if rng.random() < 0.5:
        instance = predictors.lognormal_noise(instance, 0.5, int(rng.integers(1 << 30)))
    profile = tight_profile(rng, PROFILES[name], instance)
    wait_s = TIME_SCALE_S[name] * float(rng.choice([0.0, 1.0, 5.0, 50.0]))
    policy = f"{policy}:threshold={int(rng.integers(1, 6))},max_wait_s={wait_s}"
    return Case(instance, profile, policy, int(rng.choice([1, 2])), None)


@pytest.mark.parametrize("policy", ["wait"])
def test_wait_random_instances_agree_with_the_reference_engine(policy: str) -> None:
    rng = np.random.default_rng([20250703, len(policy)])
    for _ in range(80):
        case = _random_wait_case(rng, policy)
        agree_and_validate(case)
