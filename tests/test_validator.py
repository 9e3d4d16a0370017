"""The schedule validator on hand-built iteration logs, one broken rule at a time.

Every log here is written out by hand from the iteration model (DESIGN.md), with
its expected times and metrics worked out in the comments; each mutation breaks
one rule and the test checks that the validator names it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lsched.instance import Instance
from lsched.metrics import schedule_metrics, tbt_metrics
from lsched.profile import DeploymentProfile, load_profile
from lsched.validator import (
    MAX_VIOLATIONS,
    RULES,
    ValidationReport,
    validate_schedule,
)

RUNS = (
    "replica",
    "start_s",
    "end_s",
    "iterations",
    "prefill_tokens",
    "prefill_attention",
    "decode_steps",
    "kv_read_tokens",
    "has_prefill",
    "kv_tokens",
)
MEMBERS = ("run", "request", "kind", "tokens", "processed_before")


class Log:
    """A hand-written iteration log (runs, members, preemptions)."""

    def __init__(
        self,
        runs: list[tuple[Any, ...]],
        members: list[tuple[Any, ...]],
        preemptions: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.runs = pd.DataFrame(runs, columns=list(RUNS)).rename_axis("run")
        self.members = pd.DataFrame(members, columns=list(MEMBERS))
        self.preemptions = pd.DataFrame(
            list(preemptions), columns=["run", "request"], dtype=np.int64
        )

    def with_run(self, run: int, **changes: Any) -> Log:
        copy = self.copy()
        for column, value in changes.items():
            copy.runs.loc[run, column] = value
        return copy

    def with_member(self, row: int, **changes: Any) -> Log:
        copy = self.copy()
        for column, value in changes.items():
            copy.members.loc[row, column] = value
        return copy

    def copy(self) -> Log:
        new = Log([], [])
        new.runs, new.members = self.runs.copy(), self.members.copy()
        new.preemptions = self.preemptions.copy()
        return new

    def validate(
        self,
        instance: Instance,
        profile: DeploymentProfile,
        replicas: int = 1,
        **kwargs: Any,
    ) -> ValidationReport:
        return validate_schedule(
            instance,
            profile,
            self.runs,
            self.members,
            self.preemptions,
            replicas=replicas,
            **kwargs,
        )


def unit(capacity: int, **limits: int) -> DeploymentProfile:
    return load_profile("unit-slot").replace(kv_capacity_tokens=capacity, **limits)


# -- case A: unit slots, two requests, a held decode run ----------------------------
#
# r0: a=0, s=2, o=5;  r1: a=0.5, s=1, o=2;  capacity M = 8 tokens (b = 1).
#   run 0 [0,1)  prefill r0 c=2          -> r0 token 1, KV r0=2            total 2
#   run 1 [1,2)  prefill r1 c=1, decode r0 -> r1 token 1, r0 token 2 (KV 3)  total 4
#   run 2 [2,3)  decode r0 (3->4), r1 (1->2) -> r0 token 3, r1 token 2: r1 done at 3
#                                                                           total 6
#   run 3 [3,5)  decode r0, 2 iterations (4->5->6) -> tokens 4, 5: r0 done at 5
#                KV after iteration 0: 5, after iteration 1: 6
# features: run 1 K = r0's 3 tokens; run 2 K = 4 + 2; run 3 K (first) = 5.


def case_a_instance(**columns: Any) -> Instance:
    return Instance([0.0, 0.5], [2, 1], [5, 2], **columns)


def case_a() -> Log:
    return Log(
        runs=[
            (0, 0.0, 1.0, 1, 2, 4, 0, 0, 1, 2),
            (0, 1.0, 2.0, 1, 1, 1, 1, 3, 1, 4),
            (0, 2.0, 3.0, 1, 0, 0, 2, 6, 0, 6),
            (0, 3.0, 5.0, 2, 0, 0, 1, 5, 0, 5),
        ],
        members=[
            (0, 0, "prefill", 2, 0),
            (1, 1, "prefill", 1, 0),
            (1, 0, "decode", 1, 2),
            (2, 0, "decode", 1, 3),
            (2, 1, "decode", 1, 1),
            (3, 0, "decode", 1, 4),
        ],
    )


def test_case_a_is_valid_with_hand_computed_metrics() -> None:
    instance = case_a_instance(ttft_deadline_s=[1.0, 1.0])
    report = case_a().validate(instance, unit(8))
    report.raise_if_invalid()
    assert report.ok
    assert report.first_token_s.tolist() == [1.0, 2.0]
    assert report.completion_s.tolist() == [5.0, 3.0]
    m = report.metrics
    assert m["num_completed"] == 2
    assert m["makespan_s"] == 5.0
    assert m["throughput_tok_s"] == pytest.approx(7 / 5)
    assert m["busy_fraction"] == pytest.approx(1.0)  # 5 unit iterations in 5 s
    # KV after each iteration: 2, 4, 6, 5, 6 tokens, each for 1 s, of 8 tokens
    assert m["kv_utilization"] == pytest.approx(23 / (8 * 5))
    # TTFT 1 and 1.5; E2E 5 and 2.5; TPOT (5-1)/4 = 1 and (3-2)/1 = 1
    assert m["ttft_mean_s"] == pytest.approx(1.25)
    assert m["ttft_p50_s"] == pytest.approx(1.25)
    assert m["ttft_p90_s"] == pytest.approx(1.0 + 0.9 * 0.5)
    assert m["ttft_p99_s"] == pytest.approx(1.0 + 0.99 * 0.5)
    assert m["e2e_mean_s"] == pytest.approx(3.75)
    assert m["tpot_mean_s"] == pytest.approx(1.0)
    assert m["normalized_latency_mean_s"] == pytest.approx((5 / 5 + 2.5 / 2) / 2)
    assert m["slo_attainment"] == 0.5  # r1's TTFT 1.5 misses its 1.0 deadline
    assert (m["preemptions"], m["recomputed_tokens"]) == (0, 0)
    records = report.requests
    assert records is not None
    assert records["admitted_s"].tolist() == [0.0, 1.0]
    assert records["replica"].tolist() == [0, 0]


def test_metrics_have_the_keys_and_values_of_lsched_metrics() -> None:
    instance = case_a_instance(ttft_deadline_s=[1.0, 1.0], tpot_deadline_s=[2.0, 0.5])
    report = case_a().validate(instance, unit(8))
    reference = schedule_metrics(
        instance,
        [1.0, 2.0],
        [5.0, 3.0],
        busy_s=5.0,
        kv_token_seconds=23.0,
        kv_capacity_tokens=8,
    )
    # a log has every token's time: the validator adds Mooncake's TBT metrics
    assert set(report.metrics) == set(reference) | set(tbt_metrics([], []))
    for key, value in reference.items():
        assert report.metrics[key] == pytest.approx(value, nan_ok=True), key


def rules_of(report: ValidationReport) -> set[str]:
    assert not report.ok
    assert report.rules <= set(RULES)
    return set(report.rules)


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        # a request still running after its last token: r0 decodes 3 iterations
        (lambda log: log.with_run(3, iterations=3, end_s=6.0), "token-conservation"),
        # one iteration too few: r0 emits 4 of its 5 tokens and never completes
        (lambda log: log.with_run(3, iterations=1, end_s=4.0), "token-conservation"),
        # run 2 starts before run 1 ends
        (lambda log: log.with_run(2, start_s=1.5, end_s=2.5), "run-order"),
        (lambda log: log.with_run(3, end_s=5.5), "run-duration"),
        (lambda log: log.with_run(1, prefill_tokens=2), "run-features"),
        (lambda log: log.with_run(2, kv_read_tokens=5), "run-features"),
        (lambda log: log.with_run(0, has_prefill=0), "run-features"),
        (lambda log: log.with_run(3, kv_tokens=6), "kv-tokens"),
        (lambda log: log.with_member(3, processed_before=2), "processed-before"),
        # r0's prompt has 2 tokens: a 3-token chunk overshoots
        (lambda log: log.with_member(0, tokens=3), "prefill-chunk"),
        (lambda log: log.with_member(0, tokens=0), "prefill-chunk"),
        # a prefill run with two iterations
        (lambda log: log.with_run(0, iterations=2, end_s=1.0), "run-shape"),
        (lambda log: log.with_member(5, tokens=2), "run-shape"),
    ],
)
def test_case_a_mutations(mutate: Any, rule: str) -> None:
    report = mutate(case_a()).validate(case_a_instance(), unit(8))
    assert rule in rules_of(report), report.violations


def test_preempting_a_waiting_request_is_rejected() -> None:
    log = case_a()
    log.preemptions = pd.DataFrame({"run": [1], "request": [1]})  # r1 not admitted
    report = log.validate(case_a_instance(), unit(8))
    assert rules_of(report) == {"preemption"}
    assert report.violations[0].run == 1
    assert report.violations[0].request == 1


def test_kv_over_capacity() -> None:
    # run 2 holds 6 tokens, run 3 up to 6: over a capacity of 5
    report = case_a().validate(case_a_instance(), unit(5))
    assert rules_of(report) == {"kv-capacity"}
    assert [v.run for v in report.violations] == [2, 3]


def test_batch_limits() -> None:
    too_many_seqs = case_a().validate(case_a_instance(), unit(8, max_num_seqs=1))
    assert rules_of(too_many_seqs) == {"max-num-seqs"}
    assert [v.run for v in too_many_seqs.violations] == [1, 2]  # two members each
    # prefill tokens + decode steps: runs 0, 1, 2 have 2 each
    too_many_tokens = case_a().validate(
        case_a_instance(), unit(8, max_num_batched_tokens=1)
    )
    assert rules_of(too_many_tokens) == {"max-num-batched-tokens"}
    assert [v.run for v in too_many_tokens.violations] == [0, 1, 2]


def test_start_before_arrival() -> None:
    # r1 arriving at 1.5 cannot be prefilled in run 1, which starts at 1
    report = case_a().validate(Instance([0.0, 1.5], [2, 1], [5, 2]), unit(8))
    assert rules_of(report) == {"arrival"}
    assert (report.violations[0].run, report.violations[0].request) == (1, 1)


def test_request_on_two_replicas() -> None:
    report = case_a().with_run(3, replica=1).validate(case_a_instance(), unit(8), 2)
    assert "single-replica" in rules_of(report)


def test_wrong_claimed_records_and_metrics() -> None:
    instance = case_a_instance()
    good = case_a().validate(instance, unit(8))
    assert good.requests is not None
    claimed = good.requests.copy()
    claimed.loc[1, "completion_s"] = 3.5
    report = case_a().validate(
        instance, unit(8), requests=claimed, metrics=good.metrics
    )
    assert rules_of(report) == {"request-record"}
    assert report.violations[0].request == 1
    assert report.violations[0].message.startswith("completion_s = 3.5")
    metrics = dict(good.metrics, makespan_s=4.0)
    report = case_a().validate(instance, unit(8), metrics=metrics)
    assert rules_of(report) == {"metric"}
    assert "makespan_s" in report.violations[0].message
    # a metric the claim lacks is reported too; NaN equals NaN (no deadlines here)
    assert math.isnan(good.metrics["slo_attainment"])
    del metrics["ttft_p99_s"]
    metrics["makespan_s"] = 5.0
    report = case_a().validate(instance, unit(8), metrics=metrics)
    assert rules_of(report) == {"metric"}
    assert "ttft_p99_s" in report.violations[0].message


def test_claimed_records_within_rtol_pass() -> None:
    instance = case_a_instance()
    good = case_a().validate(instance, unit(8))
    assert good.requests is not None
    claimed = good.requests.copy()
    claimed["completion_s"] *= 1 + 1e-12
    report = case_a().validate(instance, unit(8), requests=claimed)
    assert report.ok


def test_missing_column_is_a_schema_violation() -> None:
    log = case_a()
    log.runs = log.runs.drop(columns="kv_tokens")
    report = log.validate(case_a_instance(), unit(8))
    assert rules_of(report) == {"schema"}
    assert report.metrics == {}


def test_unknown_request_is_a_schema_violation() -> None:
    report = case_a().with_member(0, request=7).validate(case_a_instance(), unit(8))
    assert rules_of(report) == {"schema"}


def test_an_empty_log_completes_nothing() -> None:
    report = Log([], []).validate(case_a_instance(), unit(8))
    assert rules_of(report) == {"token-conservation"}
    assert [v.request for v in report.violations] == [0, 1]
    assert report.metrics["num_completed"] == 0
    assert np.isnan(report.completion_s).all()


def test_raise_if_invalid_lists_violations() -> None:
    report = case_a().validate(case_a_instance(), unit(5))
    with pytest.raises(AssertionError, match=r"kv-capacity.*run 2"):
        report.raise_if_invalid()


# -- case B: unit slots, a recompute preemption and a chunked re-prefill -----------
#
# r0: a=0, s=2, o=3;  r1: a=0, s=2, o=2;  M = 5.
#   run 0 [0,1)  prefill r0 c=2, r1 c=2     -> both emit token 1          KV 4
#   run 1 [1,2)  preempt r1 (frees 2); decode r0 (2->3, token 2)          KV 3
#   run 2 [2,3)  decode r0 (3->4, token 3): r0 done at 3                  KV 4
#   run 3 [3,4)  prefill r1 c=2 of target s + e = 3 (no token)            KV 2
#   run 4 [4,5)  prefill r1 c=1 (2->3): emits token 2, r1 done at 5       KV 3
# Q: run 0 = 2*2 + 2*2 = 8; run 3 = 2*(0+2) = 4; run 4 = 1*(2+1) = 3.


def case_b_instance() -> Instance:
    return Instance([0.0, 0.0], [2, 2], [3, 2])


def case_b() -> Log:
    return Log(
        runs=[
            (0, 0.0, 1.0, 1, 4, 8, 0, 0, 1, 4),
            (0, 1.0, 2.0, 1, 0, 0, 1, 3, 0, 3),
            (0, 2.0, 3.0, 1, 0, 0, 1, 4, 0, 4),
            (0, 3.0, 4.0, 1, 2, 4, 0, 0, 1, 2),
            (0, 4.0, 5.0, 1, 1, 3, 0, 0, 1, 3),
        ],
        members=[
            (0, 0, "prefill", 2, 0),
            (0, 1, "prefill", 2, 0),
            (1, 0, "decode", 1, 2),
            (2, 0, "decode", 1, 3),
            (3, 1, "prefill", 2, 0),
            (4, 1, "prefill", 1, 2),
        ],
        preemptions=[(1, 1)],
    )


def test_case_b_preemption_and_chunked_reprefill() -> None:
    report = case_b().validate(case_b_instance(), unit(5))
    report.raise_if_invalid()
    assert report.first_token_s.tolist() == [1.0, 1.0]
    assert report.completion_s.tolist() == [3.0, 5.0]
    assert report.requests is not None
    assert report.requests["preemptions"].tolist() == [0, 1]
    assert report.requests["recomputed_tokens"].tolist() == [0, 2]
    m = report.metrics
    assert (m["preemptions"], m["recomputed_tokens"]) == (1, 2)
    assert m["kv_utilization"] == pytest.approx((4 + 3 + 4 + 2 + 3) / (5 * 5))
    # TPOT: r0 (3 - 1) / 2 = 1, r1 (5 - 1) / 1 = 4
    assert m["tpot_mean_s"] == pytest.approx(2.5)
    assert m["tpot_p90_s"] == pytest.approx(1 + 0.9 * 3)
    assert m["throughput_tok_s"] == pytest.approx(5 / 5)


def test_case_b_mutations() -> None:
    instance, profile = case_b_instance(), unit(5)
    # without the preemption, r1 would hold its KV and re-prefill from 2 tokens
    log = case_b()
    log.preemptions = log.preemptions.iloc[:0]
    assert "processed-before" in rules_of(log.validate(instance, profile))
    # decoding r1 before its re-prefill reaches the target (2 of 3 tokens)
    log = case_b().with_member(5, kind="decode", tokens=1)
    assert "prefill-before-decode" in rules_of(log.validate(instance, profile))
    # r1's re-prefill target is s + e = 3 tokens: a first chunk of 4 overshoots
    log = case_b().with_member(4, tokens=4)
    assert "prefill-chunk" in rules_of(log.validate(instance, profile))
    # r0 has completed at 3: preempting it before run 3 is not allowed
    log = case_b()
    log.preemptions = pd.DataFrame({"run": [1, 3], "request": [1, 0]})
    assert rules_of(log.validate(instance, profile)) == {"preemption"}
    # a recomputed-token count that disagrees with the freed KV
    good = case_b().validate(instance, profile)
    assert good.requests is not None
    claimed = good.requests.copy()
    claimed.loc[1, "recomputed_tokens"] = 3
    report = case_b().validate(instance, profile, requests=claimed)
    assert rules_of(report) == {"request-record"}


# -- case C: Llama-2-70B (A100 TP4) cost model, blocks of 16, two replicas ----------
#
# replica 0: r0 (a=0, s=20, o=3)
#   run 0  prefill r0 c=20: P=20, Q=400                            KV 20 (2 blocks)
#   run 2  decode r0 x 2 iterations: K = 21, then 22; r0 done       KV 21, 22
# replica 1: r1 (a=0.01, s=10, o=2), r2 (a=0.01, s=16, o=3)
#   run 1  prefill r1 c=10, r2 c=16: P=26, Q=100+256              KV 26 (1+1 blocks)
#   run 3  decode r1 (10->11, done), r2 (16->17): D=2, K=28        KV 28 (1+2 blocks)
#   run 4  decode r2 (17->18, done): K=18                          KV 18 (2 blocks)


def llama(capacity_tokens: int) -> DeploymentProfile:
    return load_profile("llama2-70b-a100-tp4").replace(
        kv_capacity_tokens=capacity_tokens
    )


def seconds(profile: DeploymentProfile, P: int, Q: int, D: int, K: int) -> float:
    """w . phi for the profile's single affine piece (written out)."""
    (w,) = profile.iteration_time.regimes[0]
    assert profile.iteration_time.overhead_s == 0.0
    return w[0] + w[1] * P + w[2] * Q + w[3] * D + w[4] * K + w[5] * (P > 0)


