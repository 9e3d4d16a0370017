"""dLoRA's co-migration ILP at the sizes its trigger solves: solve time and gain.

    ./run python benchmarks/comigration/bench_comigration.py
    ./run python benchmarks/comigration/bench_comigration.py --sizes 64 256 \\
        --seeds 0 1 --time-limit 10

dLoRA solves the ILP over two engines at a time (the fullest and the emptiest,
or the most loaded and those below the mean), every 10 s. Each case here is two
replicas with ``n`` requests and ``K`` adapters of
:func:`lsched.formulations.comigration.crowded_problem` (70 % of the requests on
replica 0, Zipf-like popularity, 1-10 s per adapter, 1-128 KV blocks of 16
tokens per request, each replica's capacity 55 % of all the blocks, Llama-7B's
8 MiB block) over dLoRA's 32 GiB/s PCIe, no load time (dLoRA's ILP has none).
For each case and backend: status, the no-move objective, the objective and
bound, the moves and the runtime.
"""

from __future__ import annotations

import argparse

from lsched.formulations.backends import solve
from lsched.formulations.comigration import (
    MigrationPlan,
    crowded_problem,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--time-limit", type=float, default=10.0)
    args = parser.parse_args()
    print(f"## 2 replicas, {args.adapters} adapters, {args.time_limit:g} s limit, "
          "2 workers\n")  # fmt: skip
    print("| n | seed | backend | status | no move (s) | objective (s) | "
          "bound (s) | moves | runtime (s) |")  # fmt: skip
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for seed in args.seeds:
            problem = crowded_problem(n, args.adapters, seed)
            for backend in ("milp", "cpsat"):
                result = solve(problem, backend, time_limit=args.time_limit, seed=seed)
                plan = MigrationPlan.of(problem, result.start)
                print(
                    f"| {n} | {seed} | {backend} | {result.status.value} | "
                    f"{result.info['initial_objective']:.4f} | "
                    f"{result.objective:.4f} | {result.bound:.4f} | "
                    f"{len(plan.moves)} | {result.runtime_s:.2f} |"
                )


if __name__ == "__main__":
    main()
