"""The validator on schedules that swap KV to the host tier.

:func:`lsched.validator.validate_schedule` with a ``swaps`` table (and
:func:`~lsched.validator.validate_cluster`, which passes ``result.swaps``) replays
each request's swaps with its memberships: swaps alternate out, in; a swap-out
moves the KV the request holds and the swap-in brings it back, its next run
resuming with it; nothing runs while the KV is off the GPU. Copies last ``tokens
x kv_bytes_per_token / bandwidth`` and go one at a time per direction and replica;
blocking copies lengthen their run, back to back from its start; GPU blocks
(pinned by asynchronous copies included) and host blocks stay within their
capacities; the swap metrics and ``swap_outs`` are recomputed.

The fast engine's logs of ``vllm-v0:preemption=swap`` (blocking),
``fastserve:swap=true`` (async) and ``fastserve:swap=true,swap_mode=blocking`` on
small unit-slot instances with a tight GPU and a small host tier pass; each
forgery of them is reported under its rule.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import SimulationResult, simulate, simulate_cluster
from lsched.instance import Instance
from lsched.profile import DeploymentProfile, load_profile
from lsched.tiers import HostTier
from lsched.validator import (
    RULES,
    ValidationReport,
    validate_cluster,
    validate_schedule,
)

UNIT = load_profile("unit-slot")  # 1 s per iteration, blocks of 1 token of 1 byte

#: policy -> its swap mode
POLICIES = {
    "vllm-v0:preemption=swap": "blocking",
    "fastserve:swap=true": "async",
    "fastserve:swap=true,swap_mode=blocking": "blocking",
}
BLOCKING = [policy for policy, mode in POLICIES.items() if mode == "blocking"]
MEMBER_COLUMNS = ["run", "request", "kind", "tokens", "processed_before"]
SWAP_COLUMNS = ["run", "request", "direction", "tokens", "start_s", "end_s"]
#: policy -> seed of a 10-request instance on which it swaps (on one replica and on
#: two) and, asynchronously, a copy outlasts the run it was decided before
SEEDS = {
    "vllm-v0:preemption=swap": 4,
    "fastserve:swap=true": 1,
    "fastserve:swap=true,swap_mode=blocking": 25,
}


def tight(host_bytes: int = 16) -> DeploymentProfile:
    """20 KV blocks, 4 sequences, a host tier of ``host_bytes`` (= blocks) with
    copies at 4 B/s in and 8 B/s out."""
    host = HostTier(memory_bytes=host_bytes, h2d_bytes_per_s=4.0, d2h_bytes_per_s=8.0)
    return UNIT.replace(kv_capacity_tokens=20, max_num_seqs=4, host=host)


def instance_of(seed: int) -> Instance:
    rng = np.random.default_rng(seed)
    n = 10
    arrival = np.round(np.sort(rng.uniform(0, 3, n)), 2)
    return Instance(arrival, rng.integers(2, 9, n), rng.integers(2, 10, n))


@cache
def run(policy: str, replicas: int = 1) -> tuple[Instance, SimulationResult]:
    instance = instance_of(SEEDS[policy])
    result = simulate(
        instance, tight(), policy, replicas=replicas, log=True, engine="python"
    )
    assert result.swaps is not None and len(result.swaps) > 0  # it swapped
    return instance, result


def check(
    policy: str,
    *,
    replicas: int = 1,
    profile: DeploymentProfile | None = None,
    mode: str | None = None,
    **tables: Any,
) -> ValidationReport:
    """Validate ``policy``'s log with some of its tables (or the profile, the
    claimed records and metrics, the mode) replaced."""
    instance, result = run(policy, replicas)
    log: dict[str, Any] = {
        "runs": result.runs,
        "members": result.members,
        "preemptions": result.preemptions,
        "swaps": result.swaps,
        "requests": result.requests,
        "metrics": result.metrics,
    }
    log |= tables
    return validate_schedule(
        instance,
        tight() if profile is None else profile,
        log.pop("runs"),
        log.pop("members"),
        log.pop("preemptions"),
        replicas=replicas,
        swap_mode=POLICIES[policy] if mode is None else mode,
        **log,
    )


def rules_of(report: ValidationReport) -> set[str]:
    assert set(report.rules) <= set(RULES)
    return set(report.rules)


def messages(report: ValidationReport, rule: str) -> str:
    return "\n".join(str(v) for v in report.violations if v.rule == rule)


def swaps_of(policy: str, replicas: int = 1) -> pd.DataFrame:
    return run(policy, replicas)[1].swaps.copy()  # type: ignore[union-attr]


# -- real schedules pass -------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_engine_logs_pass(policy: str, replicas: int) -> None:
    instance, result = run(policy, replicas)
    report = check(policy, replicas=replicas)
    report.raise_if_invalid()
    assert report.metrics["swap_out_bytes"] == result.metrics["swap_out_bytes"] > 0
    assert report.requests is not None
    outs = report.requests["swap_outs"].to_numpy()
    assert np.array_equal(outs, result.requests["swap_outs"].to_numpy())
    # the whole result through validate_cluster (mode from the policy spec)
    cluster = Cluster((Pool(tight(), policy, replicas),))
    validate_cluster(instance, cluster, result).raise_if_invalid()


def test_blocking_logs_lengthen_runs_and_async_logs_pin_blocks() -> None:
    _, blocking = run("vllm-v0:preemption=swap")
    assert blocking.metrics["swap_stall_s"] > 0
    _, asynchronous = run("fastserve:swap=true")
    assert asynchronous.metrics["swap_stall_s"] == 0
    # an asynchronous copy overlaps a run it was not decided before
    swaps, runs = asynchronous.swaps, asynchronous.runs
    assert swaps is not None
    after = swaps["end_s"].to_numpy() > runs.loc[swaps["run"], "end_s"].to_numpy()
    assert after.any()


def test_swaps_decided_at_idle_boundaries_before_one_run() -> None:
    """An asynchronous swap-in that lands while the replica idles, then a swap-out
    of the same request before any run: both are logged before the same run."""
    rng = np.random.default_rng(13)
    n = int(rng.integers(6, 20))
    instance = Instance(
        np.sort(rng.uniform(0, 4, n)), rng.integers(1, 10, n), rng.integers(2, 12, n)
    )
    cap = int((instance.prompt_tokens + instance.output_tokens).max())
    cap += int(rng.integers(0, 10))
    seqs = int(rng.integers(2, 6))
    host = HostTier(int(rng.integers(5, 40)), float(rng.integers(2, 10)),
                    float(rng.integers(2, 10)))  # fmt: skip
    profile = UNIT.replace(kv_capacity_tokens=cap, max_num_seqs=seqs, host=host)
    result = simulate(
        instance, profile, "fastserve:swap=true", log=True, engine="python"
    )
    assert result.swaps is not None
    assert result.swaps.groupby(["run", "request"]).size().max() == 2
    cluster = Cluster((Pool(profile, "fastserve:swap=true"),))
    validate_cluster(instance, cluster, result).raise_if_invalid()


def test_clusters_of_pools_pass() -> None:
    rng = np.random.default_rng(5)
    n = 24
    instance = Instance(
        np.sort(rng.uniform(0, 4, n)), rng.integers(1, 10, n), rng.integers(2, 12, n)
    )
    host = HostTier(memory_bytes=20, h2d_bytes_per_s=5.0, d2h_bytes_per_s=3.0)
    a = UNIT.replace(kv_capacity_tokens=18, max_num_seqs=4, host=host)
    b = UNIT.replace(kv_capacity_tokens=21, max_num_seqs=3, host=host)
    colocated = Cluster(
        (
            Pool(a, "vllm-v0:preemption=swap", 1, name="a"),
            Pool(b, "fastserve:swap=true", 2, name="b"),
        )
    )
    disaggregated = Cluster(
        (
            Pool(UNIT, "fcfs", 1, name="p", role="prefill"),
            Pool(
                b, "fastserve:swap=true,swap_mode=blocking", 2, name="d", role="decode"
            ),
        ),
        links=(Link("p", "d", 3.0, 0.2),),
    )
    for cluster in (colocated, disaggregated):
        result = simulate_cluster(instance, cluster, log=True, engine="python")
        assert result.swaps is not None and len(result.swaps) > 0
        report = validate_cluster(instance, cluster, result)
        report.raise_if_invalid()
        assert report.metrics["swap_in_bytes"] == result.metrics["swap_in_bytes"]
        # the totals are the cluster's: forge one
        more = result.metrics["swap_in_bytes"] + 1
        metrics = result.metrics | {"swap_in_bytes": more}
        forged = validate_cluster(
            instance, cluster, dataclasses.replace(result, metrics=metrics)
        )
        assert rules_of(forged) == {"metric"}
        assert "swap_in_bytes" in messages(forged, "metric")


def test_no_swaps_is_the_old_check() -> None:
    instance = instance_of(4)
    result = simulate(instance, tight(), "vllm-v0", log=True, engine="python")
    assert result.swaps is not None and len(result.swaps) == 0
    for swaps in (None, result.swaps):
        report = validate_schedule(
            instance, tight(), result.runs, result.members, result.preemptions,
            replicas=1, requests=result.requests, metrics=result.metrics,
            swaps=swaps,
        )  # fmt: skip
        report.raise_if_invalid()
        assert "swap_out_bytes" not in report.metrics
    # a swapping log checked without its swaps: its requests seem to keep their
    # KV, and its runs to last longer than their iterations
    rules = rules_of(check("vllm-v0:preemption=swap", swaps=None))
    assert {"kv-tokens", "run-duration"} <= rules


# -- forgeries ----------------------------------------------------------------------


def first(swaps: pd.DataFrame, direction: str, **where: Any) -> int:
    """Index of the first row of ``direction`` (and the ``where`` values)."""
    rows = swaps["direction"] == direction
    for column, value in where.items():
        rows &= swaps[column] == value
    return int(swaps.index[rows.to_numpy()][0])


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (lambda s: s.assign(direction="sideways"), "swaps.direction"),
        (lambda s: s.drop(columns="tokens"), "lacks column(s) ['tokens']"),
        (lambda s: s.assign(tokens=0), "tokens = 0; expected >= 1"),
        (lambda s: s.assign(end_s=s["start_s"] - 1), "before it starts"),
        (lambda s: s.assign(run=s["run"] + 10_000), "is not in runs"),
        (lambda s: s.assign(request=-1), "is not in the instance"),
        (lambda s: s.assign(start_s=np.nan), "swaps.start_s: expected finite"),
    ],
)
def test_schema(forge: Any, message: str) -> None:
    swaps = forge(swaps_of("vllm-v0:preemption=swap"))
    report = check("vllm-v0:preemption=swap", swaps=swaps)
    assert rules_of(report) == {"schema"}
    assert message in messages(report, "schema")


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_dropped_swap_in(policy: str) -> None:
    swaps = swaps_of(policy)
    report = check(policy, swaps=swaps.drop(index=first(swaps, "in")))
    assert "swap" in rules_of(report)
    assert "while its KV is on the host" in messages(report, "swap")


def test_a_last_swap_in_dropped_leaves_kv_on_the_host() -> None:
    policy = "vllm-v0:preemption=swap"
    swaps = swaps_of(policy)
    last = swaps[swaps["request"] == swaps["request"].iloc[0]].index[-1]
    assert swaps.loc[last, "direction"] == "in"
    # its members after the swap-in dropped too: the request stops swapped out
    _, result = run(policy)
    request, at = swaps.loc[last, "request"], swaps.loc[last, "run"]
    members = result.members
    gone = (members["request"] == request) & (members["run"] >= at)
    report = check(policy, swaps=swaps.drop(index=last), members=members[~gone])
    assert "never swapped back in" in messages(report, "swap")


def test_swaps_alternate_starting_with_out() -> None:
    policy = "vllm-v0:preemption=swap"
    swaps = swaps_of(policy)
    report = check(policy, swaps=swaps.drop(index=first(swaps, "out")))
    assert "swapped in while running" in messages(report, "swap")
    k = first(swaps, "out")
    twice = pd.concat([swaps, swaps.loc[[k]]]).sort_values("run", kind="stable")
    report = check(policy, swaps=twice)
    assert "swapped out while swapped out" in messages(report, "swap")


@pytest.mark.parametrize("policy", list(POLICIES))
def test_wrong_tokens(policy: str) -> None:
    swaps = swaps_of(policy)
    k = first(swaps, "out")
    swaps.loc[k, "tokens"] += 1
    report = check(policy, swaps=swaps)
    assert rules_of(report) == {"swap"}
    assert "the request holds" in messages(report, "swap")
    swaps = swaps_of(policy)
    swaps.loc[first(swaps, "in"), "tokens"] += 1
    report = check(policy, swaps=swaps)
    assert rules_of(report) == {"swap"}
    assert "it swapped out" in messages(report, "swap")


def test_a_member_while_swapped_blocking() -> None:
    """Blocking: a request swapped out before run k is not in run k; one swapped
    in before run j may be."""
    policy = "vllm-v0:preemption=swap"
    _, result = run(policy)
    swaps = swaps_of(policy)
    members = result.members

    def runs_before(k: int) -> pd.Series:
        mine = members["request"] == swaps.loc[k, "request"]
        return members.loc[mine & (members["run"] < swaps.loc[k, "run"]), "run"]

    # a request's first swap-out, after it ran twice
    firsts = swaps[swaps["direction"] == "out"].drop_duplicates("request")
    k = next(k for k in firsts.index if len(runs_before(k)) >= 2)
    was = runs_before(k)
    # decided before its last run instead, where it was already running
    earlier = swaps.assign(run=swaps["run"].where(swaps.index != k, was.max()))
    report = check(policy, swaps=earlier)
    assert "in the run while its KV is on the host" in messages(report, "swap")


def test_a_member_before_an_async_copy_ends() -> None:
    policy = "fastserve:swap=true"
    swaps = swaps_of(policy)
    k = first(swaps, "in")
    # the copy ends a whole iteration later than it does
    late = swaps.assign(end_s=swaps["end_s"].where(swaps.index != k,
                                                   swaps["end_s"] + 1.0))  # fmt: skip
    report = check(policy, swaps=late)
    assert "before its swap-in copy ends" in messages(report, "swap")
    assert "lasts" in messages(report, "swap-copy")


def test_an_async_swap_in_before_its_swap_out_copy_ends() -> None:
    policy = "fastserve:swap=true"
    swaps = swaps_of(policy)
    k = first(swaps, "in")
    out = first(swaps, "out", request=swaps.loc[k, "request"])
    shift = swaps.loc[k, "start_s"] - swaps.loc[out, "end_s"] + 0.1
    early = swaps.copy()
    early.loc[k, ["start_s", "end_s"]] -= shift
    report = check(policy, swaps=early)
    assert "before its swap-out copy ends" in messages(report, "swap")


def test_a_swapped_request_preempted() -> None:
    policy = "vllm-v0:preemption=swap"
    _, result = run(policy)
    swaps = swaps_of(policy)
    k = first(swaps, "out")
    row = pd.DataFrame({"run": [swaps.loc[k, "run"] + 1],
                        "request": [swaps.loc[k, "request"]]})  # fmt: skip
    back = first(swaps, "in", request=swaps.loc[k, "request"])
    assert swaps.loc[back, "run"] > swaps.loc[k, "run"] + 1
    preemptions = pd.concat([result.preemptions, row], ignore_index=True)
    report = check(policy, preemptions=preemptions)
    assert "preempted while swapped out" in messages(report, "preemption")


@pytest.mark.parametrize("policy", list(POLICIES))
def test_copy_duration(policy: str) -> None:
    swaps = swaps_of(policy)
    k = first(swaps, "out")
    swaps.loc[k, "end_s"] += 0.01
    report = check(policy, swaps=swaps)
    assert "swap-copy" in rules_of(report)
    assert "tokens x 1 bytes at 8.0 bytes/s take" in messages(report, "swap-copy")


def test_async_copies_overlap() -> None:
    policy = "fastserve:swap=true"
    swaps = swaps_of(policy)
    outs = swaps.index[(swaps["direction"] == "out").to_numpy()]
    a, b = outs[0], outs[1]
    assert swaps.loc[b, "start_s"] >= swaps.loc[a, "end_s"]
    # the later copy moves to start while the earlier one runs
    shift = swaps.loc[b, "start_s"] - swaps.loc[a, "start_s"] - 0.01
    swaps.loc[b, ["start_s", "end_s"]] -= shift
    report = check(policy, swaps=swaps)
    assert "first come, first served" in messages(report, "swap-link")


def test_async_copy_starts_when_decided() -> None:
    policy = "fastserve:swap=true"
    swaps = swaps_of(policy)
    k = first(swaps, "out")
    swaps.loc[k, ["start_s", "end_s"]] += 0.5  # the link was free
    report = check(policy, swaps=swaps)
    assert "it starts at the later of the two" in messages(report, "swap-copy")


@pytest.mark.parametrize("policy", BLOCKING)
def test_blocking_copies_back_to_back(policy: str) -> None:
    swaps = swaps_of(policy)
    k = first(swaps, "in")
    swaps.loc[k, ["start_s", "end_s"]] += 0.01  # a gap before it
    report = check(policy, swaps=swaps)
    assert "swap-copy" in rules_of(report) <= {"swap-copy", "swap-link"}
    assert "back to back from its start" in messages(report, "swap-copy")


def test_blocking_copies_in_a_blocking_runs_duration() -> None:
    policy = "vllm-v0:preemption=swap"
    # a blocking log read as asynchronous: its runs last longer than their
    # iterations, and its copies start inside them
    report = check(policy, mode="async")
    assert "run-duration" in rules_of(report)
    # and an asynchronous log read as blocking: its runs lack the copies' time
    report = check("fastserve:swap=true", mode="blocking")
    assert "of blocking copies take" in messages(report, "run-duration")


# -- asynchronous pins, by hand --------------------------------------------------
#
# Unit slots (1 s per iteration, 1-token blocks of 1 byte), copies at 2 B/s each
# way, async. PINS: r0 (s=2, o=3), r1 (s=2, o=2), both at 0.
#   run 0 [0,1)  prefill r0 2, r1 2                        KV 4
#   r1 swapped out at 1: copy [1,2), its 2 blocks pinned until it ends
#   run 1 [1,2)  decode r0 (2->3)                          KV 3 + 2 pinned = 5
#   run 2 [2,3)  decode r0 (3->4): done at 3                KV 4
#   r1 swapped in at 3 (copy [3,4)); the replica idles until it lands
#   run 3 [4,5)  decode r1 (2->3): done at 5                KV 3
# IDLE: r0 (s=2, o=2), r1 (s=2, o=2), both at 0.
#   run 0 [0,1)  prefill r1 2                              KV 2
#   r1 swapped out at 1 (copy [1,2)); the replica idles until it lands
#   run 1 [2,3)  prefill r0 2                              KV 2
#   at 3, r0 swapped out (copy [3,4)) and r1 in (copy [3,4)): 2 + 2 pinned while
#   the replica idles until both land
#   run 2 [4,5)  decode r1 (2->3): done at 5                KV 3
#   r0 swapped in at 5 (copy [5,6)), idle
#   run 3 [6,7)  decode r0 (2->3): done at 7                KV 3
# The host holds r1 over [1,4) and r0 over [3,6): 4 blocks over [3,4).

RUN_COLUMNS = ["replica", "start_s", "end_s", "iterations", "prefill_tokens",
               "prefill_attention", "decode_steps", "kv_read_tokens",
               "has_prefill", "kv_tokens"]  # fmt: skip
HAND = {
    "pins": (
        [(0, 0.0, 1.0, 1, 4, 8, 0, 0, 1, 4), (0, 1.0, 2.0, 1, 0, 0, 1, 3, 0, 3),
         (0, 2.0, 3.0, 1, 0, 0, 1, 4, 0, 4), (0, 4.0, 5.0, 1, 0, 0, 1, 3, 0, 3)],
        [(0, 0, "prefill", 2, 0), (0, 1, "prefill", 2, 0), (1, 0, "decode", 1, 2),
         (2, 0, "decode", 1, 3), (3, 1, "decode", 1, 2)],
        [(1, 1, "out", 2, 1.0, 2.0), (3, 1, "in", 2, 3.0, 4.0)],
        [3, 2],
        5,
    ),
    "idle": (
        [(0, 0.0, 1.0, 1, 2, 4, 0, 0, 1, 2), (0, 2.0, 3.0, 1, 2, 4, 0, 0, 1, 2),
         (0, 4.0, 5.0, 1, 0, 0, 1, 3, 0, 3), (0, 6.0, 7.0, 1, 0, 0, 1, 3, 0, 3)],
        [(0, 1, "prefill", 2, 0), (1, 0, "prefill", 2, 0), (2, 1, "decode", 1, 2),
         (3, 0, "decode", 1, 2)],
        [(1, 1, "out", 2, 1.0, 2.0), (2, 0, "out", 2, 3.0, 4.0),
         (2, 1, "in", 2, 3.0, 4.0), (3, 0, "in", 2, 5.0, 6.0)],
        [2, 2],
        4,
    ),
}  # fmt: skip


def hand(name: str, capacity: int | None = None, host: int = 4) -> ValidationReport:
    runs, members, swaps, output, fits = HAND[name]
    profile = UNIT.replace(
        kv_capacity_tokens=fits if capacity is None else capacity,
        host=HostTier(memory_bytes=host, h2d_bytes_per_s=2.0, d2h_bytes_per_s=2.0),
    )
    return validate_schedule(
        Instance([0.0, 0.0], [2, 2], output),
        profile,
        pd.DataFrame(runs, columns=RUN_COLUMNS).rename_axis("run"),
        pd.DataFrame(members, columns=MEMBER_COLUMNS),
        pd.DataFrame({"run": [], "request": []}, dtype=np.int64),
        replicas=1,
        swaps=pd.DataFrame(swaps, columns=SWAP_COLUMNS),
        swap_mode="async",
    )


@pytest.mark.parametrize("name", list(HAND))
def test_hand_logs(name: str) -> None:
    report = hand(name)
    report.raise_if_invalid()
    swapped = 2 * len(HAND[name][2])  # every copy moves 2 tokens of 1 byte
    assert report.metrics["swap_out_bytes"] + report.metrics["swap_in_bytes"] == (
        swapped
    )
    assert report.metrics["swap_stall_s"] == 0


def test_gpu_capacity_counts_blocks_pinned_during_a_run() -> None:
    """An asynchronous swap-out's blocks stay taken until its copy ends."""
    report = hand("pins", capacity=4)
    assert [str(v) for v in report.violations] == [
        "[kv-capacity] (run 1) holds 5 KV blocks (2 pinned or reserved) after its "
        "last iteration; capacity 4 blocks of 1 tokens"
    ]


