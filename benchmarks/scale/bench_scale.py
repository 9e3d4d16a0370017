"""Scale: total latency on the Azure code trace, one llama2-70b-a100-tp4 replica.

    ./run python benchmarks/scale/bench_scale.py [--limits 60 600] [--seed 0]
        [--requests N] [--json benchmarks/scale/results.json]

1. Bounds: every bound of :func:`lsched.formulations.bounds.suite.bound_suite` that
   holds for any schedule (closed forms in seconds).
2. Every registered policy that can run the trace (length-aware ones with oracle
   predictions), and ``priority`` with the ``work`` key weighted for the profile,
   uncapped and with prefill chunks capped at 384 tokens: total latency and the
   certified gap ``(L - bound) / L`` against the best bound.
3. :func:`lsched.formulations.scale.improve` for each ``--limits`` (seconds of
   wall clock): objective, gap, runtime, the starts and the moves kept.

The trace is read as is (prompts up to 7,437 tokens, beyond the profile's
``max_model_len`` of 4,096: the engine does not enforce it), as in the issue's
figures. ``../shared/traces`` must be present.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lsched.evaluator import simulate
from lsched.formulations.bounds.suite import bound_suite
from lsched.formulations.scale import improve
from lsched.policies import REGISTRY, PolicyError, PolicySpec
from lsched.policies.priority import work_params
from lsched.predictors import oracle
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
PROFILE = "llama2-70b-a100-tp4"
NEEDS_TENANTS = {"vtc"}


def total_latency(result: Any, arrival_s: np.ndarray) -> float:
    return float((result.requests["completion_s"].to_numpy() - arrival_s).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", type=float, nargs="*", default=[60.0, 600.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=None, help="first N only")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    if not TRACE.exists():
        print(f"skipped: {TRACE} is absent")
        return
    profile = load_profile(PROFILE)
    trace, _ = read_trace(TRACE)
    if args.requests is not None:
        trace = trace.subset(np.arange(min(args.requests, len(trace))))
    instance = oracle(trace)
    a = instance.arrival_s
    print(f"Azure code 2023: {len(trace)} requests over {a.max() - a.min():.0f} s, "
          f"{PROFILE}, 1 replica, objective: total latency sum(C - a)\n")  # fmt: skip
    out: dict[str, Any] = {"requests": len(trace), "profile": PROFILE}

    began = time.perf_counter()
    bounds = [b for b in bound_suite(trace, profile, "latency") if b.scope == "any"]
    best = max(bounds, key=lambda b: b.value)
    print(f"bounds ({time.perf_counter() - began:.1f} s):")
    print("| bound | value (s) |\n|---|---:|")
    for b in bounds:
        print(f"| {b.name} | {b.value:.4e} |")
    out["bounds"] = {b.name: b.value for b in bounds}

    def gap(value: float) -> float:
        return (value - best.value) / value

    print(f"\npolicies (gap against {best.name} = {best.value:.4e} s):")
    print("| policy | total latency (s) | gap | runtime (s) |\n|---|---:|---:|---:|")
    policies: dict[str, float] = {}
    specs: list[tuple[str, Any]] = [
        (name, name) for name in REGISTRY if name not in NEEDS_TENANTS
    ]
    specs[[n for n, _ in specs].index("priority")] = (
        "priority (work key for the profile)",
        PolicySpec("priority", work_params(profile)),
    )
    specs.append(
        (
            "priority (work key, chunk_tokens=384)",
            PolicySpec("priority", work_params(profile, chunk_tokens=384)),
        )
    )
    for label, spec in specs:
        began = time.perf_counter()
        try:
            value = total_latency(simulate(instance, profile, spec), a)
        except PolicyError as exc:  # unchunked policies stall on long prompts
            print(f"| {label} | {type(exc).__name__}: {str(exc)[:60]}... | | |")
            continue
        policies[label] = value
        print(f"| {label} | {value:.4e} | {gap(value):.2%} | "
              f"{time.perf_counter() - began:.1f} |")  # fmt: skip
    out["policies"] = policies

    runs = []
    for limit in args.limits:

        def line(t: float, o: float | None, b: float) -> None:
            if o is not None:
                print(f"    {t:7.1f} s  {o:.6e}  gap {(o - b) / o:.3%}", flush=True)

        print(f"\nimprove(time_limit_s={limit:g}, seed={args.seed}):")
        result = improve(
            trace, profile, time_limit_s=limit, seed=args.seed, on_progress=line
        )
        summary = result.summary() | {
            "time_limit_s": limit,
            "starts": result.start_objectives,
            "moves_tried": result.info.get("moves_tried"),
            "moves_kept": result.info.get("moves_kept"),
            "replays": result.info.get("replays"),
            "verified": result.info.get("verified"),
        }
        runs.append(summary)
        print(json.dumps(summary, indent=1))
    out["improve"] = runs
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
