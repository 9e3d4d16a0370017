"""The bucket LP on the Azure code trace (or its first N requests), one replica.

    ./run python benchmarks/scale/bench_bucket.py --requests 300 --delta 1.0 \
        [--factor 2 --slack 20] [--ipm] [--time-limit 600]

Runs ``priority`` with the ``work`` key and prefill chunks capped at 384 tokens
(the best start of ``lsched.formulations.scale.improve``), then the bucket LP
(:mod:`lsched.formulations.bounds.bucket`) with buckets of ``--delta`` seconds,
its horizon at that schedule's makespan plus ``--slack`` and each request's window
ending at ``a_i + factor (C_i - a_i) + slack`` (any windows give a valid bound).
Prints the policy's total latency, ``seconds.work``, the bucket bound, the LP's
size and runtime, and both certified gaps. The profile's ``max_model_len`` is
raised to 8,192 so that prompts up to 7,437 tokens are served whole, as in the
README's figures (the cost model is unchanged).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsched.evaluator import simulate
from lsched.formulations.bounds.bucket import bucket_lp
from lsched.formulations.bounds.work import work_bounds
from lsched.instance import Instance
from lsched.policies import PolicySpec
from lsched.policies.priority import work_params
from lsched.predictors import oracle
from lsched.profile import DeploymentProfile, load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"


@dataclass(frozen=True)
class Case:
    """The trace, the profile, the policy's schedule and the buckets' layout."""

    instance: Instance
    profile: DeploymentProfile
    first_token_s: np.ndarray
    completion_s: np.ndarray
    total_s: float
    work_s: float
    windows: dict[str, Any]


def case_arguments(description: str) -> argparse.ArgumentParser:
    """The options both bucket benchmarks take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--requests", type=int, default=None, help="first N only")
    parser.add_argument("--delta", type=float, default=1.0, help="bucket, seconds")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--slack", type=float, default=20.0, help="seconds")
    parser.add_argument("--time-limit", type=float, default=600.0)
    return parser


def azure_case(args: argparse.Namespace) -> Case | None:
    """The module docstring's case, or ``None`` (said) where the trace is absent;
    prints the policy's total latency and ``seconds.work``."""
    if not TRACE.exists():
        print(f"skipped: {TRACE} is absent")
        return None
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
    first = run["first_token_s"].to_numpy()
    return Case(instance, profile, first, completion, total, work, windows)


def main() -> None:
    parser = case_arguments(__doc__.splitlines()[0])
    parser.add_argument("--ipm", action="store_true", help="HiGHS IPM, no crossover")
    args = parser.parse_args()
    case = azure_case(args)
    if case is None:
        return
    began = time.perf_counter()
    found = bucket_lp(case.instance, case.profile, **case.windows,
                      time_limit=args.time_limit, ipm=args.ipm)  # fmt: skip
    total = case.total_s
    print(f"bucket LP: {found.value:.6e} s, gap {(total - found.value) / total:.2%}, "
          f"delta {found.delta_s:g} s, {found.buckets} buckets, {found.size}, "
          f"{found.model_status}, {time.perf_counter() - began:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