def test_gpu_capacity_counts_blocks_pinned_while_idle() -> None:
    """A swap-in takes its blocks when decided, here while the replica idles and
    another request's swap-out copy still pins its own: no run shows both."""
    report = hand("idle", capacity=3)
    assert rules_of(report) == {"kv-capacity"}
    assert [v.run for v in report.violations] == [2]
    assert "holds at least 4 KV blocks (4 pinned by swap copies) at 3.0 s" in (
        messages(report, "kv-capacity")
    )


def test_host_capacity_by_hand() -> None:
    report = hand("idle", host=3)
    assert [str(v) for v in report.violations] == [
        "[host-capacity] (run 2, request 0) from 3.0 s replica 0 holds 4 host "
        "blocks of swapped-out KV; its host tier holds 3 (3 bytes in blocks of 1 "
        "tokens x 1 bytes)"
    ]


def test_host_capacity() -> None:
    for policy in POLICIES:
        swaps = swaps_of(policy)
        # each request's largest swap-out fits, not all those held together
        one = int(swaps["tokens"].max())
        report = check(policy, profile=tight(host_bytes=one))
        if "host-capacity" not in rules_of(report):
            continue  # this log never holds two requests on the host at once
        assert rules_of(report) == {"host-capacity"}
        assert f"its host tier holds {one} ({one} bytes" in messages(
            report, "host-capacity"
        )
        break
    else:
        pytest.fail("no log holds two requests on the host at once")
    report = check("vllm-v0:preemption=swap", profile=tight(host_bytes=1))
    assert "host-capacity" in rules_of(report)


