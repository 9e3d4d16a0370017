"""Round robin, least-outstanding and Llumnix (dispatch by freeness, live
migration) on four Llama-2-70B replicas, Azure code trace.

    ./run python benchmarks/cluster/bench_llumnix.py [--requests 2000] [--speedup 1]
        [--kv-capacity-tokens N] [--generated RATE]

Settings: the Azure code 2023 trace clipped to 4,096 tokens (its first
``--requests`` requests, arrivals compressed ``--speedup`` times), four
``llama2-70b-a100-tp4`` replicas (KV capacity ``--kv-capacity-tokens`` if
given, for memory pressure) running ``vllm-v0`` (vLLM V0's FCFS with
recompute preemption); migration over a 25 GB/s link with 0.05 ms latency
between replicas (the BLIS transfer figure of
``../shared/reference/serving-systems.md``); ``llumnix`` with its defaults
(tick 0.05 s, last-come request, last stage at 16 blocks or fewer, 3 stages).
``--generated RATE`` replaces the trace by a seeded workload with long outputs,
the kind Llumnix's evaluation uses (Poisson arrivals at ``RATE`` per second,
prompts log-normal with median 512 and sigma 1 up to 4,096 tokens, outputs
log-normal with median 256 and sigma 1 up to 2,048 tokens, seed 0): the code
trace's outputs (median 8 tokens) finish before a migration's copy would.
Prints mean and p99 TTFT and E2E, preemptions, migrations and the replay's
wall-clock seconds per router.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import simulate_cluster
from lsched.generators import LogNormal, Poisson, generate
from lsched.instance import Instance
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
#: the last: Llumnix's dispatch alone (its first tick after every arrival)
ROUTERS = ("round-robin", "least-outstanding", "llumnix", "llumnix:interval_s=1e9")
LINK = {"bandwidth_bytes_per_s": 25e9, "latency_s": 5e-5}


def _workload(args: argparse.Namespace) -> Instance:
    """The trace's first requests, or the generated workload (module docstring)."""
    if args.generated is not None:
        return generate(
            args.requests,
            arrivals=Poisson(rate_per_s=args.generated),
            prompt=LogNormal(median=512, sigma=1.0, max_tokens=4096),
            output=LogNormal(median=256, sigma=1.0, max_tokens=2048),
            seed=0,
        )
    if not AZURE.exists():
        raise SystemExit(f"{AZURE} is absent: this benchmark needs the Azure trace")
    instance, _ = read_trace(AZURE, max_model_len=4096, limit=args.requests)
    arrival = instance.arrival_s - instance.arrival_s[0]
    return instance.replace(arrival_s=arrival / args.speedup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--speedup", type=float, default=1.0)
    parser.add_argument(
        "--kv-capacity-tokens", type=int, help="a smaller KV per replica"
    )
    parser.add_argument(
        "--generated", type=float, metavar="RATE", help="long outputs, Poisson RATE/s"
    )
    args = parser.parse_args()
    instance = _workload(args)
    profile = load_profile("llama2-70b-a100-tp4")
    if args.kv_capacity_tokens is not None:
        profile = profile.replace(kv_capacity_tokens=args.kv_capacity_tokens)
    rows = []
    for router in ROUTERS:
        pool = Pool(profile, "vllm-v0", 4, name="a")
        cluster = Cluster((pool,), router, links=(Link("a", "a", **LINK),))
        started = time.perf_counter()
        m = simulate_cluster(instance, cluster, engine="python").metrics
        rows.append(
            {
                "router": router,
                "ttft_mean_s": round(m["ttft_mean_s"], 3),
                "ttft_p99_s": round(m["ttft_p99_s"], 3),
                "e2e_mean_s": round(m["e2e_mean_s"], 3),
                "e2e_p99_s": round(m["e2e_p99_s"], 3),
                "preemptions": int(m["preemptions"]),
                "migrations": int(m.get("migrations", 0)),
                "replay_s": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
