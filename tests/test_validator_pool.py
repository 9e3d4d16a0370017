"""The validator's rule for a KV pool shared by a prefill pool's replicas (rule 6
of :mod:`lsched.evaluator.prefix`): real pool runs pass, forged ones fail.

A hand-derived run. Two prefill replicas p0, p1 (``vllm``, unit-slot with KV
blocks of 1 token, 40 tokens of KV, 1 KV byte per token, a host-to-device link
of 20 bytes/s, iteration time ``1 + 0.1 P``) share ``lru:pool_capacity_tokens
=100`` (50 hash blocks of 2 tokens, so an evictable block takes ``g = 2`` KV
blocks); the link from the prefill pool to itself has 0.5 s of latency and 10
bytes/s; one decode replica (1 s iterations) behind an ideal link;
``round-robin`` sends request ``i`` to ``p(i mod 2)``:

- r0 (t=0, 20 tokens, hashes 1..10) on p0: prefill [0, 3]. Its 10 blocks are
  written to the pool at 3, homed at p0, and stay on p0's GPU, evictable (20
  KV blocks).
- r1 (t=4, the same prompt) on p1: nothing on p1's GPU, the pool holds 1..10
  (due at 3 <= 4): ``h = 10``, ``x = min(20, 19) = 19``, every block copied
  from p0's share, ``y_r = 9 x 2 + 1 = 19`` tokens: ``0.5 + 19 x 1 / 10 = 2.4
  s``; its prefill of ``P = 1`` takes 1.1 s: run [4, 7.5].
- r2 (t=8, 30 tokens, hashes 11..25) on p0: its 30 tokens beside the 20 KV
  blocks of r0's evictable ones make 50 > 40: ``ceil(10 / 2) = 5`` blocks
  evicted, 1..5 (least recently used first); run [8, 12], writes due at 12.
- r3 (t=8, 2 tokens, hash 30) on p1: run [8, 9.2].
- r4 (t=13, r0's prompt) on p0: blocks 6..10 on its GPU, 1..10 in the pool
  (homed at p0): ``x = 19``, blocks 1..5 copied from p0's own share, ``y_l =
  10`` tokens: ``10 x 1 / 20 = 0.5 s``; run [13, 14.6], its 20 tokens beside
  r2's 15 evictable blocks (30) evicting 5.

So ``host_hit_tokens = 19 + 10 = 29``, ``remote_hit_tokens = 19``,
``host_copy_s = 2.4 + 0.5 = 2.9``, ``prefill_tokens_saved = 38`` and
``prefix_hit_ratio = 38 / (20 + 20 + 30 + 2 + 20)``.

Random pool runs are validated with the naive engine's equivalence in
``tests/test_prefix_routing.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from prefix_helpers import hashed_instance

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import SimulationResult, simulate_cluster
from lsched.instance import Instance
from lsched.profile import FEATURES, DeploymentProfile, IterationTime, load_profile
from lsched.routers import parse_router
from lsched.tiers import HostTier
from lsched.validator import ValidationReport, validate_cluster

BLOCK = 2  # tokens per hash block
UNIT = load_profile("unit-slot")


def _unit(kv_tokens: int, **weights: float) -> DeploymentProfile:
    """unit-slot with 1-token KV blocks, room for ``kv_tokens``, a 20 bytes/s
    host-to-device link and an affine iteration time over phi's features."""
    row = [weights.get(f, 0.0) for f in FEATURES]
    return UNIT.replace(
        kv_capacity_tokens=kv_tokens,
        block_tokens=1,
        host=HostTier(memory_bytes=1000, h2d_bytes_per_s=20.0),
        iteration_time=IterationTime(regimes=(np.array([row]),)),
    )


def _instance() -> Instance:
    """r0..r4 (module docstring)."""
    shared = list(range(1, 11))
    return hashed_instance(
        [0.0, 4.0, 8.0, 8.0, 13.0],
        [20, 20, 30, 2, 20],
        [2, 2, 2, 2, 2],
        [shared, shared, list(range(11, 26)), [30], shared],
        BLOCK,
    )


def _cluster(pool_tokens: int = 100) -> Cluster:
    """Two prefill replicas sharing a KV pool of ``pool_tokens``, one decode
    replica (module docstring)."""
    pools = (
        Pool(_unit(40, const=1.0, prefill_tokens=0.1), "vllm", 2, name="p",
             role="prefill", prefix_cache=f"lru:pool_capacity_tokens={pool_tokens}"),
        Pool(_unit(200, const=1.0), "vllm", 1, name="d", role="decode"),
    )  # fmt: skip
    link = Link("p", "p", bandwidth_bytes_per_s=10.0, latency_s=0.5)
    return Cluster(pools, router=parse_router("round-robin"), links=(link,))


def _run() -> SimulationResult:
    return simulate_cluster(_instance(), _cluster(), log=True)