def test_wrong_metrics_and_records() -> None:
    policy = "fastserve:swap=true,swap_mode=blocking"
    _, result = run(policy)
    for key in ("swap_out_bytes", "swap_in_bytes", "swap_stall_s",
                "recompute_avoided_tokens"):  # fmt: skip
        metrics = result.metrics | {key: result.metrics[key] * 1.01}
        report = check(policy, metrics=metrics)
        assert rules_of(report) == {"metric"}
        assert key in messages(report, "metric")
    metrics = {k: v for k, v in result.metrics.items() if k != "swap_stall_s"}
    assert "swap_stall_s is missing" in messages(check(policy, metrics=metrics),
                                                 "metric")  # fmt: skip
    requests = result.requests.copy()
    requests.loc[requests["swap_outs"].idxmax(), "swap_outs"] += 1
    report = check(policy, requests=requests)
    assert rules_of(report) == {"request-record"}
    assert "swap_outs = " in messages(report, "request-record")
    report = check(policy, requests=result.requests.drop(columns="swap_outs"))
    assert "lacks column swap_outs" in messages(report, "schema")


def test_a_swap_on_another_replica() -> None:
    policy = "vllm-v0:preemption=swap"
    _, result = run(policy, 2)
    swaps = swaps_of(policy, 2)
    k = first(swaps, "out")
    other = result.runs["replica"] != result.runs.loc[swaps.loc[k, "run"], "replica"]
    swaps.loc[k, "run"] = result.runs.index[other.to_numpy()][0]
    report = check(policy, replicas=2, swaps=swaps)
    assert "single-replica" in rules_of(report)


def test_validate_cluster_reports_forged_swaps_by_pool() -> None:
    policy = "fastserve:swap=true"
    instance, result = run(policy)
    swaps = swaps_of(policy)
    swaps.loc[first(swaps, "out"), "tokens"] += 1
    cluster = Cluster((Pool(tight(), policy),))
    report = validate_cluster(
        instance, cluster, dataclasses.replace(result, swaps=swaps)
    )
    assert rules_of(report) == {"swap"}
    assert messages(report, "swap").startswith("[swap] (run")
    assert "pool pool0: swap-out of" in messages(report, "swap")