def case_c(profile: DeploymentProfile) -> tuple[Log, dict[str, float]]:
    t0 = seconds(profile, 20, 400, 0, 0)
    t2 = seconds(profile, 0, 0, 1, 21) + seconds(profile, 0, 0, 1, 22)
    t1 = seconds(profile, 26, 356, 0, 0)
    t3 = seconds(profile, 0, 0, 2, 28)
    t4 = seconds(profile, 0, 0, 1, 18)
    s1 = 0.01
    log = Log(
        runs=[
            (0, 0.0, t0, 1, 20, 400, 0, 0, 1, 20),
            (1, s1, s1 + t1, 1, 26, 356, 0, 0, 1, 26),
            (0, t0, t0 + t2, 2, 0, 0, 1, 21, 0, 21),
            (1, s1 + t1, s1 + t1 + t3, 1, 0, 0, 2, 28, 0, 28),
            (1, s1 + t1 + t3, s1 + t1 + t3 + t4, 1, 0, 0, 1, 18, 0, 18),
        ],
        members=[
            (0, 0, "prefill", 20, 0),
            (1, 1, "prefill", 10, 0),
            (1, 2, "prefill", 16, 0),
            (2, 0, "decode", 1, 20),
            (3, 1, "decode", 1, 10),
            (3, 2, "decode", 1, 16),
            (4, 2, "decode", 1, 17),
        ],
    )
    times = {"t0": t0, "t1": t1, "t2": t2, "t3": t3, "t4": t4, "s1": s1}
    return log, times


