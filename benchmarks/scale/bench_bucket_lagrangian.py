"""The bucket Lagrangian on the Azure code trace (or its first N requests).

    ./run python benchmarks/scale/bench_bucket_lagrangian.py --requests 300 \
        --delta 1.0 [--factor 2 --slack 20] [--time-limit 600] [--lp]

Runs ``priority`` with the ``work`` key and prefill chunks capped at 384 tokens
(as ``bench_bucket.py``), then the bucket Lagrangian
(:mod:`lsched.formulations.bounds.bucket_lagrangian`) with buckets of
``--delta`` seconds, the horizon at that schedule's makespan plus ``--slack``,
each request's window ending at ``a_i + factor (C_i - a_i) + slack``, multipliers
started from the schedule and Polyak's target at its total latency. ``--lp``
also solves the bucket LP on the same buckets and windows. Prints the policy's
total latency, ``seconds.work``, the bounds, their runtimes and certified gaps.
``max_model_len`` is raised to 8,192 as in ``bench_bucket.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lsched.evaluator import simulate
from lsched.formulations.bounds.bucket import bucket_lp
from lsched.formulations.bounds.bucket_lagrangian import bucket_lagrangian
from lsched.formulations.bounds.work import work_bounds
from lsched.policies import PolicySpec
from lsched.policies.priority import work_params
from lsched.predictors import oracle
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None, help="first N only")
    parser.add_argument("--delta", type=float, default=1.0, help="bucket, seconds")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--slack", type=float, default=20.0, help="seconds")
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--iterations", type=int, default=100000)
    parser.add_argument("--lp", action="store_true", help="the bucket LP too")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    if not TRACE.exists():
        print(f"skipped: {TRACE} is absent")
        return
    profile = load_profile("llama2-70b-a100-tp4").replace(max_model_len=8192)
    trace, _ = read_trace(TRACE)
    if args.requests is not None:
        trace = trace.subset(np.arange(min(args.requests, len(trace))))
    instance = oracle(trace)
    a = instance.arrival_s
    spec = PolicySpec("priority", work_params(profile, chunk_tokens=384))
    run = simulate(instance, profile, spec).requests
    completion = run["completion_s"].to_numpy()
    total = float((completion - a).sum())
    work = work_bounds(instance, profile)["work"]
    windows = {
        "delta_s": args.delta,
        "horizon_s": float(completion.max()) + args.slack,
        "window_end_s": a + args.factor * (completion - a) + args.slack,
    }
    print(f"{len(instance)} requests, priority (work, c=384): {total:.6e} s")
    print(f"seconds.work {work:.6e} s, gap {(total - work) / total:.2%}")
    found = bucket_lagrangian(
        instance, profile, **windows, completion_s=completion,
        first_token_s=run["first_token_s"].to_numpy(), upper_bound=total,
        time_limit=args.time_limit, iterations=args.iterations,
    )  # fmt: skip
    print(f"bucket Lagrangian: {found.value:.6e} s, gap "
          f"{(total - found.value) / total:.2%}, start {found.first_value:.6e} s, "
          f"delta {found.delta_s:g} s, {found.buckets} buckets, {found.slots} "
          f"slots, {found.iterations} iterations, {found.runtime_s:.1f} s")  # fmt: skip
    if args.lp:
        began = time.perf_counter()
        lp = bucket_lp(instance, profile, **windows, time_limit=args.time_limit)
        print(f"bucket LP: {lp.value:.6e} s, gap {(total - lp.value) / total:.2%}, "
              f"{lp.model_status}, {time.perf_counter() - began:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
