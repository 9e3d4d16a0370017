"""Metrics on a hand-computed two-request schedule."""

from __future__ import annotations

import math

import pytest

from lsched import Instance
from lsched.metrics import request_metrics, schedule_metrics


def two_requests(**deadlines) -> Instance:
    # request 0: a=0, o=3; request 1: a=1, o=1
    return Instance([0.0, 1.0], [4, 2], [3, 1], **deadlines)


def test_per_request_values() -> None:
    per = request_metrics(two_requests(), [0.5, 2.0], [2.5, 2.0])
    assert per["ttft_s"].tolist() == [0.5, 1.0]
    assert per["e2e_s"].tolist() == [2.5, 1.0]
    assert per["tpot_s"][0] == pytest.approx((2.5 - 0.5) / 2)
    assert math.isnan(per["tpot_s"][1])  # one output token: no TPOT
    assert per["normalized_latency_s"].tolist() == [2.5 / 3, 1.0]


def test_schedule_values() -> None:
    m = schedule_metrics(
        two_requests(),
        [0.5, 2.0],
        [2.5, 2.0],
        busy_s=2.0,
        kv_token_seconds=10.0,
        kv_capacity_tokens=8,
        replicas=2,
        preemptions=1,
        recomputed_tokens=5,
    )
    assert m["makespan_s"] == 2.5
    assert m["throughput_tok_s"] == pytest.approx(4 / 2.5)
    assert m["busy_fraction"] == pytest.approx(2.0 / (2 * 2.5))
    assert m["kv_utilization"] == pytest.approx(10.0 / (2 * 8 * 2.5))
    assert m["ttft_mean_s"] == pytest.approx(0.75)
    assert m["ttft_p50_s"] == pytest.approx(0.75)
    assert m["ttft_p99_s"] == pytest.approx(0.5 + 0.99 * 0.5)
    assert m["tpot_mean_s"] == pytest.approx(1.0)  # only request 0 has a TPOT
    assert m["num_completed"] == 2
    assert (m["preemptions"], m["recomputed_tokens"]) == (1, 5)
    assert math.isnan(m["slo_attainment"])  # no deadlines given


def test_slo_attainment_counts_requests_meeting_every_deadline() -> None:
    inst = two_requests(ttft_deadline_s=[0.6, 0.9], tpot_deadline_s=[1.0, 0.01])
    m = schedule_metrics(
        inst,
        [0.5, 2.0],
        [2.5, 2.0],
        busy_s=1,
        kv_token_seconds=0,
        kv_capacity_tokens=1,
    )
    # request 0: TTFT 0.5 <= 0.6, TPOT 1.0 <= 1.0 -> met; request 1: TTFT 1.0 > 0.9
    assert m["slo_attainment"] == 0.5
