"""``vllm-v0`` in simdistserve's colocated settings: cost per iteration as the
running set grows, and the Azure code trace on both engines, in one run.

    ./run python benchmarks/evaluator/bench_vllm_v0.py

Settings (DistServe's colocated mode, as ``lsched simulate --model
opt-13b-a100-tp1-vllm --policy vllm-v0:kv_limit=false,prefill_token_budget=66144,
decode_context_cap=50000 --set max_num_batched_tokens=66144 --set
max_num_seqs=66144 --kv-capacity-tokens 1000000000``):

- the Azure code 2023 trace clipped to 2,048 tokens (``max_model_len=2048``):
  seconds on the Python engine and on the compiled path;
- synthetic overload, every request arriving at 0 (seeded: prompts 100-1,000,
  outputs 200-2,000 tokens), with 100 and with 10,000 requests: the compiled
  path's seconds per iteration and the time-weighted mean of running requests.
  Decode batches stop at the 50,000-token context cap, so the batch is about the
  same at both sizes while the running set is 100 times larger: the compiled
  path's per-iteration work follows the batch, not the running set.

Times leave out compiling or loading the kernel (``compile_s``); best of 3.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lsched.evaluator import simulate
from lsched.instance import Instance
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
POLICY = "vllm-v0:kv_limit=false,prefill_token_budget=66144,decode_context_cap=50000"


def profile():  # type: ignore[no-untyped-def]
    return load_profile("opt-13b-a100-tp1-vllm").replace(
        kv_capacity_tokens=1_000_000_000,
        max_num_seqs=66144,
        max_num_batched_tokens=66144,
    )


def best(instance: Instance, engine: str, repeats: int = 3):  # type: ignore[no-untyped-def]
    runs = [
        simulate(instance, profile(), POLICY, engine=engine, log=False)
        for _ in range(repeats)
    ]
    assert all(
        r.engine == ("python" if engine == "python" else "compiled") for r in runs
    )
    return min(runs, key=lambda r: r.runtime_s)


def overload(n: int) -> Instance:
    rng = np.random.default_rng(0)
    return Instance(
        arrival_s=np.zeros(n),
        prompt_tokens=rng.integers(100, 1001, size=n),
        output_tokens=rng.integers(200, 2001, size=n),
    )


def mean_running(result) -> float:  # type: ignore[no-untyped-def]
    """Time-weighted mean number of running requests (admission to completion)."""
    r = result.requests
    return float(
        (r["completion_s"] - r["admitted_s"]).sum() / result.metrics["makespan_s"]
    )


def main() -> None:
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if AZURE.exists():
        instance, _ = read_trace(AZURE, max_model_len=2048)
        python, compiled = best(instance, "python", 1), best(instance, "compiled")
        done = python.requests["completion_s"].to_numpy()
        diff = np.max(
            np.abs(compiled.requests["completion_s"].to_numpy() - done) / done
        )
        assert python.iterations == compiled.iterations
        print()
        print(
            "| Azure code, clipped 2,048 | iterations | python (s) | compiled (s) "
            "| ratio | max rel. diff |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        print(
            f"| {len(instance):,} requests | {python.iterations:,} "
            f"| {python.runtime_s:.3f} | {compiled.runtime_s:.4f} "
            f"| {python.runtime_s / compiled.runtime_s:.0f}x | {diff:.1e} |"
        )
    print()
    print("| overload | iterations | mean running | compiled (us/iter) |")
    print("|---|---:|---:|---:|")
    per = {}
    for n in (100, 10_000):
        result = best(overload(n), "compiled")
        per[n] = result.runtime_s / result.iterations * 1e6
        print(
            f"| {n:,} at t=0 | {result.iterations:,} "
            f"| {mean_running(result):,.0f} | {per[n]:.2f} |",
            flush=True,
        )
    print(f"\n10,000 / 100 per iteration: {per[10_000] / per[100]:.2f}x")
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
