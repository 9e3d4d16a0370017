"""Mooncake's KV pool (rule 6 of ``lsched/evaluator/prefix.py``) and routing
that reads every tier: hand-derived runs, and the bad input it refuses.

The naive engine's twin of the pool and its random equivalence are in
``tests/test_prefix_routing.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_refused, run, shared_prefix_trace
from test_prefix_routing import _instance, _unit

from lsched.cluster import Cluster, Link, Pool
from lsched.errors import InputError
from lsched.evaluator import simulate_cluster
from lsched.prefix import parse_prefix_cache
from lsched.routers import parse_router

#: 20-token prompts in 10 hash blocks of 2 tokens
FAMILY = list(range(1, 11))


def _pool_cluster(router: str, cache: str, tokens_per_s: float) -> Cluster:
    """Two prefill replicas (iteration 1 + 0.1 P, 1 KV byte per token, 200
    tokens of KV) with ``cache``, a link from their pool to itself carrying
    ``tokens_per_s`` tokens a second, and a unit-slot decode replica."""
    prefill = _unit({"const": 1.0, "prefill_tokens": 0.1})
    pools = (
        Pool(prefill, "vllm", 2, name="p", role="prefill", prefix_cache=cache),
        Pool(_unit(), "vllm", 1, name="d", role="decode"),
    )
    link = Link("p", "p", bandwidth_bytes_per_s=tokens_per_s)
    return Cluster(pools, router=parse_router(router), links=(link,))


def test_conductor_copies_a_prefix_from_another_replica_when_its_queue_is_longer() -> (
    None
):
    """``conductor`` on the cluster of :func:`_pool_cluster` with a pool of 100
    tokens and a link of 100 tokens/s (1 byte per token):

    * r0 (t=0, FAMILY): both predict 0 + (1 + 0.1 x 20) = 3: **p0**, busy
      until 3. Its prefill ends at 3, when its 10 blocks are written to the
      pool, homed at p0.
    * r1 (t=3, 40 new tokens): both predict 1 + 4 = 5: **p0** (the lower id),
      busy until 8.
    * r2 (t=4, FAMILY): p0 holds the blocks on its GPU, x = min(20, 19) = 19:
      queue 8 - 4 = 4 plus 1 + 0.1 = 1.1, 5.1 s. p1 finds them in the pool
      (due at 3 <= 4), homed at p0: a copy of 19 tokens, 0.19 s, plus 1.1:
      **p1** at 1.29 s. Its admission copies the 19 tokens (0.19 s) before a
      one-token prefill of 1.1 s: TTFT 1.29.

    Without the pool p1 would prefill the whole prompt (3 s), and ``prefix``
    (which counts only what a replica holds itself) waits for p0: 8 + 1.1 - 4
    = 5.1 s.
    """
    instance = _instance(
        [0.0, 3.0, 4.0], [20, 40, 20], [2, 2, 2], [FAMILY, list(range(11, 31)), FAMILY]
    )
    pooled = "lru:pool_capacity_tokens=100"
    got = simulate_cluster(instance, _pool_cluster("conductor", pooled, 100.0))
    requests = got.requests
    assert requests["replica"].tolist() == [0, 0, 1]
    assert requests["cached_tokens"].tolist() == [0, 0, 19]
    ttft = (requests["first_token_s"] - instance.arrival_s).to_numpy()
    np.testing.assert_allclose(ttft, [3.0, 5.0, 1.29], rtol=1e-12)
    metrics = got.metrics
    assert metrics["remote_hit_tokens"] == metrics["host_hit_tokens"] == 19
    assert metrics["host_copy_s"] == pytest.approx(0.19, rel=1e-12)

    local = simulate_cluster(instance, _pool_cluster("conductor", "lru", 100.0))
    assert local.requests["first_token_s"].iloc[2] - 4.0 == pytest.approx(3.0)
    greedy = simulate_cluster(instance, _pool_cluster("prefix", pooled, 100.0))
    assert greedy.requests["replica"].iloc[2] == 0
    assert greedy.requests["first_token_s"].iloc[2] - 4.0 == pytest.approx(5.1)


def test_a_slow_link_keeps_conductor_on_the_replica_that_holds_the_prefix() -> None:
    """The run above with a link of 10 tokens/s: p1's copy would take 1.9 s,
    so it predicts 3.0 s (the copy and a one-token prefill) against p0's 5.1 s
    and still copies; at 2 tokens/s the copy alone takes 9.5 s, over p0's
    queue: r2 waits for p0 and copies nothing."""
    instance = _instance(
        [0.0, 3.0, 4.0], [20, 40, 20], [2, 2, 2], [FAMILY, list(range(11, 31)), FAMILY]
    )
    pooled = "lru:pool_capacity_tokens=100"
    ten = simulate_cluster(instance, _pool_cluster("conductor", pooled, 10.0))
    assert ten.requests["replica"].iloc[2] == 1
    assert ten.requests["first_token_s"].iloc[2] - 4.0 == pytest.approx(3.0)
    two = simulate_cluster(instance, _pool_cluster("conductor", pooled, 2.0))
    assert two.requests["replica"].iloc[2] == 0
    assert two.metrics["remote_hit_tokens"] == 0


def test_prefix_routing_counts_blocks_the_gpu_evicted_but_the_host_keeps() -> None:
    """Two colocated unit-slot replicas with 60 tokens of KV in 1-token blocks
    and a host tier of 100 tokens each, ``prefix`` routing:

    * r0 (t=0, FAMILY, 2 tokens out) on replica 0; done, its 10 blocks stay
      evictable on the GPU (20 KV blocks) and written to the host.
    * r1 (t=10, 44 new tokens, 10 out) on replica 0 (no run anywhere, ties to
      the lower id): 44 + 20 > 60, so the GPU evicts blocks 1 and 2.
    * r2 (t=12, FAMILY): replica 0's GPU run is 0, but its host holds all 10
      blocks: ``prefix`` sends it there, where it takes 19 cached tokens, the
      ones no longer on the GPU copied from the host. ``least-outstanding``
      sends it to the idle replica 1.
    """
    instance = _instance(
        [0.0, 10.0, 12.0],
        [20, 44, 20],
        [2, 10, 2],
        [FAMILY, list(range(11, 33)), FAMILY],
    )
    profile = _unit().replace(kv_capacity_tokens=60)
    pool = Pool(profile, "vllm", 2, prefix_cache="lru:host_capacity_tokens=100")
    got = simulate_cluster(instance, Cluster((pool,), router=parse_router("prefix")))
    assert got.requests["replica"].tolist() == [0, 0, 0]
    assert got.requests["cached_tokens"].iloc[2] == 19
    assert got.metrics["host_hit_tokens"] > 0
    balanced = Cluster((pool,), router=parse_router("least-outstanding"))
    assert simulate_cluster(instance, balanced).requests["replica"].iloc[2] == 1


@pytest.mark.parametrize(
    ("role", "cache", "message"),
    [
        ("colocated", "lru:pool_capacity_tokens=100",
         "expected a prefill pool of a disaggregated cluster"),
        ("prefill", "lru:pool_capacity_tokens=99999999999",
         "host memory of the 2 replica(s) of pool p"),
    ],
)  # fmt: skip
def test_a_kv_pool_off_a_prefill_pool_or_over_its_host_memory_is_refused(
    role: str, cache: str, message: str
) -> None:
    """A pool on a colocated pool, or one larger than the prefill replicas'
    host memory together (2 x 4 GiB at 1 byte per token), is refused with a
    one-line error naming the pool's field."""
    with pytest.raises(InputError) as error:
        Pool(_unit(), "vllm", 2, name="p", role=role, prefix_cache=cache)
    text = str(error.value)
    assert message in text and "pool p: prefix_cache" in text and "\n" not in text
    fits = 2 * _unit().host.memory_bytes
    Pool(
        _unit(),
        "vllm",
        2,
        role="prefill",
        prefix_cache=f"lru:pool_capacity_tokens={fits}",
    )


def test_the_cli_refuses_a_kv_pool_on_a_colocated_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lsched simulate --cluster`` with a colocated pool's
    ``prefix_cache = "lru:pool_capacity_tokens=..."``: exit 2, one line
    naming the file, the pool's field and what it expected."""
    trace = shared_prefix_trace(tmp_path)
    cluster = tmp_path / "pool.toml"
    cluster.write_text(
        '[[pool]]\nname = "c"\nmodel = "llama2-70b-a100-tp4"\npolicy = "vllm"\n'
        'prefix_cache = "lru:pool_capacity_tokens=1000"\n'
    )
    code, out, err = run(["simulate", str(trace), "--cluster", str(cluster)], capsys)
    assert_refused(code, out, err, "pool.toml", "pool[0].prefix_cache", "prefill")


def test_a_pool_spec_reads_back_from_its_label() -> None:
    spec = parse_prefix_cache("lru_tail_first:pool_capacity_tokens=3000000")
    assert spec.pool_capacity_tokens == 3_000_000
    assert spec.eviction == "lru_tail_first" and spec.host_capacity_tokens is None
    assert parse_prefix_cache(spec.label) == spec
