"""Memory tiers: recompute against blocking and asynchronous swap, and InfiniGen.

Settings: the first ``--requests`` requests of the Azure code 2023 trace
(``../shared/traces/azure_code_2023.csv``) clipped to 4,096 tokens (Llama-2's
context), arrivals compressed ``--speedup`` times so that the replica is loaded,
outputs ``--output-scale`` times longer (clipped to the context: the code trace's
outputs are short, p50 8 tokens, and vLLM V0 rarely preempts on them);
``llama2-70b-a100-tp4`` with its KV capacity cut to ``--kv-tokens`` to force
preemption; 64 GiB of host memory, 25 GB/s each way (PCIe 4.0 x16, the host
tier's default) unless swept.

Prints two Markdown tables: one row per policy (mean and p99 E2E, recomputed
tokens, bytes swapped each way, copy seconds on the critical path, wall time of
the run), then the bandwidth sweep: for each PCIe bandwidth, the mean E2E of
``vllm-v0`` with swap and of ``fastserve`` with asynchronous and blocking swap,
against the same policies recomputing (which need no bandwidth); the crossover is the
bandwidth below which recompute wins.

    ./run python benchmarks/tiers/bench_tiers.py [--output-scale 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lsched.evaluator import simulate
from lsched.instance import Instance
from lsched.profile import DeploymentProfile, load_profile
from lsched.tiers import HostTier
from lsched.traces import read_trace

SHARED = Path(__file__).resolve().parents[3] / "shared"
AZURE = SHARED / "traces" / "azure_code_2023.csv"
POLICIES = (
    "vllm-v0",
    "vllm-v0:preemption=swap",
    "fastserve",
    "fastserve:swap=true",
    "fastserve:swap=true,swap_mode=blocking",
    "infinigen",
)
#: (recompute, swap) pairs of the bandwidth sweep.
PAIRS = (
    ("vllm-v0", "vllm-v0:preemption=swap"),
    ("fastserve", "fastserve:swap=true"),
    ("fastserve", "fastserve:swap=true,swap_mode=blocking"),
)
BANDWIDTHS_GB_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 25.0, 64.0)
HOST_BYTES = 64 * 2**30


def load(requests: int, speedup: float, output_scale: int) -> Instance:
    """The trace's first requests, compressed in time, outputs scaled."""
    instance, _ = read_trace(AZURE, max_model_len=4096, limit=requests)
    start = instance.arrival_s.min()
    longer = instance.output_tokens * output_scale
    return instance.replace(
        arrival_s=(instance.arrival_s - start) / speedup,
        output_tokens=np.minimum(longer, 4096 - instance.prompt_tokens),
    )


def measure(label: str, instance: Instance, profile: DeploymentProfile) -> list[str]:
    """One policy's table cells."""
    began = time.perf_counter()
    m = simulate(instance, profile, label).metrics
    run_s = time.perf_counter() - began
    return [
        f"`{label}`",
        f"{m['e2e_mean_s']:.2f}",
        f"{m['e2e_p99_s']:.2f}",
        f"{m['recomputed_tokens']:,.0f}",
        f"{m.get('swap_out_bytes', 0.0) / 1e9:.2f}",
        f"{m.get('swap_in_bytes', 0.0) / 1e9:.2f}",
        f"{m.get('swap_stall_s', 0.0):.2f}",
        f"{run_s:.1f}",
    ]


def table(header: list[str], rows: list[list[str]]) -> None:
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


def mean_e2e(label: str, instance: Instance, profile: DeploymentProfile) -> float:
    return simulate(instance, profile, label).metrics["e2e_mean_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--speedup", type=float, default=4.0)
    parser.add_argument("--kv-tokens", type=int, default=20_000)
    parser.add_argument("--output-scale", type=int, default=1)
    args = parser.parse_args()
    instance = load(args.requests, args.speedup, args.output_scale)
    base = load_profile("llama2-70b-a100-tp4").replace(
        kv_capacity_tokens=args.kv_tokens, host=HostTier(HOST_BYTES)
    )
    print(
        f"{len(instance)} requests over {instance.arrival_s.max():.0f} s, outputs "
        f"x{args.output_scale}; KV {args.kv_tokens:,} tokens; host "
        f"{HOST_BYTES / 2**30:.0f} GiB"
    )
    header = ["policy", "E2E mean (s)", "E2E p99 (s)", "recomputed tokens",
              "swapped out (GB)", "swapped in (GB)", "copy s on critical path",
              "run (s)"]  # fmt: skip
    table(header, [measure(label, instance, base) for label in POLICIES])
    recompute = [mean_e2e(a, instance, base) for a, _ in PAIRS]
    rows = [["recompute", *(f"{x:.2f}" for x in recompute)]]
    for gb in BANDWIDTHS_GB_S:
        profile = base.replace(host=HostTier(HOST_BYTES, gb * 1e9, gb * 1e9))
        swap = [mean_e2e(b, instance, profile) for _, b in PAIRS]
        marks = [" *" if s > r else "" for s, r in zip(swap, recompute, strict=True)]
        rows.append(
            [f"{gb:g}", *(f"{s:.2f}{m}" for s, m in zip(swap, marks, strict=True))]
        )
    table(["PCIe GB/s", *(f"`{b}` E2E mean (s)" for _, b in PAIRS)], rows)
    print("\n(*: recompute wins at this bandwidth)")


if __name__ == "__main__":
    main()
