"""The prefix cache's host tier on Mooncake's synthetic trace: hit ratio and
TTFT with the GPU cache alone and with a host-tier cache beside it.

Run from the repository root::

    python benchmarks/prefix_host/bench_host_tier.py --requests 1000

The first ``--requests`` requests of ``../shared/traces/mooncake_synthetic.jsonl``
on ``--replicas`` replicas of ``llama3-70b-a100-tp8-128k`` (320 KB of KV per
token, Mooncake's figure) under ``vllm``, dealt round-robin; the host tier's
memory is set to hold the host cache (``host_capacity_tokens`` x 327,680 bytes).
Prints one row per cache: prefill tokens saved, hit ratio, tokens copied from
the host and their seconds, mean and p90 TTFT, and the simulation's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from lsched.evaluator import simulate
from lsched.profile import load_profile
from lsched.traces import read_trace

TRACE = Path(__file__).resolve().parents[3] / "shared/traces/mooncake_synthetic.jsonl"
PROFILE = "llama3-70b-a100-tp8-128k"


def main() -> None:
    """Parse the arguments and print the table (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--host-tokens", type=int, nargs="+",
                        default=[1_000_000, 3_000_000])  # fmt: skip
    parser.add_argument("--gpu-tokens", type=int, default=None,
                        help="cut each replica's KV to this many tokens")  # fmt: skip
    args = parser.parse_args()
    instance, _ = read_trace(str(TRACE))
    instance = instance.subset(range(min(args.requests, len(instance))))
    base = load_profile(PROFILE)
    if args.gpu_tokens is not None:
        base = base.replace(kv_capacity_tokens=args.gpu_tokens)
    caches = [("lru", None)] + [(f"lru:host_capacity_tokens={m}", m)
                                for m in args.host_tokens]  # fmt: skip
    print("cache | saved tokens | hit ratio | host tokens | copy s | "
          "mean TTFT s | p90 TTFT s | rejected | wall s")  # fmt: skip
    for cache, tokens in caches:
        profile = base
        if tokens is not None:
            memory = tokens * base.kv_bytes_per_token
            profile = base.replace(
                host=dataclasses.replace(base.host, memory_bytes=memory)
            )
        start = time.perf_counter()
        result = simulate(instance, profile, "vllm", replicas=args.replicas,
                          prefix_cache=cache)  # fmt: skip
        wall = time.perf_counter() - start
        m = result.metrics
        print(
            f"{cache} | {m['prefill_tokens_saved']:.0f} | "
            f"{m['prefix_hit_ratio']:.4f} | {m.get('host_hit_tokens', 0):.0f} | "
            f"{m.get('host_copy_s', 0):.3f} | {m['ttft_mean_s']:.3f} | "
            f"{m['ttft_p90_s']:.3f} | {m['num_rejected']:.0f} | {wall:.1f}"
        )


if __name__ == "__main__":
    main()