def case_c_instance() -> Instance:
    return Instance([0.0, 0.01, 0.01], [20, 10, 16], [3, 2, 3])


def test_case_c_real_cost_model_two_replicas() -> None:
    profile = llama(48)  # 3 blocks of 16 per replica
    log, t = case_c(profile)
    report = log.validate(case_c_instance(), profile, replicas=2)
    report.raise_if_invalid()
    first = [t["t0"], t["s1"] + t["t1"], t["s1"] + t["t1"]]
    done = [t["t0"] + t["t2"], t["s1"] + t["t1"] + t["t3"], log.runs.end_s[4]]
    assert report.first_token_s.tolist() == pytest.approx(first)
    assert report.completion_s.tolist() == pytest.approx(done)
    makespan = max(done)
    m = report.metrics
    assert m["makespan_s"] == pytest.approx(makespan)
    busy = t["t0"] + t["t1"] + t["t2"] + t["t3"] + t["t4"]
    assert m["busy_fraction"] == pytest.approx(busy / (2 * makespan))
    # KV x time per iteration; run 2's two iterations hold 21 and 22 tokens
    it21 = seconds(profile, 0, 0, 1, 21)
    kv_seconds = (
        20 * t["t0"]
        + 21 * it21
        + 22 * (t["t2"] - it21)
        + 26 * t["t1"]
        + 28 * t["t3"]
        + 18 * t["t4"]
    )
    assert m["kv_utilization"] == pytest.approx(kv_seconds / (2 * 48 * makespan))
    assert report.requests is not None
    assert report.requests["replica"].tolist() == [0, 1, 1]
    reference = schedule_metrics(
        case_c_instance(),
        first,
        done,
        busy_s=busy,
        kv_token_seconds=kv_seconds,
        kv_capacity_tokens=48,
        replicas=2,
    )
    for key, value in reference.items():
        assert m[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key


def test_case_c_counts_blocks_not_tokens() -> None:
    # 32 tokens = 2 blocks: run 3 holds 28 tokens but 1 + 2 = 3 blocks
    profile = llama(32)
    log, _ = case_c(profile)
    report = log.validate(case_c_instance(), profile, replicas=2)
    assert rules_of(report) == {"kv-capacity"}
    assert [v.run for v in report.violations] == [3]


def test_case_c_wrong_duration_and_k() -> None:
    profile = llama(48)
    log, t = case_c(profile)
    # the held run timed as two iterations of K = 21 (K not advanced)
    end = t["t0"] + 2 * seconds(profile, 0, 0, 1, 21)
    report = log.with_run(2, end_s=end).validate(case_c_instance(), profile, 2)
    assert rules_of(report) == {"run-duration"}
    report = log.with_run(2, kv_read_tokens=22).validate(case_c_instance(), profile, 2)
    assert rules_of(report) == {"run-features"}


# -- larger logs --------------------------------------------------------------------


def sequential_log(instance: Instance) -> Log:
    """One request at a time on unit slots: a prefill run, then one held decode run."""
    runs, members = [], []
    now = 0.0
    for i, (a, s, o) in enumerate(
        zip(
            instance.arrival_s.tolist(),
            instance.prompt_tokens.tolist(),
            instance.output_tokens.tolist(),
            strict=True,
        )
    ):
        now = max(now, a)
        members.append((len(runs), i, "prefill", s, 0))
        runs.append((0, now, now + 1, 1, s, s * s, 0, 0, 1, s))
        now += 1
        if o > 1:
            members.append((len(runs), i, "decode", 1, s))
            runs.append((0, now, now + o - 1, o - 1, 0, 0, 1, s + 1, 0, s + 1))
            now += o - 1
    return Log(runs, members)


def test_many_runs_and_the_violation_cap() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    instance = Instance(
        np.sort(rng.uniform(0, 5000, n)),
        rng.integers(2, 50, n),  # >= 2: over a 1-token capacity
        rng.integers(1, 40, n),
    )
    log = sequential_log(instance)
    report = log.validate(instance, unit(100))
    report.raise_if_invalid()
    # every request alone: first token 1 s after it starts, then one per second
    np.testing.assert_allclose(
        report.completion_s - report.first_token_s, instance.output_tokens - 1
    )
    assert np.all(report.first_token_s - instance.arrival_s >= 1.0)
    # a capacity of 1 token: every run is over it; only the first 100 are kept
    tight = log.validate(instance, unit(1))
    assert len(tight.violations) == MAX_VIOLATIONS
    assert tight.suppressed == len(log.runs) - MAX_VIOLATIONS
    with pytest.raises(AssertionError, match=f"{len(log.runs)} rule check"):
        tight.raise_if_invalid()


# -- the engine's logs --------------------------------------------------------------

AZURE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_code_2023.csv"
)


