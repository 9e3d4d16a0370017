"""The validator on disaggregated clusters: valid runs pass, forged ones do not.

:func:`lsched.validator.validate_cluster` replays a disaggregated run's log pool
by pool (a prefill pool's requests as one-token requests whose KV stays pinned
until its transfer ends; a decode pool's requests arriving with token 1 and
``s_i`` tokens of KV, adopted at the replica's first boundary at or after the
transfer end or dropped and prefilled again) and checks the transfers against
their links. The fast engine's logs of the cases below pass; each forgery (a
decode before the KV arrives, a transfer that ends too early or starts before
its prefill, fifo transfers that overlap, a shared link's transfer that ends
early, KV over capacity counting pinned, adopted or reserved blocks, wrong stage
records; into a pulling decode pool, a take inside an iteration or against
DistServe's rule, and an adoption before the decision that took the KV) is
reported under its rule. ``tests/test_disagg_equivalence.py`` also validates
every random run it draws.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import simulate_cluster
from lsched.instance import Instance
from lsched.profile import DeploymentProfile, load_profile
from lsched.validator import RULES, validate_cluster

UNIT = load_profile("unit-slot")


def _pd(
    prefill: DeploymentProfile,
    decode: DeploymentProfile,
    *,
    policy: str = "fcfs",
    link: Link | None = None,
    decode_replicas: int = 1,
    pull: float | None = None,
) -> Cluster:
    return Cluster(
        (
            Pool(prefill, policy, 1, name="p", role="prefill"),
            Pool(decode, policy, decode_replicas, name="d", role="decode", pull=pull),
        ),
        links=() if link is None else (link,),
    )


#: name -> (instance, cluster); the comments give the schedules
CASES = {
    # both prefill in [0, 1]; fifo at 2 B/s, latency 0.5: request 0 on the link
    # [1, 3], arrives 3.5; request 1 [3, 4], arrives 4.5
    "fifo": (
        Instance([0.0, 0.0], [4, 2], [3, 2]),
        _pd(UNIT, UNIT, link=Link("p", "d", 2.0, 0.5)),
    ),
    # shared at 2 B/s: request 1 leaves at 3 (arrives 3.5), request 0 at 4 (4.5)
    "share": (
        Instance([0.0, 0.0], [4, 2], [3, 2]),
        _pd(UNIT, UNIT, link=Link("p", "d", 2.0, 0.5, "share")),
    ),
    # prefill capacity 8: 0 and 1 stay pinned until 5 and 9; 2 is admitted at 5
    "pins": (
        Instance([0.0, 0.0, 0.0], [4, 4, 4], [2, 2, 2]),
        _pd(UNIT.replace(kv_capacity_tokens=8), UNIT, link=Link("p", "d", 1.0)),
    ),
    # decode capacity 6: request 1's KV is dropped at 1 and prefilled again at 3
    "drop": (
        Instance([0.0, 0.0], [4, 3], [3, 2]),
        _pd(UNIT, UNIT.replace(kv_capacity_tokens=6)),
    ),
    # vllm-v0 on two decode replicas, a rejected request (peak 12 > 10) and a
    # one-token request, with chunked rotation of prefills
    "mixed": (
        Instance(
            [0.0, 0.0, 0.5, 1.0, 1.0, 2.5], [3, 5, 2, 9, 4, 1], [4, 1, 3, 4, 2, 5]
        ),
        _pd(
            UNIT.replace(kv_capacity_tokens=12),
            UNIT.replace(kv_capacity_tokens=10),
            policy="vllm-v0",
            link=Link("p", "d", 3.0, 0.3, "share"),
            decode_replicas=2,
        ),
    ),
    # pull, threshold 0.05 of 8 blocks, fifo at 1 B/s: both prefill in [0, 1]; the
    # idle decode replica takes 0 at 1 (4 blocks reserved, transfer [1, 5]); 1
    # waits (0's blocks are on their way) until 0 is adopted at 5, then is taken
    # (3 blocks reserved, transfer [5, 8]) while 0 decodes [5, 6]
    "pull": (
        Instance([0.0, 0.0], [4, 3], [2, 2]),
        _pd(
            UNIT,
            UNIT.replace(kv_capacity_tokens=8),
            link=Link("p", "d", 1.0),
            pull=0.05,
        ),
    ),
    # pull with threshold 1, shared at 1 B/s: 0 is taken at 1 and 1 at 2, with
    # 0's 4 blocks on their way; 1 leaves at 6, 0 at 7
    "pull-share": (
        Instance([0.0, 0.5], [4, 2], [2, 2]),
        _pd(
            UNIT,
            UNIT.replace(kv_capacity_tokens=8),
            link=Link("p", "d", 1.0, 0.0, "share"),
            pull=1.0,
        ),
    ),
    # pull over an ideal link: 0 (prefill [0, 1]) is taken by the idle decode
    # replica at 1, arrives at once and is adopted at 1; 1 (prefill [1, 2]) is
    # taken at the boundary 2, where the replica then decides 0's last decode
    # before 1's KV arrives: 1 is adopted at 3
    "pull-at-once": (
        Instance([0.0, 0.0], [1, 1], [3, 2]),
        _pd(
            UNIT.replace(kv_capacity_tokens=1),
            UNIT.replace(kv_capacity_tokens=4),
            pull=0.05,
        ),
    ),
}


def _run(name: str) -> tuple[Instance, Cluster, Any]:
    instance, cluster = CASES[name]
    return instance, cluster, simulate_cluster(instance, cluster, log=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_fast_engine_logs_are_valid(name: str) -> None:
    instance, cluster, result = _run(name)
    report = validate_cluster(instance, cluster, result)
    report.raise_if_invalid()
    assert report.requests is not None
    assert report.metrics["transferred_bytes"] == result.metrics["transferred_bytes"]


def test_the_cases_reach_what_they_are_meant_to() -> None:
    requests = _run("pins")[2].requests
    assert requests["admitted_s"].tolist() == [0.0, 0.0, 5.0]  # held back by pins
    requests = _run("drop")[2].requests
    assert requests["recomputed_tokens"].tolist() == [0, 3]  # a dropped KV
    requests = _run("mixed")[2].requests
    assert (requests["rejected"] != "").sum() == 1
    assert sorted(set(requests["decode_replica"])) == [-1, 1, 2]
    requests = _run("pull")[2].requests
    assert requests["transfer_start_s"].tolist() == [1.0, 5.0]  # 1 waits its take
    requests = _run("pull-share")[2].requests
    assert requests["transfer_start_s"].tolist() == [1.0, 2.0]  # both on their way
    assert requests["transfer_end_s"].tolist() == [7.0, 6.0]
    requests = _run("pull-at-once")[2].requests
    assert requests["transfer_end_s"].tolist() == [1.0, 2.0]
    assert requests["decode_admitted_s"].tolist() == [1.0, 3.0]


def _forge(name: str, **changes: dict[int, float]) -> set[str]:
    """The rules broken by case ``name`` with the claimed records changed (column
    -> {request: value})."""
    instance, cluster, result = _run(name)
    forged = result.requests.copy()
    for column, values in changes.items():
        for i, value in values.items():
            forged.loc[i, column] = value
    report = validate_cluster(instance, cluster, replace(result, requests=forged))
    assert report.rules <= set(RULES)
    return set(report.rules)


def test_a_decode_before_the_kv_arrives() -> None:
    # request 0 decodes from 3.5 on; a transfer that ends at 4 comes after that
    rules = _forge("fifo", transfer_end_s={0: 4.0})
    assert "decode-after-transfer" in rules


def test_a_transfer_that_ends_too_early() -> None:
    # request 1's 2 bytes from 3 at 2 B/s with latency 0.5 arrive at 4.5
    rules = _forge("fifo", transfer_end_s={1: 4.2})
    assert {"transfer", "link"} <= rules
    # on a shared link: request 0's 4 bytes alone would arrive at 3.5 at the
    # earliest; sharing the link with request 1 until 3, it arrives at 4.5
    assert {"transfer", "link"} <= _forge("share", transfer_end_s={0: 3.25})
    assert "link" in _forge("share", transfer_end_s={0: 4.0})


def test_a_transfer_that_starts_before_its_prefill_ends() -> None:
    assert "transfer" in _forge("fifo", transfer_start_s={0: 0.5})


def test_fifo_transfers_that_overlap_on_the_link() -> None:
    # request 1 cannot start before request 0 leaves the link at 3
    assert _forge("fifo", transfer_start_s={1: 2.5}) == {"link"}
    # nor wait when the link is free: request 0 starts at its prefill's end
    assert "link" in _forge("fifo", transfer_start_s={0: 1.25})


def test_pinned_blocks_count_against_the_capacity() -> None:
    # the run that admits request 2 at 5 holds its 4 blocks beside request 1's 4
    # pinned ones; had request 0's transfer ended at 6, its 4 pinned blocks would
    # be there too: 12 > 8
    rules = _forge("pins", transfer_end_s={0: 6.0})
    assert "kv-capacity" in rules


def test_adopted_kv_counts_against_the_decode_capacity() -> None:
    # the same schedule checked against a decode capacity of 5 tokens: request
    # 0's adopted 4 tokens and its first decode step make 5, its second 6
    instance, _, result = _run("drop")
    small = _pd(UNIT, UNIT.replace(kv_capacity_tokens=5))
    report = validate_cluster(instance, small, result)
    assert "kv-capacity" in report.rules


def test_wrong_stage_records() -> None:
    assert "request-record" in _forge("drop", recomputed_tokens={1: 0})
    assert "request-record" in _forge("drop", decode_admitted_s={1: 1.0})
    assert "request-record" in _forge("fifo", decode_admitted_s={0: 4.5})
    assert "request-record" in _forge("fifo", decode_replica={1: 0})
    assert "request-record" in _forge("fifo", completion_s={0: 4.5})
    assert "request-record" in _forge("share", transferred_bytes={1: 3.0})
    # a request that emits one token does not move
    assert "transfer" in _forge("mixed", transfer_start_s={1: 1.0})


def test_a_claimed_pool_metric_the_log_does_not_give() -> None:
    instance, cluster, result = _run("pins")
    pools = result.pool_metrics.copy()
    pools.loc["p", "kv_utilization"] *= 0.5  # the pinned KV's token-seconds count
    report = validate_cluster(instance, cluster, replace(result, pool_metrics=pools))
    assert report.rules == {"metric"}


# -- pull -------------------------------------------------------------------------


def test_reserved_blocks_count_against_the_decode_capacity() -> None:
    # the pull schedule checked against a decode capacity of 7 blocks: request 0
    # decodes [5, 6] to 5 blocks beside the 3 reserved for request 1 (taken at 5,
    # transfer [5, 8]): 8 > 7, though 0's own 5 blocks fit
    instance, _, result = _run("pull")
    small = _pd(UNIT, UNIT.replace(kv_capacity_tokens=7),
                link=Link("p", "d", 1.0), pull=0.05)  # fmt: skip
    report = validate_cluster(instance, small, result)
    assert "kv-capacity" in report.rules
    assert any("3 pinned or reserved" in v.message for v in report.violations)
    # reserved from the transfer's start only: taken at 6, 1's blocks would be
    # free again for the run [5, 6] (the link rules see the forged start)
    forged = result.requests.copy()
    forged.loc[1, ["transfer_start_s", "transfer_end_s"]] = [6.0, 9.0]
    forged.loc[1, ["decode_admitted_s", "completion_s"]] = [9.0, 10.0]
    report = validate_cluster(instance, small, replace(result, requests=forged))
    assert "kv-capacity" not in report.rules


def test_a_pulled_transfer_starts_after_its_prefill_and_its_link_is_free() -> None:
    # a transfer into a pulling pool starts when it is taken, not at its first
    # token (the valid logs above): but never before that first token
    assert "transfer" in _forge("pull", transfer_start_s={1: 0.5})
    # nor on a fifo link that another transfer holds (0 holds it [1, 5])
    assert "link" in _forge("pull", transfer_start_s={1: 4.0}, transfer_end_s={1: 7.0})
    # and it arrives when the link lets it: 3 bytes from 5 at 1 B/s arrive at 8
    assert "link" in _forge("pull", transfer_end_s={1: 8.5})
    # on a shared link too: alone after 6, request 0's last byte leaves at 7
    assert "link" in _forge("pull-share", transfer_end_s={0: 6.5})


def test_a_take_that_breaks_the_pull_rule() -> None:
    instance, cluster, result = _run("pull-share")
    link = cluster.links[0]
    # request 1 taken at 2, with request 0's 4 blocks on their way: allowed with
    # threshold 1 (4 < 8), not with 0.05 (4 >= 0.4)
    low = _pd(UNIT, UNIT.replace(kv_capacity_tokens=8), link=link, pull=0.05)
    assert validate_cluster(instance, low, result).rules == {"pull"}
    # nor with one sequence slot (0 is awaited)
    one = _pd(UNIT, UNIT.replace(kv_capacity_tokens=8, max_num_seqs=1), link=link,
              pull=1.0)  # fmt: skip
    assert validate_cluster(instance, one, result).rules == {"pull"}
    # nor in 5 blocks: its 2 beside 0's 4 reserved
    tight = _pd(UNIT, UNIT.replace(kv_capacity_tokens=5), link=link, pull=1.0)
    assert "pull" in validate_cluster(instance, tight, result).rules
    # and in the pull schedule, a take forged to 5.5, inside the decode
    # replica's iteration [5, 6] (a replica takes at its boundaries, or idle)
    rules = _forge(
        "pull",
        transfer_start_s={1: 5.5},
        transfer_end_s={1: 8.5},
        decode_admitted_s={1: 8.5},
    )
    assert "pull" in rules


def test_kv_taken_and_delivered_at_once_is_adopted_at_the_next_decision() -> None:
    # request 1 was taken at the boundary 2 and its KV arrived at once, but the
    # replica had decided the run [2, 3] already: adopted at 3, not at 2
    assert "request-record" in _forge("pull-at-once", decode_admitted_s={1: 2.0})


def test_tbt_spans_both_pools() -> None:
    """Mooncake's TBT over a request's tokens on both pools. ``fifo``: request
    0's token 1 at 1 (prefill), tokens 2 and 3 at 4.5 and 5.5 (its KV arrives
    at 3.5): gaps 3.5 and 1, TBT the largest, 3.5; request 1's token 1 at 1 and
    token 2 at 5.5 (KV at 4.5): TBT 4.5. A forged ``tbt_s`` or TBT metric is
    reported."""
    instance, cluster, result = _run("fifo")
    report = validate_cluster(instance, cluster, result)
    report.raise_if_invalid()
    assert report.requests["tbt_s"].tolist() == [3.5, 4.5]
    assert result.requests["tbt_s"].tolist() == [3.5, 4.5]
    assert report.metrics["tbt_mean_s"] == 4.0
    assert "request-record" in _forge("fifo", tbt_s={0: 1.0})
    metrics = dict(result.metrics, tbt_mean_s=3.0)
    forged = validate_cluster(instance, cluster, replace(result, metrics=metrics))
    assert forged.rules == {"metric"}
