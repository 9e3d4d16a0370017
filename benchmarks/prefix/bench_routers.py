"""Routers on Mooncake's synthetic trace: random, load-balance, local
cache-aware and Conductor, on 4 prefill + 4 decode replicas.

Settings: ``/work/shared/traces/mooncake_synthetic.jsonl`` (3,993 requests over
1,022 s, 512-token hash blocks), the first ``--limit`` requests;
``llama3-70b-a100-tp8-128k`` (Llama-3.1-70B, 8 A100, 128k context, Splitwise
fit extrapolated: ``models/README.md``) in both pools, ``vllm`` on both, an LRU
prefix cache in each prefill replica's GPU KV (no cache of its own);
``least-outstanding`` decode routing; one prefill -> decode link of 87 GB/s
shared by its transfers (Mooncake's transfer engine, 4 x 200 Gbps:
``/work/shared/reference/serving-systems.md``). Prompts over 131,072 tokens
are rejected at arrival (counted in "rejected" for every router).

Routers: ``random:seed=0``; ``least-outstanding`` (Mooncake's load-balance);
``prefix`` (local cache-aware: longest cached prefix, ties to the least
loaded); ``conductor`` (predicted TTFT = queue + prefill on local hits; no SLO
unless ``--ttft-slo``).

``--kv-pool M`` adds two rows on a cluster whose prefill replicas also share a
KV pool of ``M`` tokens (``lru:pool_capacity_tokens=M``, rule 6 of
``lsched/evaluator/prefix.py``; each replica's host memory set to a quarter of
it): ``prefix`` (local cache-aware: its own GPU and the pool blocks homed on it)
and ``conductor`` (Mooncake's global cache-aware scheduling: a prefix held by
another replica is copied over the pool's own 87 GB/s link, and the copy is in
the prediction).

``--rate-scale r`` divides every arrival time by ``r`` (0.25: 4x slower).

Usage::

    python benchmarks/prefix/bench_routers.py [--limit N] [--rate-scale R]
        [--ttft-slo S] [--kv-pool M]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import simulate_cluster
from lsched.instance import Instance
from lsched.profile import load_profile
from lsched.routers import parse_router
from lsched.traces import read_trace

TRACE = "/work/shared/traces/mooncake_synthetic.jsonl"
PROFILE = "llama3-70b-a100-tp8-128k"
#: Mooncake's transfer engine, 4 x 200 Gbps (serving-systems.md)
LINK_BYTES_PER_S = 87e9


def cluster(router: str, pool_tokens: int | None = None) -> Cluster:
    """4 prefill replicas with an LRU prefix cache (and a KV pool of
    ``pool_tokens`` they share, over a link of their own), 4 decode replicas."""
    profile = load_profile(PROFILE)
    cache = "lru"
    links = [Link("p", "d", LINK_BYTES_PER_S, 0.0, "share")]
    prefill = profile
    if pool_tokens is not None:
        cache = f"lru:pool_capacity_tokens={pool_tokens}"
        links.append(Link("p", "p", LINK_BYTES_PER_S, 0.0, "share"))
        memory = -(-pool_tokens // 4) * profile.kv_bytes_per_token
        prefill = profile.replace(
            host=dataclasses.replace(profile.host, memory_bytes=memory)
        )
    pools = (
        Pool(prefill, "vllm", 4, name="p", role="prefill", prefix_cache=cache),
        Pool(profile, "vllm", 4, name="d", role="decode"),
    )
    return Cluster(
        pools,
        parse_router(router),
        tuple(links),
        decode_router=parse_router("least-outstanding"),
    )


def row(router: str, instance: Instance, pool_tokens: int | None = None) -> str:
    """One table row: TTFT mean and p90 over the served, hit ratio, rejections."""
    start = time.perf_counter()
    result = simulate_cluster(instance, cluster(router, pool_tokens))
    wall = time.perf_counter() - start
    requests = result.requests
    served = requests["rejected"] == ""
    ttft = requests["first_token_s"].to_numpy() - instance.arrival_s
    ttft = ttft[served.to_numpy()]
    m = result.metrics
    label = f"`{router}`" if pool_tokens is None else f"`{router}` + pool"
    remote = m.get("remote_hit_tokens", 0.0) / 1e6
    return (
        f"| {label} | {ttft.mean():.2f} | {np.percentile(ttft, 90):.2f} | "
        f"{100 * m['prefix_hit_ratio']:.1f} | {remote:.2f} | "
        f"{int(m['num_rejected'])} | {wall:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--ttft-slo", type=float, default=None)
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument("--kv-pool", type=int, default=None)
    args = parser.parse_args()
    instance, _ = read_trace(TRACE, limit=args.limit, rate_scale=args.rate_scale)
    conductor = "conductor"
    if args.ttft_slo is not None:
        conductor += f":ttft_slo_s={args.ttft_slo}"
    print(f"{len(instance)} requests over {instance.arrival_s[-1]:.0f} s")
    print(
        "| router | TTFT mean (s) | TTFT p90 (s) | hit ratio (%) | "
        "copied from another replica (M tokens) | rejected | run (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for router in ("random:seed=0", "least-outstanding", "prefix", conductor):
        print(row(router, instance), flush=True)
    if args.kv_pool is not None:
        for router in ("prefix", conductor):
            print(row(router, instance, args.kv_pool), flush=True)


if __name__ == "__main__":
    main()
