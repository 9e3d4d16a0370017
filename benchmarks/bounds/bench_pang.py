"""The 100-case study in the Pang et al. 2025 setting (makespan, replicas).

    ./run python benchmarks/bounds/bench_pang.py --cases 100 --n 1000 \
        --out benchmarks/bounds/pang.csv

One row per seeded case (lsched.studies.pang2025.pang_case), appended as it
finishes; a rerun skips the seeds already in ``--out``, so an interrupted run
keeps what it finished. The summary is printed at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lsched.atomic import atomic_target
from lsched.studies.pang2025 import pang_case


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and max of the study's figures."""
    columns = [
        "baseline_makespan_s",
        "hybrid_makespan_s",
        "hybrid_lr_makespan_s",
        "best_makespan_s",
        "bound_s",
        "gap",
        "improvement",
        "baseline_efficiency",
        "best_efficiency",
        "baseline_busy",
        "best_busy",
    ]
    columns = [c for c in columns if c in frame]
    return frame[columns].agg(["mean", "median", "min", "max"]).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--first", type=int, default=0, help="first seed")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("pang.csv"))
    args = parser.parse_args()
    done = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame()
    seen = set(done["seed"]) if len(done) else set()
    for seed in range(args.first, args.first + args.cases):
        if seed in seen:
            continue
        row = pang_case(seed, n=args.n, time_limit_s=args.time_limit)
        done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        with atomic_target(args.out) as temporary:
            done.to_csv(temporary, index=False)
        print(
            f"seed {seed}: baseline {row['baseline_makespan_s']:.2f} s, best "
            f"{row['best_makespan_s']:.2f} s ({row['best_source']}), bound "
            f"{row['bound_s']:.2f} s, gap {row['gap']:.2%}",
            flush=True,
        )
    print(summary(done).to_string(float_format=lambda v: f"{v:.4f}"))
    print(done["best_source"].value_counts().to_string())


if __name__ == "__main__":
    main()
