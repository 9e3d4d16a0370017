"""Pang et al.'s offline stage: the ordered MIP against the bin packing.

    ./run python benchmarks/replicas/bench_pang_offline.py
    ./run python benchmarks/replicas/bench_pang_offline.py --sizes 20 100 \\
        --seeds 0 1 --time-limit 10

GSM8K-like requests (``gsm8k``, all at t = 0) on ``llama-65b-pang2025`` with its
``C`` (2), profile loads on the packing's grid. For each case: the bin packing
(:func:`lsched.formulations.replicas.assign`, CP-SAT) and the MIP over assignment
and order (:func:`lsched.formulations.pang_offline.assign_ordered`) on both
backends, with status, objective, bound, certified gap and runtime. The positional
MILP has ``n^2 C`` booleans and is skipped above ``--milp-max`` requests.
"""

from __future__ import annotations

import argparse

from lsched.formulations import pang_offline, replicas
from lsched.generators.families import gsm8k
from lsched.profile import load_profile

PROFILE = "llama-65b-pang2025"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--milp-max", type=int, default=40)
    args = parser.parse_args()
    profile = load_profile(PROFILE)
    c = profile.replicas
    print(f"## gsm8k, {PROFILE}, C = {c}, {args.time_limit:g} s limit, 2 workers\n")
    print("| n | seed | model | status | objective (s) | bound (s) | gap | "
          "runtime (s) |")  # fmt: skip
    print("|---:|---:|---|---|---:|---:|---:|---:|")
    for n in args.sizes:
        for seed in args.seeds:
            instance = gsm8k(n, seed=seed)
            runs = [
                replicas.assign(
                    instance, profile, c, time_limit=args.time_limit, seed=seed
                )
            ]
            for backend in replicas.BACKENDS:
                if backend == "milp" and n > args.milp_max:
                    continue
                runs.append(
                    pang_offline.assign_ordered(
                        instance, profile, c, backend=backend,
                        time_limit=args.time_limit, seed=seed,
                    )
                )  # fmt: skip
            for r in runs:
                label = "packing" if "/" not in r.solver else r.solver
                print(
                    f"| {n} | {seed} | {label} | {r.status.value} | "
                    f"{r.objective:.4f} | {r.bound:.4f} | {r.gap:.2e} | "
                    f"{r.runtime_s:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
