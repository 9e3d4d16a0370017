"""Disaggregated prefill and decode (lsched.evaluator.disagg), cases derived by hand.

Every case runs on the unit-slot profile: every iteration takes 1 s, one token per
KV block, ``kv_bytes_per_token = 1`` (so a link of ``x`` bytes/s moves ``x`` tokens
of KV per second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsched.cli import main
from lsched.cluster import Cluster, Link, Pool, load_cluster
from lsched.evaluator import simulate_cluster
from lsched.instance import Instance
from lsched.profile import load_profile

UNIT = load_profile("unit-slot")


def _cluster(
    link: Link | None = None,
    *,
    prefill: object = UNIT,
    decode: object = UNIT,
    policy: str = "fcfs",
    prefill_replicas: int = 1,
    decode_replicas: int = 1,
) -> Cluster:
    pools = (
        Pool(prefill, policy, prefill_replicas, name="p", role="prefill"),
        Pool(decode, policy, decode_replicas, name="d", role="decode"),
    )
    return Cluster(pools, links=() if link is None else (link,))


def _column(result: object, name: str) -> list[float]:
    return result.requests[name].tolist()  # type: ignore[attr-defined]


def test_a_transfer_delays_the_second_requests_first_decode() -> None:
    """A (prompt 4, output 3) and B (prompt 2, output 2) arrive at 0; a FIFO link
    of 2 tokens/s with 0.5 s latency.

    - Prefill replica, [0, 1]: both prompts; token 1 of each at 1.
    - Link: A's 4 tokens hold it [1, 3] and arrive at 3.5; B waits for the link
      until 3, holds it [3, 4] and arrives at 4.5.
    - Decode replica: A adopted at 3.5, decodes [3.5, 4.5] (token 2) and
      [4.5, 5.5] (token 3). B adopted at the boundary 4.5, decodes [4.5, 5.5].
      Without the wait for the link B would arrive at 2.5 and finish at 3.5.
    """
    instance = Instance([0.0, 0.0], [4, 2], [3, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=2.0, latency_s=0.5)
    result = simulate_cluster(instance, _cluster(link))
    assert _column(result, "first_token_s") == [1.0, 1.0]
    assert _column(result, "transfer_start_s") == [1.0, 3.0]
    assert _column(result, "transfer_end_s") == [3.5, 4.5]
    assert _column(result, "decode_admitted_s") == [3.5, 4.5]
    assert _column(result, "completion_s") == [5.5, 5.5]
    assert _column(result, "decode_replica") == [1, 1]
    assert _column(result, "transferred_bytes") == [4.0, 2.0]
    assert result.metrics["transferred_bytes"] == 6.0
    # TTFT ends with the prefill; TPOT spans the transfer and the decode
    assert result.metrics["ttft_mean_s"] == 1.0
    ideal = simulate_cluster(instance, _cluster())
    assert _column(ideal, "completion_s") == [3.0, 2.0]


def test_far_from_time_zero_the_loop_still_steps() -> None:
    """The first case 1e8 s later: there the arrival tolerance (1 ns) is below the
    spacing of floats, and every time moves by 1e8 s all the same."""
    instance = Instance([1e8, 1e8], [4, 2], [3, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=2.0, latency_s=0.5)
    result = simulate_cluster(instance, _cluster(link))
    np.testing.assert_allclose(
        np.array(_column(result, "completion_s")) - 1e8, [5.5, 5.5], atol=1e-6
    )


def test_a_shared_link_splits_its_bandwidth() -> None:
    """The same two requests on a link of 2 tokens/s shared, 0.5 s latency: both
    start at 1 at 1 token/s each; B's 2 tokens leave at 3 (arrive 3.5); A has 2
    left, alone at 2 tokens/s it leaves at 4 (arrives 4.5). B decodes [3.5, 4.5];
    A is adopted at 4.5 and decodes [4.5, 5.5], [5.5, 6.5]."""
    instance = Instance([0.0, 0.0], [4, 2], [3, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=2.0, latency_s=0.5, sharing="share")
    result = simulate_cluster(instance, _cluster(link))
    assert _column(result, "transfer_start_s") == [1.0, 1.0]
    assert _column(result, "transfer_end_s") == [4.5, 3.5]
    assert _column(result, "completion_s") == [6.5, 4.5]


def test_the_prefill_replica_keeps_the_kv_until_the_transfer_ends() -> None:
    """Prefill capacity 4 tokens. A (4, 2) and B (3, 2) at 0; a FIFO link of
    1 token/s. A is prefilled [0, 1]; its 4 blocks stay pinned while its KV moves
    [1, 5], so B (3 blocks) is prefilled only at 5: [5, 6]. A decodes [5, 6]; B's
    KV moves [6, 9] and it decodes [9, 10]."""
    instance = Instance([0.0, 0.0], [4, 3], [2, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=1.0)
    small = UNIT.replace(kv_capacity_tokens=4)
    result = simulate_cluster(instance, _cluster(link, prefill=small))
    assert _column(result, "admitted_s") == [0.0, 5.0]
    assert _column(result, "first_token_s") == [1.0, 6.0]
    assert _column(result, "transfer_end_s") == [5.0, 9.0]
    assert _column(result, "completion_s") == [6.0, 10.0]


def test_a_request_that_does_not_fit_the_decode_replica_is_prefilled_again() -> None:
    """Decode capacity 6 tokens, an ideal link. A (4, 2) and B (3, 2) at 0 are
    prefilled [0, 1] and arrive at 1. A is adopted (4 blocks); B's 3 do not fit
    beside them: its KV is dropped (3 tokens recomputed) and it waits. [1, 2]: A
    decodes (5 blocks) and finishes; B's re-prefill of 3 + 1 tokens would need 9.
    [2, 3]: B's re-prefill emits token 2, its last."""
    instance = Instance([0.0, 0.0], [4, 3], [2, 2])
    small = UNIT.replace(kv_capacity_tokens=6)
    result = simulate_cluster(instance, _cluster(decode=small))
    assert _column(result, "first_token_s") == [1.0, 1.0]
    assert _column(result, "transfer_end_s") == [1.0, 1.0]
    assert _column(result, "decode_admitted_s") == [1.0, 2.0]
    assert _column(result, "completion_s") == [2.0, 3.0]
    assert _column(result, "recomputed_tokens") == [0, 3]


