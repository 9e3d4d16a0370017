"""dLoRA's co-migration ILP at the sizes its trigger solves: solve time and gain.

    ./run python benchmarks/comigration/bench_comigration.py
    ./run python benchmarks/comigration/bench_comigration.py --sizes 64 256 \\
        --seeds 0 1 --time-limit 10

dLoRA solves the ILP over two engines at a time (the fullest and the emptiest,
or the most loaded and those below the mean), every 10 s. Each case here is two
replicas with ``n`` requests, 70 % of them on replica 0 (the trigger's
imbalance), ``K`` adapters of Zipf-like popularity (weight ``1 / (k + 1)``),
each adapter's execution time uniform in 1-10 s (dLoRA's per-adapter mean;
5 s before any, ``engine_manager.py`` line 56), 1-128 KV blocks per request
(16-token blocks, up to 2,048 tokens), each replica's capacity 55 % of all the
blocks, Llama-7B's block of 8 MiB (16 tokens x 32 layers x K and V x 4,096 x 2
bytes) over dLoRA's 32 GiB/s PCIe, adapter slots = adapters resident now (the
adapters of its requests, as dLoRA passes), no load time (dLoRA's ILP has none).
For each case and backend: status, the no-move objective, the objective and
bound, the moves and the runtime.
"""

from __future__ import annotations

import argparse

import numpy as np

from lsched.formulations.backends import solve
from lsched.formulations.comigration import CoMigrationProblem, MigrationPlan

#: Bytes of one 16-token KV block of Llama-7B in fp16 (module docstring).
LLAMA7B_BLOCK_BYTES = 16 * 32 * 2 * 4096 * 2


def case(n: int, adapters: int, seed: int) -> CoMigrationProblem:
    """Two replicas, ``n`` requests, ``adapters`` adapters (module docstring)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, adapters + 1)
    adapter = rng.choice(adapters, size=n, p=popularity / popularity.sum())
    replica = (rng.random(n) >= 0.7).astype(np.int64)
    blocks = rng.integers(1, 129, n)
    resident = np.zeros((adapters, 2), dtype=bool)
    resident[adapter, replica] = True
    capacity = int(0.55 * blocks.sum())
    return CoMigrationProblem(
        replica=replica,
        adapter=adapter,
        blocks=blocks,
        exec_s=rng.uniform(1.0, 10.0, adapters)[adapter],
        capacity_blocks=[capacity, capacity],
        adapter_slots=resident.sum(axis=0),
        resident=resident,
        block_bytes=LLAMA7B_BLOCK_BYTES,
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
            problem = case(n, args.adapters, seed)
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