def _messages(report: ValidationReport, rule: str) -> list[str]:
    return [str(v) for v in report.violations if v.rule == rule]


def test_a_remote_and_a_local_copy_by_hand() -> None:
    """The run of the module docstring: replicas, cached tokens, the copies in
    the runs' durations and evictions; it validates, and the validator's own
    metrics are the hand-derived ones."""
    result = _run()
    requests = result.requests
    assert requests["replica"].tolist() == [0, 1, 0, 1, 0]
    assert requests["cached_tokens"].tolist() == [0, 19, 0, 0, 19]
    ttft = requests["first_token_s"] - _instance().arrival_s
    np.testing.assert_allclose(ttft, [3.0, 3.5, 4.0, 1.2, 1.6], rtol=1e-12)
    assert result.runs is not None and result.evictions is not None
    spans = result.runs[["replica", "start_s", "end_s"]].iloc[:5].to_numpy()
    np.testing.assert_allclose(
        spans,
        [[0, 0, 3], [0, 8, 12], [0, 13, 14.6], [1, 4, 7.5], [1, 8, 9.2]],
        rtol=1e-12,
    )
    assert result.evictions.values.tolist() == [[1, 5], [2, 5]]
    report = validate_cluster(_instance(), _cluster(), result)
    report.raise_if_invalid()
    want = {
        "host_hit_tokens": 29.0,
        "remote_hit_tokens": 19.0,
        "host_copy_s": 2.9,
        "prefill_tokens_saved": 38.0,
    }
    for key, value in want.items():
        assert report.metrics[f"p.{key}"] == pytest.approx(value, rel=1e-12), key
        assert report.metrics[key] == pytest.approx(value, rel=1e-12), key
    assert report.metrics["p.prefix_hit_ratio"] == pytest.approx(38 / 92, rel=1e-12)


def _forged_runs(run: int, end_s: float) -> ValidationReport:
    """The hand-derived log with run ``run`` ending at ``end_s``."""
    result = _run()
    assert result.runs is not None
    runs = result.runs.copy()
    runs.loc[run, "end_s"] = end_s
    forged = dataclasses.replace(result, runs=runs)
    return validate_cluster(_instance(), _cluster(), forged)


def test_a_hit_on_blocks_not_yet_written_fails() -> None:
    """r0's run (run 0) forged to end at 4.5: its blocks reach the pool at 4.5,
    after r1's run on p1 starts at 4, which finds none of them."""
    report = _forged_runs(0, 4.5)
    assert _messages(report, "prefix-cache") == [
        "[prefix-cache] (run 3, request 1) pool p: takes 19 cached tokens at "
        "admission; 0 leading hash blocks of 2 tokens are resident: at most 0 "
        "(hash block 1 is written to the KV pool at 4.5 s, after the run starts "
        "at 4.0 s)"
    ]


def test_a_shortened_remote_copy_fails() -> None:
    """r1's run (run 3) forged to last 2 s: its copy from p0's share takes 2.4 s
    and its prefill 1.1 s."""
    report = _forged_runs(3, 6.0)
    assert _messages(report, "run-duration") == [
        "[run-duration] (run 3) pool p: lasts 2.0 s; its 1 iteration(s) and 2.4 s "
        "of blocking copies take 3.5 s"
    ]


@pytest.mark.parametrize("where", ["pool", "cluster"])
def test_a_wrong_remote_hit_count_fails(where: str) -> None:
    """``remote_hit_tokens`` claimed 18 for the pool or for the cluster: the
    log gives 19."""
    result = _run()
    if where == "pool":
        assert result.pool_metrics is not None
        table = result.pool_metrics.copy()
        table.loc["p", "remote_hit_tokens"] = 18.0
        forged = dataclasses.replace(result, pool_metrics=table)
        prefix = "pool p: "
    else:
        metrics = dict(result.metrics) | {"remote_hit_tokens": 18.0}
        forged = dataclasses.replace(result, metrics=metrics)
        prefix = ""
    report = validate_cluster(_instance(), _cluster(), forged)
    assert [str(v) for v in report.violations] == [
        f"[metric] {prefix}remote_hit_tokens = 18.0; the log gives 19.0"
    ]


def test_a_pool_smaller_than_claimed_fails() -> None:
    """The log checked against a pool of 30 tokens (15 blocks): r2's 15 blocks
    written at 12 evict r0's, so r4 finds none of its hash blocks on the GPU
    (block 1 was evicted there) or in the pool."""
    report = validate_cluster(_instance(), _cluster(30), _run())
    assert _messages(report, "prefix-cache") == [
        "[prefix-cache] (run 2, request 4) pool p: takes 19 cached tokens at "
        "admission; 0 leading hash blocks of 2 tokens are resident: at most 0"
    ]
    assert "[metric] pool p: host_hit_tokens = 29.0; the log gives 19.0" in [
        str(v) for v in report.violations
    ]