def test_a_pulling_decode_replica_takes_the_kv_when_it_has_room() -> None:
    """DistServe's pull: decode capacity 6 tokens, threshold 0.05 (0.3 blocks: one
    request taken at a time), a FIFO link of 1 token/s. A (4, 2) and B (3, 2) are
    prefilled [0, 1]. The idle decode replica takes A at 1 (4 blocks reserved,
    transfer [1, 5]); B waits on its prefill replica (A's blocks are waiting). At 5
    A is adopted; B's 3 blocks are not free beside A's 4. A decodes [5, 6] and
    ends; at the boundary 6 the replica takes B: transfer [6, 9], decode [9, 10].
    Pushed, B's KV would follow A's on the link [5, 8] and B end at 9."""
    instance = Instance([0.0, 0.0], [4, 3], [2, 2])
    link = Link("p", "d", bandwidth_bytes_per_s=1.0)
    small = UNIT.replace(kv_capacity_tokens=6)
    pools = (
        Pool(UNIT, "fcfs", 1, name="p", role="prefill"),
        Pool(small, "fcfs", 1, name="d", role="decode", pull=0.05),
    )
    result = simulate_cluster(instance, Cluster(pools, links=(link,)))
    assert _column(result, "transfer_start_s") == [1.0, 6.0]
    assert _column(result, "transfer_end_s") == [5.0, 9.0]
    assert _column(result, "completion_s") == [6.0, 10.0]
    pushed = simulate_cluster(instance, _cluster(link, decode=small))
    assert _column(pushed, "transfer_start_s") == [1.0, 5.0]
    assert _column(pushed, "completion_s") == [6.0, 9.0]


def test_one_token_requests_end_on_the_prefill_replica_and_misfits_are_rejected() -> (
    None
):
    """A (2, 1) ends with its prefill at 1 and moves nothing. B (3, 5) peaks at 7
    tokens, over the decode capacity of 6: rejected at arrival, counted. C (2, 2)
    moves over the ideal link and decodes [1, 2]."""
    instance = Instance([0.0, 0.0, 0.0], [2, 3, 2], [1, 5, 2])
    small = UNIT.replace(kv_capacity_tokens=6)
    result = simulate_cluster(instance, _cluster(decode=small))
    completion = _column(result, "completion_s")
    assert completion[0] == 1.0 and np.isnan(completion[1]) and completion[2] == 2.0
    assert _column(result, "decode_replica") == [-1, -1, 1]
    assert _column(result, "transferred_bytes") == [0.0, 0.0, 2.0]
    assert "fits no decode replica" in _column(result, "rejected")[1]
    assert result.metrics["num_rejected"] == 1


def test_round_robin_spreads_over_the_decode_replicas() -> None:
    instance = Instance([0.0, 0.0, 0.0, 0.0], [2, 2, 2, 2], [2, 2, 2, 2])
    result = simulate_cluster(instance, _cluster(decode_replicas=2))
    # replicas: 0 prefill, 1 and 2 decode; request i goes to decode replica i mod 2
    assert _column(result, "decode_replica") == [1, 2, 1, 2]
    assert _column(result, "completion_s") == [2.0, 2.0, 2.0, 2.0]


DISAGG_TOML = """
router = "least-outstanding"
decode_router = "round-robin"

[[pool]]
name = "p"
role = "prefill"
model = "unit-slot"

[[pool]]
name = "d"
role = "decode"
replicas = 2
model = "unit-slot"

[[link]]
from = "p"
to = "d"
bandwidth_bytes_per_s = 2.0
latency_s = 0.5
sharing = "share"
"""


def test_cluster_file_with_links(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "pd.toml"
    path.write_text(DISAGG_TOML)
    cluster = load_cluster(path)
    assert [p.role for p in cluster.pools] == ["prefill", "decode"]
    assert cluster.disaggregated
    assert cluster.link("p", "d") == Link("p", "d", 2.0, 0.5, "share")
    assert cluster.decode_router.name == "round-robin"
    trace = Path(__file__).resolve().parents[1] / "instances" / "default.csv"
    with pytest.raises(SystemExit) as exited:
        main(["simulate", str(trace), "--cluster", str(path), "--json"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert '"transferred_bytes"' in out
