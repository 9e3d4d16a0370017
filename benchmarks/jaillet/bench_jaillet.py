"""MC-SF against the optimum and against time-limited incumbents, in Jaillet et al.'s
own slot convention (``jaillet(..., convention="jaillet")``).

Per (n, arrival setting, seed): MC-SF (oracle lengths, replayed by the evaluator);
``--best-backends`` (1 worker each, default CP-SAT) for the optimum or the best
schedule within ``--proof-limit``; and ``--warm-backends`` warm-started with MC-SF's
schedule, as their Hindsight_IP.py can be, whose incumbents are read off their logs
at ``--checkpoints`` seconds (default CP-SAT, 1 worker, and the HiGHS MILP, 1
thread). Rows go to a CSV; the Markdown summary is printed at the end.

    ./run python benchmarks/jaillet/bench_jaillet.py --sizes 10 --seeds 20 \
        --proof-limit 60 --warm-limit 10 --checkpoints 1 10 --out n10.csv
    ./run python benchmarks/jaillet/bench_jaillet.py --sizes 40 60 --seeds 1 \
        --proof-limit 60 --warm-limit 30 --checkpoints 1 10 30 --out n40_60.csv
    ./run python benchmarks/jaillet/bench_jaillet.py --sizes 40 60 --seeds 1 \
        --best-backends lns --warm-backends --proof-limit 60 --out n40_60_lns.csv
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lsched.formulations.backends import solve
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.incumbent import policy_schedule
from lsched.generators.families import jaillet
from lsched.profile import load_profile

SETTINGS = {"all-at-0": None, "poisson-1.0": 1.0}


def problem_of(n: int, setting: str, seed: int) -> SlotProblem:
    """The slot problem of ``jaillet(n, seed)`` in their convention."""
    rate = SETTINGS[setting]
    arrivals = None if rate is None else {"kind": "poisson", "rate_per_s": rate}
    instance = jaillet(n, seed=seed, arrivals=arrivals, convention="jaillet")
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    return SlotProblem.from_instance(instance, profile)


def incumbent_at(log: pd.DataFrame, initial: float, seconds: float) -> float:
    """The best objective a solve's log shows by ``seconds`` (``initial`` before)."""
    seen = log.loc[log["time_s"] <= seconds, "objective"].dropna()
    return min(initial, float(seen.min())) if len(seen) else initial


def horizon_cut(problem: SlotProblem) -> int:
    """Their IP's last constrained time ``T = max a + sum o`` (module docstring of
    :mod:`lsched.generators.jaillet_convention`), as a last slot in lsched's labels."""
    return int(problem.release.max() + problem.output_tokens.sum()) - 1


def run_case(n: int, setting: str, seed: int, args: argparse.Namespace) -> dict:
    problem = problem_of(n, setting, seed)
    mcsf_start = policy_schedule(problem, "mc-sf")
    mcsf = problem.objective_value(mcsf_start)
    row = {
        "n": n,
        "setting": setting,
        "seed": seed,
        "M": problem.kv_capacity_blocks,
        "s": int(problem.prompt_tokens[0]) - 1,
        "mcsf": mcsf,
    }
    found = {}
    for backend in args.best_backends:
        found[backend] = solve(
            problem, backend, time_limit=args.proof_limit, num_workers=1, seed=0
        )
        row[f"{backend}_best"] = found[backend].objective
    proof = min(found.values(), key=lambda r: (r.objective, -r.bound))
    row.update(
        best=proof.objective,
        bound=max(r.bound for r in found.values()),
        status=proof.status.value,
        proof_s=proof.runtime_s,
    )
    ends = proof.start + problem.output_tokens - 1
    row["ends_by_T"] = bool(ends.max() <= horizon_cut(problem))
    for backend in args.warm_backends:
        warm = solve(
            problem,
            backend,
            time_limit=args.warm_limit,
            num_workers=1,
            seed=0,
            initial_solution=mcsf_start,
        )
        for t in args.checkpoints:
            if t <= args.warm_limit:
                row[f"{backend}_warm_{t:g}s"] = incumbent_at(warm.log, mcsf, t)
        row[f"{backend}_warm_end"] = warm.objective
    return row


def _exact(ratios: pd.Series) -> int:
    return int(np.isclose(ratios, 1.0, rtol=0, atol=1e-12).sum())


def summary(frame: pd.DataFrame) -> str:
    """One line per (n, setting, comparator): mean MC-SF / comparator, exact ties."""
    lines = [
        "| n | arrivals | comparator | cases | MC-SF / comparator (mean, "
        "min-max) | cases with ratio exactly 1 |",
        "|---|---|---|---:|---:|---:|",
    ]
    columns = ["best"] + [c for c in frame.columns if "_warm_" in c or "_best" in c]
    for (n, setting), g in frame.groupby(["n", "setting"]):
        proven = int((g["status"] == "optimal").sum())
        for column in columns:
            ratio = g["mcsf"] / g[column]
            name = (
                f"optimum ({proven}/{len(g)} proven)"
                if column == "best"
                else column.replace("_", " ")
            )
            lines.append(
                f"| {n} | {setting} | {name} | {len(g)} | {ratio.mean():.4f} "
                f"({ratio.min():.3f}-{ratio.max():.3f}) | {_exact(ratio)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--proof-limit", type=float, default=60.0)
    parser.add_argument("--warm-limit", type=float, default=10.0)
    parser.add_argument(
        "--checkpoints", type=float, nargs="+", default=[1.0, 10.0, 60.0]
    )
    parser.add_argument("--best-backends", nargs="+", default=["cpsat"])
    parser.add_argument("--warm-backends", nargs="*", default=["cpsat", "milp"])
    parser.add_argument("--out", type=Path, default=Path("jaillet_results.csv"))
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        for setting in args.settings:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                rows.append(run_case(n, setting, seed, args))
                r = rows[-1]
                print(
                    f"n={n} {setting} seed={seed}: MC-SF {r['mcsf']:.0f}, best "
                    f"{r['best']:.0f} ({r['status']}, {r['proof_s']:.1f} s)",
                    flush=True,
                )
                pd.DataFrame(rows).to_csv(args.out, index=False)
    frame = pd.DataFrame(rows)
    print(summary(frame))
    if not frame["ends_by_T"].all() or not math.isfinite(frame["best"].min()):
        print("WARNING: a best schedule ends after their IP's horizon T")


if __name__ == "__main__":
    main()