def engine_report(
    instance: Instance, profile: DeploymentProfile, policy: str, replicas: int
) -> tuple[Any, ValidationReport]:
    from lsched.evaluator import simulate

    result = simulate(instance, profile, policy, replicas=replicas, log=True)
    report = validate_schedule(
        instance,
        profile,
        result.runs,
        result.members,
        result.preemptions,
        replicas=replicas,
        requests=result.requests,
        metrics=result.metrics,
    )
    return result, report


def random_instance(
    rng: np.random.Generator, n: int, prompt: int, output: int
) -> Instance:
    return Instance(
        np.sort(rng.uniform(0, n / 2, n)),
        rng.integers(1, prompt, n),
        rng.integers(1, output, n),
    )


@pytest.mark.parametrize("replicas", [1, 2])
def test_engine_logs_unit_slots_with_tight_memory(replicas: int) -> None:
    preemptions = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        instance = random_instance(rng, int(rng.integers(5, 40)), 30, 30)
        peak = int((instance.prompt_tokens + instance.output_tokens).max())
        profile = unit(
            peak + int(rng.integers(0, 30)),  # room for a few requests only
            max_num_batched_tokens=int(rng.integers(8, 64)),
            max_num_seqs=int(rng.integers(2, 8)),
        )
        result, report = engine_report(instance, profile, "fcfs", replicas)
        report.raise_if_invalid()
        preemptions += len(result.preemptions)
    assert preemptions > 0  # the memory was tight enough to exercise preemption


