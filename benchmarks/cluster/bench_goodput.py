"""Goodput per GPU of colocated and disaggregated OPT-13B clusters on the Azure code
trace, and the time each goodput search took.

    ./run python benchmarks/cluster/bench_goodput.py [--requests 2000] [--poisson 0]

Settings: the Azure code 2023 trace clipped to 2,048 tokens (its first
``--requests`` requests), DistServe's OPT-13B chat SLO (TTFT 0.25 s, TPOT 0.1 s,
``evaluation/ae-scripts/e2e/_plot.py``), 90 % of requests meeting both; the
``opt-13b-a100-tp{1,2}-distserve`` profiles (DistServe's fits, KV capacity from its
``max_num_tokens.csv``); ``vllm-v0`` on every pool (prefill-first, vLLM V0's KV
rules), ``least-outstanding`` arrivals, ``round-robin`` decode routing, a 25 GB/s
FIFO link (the transfer figure of ``../shared/reference/serving-systems.md``).
Each search starts at 0.01 req/s per GPU (a failure there is goodput 0 at once)
and stops at a relative width of 1 %.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from lsched.cluster import Cluster, Link, Pool
from lsched.goodput import goodput, poisson_arrivals
from lsched.profile import load_profile
from lsched.slo import parse_slo
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
SLO = "ttft=0.25,tpot=0.1"
POLICY = "vllm-v0"
LINK = {"bandwidth_bytes_per_s": 25e9}


def clusters() -> dict[str, Cluster]:
    """The deployments compared, by label."""
    tp1 = load_profile("opt-13b-a100-tp1-distserve")
    tp2 = load_profile("opt-13b-a100-tp2-distserve")

    def colocated(profile: object, replicas: int) -> Cluster:
        return Cluster((Pool(profile, POLICY, replicas),), "least-outstanding")

    def split(
        prefill: object, p: int, decode: object, d: int, **pull: float
    ) -> Cluster:
        pools = (
            Pool(prefill, POLICY, p, name="p", role="prefill"),
            Pool(decode, POLICY, d, name="d", role="decode", **pull),
        )
        return Cluster(pools, "least-outstanding", (Link("p", "d", **LINK),))

    return {
        "colocated 2 x TP1": colocated(tp1, 2),
        "colocated 1 x TP2": colocated(tp2, 1),
        "colocated 2 x TP2": colocated(tp2, 2),
        "1P TP1 + 1D TP1": split(tp1, 1, tp1, 1),
        "2P TP1 + 2D TP1": split(tp1, 2, tp1, 2),
        "1P TP1 + 3D TP1": split(tp1, 1, tp1, 3),
        "1P TP2 + 1D TP1": split(tp2, 1, tp1, 1),
        "1P TP2 + 2D TP1": split(tp2, 1, tp1, 2),
        "1P TP2 + 1D TP1, pull": split(tp2, 1, tp1, 1, pull=0.05),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--poisson", type=int, metavar="SEED", help="Poisson arrivals drawn with SEED"
    )
    args = parser.parse_args()
    if not AZURE.exists():
        raise SystemExit(f"{AZURE} is absent: this benchmark needs the Azure trace")
    instance, _ = read_trace(AZURE, max_model_len=2048, limit=args.requests)
    if args.poisson is not None:
        instance = poisson_arrivals(instance, args.poisson)
    slo = parse_slo(SLO)
    rows = []
    for label, cluster in clusters().items():
        started = time.perf_counter()
        result = goodput(instance, cluster, slo, low=0.01)
        rows.append(
            {
                "deployment": label,
                "gpus": result.gpus,
                "goodput_per_gpu": round(result.goodput_per_gpu, 4),
                "status": result.status,
                "rates_tried": len(result.trials),
                "search_s": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.out is not None:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
