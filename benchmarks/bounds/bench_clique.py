"""The conflict-clique LP against the plain time-indexed LP on Jaillet n = 10.

    ./run python benchmarks/bounds/bench_clique.py --seeds 10 --time-limit 60 \
        --out benchmarks/bounds/clique_n10.csv

Every instance of ``benchmarks/slot_model/n10_60s.csv`` that CP-SAT proved
optimal (4 arrival settings, seeds ``0..seeds-1``; the instances of
``bench_slot_model.problem_of``) gets ``slot.lp`` (the slot MILP's LP, its
strengthenings included), the completion-time LP alone and the LP with clique
cuts (:func:`lsched.formulations.bounds.clique.clique_lp`), each divided by the
optimum. One row per instance; the summary per setting is printed in Markdown.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from lsched.atomic import write_text_atomic
from lsched.formulations.bounds.clique import clique_lp
from lsched.formulations.slot import SlotProblem, milp
from lsched.formulations.slot.incumbent import starting_schedule
from lsched.generators.families import jaillet
from lsched.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
OPTIMA = ROOT / "benchmarks" / "slot_model" / "n10_60s.csv"
SETTINGS = {"all-at-0": None, "poisson-0.5": 0.5, "poisson-1.0": 1.0,
            "poisson-1.5": 1.5}  # fmt: skip


def problem_of(n: int, setting: str, seed: int) -> SlotProblem:
    """``bench_slot_model.problem_of``: Jaillet's instance with its own M."""
    rate = SETTINGS[setting]
    arrivals = None if rate is None else {"kind": "poisson", "rate_per_s": rate}
    instance = jaillet(n, seed=seed, arrivals=arrivals)
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    return SlotProblem.from_instance(instance, profile)


def run_case(row: pd.Series, limit: float) -> dict:
    """The bounds of one proven instance, divided by its optimum."""
    problem = problem_of(int(row.n), row.setting, int(row.seed))
    optimum = float(row.objective)
    upper = problem.integer_objective(starting_schedule(problem, None)[1])
    began = time.monotonic()
    slot_lp = milp.lp_bound(problem, time_limit=limit)
    lp_s = time.monotonic() - began
    found = clique_lp(problem, time_limit=limit, upper_bound=upper)
    return {
        "setting": row.setting,
        "seed": int(row.seed),
        "optimum": optimum,
        "slot_lp": slot_lp / optimum,
        "slot_lp_s": lp_s,
        "completion_lp": found.lp_bound / optimum,
        "clique_lp": found.bound / optimum,
        "clique_lp_s": found.seconds,
        "rounds": found.rounds,
        "cuts": found.cuts,
        "converged": found.converged,
    }


def summary(frame: pd.DataFrame) -> str:
    """Mean (min-max) of each ratio and the time range, per setting."""
    lines = [
        "| setting | slot.lp | completion LP | LP + cliques | cliques: time (s) |",
        "|---|---|---|---|---|",
    ]
    for setting, group in frame.groupby("setting", sort=False):
        cells = [
            f"{group[c].mean():.3f} ({group[c].min():.3f}-{group[c].max():.3f})"
            for c in ("slot_lp", "completion_lp", "clique_lp")
        ]
        times = f"{group.clique_lp_s.min():.1f}-{group.clique_lp_s.max():.1f}"
        lines.append(f"| {setting} | {' | '.join(cells)} | {times} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    optima = pd.read_csv(OPTIMA)
    optima = optima[(optima.status == "optimal") & (optima.seed < args.seeds)]
    optima = optima.drop_duplicates(["n", "setting", "seed"])
    rows = []
    for _, row in optima.iterrows():
        rows.append(run_case(row, args.time_limit))
        frame = pd.DataFrame(rows)
        write_text_atomic(args.out, frame.to_csv(index=False))
    print(summary(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
