"""Every registered policy on a real trace and on Jaillet et al.'s online setting.

    ./run python benchmarks/policies/bench_policies.py

1. Azure code 2023 (../shared/traces, skipped if absent) on ``llama2-70b-a100-tp4``
   with 4 replicas (round robin), prompt + output clipped to the profile's
   ``max_model_len``; length-aware policies get oracle predictions and log-normal
   noisy ones (sigma 0.5, seed 0).
2. Jaillet et al. 2025's online setting: n = 50, Poisson 1.0 request per slot,
   ``unit-slot`` with the instance's M, seeds 0..19, oracle predictions; mean total
   latency sum_i (c_i - a_i) and total preemptions.
3. Replica dispatch on the Azure trace (4 replicas): fcfs and sarathi under
   round-robin, least-outstanding and least-kv (the last two simulate the
   replicas jointly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lsched.evaluator import simulate
from lsched.generators import Poisson, jaillet
from lsched.policies import REGISTRY
from lsched.predictors import lognormal_noise, oracle
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[2]
LENGTH_AWARE = {"sjf", "srpt", "mc-sf", "sorted-f", "wait", "hybrid", "priority"}
NEEDS_TENANTS = {"vtc"}  # neither instance set carries tenants


def azure() -> None:
    path = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
    if not path.exists():
        print(f"skipped: {path} is absent")
        return
    profile = load_profile("llama2-70b-a100-tp4")
    # Llama-2 serves at most 4,096 tokens: clip as the engine would have to
    trace, report = read_trace(path, max_model_len=profile.max_model_len)
    print(f"Azure code 2023: {len(trace)} requests, {report.clipped} clipped to "
          f"{profile.max_model_len} tokens\n")  # fmt: skip
    print("| policy | predictions | makespan (s) | TTFT mean (s) | TTFT p99 (s) | "
          "E2E mean (s) | TPOT mean (s) | preemptions | runtime (s) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in REGISTRY:
        if name in NEEDS_TENANTS:
            print(f"| {name} | needs a tenant column |")
            continue
        cases = [("none", trace)]
        if name in LENGTH_AWARE:
            cases = [("oracle", oracle(trace)),
                     ("noise 0.5", lognormal_noise(trace, 0.5, seed=0))]  # fmt: skip
        for label, instance in cases:
            try:
                r = simulate(instance, profile, name, replicas=4)
            except Exception as exc:  # a policy that cannot run this trace
                print(f"| {name} | {label} | {type(exc).__name__}: {exc} |")
                continue
            m = r.metrics
            print(
                f"| {name} | {label} | {m['makespan_s']:.1f} | {m['ttft_mean_s']:.2f} "
                f"| {m['ttft_p99_s']:.2f} | {m['e2e_mean_s']:.2f} | "
                f"{m['tpot_mean_s']:.4f} | {m['preemptions']:.0f} | {r.runtime_s:.2f} |"
            )


def jaillet_online() -> None:
    print("| policy | mean total latency (slots) | preemptions (20 seeds) |")
    print("|---|---:|---:|")
    for name in REGISTRY:
        if name in NEEDS_TENANTS:
            print(f"| {name} | needs a tenant column | |")
            continue
        totals, preemptions = [], 0
        for seed in range(20):
            inst = oracle(jaillet(50, seed=seed, arrivals=Poisson(rate_per_s=1.0)))
            m = inst.params["kv_capacity_tokens"]
            profile = load_profile("unit-slot").replace(kv_capacity_tokens=m)
            try:
                r = simulate(inst, profile, name)
            except Exception as exc:
                print(f"| {name} | {type(exc).__name__}: {exc} | |")
                break
            rec = r.requests
            totals.append(float((rec["completion_s"] - inst.arrival_s).sum()))
            preemptions += int(rec["preemptions"].sum())
        else:
            print(f"| {name} | {np.mean(totals):.1f} | {preemptions} |")


def dispatch() -> None:
    path = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
    if not path.exists():
        print(f"skipped: {path} is absent")
        return
    profile = load_profile("llama2-70b-a100-tp4")
    trace, _ = read_trace(path, max_model_len=profile.max_model_len)
    print("| policy | dispatch | makespan (s) | TTFT mean (s) | TTFT p99 (s) | "
          "E2E mean (s) | TPOT mean (s) | runtime (s) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in ("fcfs", "sarathi"):
        for rule in ("round-robin", "least-outstanding", "least-kv"):
            r = simulate(trace, profile, name, replicas=4, dispatch=rule)
            m = r.metrics
            print(
                f"| {name} | {rule} | {m['makespan_s']:.1f} | {m['ttft_mean_s']:.2f} "
                f"| {m['ttft_p99_s']:.2f} | {m['e2e_mean_s']:.2f} | "
                f"{m['tpot_mean_s']:.4f} | {r.runtime_s:.2f} |"
            )


if __name__ == "__main__":
    azure()
    print()
    jaillet_online()
    print()
    dispatch()