@pytest.mark.parametrize("policy", ["fcfs", "fcfs:chunked=false"])
def test_engine_logs_llama_blocks_of_16(policy: str) -> None:
    preemptions = 0
    for seed in range(12):
        rng = np.random.default_rng(1000 + seed)
        # prompt + output < 4096 = max_num_batched_tokens: a whole re-prefill fits
        instance = random_instance(rng, int(rng.integers(5, 50)), 3000, 500)
        peak = int((instance.prompt_tokens + instance.output_tokens).max())
        blocks = -(-peak // 16) + int(rng.integers(0, 200))
        profile = llama(16 * blocks)
        result, report = engine_report(instance, profile, policy, 1 + seed % 3)
        report.raise_if_invalid()
        preemptions += len(result.preemptions)
    assert preemptions > 0


def test_engine_log_mutations_are_caught() -> None:
    rng = np.random.default_rng(3)
    instance = random_instance(rng, 30, 30, 30)
    profile = unit(70, max_num_batched_tokens=40, max_num_seqs=6)
    result, report = engine_report(instance, profile, "fcfs", 1)
    report.raise_if_invalid()
    assert len(result.preemptions) > 0
    # forget a preemption: the request seems to keep its KV
    dropped = validate_schedule(
        instance,
        profile,
        result.runs,
        result.members,
        result.preemptions.iloc[1:],
        replicas=1,
    )
    assert "processed-before" in rules_of(dropped)
    # claim one request finished a hundredth of a second earlier
    claimed = result.requests.copy()
    claimed.loc[5, "completion_s"] -= 0.01
    report = validate_schedule(
        instance,
        profile,
        result.runs,
        result.members,
        result.preemptions,
        replicas=1,
        requests=claimed,
    )
    assert rules_of(report) == {"request-record"}


@pytest.mark.skipif(not AZURE.is_file(), reason=f"real trace not found at {AZURE}")
def test_engine_log_azure_trace() -> None:
    from lsched.traces import read_trace

    instance, _ = read_trace(AZURE, limit=300)
    profile = load_profile("llama2-70b-a100-tp4")
    result, report = engine_report(instance, profile, "fcfs", 1)
    report.raise_if_invalid()
    # the prompts over max_model_len (4,096) are rejected at arrival
    fits = int((instance.prompt_tokens <= profile.max_model_len).sum())
    assert 0 < fits < 300
    rejected = result.metrics["num_rejected"]
    assert report.metrics["num_completed"] == fits == 300 - rejected
    assert result.iterations > len(result.runs)  # held decode runs were expanded


# -- case L: max_model_len ----------------------------------------------------------
#
# unit slots, capacity 8, max_model_len L = 5 (vLLM V0: a prompt over L is never
# scheduled; a sequence stops once longer than L, after min(o, L - s + 1) tokens).
# r0: a=0, s=2, o=5 -> emits min(5, 5 - 2 + 1) = 4 tokens, 1 cut;
# r1: a=0, s=6, o=1 -> 6 > 5: rejected at arrival, never runs.
#   run 0 [0,1)  prefill r0 c=2 -> token 1, KV 2
#   run 1 [1,4)  decode r0, 3 iterations (2->3->4->5) -> tokens 2, 3, 4: done at 4
#                (its KV peaks at 5 = L tokens)


def case_l_instance() -> Instance:
    return Instance([0.0, 0.0], [2, 6], [5, 1])


def case_l() -> Log:
    return Log(
        runs=[
            (0, 0.0, 1.0, 1, 2, 4, 0, 0, 1, 2),
            (0, 1.0, 4.0, 3, 0, 0, 1, 3, 0, 3),
        ],
        members=[(0, 0, "prefill", 2, 0), (1, 0, "decode", 1, 2)],
    )


def case_l_records(**changes: list[Any]) -> pd.DataFrame:
    """The records the evaluator writes for case L."""
    records = pd.DataFrame(
        {
            "replica": [0, -1],
            "admitted_s": [0.0, math.nan],
            "first_token_s": [1.0, math.nan],
            "completion_s": [4.0, math.nan],
            "preemptions": [0, 0],
            "recomputed_tokens": [0, 0],
            "rejected": ["", "prompt 6 tokens > max_model_len 5"],
            "truncated_tokens": [1, 0],
        }
    )
    for column, values in changes.items():
        records[column] = values
    return records


def case_l_metrics(**changes: float) -> dict[str, float]:
    """Case L's metrics as the evaluator claims them (its counts included)."""
    own = case_l().validate(case_l_instance(), unit(8, max_model_len=5)).metrics
    return own | {"num_truncated": 1.0, "num_rejected": 1.0} | changes


def test_case_l_is_valid_with_the_cut_output() -> None:
    profile = unit(8, max_model_len=5)
    report = case_l().validate(
        case_l_instance(),
        profile,
        requests=case_l_records(),
        metrics=case_l_metrics(),
    )
    report.raise_if_invalid()
    m = report.metrics
    # over the served request only: 4 tokens emitted in 4 s
    assert m["num_completed"] == 1
    assert m["throughput_tok_s"] == 1.0
    assert m["tpot_mean_s"] == 1.0  # (4 - 1) / (4 - 1)
    assert report.completion_s.tolist()[0] == 4.0
    # the same log where L does not bind: r0 must emit its 5 tokens, r1 must run
    wide = case_l().validate(case_l_instance(), unit(8))
    assert rules_of(wide) == {"token-conservation"}


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        # r0 decodes past L: a fourth decode step emits a fifth token
        (lambda log: log.with_run(1, iterations=4, end_s=5.0), "token-conservation"),
        # r0 stops one token early
        (lambda log: log.with_run(1, iterations=2, end_s=3.0), "token-conservation"),
    ],
)
def test_case_l_mutations(mutate: Any, rule: str) -> None:
    report = mutate(case_l()).validate(case_l_instance(), unit(8, max_model_len=5))
    assert rule in rules_of(report), report.violations


