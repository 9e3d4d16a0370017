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

import time

from bench_bucket import azure_case, case_arguments

from lsched.formulations.bounds.bucket import bucket_lp
from lsched.formulations.bounds.bucket_lagrangian import bucket_lagrangian


def main() -> None:
    parser = case_arguments(__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100000)
    parser.add_argument("--lp", action="store_true", help="the bucket LP too")
    args = parser.parse_args()
    case = azure_case(args)
    if case is None:
        return
    total = case.total_s
    found = bucket_lagrangian(
        case.instance, case.profile, **case.windows, completion_s=case.completion_s,
        first_token_s=case.first_token_s, upper_bound=total,
        time_limit=args.time_limit, iterations=args.iterations,
    )  # fmt: skip
    print(f"bucket Lagrangian: {found.value:.6e} s, gap "
          f"{(total - found.value) / total:.2%}, start {found.first_value:.6e} s, "
          f"delta {found.delta_s:g} s, {found.buckets} buckets, {found.slots} "
          f"slots, {found.iterations} iterations, {found.runtime_s:.1f} s")  # fmt: skip
    if args.lp:
        began = time.perf_counter()
        lp = bucket_lp(case.instance, case.profile, **case.windows,
                       time_limit=args.time_limit)  # fmt: skip
        print(f"bucket LP: {lp.value:.6e} s, gap {(total - lp.value) / total:.2%}, "
              f"{lp.model_status}, {time.perf_counter() - began:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
