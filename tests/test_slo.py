"""SLOs: parsing, deadlines on an instance, attainment hand-derived on four requests.

The four-request case runs on ``unit-slot`` (every iteration takes 1 s) under
``fcfs`` on one replica:

====  =====  ===  ===  =======================================  ====  ====
req   a      s    o    iterations                               f     c
====  =====  ===  ===  =======================================  ====  ====
r0    0      2    3    prefill [0, 1], decodes [1, 2], [2, 3]   1     3
r1    0.5    1    1    waits for the boundary at 1: [1, 2]      2     2
r2    0.5    1    2    prefill [1, 2], decode [2, 3]            2     3
r3    2.75   1    4    prefill [3, 4], decodes to 7             4     7
====  =====  ===  ===  =======================================  ====  ====

TTFT 1, 1.5, 1.5, 1.25; lsched's TPOT ``(c - f) / (o - 1)``: 1, none, 1, 1;
simdistserve's ``(c - f) / o``: 2/3, 0, 1/2, 3/4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import lsched
from lsched.cluster import Cluster
from lsched.errors import InputError
from lsched.evaluator import simulate_cluster
from lsched.instance import Instance
from lsched.metrics import DEFINITIONS, latencies, slo_attainment
from lsched.profile import load_profile
from lsched.routers import ClusterView, Reject
from lsched.slo import SLO, attainment, parse_slo

UNIT = load_profile("unit-slot")


def four() -> Instance:
    return Instance([0.0, 0.5, 0.5, 2.75], [2, 1, 1, 1], [3, 1, 2, 4], name="four")


@dataclass(frozen=True)
class ShortPromptsParams:
    max_prompt: int = 1


class ShortPrompts:
    """Replica 0 for every prompt of at most ``max_prompt`` tokens; rejects the rest."""

    def __init__(self, params: ShortPromptsParams) -> None:
        self.max_prompt = params.max_prompt

    def route(self, view: ClusterView) -> int | Reject:
        return 0 if view.prompt_tokens <= self.max_prompt else Reject("too long")


@pytest.fixture(scope="module", autouse=True)
def router() -> None:
    lsched.register_router(
        "test-slo-short", ShortPrompts, ShortPromptsParams, replace=True
    )


# -- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ttft=0.25,tpot=0.1", SLO(0.25, 0.1)),
        (" tpot = 0.1 , ttft = 0.25 ", SLO(0.25, 0.1)),
        ("ttft=250ms", SLO(ttft_s=0.25)),
        ("TPOT=0.1s", SLO(tpot_s=0.1)),
        ("ttft=4", SLO(ttft_s=4.0)),
    ],
)
def test_parse_slo_reads_seconds_and_milliseconds(text: str, expected: SLO) -> None:
    assert parse_slo(text) == expected


def test_slo_prints_as_it_is_parsed() -> None:
    slo = parse_slo("ttft=250ms,tpot=0.1")
    assert str(slo) == "ttft=0.25,tpot=0.1"
    assert parse_slo(str(slo)) == slo
    assert str(SLO(tpot_s=0.2)) == "tpot=0.2"


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ("", "slo", "expected ttft=SECONDS,tpot=SECONDS"),
        ("ttft", "slo", "expected key=value"),
        ("ttft=0.2,", "slo", "expected key=value"),
        ("ttft=", "slo", "expected key=value"),
        ("foo=1", "slo", "unknown key 'foo'; expected ttft and/or tpot"),
        ("ttft=1,ttft=2", "slo", "ttft is given twice"),
        ("ttft=abc", "slo.ttft", "got 'abc'; expected a finite number of seconds > 0"),
        ("tpot=-0.1", "slo.tpot", "got '-0.1'; expected a finite number"),
        ("tpot=0", "slo.tpot", "expected a finite number of seconds > 0"),
        ("ttft=inf", "slo.ttft", "expected a finite number"),
        ("ttft=nan", "slo.ttft", "expected a finite number"),
        ("ttft=5ms5", "slo.ttft", "got '5ms5'"),
    ],
)
def test_parse_slo_names_the_field_and_what_was_expected(
    text: str, field: str, needle: str
) -> None:
    with pytest.raises(InputError) as info:
        parse_slo(text)
    assert info.value.field == field
    assert needle in info.value.message


def test_an_option_names_its_parts_with_a_space() -> None:
    with pytest.raises(InputError) as info:
        parse_slo("tpot=x", field="--slo")
    assert info.value.field == "--slo tpot"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "slo"),
        ({"ttft_s": 0.0}, "ttft_s"),
        ({"tpot_s": -1}, "tpot_s"),
        ({"ttft_s": math.inf}, "ttft_s"),
        ({"ttft_s": "0.2"}, "ttft_s"),
        ({"tpot_s": True}, "tpot_s"),
    ],
)
def test_slo_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        SLO(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_slo_is_immutable() -> None:
    slo = SLO(0.25, 0.1)
    with pytest.raises(AttributeError):
        slo.ttft_s = 1.0  # type: ignore[misc]


# -- deadlines on an instance -----------------------------------------------------


def test_apply_fills_the_columns_and_keeps_the_trace_s_unless_overridden() -> None:
    bare = four()
    both = SLO(0.25, 0.1).apply(bare)
    assert both.ttft_deadline_s.tolist() == [0.25] * 4
    assert both.tpot_deadline_s.tolist() == [0.1] * 4
    assert bare.ttft_deadline_s is None  # the input is untouched
    assert SLO(0.25, 0.1).kept(bare) == ()

    traced = bare.replace(ttft_deadline_s=[1.0, 2.0, 3.0, 4.0])
    kept = SLO(0.25, 0.1).apply(traced)
    assert kept.ttft_deadline_s.tolist() == [1.0, 2.0, 3.0, 4.0]  # the trace's
    assert kept.tpot_deadline_s.tolist() == [0.1] * 4  # filled
    assert SLO(0.25, 0.1).kept(traced) == ("ttft_deadline_s",)
    replaced = SLO(0.25, 0.1).apply(traced, override=True)
    assert replaced.ttft_deadline_s.tolist() == [0.25] * 4
    # a column the SLO does not name stays as the trace has it
    assert SLO(tpot_s=0.1).apply(traced, override=True).ttft_deadline_s.tolist() == [
        1.0,
        2.0,
        3.0,
        4.0,
    ]
    assert SLO(ttft_s=9.0).apply(traced) is traced  # nothing to change


# -- attainment -------------------------------------------------------------------


def test_the_schedule_is_the_hand_derived_one() -> None:
    result = simulate_cluster(four(), Cluster.colocated(UNIT, "fcfs", 1))
    assert result.requests["first_token_s"].tolist() == [1.0, 2.0, 2.0, 4.0]
    assert result.requests["completion_s"].tolist() == [3.0, 2.0, 3.0, 7.0]
    ttft, tpot = latencies(four(), [1.0, 2.0, 2.0, 4.0], [3.0, 2.0, 3.0, 7.0])
    assert ttft.tolist() == [1.0, 1.5, 1.5, 1.25]
    assert tpot[[0, 2, 3]].tolist() == [1.0, 1.0, 1.0] and math.isnan(tpot[1])
    _, tpot = latencies(
        four(), [1.0, 2.0, 2.0, 4.0], [3.0, 2.0, 3.0, 7.0], "simdistserve"
    )
    np.testing.assert_allclose(tpot, [2 / 3, 0.0, 0.5, 0.75])


def test_attainment_of_ttft_tpot_and_both_by_hand() -> None:
    slo = SLO(ttft_s=1.3, tpot_s=0.8)
    instance = slo.apply(four())
    result = simulate_cluster(instance, Cluster.colocated(UNIT, "fcfs", 1))
    # TTFT <= 1.3: r0 (1) and r3 (1.25). TPOT <= 0.8: only r1, which has no TPOT.
    # Both: none (r0 and r3 miss TPOT, r1 misses TTFT).
    assert attainment(instance, result) == (0.5, 0.25, 0.0)
    assert result.metrics["slo_attainment_ttft"] == 0.5
    assert result.metrics["slo_attainment_tpot"] == 0.25
    assert result.metrics["slo_attainment"] == 0.0
    # simdistserve's TPOT (2/3, 0, 1/2, 3/4) meets 0.8 everywhere: both = TTFT
    assert attainment(instance, result, definitions="simdistserve") == (0.5, 1.0, 0.5)
    # the SLO may be given here instead of on the instance
    assert attainment(four(), result, slo) == (0.5, 0.25, 0.0)


def test_a_missing_deadline_is_nan_and_both_is_the_other() -> None:
    result = simulate_cluster(four(), Cluster.colocated(UNIT, "fcfs", 1))
    ttft, tpot, both = attainment(four(), result, SLO(ttft_s=1.3))
    assert (ttft, both) == (0.5, 0.5) and math.isnan(tpot)
    assert all(math.isnan(v) for v in attainment(four(), result))
    assert math.isnan(result.metrics["slo_attainment_ttft"])


def test_a_rejected_request_misses_every_deadline() -> None:
    # r0 (prompt 2) is rejected; the others then run on an idle replica:
    # r1, r2 prefill in [0.5, 1.5] (TTFT 1), r2 decodes to 2.5, r3 runs 2.75-6.75.
    slo = SLO(ttft_s=1.3, tpot_s=0.8)
    instance = slo.apply(four())
    cluster = Cluster.colocated(UNIT, "fcfs", 1, "test-slo-short:max_prompt=1")
    result = simulate_cluster(instance, cluster)
    assert result.requests["rejected"].tolist() == ["too long", "", "", ""]
    assert result.requests["first_token_s"].tolist()[1:] == [1.5, 1.5, 3.75]
    # TTFT: r1, r2, r3 meet 1.3, r0 is a miss; TPOT: r1 (one token) only
    assert attainment(instance, result) == (0.75, 0.25, 0.25)
    metrics = result.metrics
    assert metrics["num_rejected"] == 1
    assert metrics["slo_attainment_ttft"] == pytest.approx(0.75)
    assert metrics["slo_attainment_tpot"] == pytest.approx(0.25)
    assert metrics["slo_attainment"] == pytest.approx(0.25)


def test_an_unserved_one_token_request_misses_its_tpot_deadline() -> None:
    # a one-token request has no TPOT to miss, but a request never served misses
    instance = SLO(ttft_s=10.0, tpot_s=0.1).apply(four())
    first = [1.0, math.nan, 2.0, 4.0]
    done = [3.0, math.nan, 3.0, 7.0]
    for definitions in DEFINITIONS:
        shares = slo_attainment(instance, first, done, definitions)
        assert shares["slo_attainment_ttft"] == 0.75
    shares = slo_attainment(instance, first, done)
    assert shares["slo_attainment_tpot"] == 0.0  # r1 unserved, the rest at 1 s
    assert shares["slo_attainment"] == 0.0


def test_unknown_definitions_and_a_result_of_another_instance_are_refused() -> None:
    result = simulate_cluster(four(), Cluster.colocated(UNIT, "fcfs", 1))
    with pytest.raises(InputError, match="expected one of lsched, simdistserve"):
        attainment(four(), result, SLO(1.0), definitions="vidur")
    with pytest.raises(InputError, match="the result has 4 requests; expected 3"):
        attainment(four().subset([0, 1, 2]), result, SLO(1.0))