def test_case_l_a_prompt_over_l_that_runs() -> None:
    """r1 (prompt 6 > L = 5) prefilled at [4, 5): it is served, which it must
    not be."""
    log = case_l()
    log.runs.loc[2] = (0, 4.0, 5.0, 1, 6, 36, 0, 0, 1, 6)
    log.members.loc[2] = (2, 1, "prefill", 6, 0)
    report = log.validate(case_l_instance(), unit(8, max_model_len=5))
    assert rules_of(report) == {"max-model-len"}
    assert "prompt 6 tokens > max_model_len 5" in str(report.violations[0])


@pytest.mark.parametrize(
    ("records", "metrics"),
    [
        (case_l_records(truncated_tokens=[0, 0]), {}),  # the cut token unclaimed
        (case_l_records(truncated_tokens=[1, 4]), {}),  # a rejected one cut
        (case_l_records(), case_l_metrics(num_truncated=0.0)),
        # r0 (prompt 2) said rejected for length: it fits
        (case_l_records(rejected=["prompt 2 tokens > max_model_len 5", ""]), {}),
    ],
)
def test_case_l_wrong_claims(records: pd.DataFrame, metrics: dict[str, float]) -> None:
    report = case_l().validate(
        case_l_instance(),
        unit(8, max_model_len=5),
        requests=records,
        metrics=metrics or None,
    )
    assert rules_of(report) == {"max-model-len"}, report.violations


