"""vLLM's ``max_loras`` rule against dLoRA (its batching, its dispatch and its
co-migration) on 50 adapters of skewed popularity, four Llama-7B replicas.

    ./run python benchmarks/adapters/bench_comig.py lora50.csv [--requests N]
        [--max-loras 4]

Settings: the trace of ``README.md`` (``lora50.csv``; its first ``--requests``
requests), four ``llama-7b-dlora`` replicas serving the adapters with
``max_loras`` slots; migration over a 25 GB/s link with 0.05 ms latency between
the replicas (the figure ``benchmarks/cluster/bench_llumnix.py`` uses). Runs:

- ``vllm``, round robin: vLLM's ``max_loras`` admission rule;
- ``dlora``, round robin: dLoRA's merged/unmerged batching alone;
- ``dlora``, router ``dlora:interval_s=1e9``: dLoRA's dispatch alone (no tick
  comes before the run ends);
- ``dlora``, router ``dlora``: dispatch and co-migration (every 10 s, the ILP
  solved by HiGHS, 5 s at most per solve).

Prints mean and p99 TTFT and E2E, migrations, recomputed tokens, adapter loads
and their seconds, and the replay's wall-clock seconds per run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from lsched.adapters import AdapterSpec
from lsched.cluster import Cluster, Link, Pool
from lsched.evaluator import simulate_cluster
from lsched.profile import load_profile
from lsched.traces import read_trace

#: (policy, router) of every run (module docstring)
RUNS = (
    ("vllm", "round-robin"),
    ("dlora", "round-robin"),
    ("dlora", "dlora:interval_s=1e9"),
    ("dlora", "dlora"),
)
LINK = {"bandwidth_bytes_per_s": 25e9, "latency_s": 5e-5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--max-loras", type=int, default=4)
    args = parser.parse_args()
    instance, _ = read_trace(args.trace, limit=args.requests)
    profile = load_profile("llama-7b-dlora")
    spec = AdapterSpec(max_loras=args.max_loras)
    rows = []
    for policy, router in RUNS:
        pool = Pool(profile, policy, 4, name="a", adapters=spec)
        cluster = Cluster((pool,), router, links=(Link("a", "a", **LINK),))
        started = time.perf_counter()
        m = simulate_cluster(instance, cluster, engine="python").metrics
        rows.append(
            {
                "policy": policy,
                "router": router,
                "ttft_mean_s": round(m["ttft_mean_s"], 3),
                "ttft_p99_s": round(m["ttft_p99_s"], 3),
                "e2e_mean_s": round(m["e2e_mean_s"], 3),
                "e2e_p99_s": round(m["e2e_p99_s"], 3),
                "migrations": int(m.get("migrations", 0)),
                "recomputed": int(m["recomputed_tokens"]),
                "loads": int(m["adapter_loads"]),
                "load_s": round(m["adapter_load_s"], 4),
                "replay_s": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