def test_cluster_records_of_a_length_rejection_are_checked() -> None:
    """On an evaluator run (two replicas, L = 5): a request too long claimed as
    served, and one that fits claimed as rejected for length, are caught."""
    from dataclasses import replace

    from lsched.cluster import Cluster
    from lsched.evaluator import simulate_cluster
    from lsched.policies import parse_policy
    from lsched.routers import parse_router
    from lsched.validator import validate_cluster

    profile = unit(16, max_model_len=5)
    instance = Instance([0.0, 0.0, 1.0], [2, 6, 3], [5, 1, 4])
    cluster = Cluster.colocated(
        profile, parse_policy("fcfs"), 2, parse_router("round-robin")
    )
    result = simulate_cluster(instance, cluster, log=True)
    assert result.requests["rejected"].tolist()[1].endswith("max_model_len 5")
    assert result.requests["truncated_tokens"].tolist() == [1, 0, 1]
    validate_cluster(instance, cluster, result).raise_if_invalid()
    served = result.requests.copy()
    served.loc[1, ["replica", "rejected"]] = [1, ""]  # s = 6 > 5 but served
    report = validate_cluster(instance, cluster, replace(result, requests=served))
    assert "max-model-len" in rules_of(report)
    fits = result.requests.copy()
    fits.loc[2, "rejected"] = "prompt 3 tokens > max_model_len 5"
    report = validate_cluster(instance, cluster, replace(result, requests=fits))
    assert "max-model-len" in rules_of(report)
    cut = result.requests.copy()
    cut.loc[2, "truncated_tokens"] = 0
    report = validate_cluster(instance, cluster, replace(result, requests=cut))
    assert rules_of(report) == {"max-model-len"}
