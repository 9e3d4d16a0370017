"""Slot-model benchmark on Jaillet et al. 2025's family: proofs, gaps, MC-SF ratio.

For every (n, arrival setting, seed) the instance ``jaillet(n, seed=seed)`` (its
own M) is solved by each backend under one time limit, and compared with every
bound of :mod:`lsched.formulations.bounds.slot` and with MC-SF (oracle lengths). Rows
are appended to a CSV as cases finish (rerunning skips finished cases); the
summary table is printed in Markdown at the end.

    ./run python benchmarks/slot_model/bench_slot_model.py \
        --sizes 10 20 40 60 --seeds 10 --time-limit 60
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial
from pathlib import Path

import pandas as pd

from lsched.atomic import write_text_atomic
from lsched.formulations.bounds import slot as bounds
from lsched.formulations.slot import SlotProblem, bnc, cpsat, lns, milp
from lsched.formulations.slot.incumbent import policy_schedule
from lsched.generators.families import jaillet
from lsched.profile import load_profile

SETTINGS = {
    "all-at-0": None,
    "poisson-0.5": 0.5,
    "poisson-1.0": 1.0,
    "poisson-1.5": 1.5,
}
BACKENDS = {
    "cpsat": cpsat.solve,
    "cpsat-events": partial(cpsat.solve, formulation="events"),
    "cpsat-time-indexed": partial(cpsat.solve, formulation="time-indexed"),
    "lns": lns.solve,
    "milp": milp.solve,
    "bnc": bnc.solve,
    "bnc-cpsat": partial(bnc.solve, finisher="cpsat"),
}


def problem_of(n: int, setting: str, seed: int) -> SlotProblem:
    rate = SETTINGS[setting]
    arrivals = None if rate is None else {"kind": "poisson", "rate_per_s": rate}
    instance = jaillet(n, seed=seed, arrivals=arrivals)
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    return SlotProblem.from_instance(instance, profile)


def run_case(n: int, setting: str, seed: int, backends: list[str], limit: float):
    problem = problem_of(n, setting, seed)
    mcsf = policy_schedule(problem, "mc-sf")
    rows = []
    found = {}
    for name in backends:
        result = BACKENDS[name](problem, time_limit=limit)
        proof = result.log.loc[result.log["bound"] >= result.objective - 1e-9, "time_s"]
        found[name] = result
        rows.append(
            {
                "n": n, "setting": setting, "seed": seed, "backend": name,
                "M": problem.kv_capacity_blocks, "status": result.status.value,
                "objective": result.objective, "bound": result.bound,
                "time_to_proof_s": float(proof.min()) if len(proof) else math.nan,
                "runtime_s": result.runtime_s,
            }
        )  # fmt: skip
    for row in rows:
        row["mcsf"] = math.nan if mcsf is None else problem.objective_value(mcsf)
    return add_bounds(problem, pd.DataFrame(rows))


def add_bounds(problem: SlotProblem, rows: pd.DataFrame) -> pd.DataFrame:
    """The bound columns of one case's rows (one per backend), recomputed."""
    best = rows["objective"].min()
    upper = round(best - problem.objective_offset)  # the integer objective
    rows = rows.assign(
        energy=bounds.energy(problem),
        sawtooth=bounds.sawtooth(problem),
        lagrangian=bounds.lagrangian(problem, upper),
        best_found=best,
    )
    rows["best_bound"] = rows[["energy", "sawtooth", "lagrangian"]].max(axis=1)
    rows["best_bound"] = max(rows["best_bound"].max(), rows["bound"].max())
    rows["certified_gap"] = (best - rows["best_bound"]) / best
    rows["mcsf_over_best"] = rows["mcsf"] / best
    return rows


def summary(frame: pd.DataFrame) -> str:
    lines = [
        "| n | arrivals | backend | proven | time to proof (median s) | gap own "
        "(median / max) | gap certified (median / max) | energy / best | "
        "sawtooth / best | lagrangian / best | MC-SF / best (mean) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (n, setting, backend), g in frame.groupby(["n", "setting", "backend"]):
        own = (g["objective"] - g["bound"]) / g["objective"]
        proven = (g["status"] == "optimal").sum()
        ttp = g["time_to_proof_s"].median()
        lines.append(
            f"| {n} | {setting} | {backend} | {proven}/{len(g)} | "
            f"{'' if math.isnan(ttp) else f'{ttp:.1f}'} | "
            f"{own.median():.1%} / {own.max():.1%} | "
            f"{g['certified_gap'].median():.1%} / {g['certified_gap'].max():.1%} | "
            f"{(g['energy'] / g['best_found']).median():.3f} | "
            f"{(g['sawtooth'] / g['best_found']).median():.3f} | "
            f"{(g['lagrangian'] / g['best_found']).median():.3f} | "
            f"{g['mcsf_over_best'].mean():.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40, 60])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--backends", nargs="+", default=["cpsat", "lns"])
    parser.add_argument("--milp-max-n", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("slot_model_results.csv"))
    parser.add_argument(
        "--recompute-bounds",
        action="store_true",
        help="recompute the closed-form and Lagrangian bounds of finished cases",
    )
    args = parser.parse_args()
    frame = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame()
    if args.recompute_bounds and len(frame):
        keys = ["n", "setting", "seed"]
        frame = pd.concat(
            [add_bounds(problem_of(*key), g) for key, g in frame.groupby(keys)],
            ignore_index=True,
        )
        write_text_atomic(args.out, frame.to_csv(index=False))
    done = set()
    if len(frame):
        done = set(zip(frame["n"], frame["setting"], frame["seed"], strict=True))
    for n in args.sizes:
        for setting in args.settings:
            for seed in range(args.seeds):
                if (n, setting, seed) in done:
                    continue
                chosen = [
                    b for b in args.backends if b != "milp" or n <= args.milp_max_n
                ]
                started = time.perf_counter()
                rows = run_case(n, setting, seed, chosen, args.time_limit)
                frame = pd.concat([frame, rows], ignore_index=True)
                write_text_atomic(args.out, frame.to_csv(index=False))
                gap = rows["certified_gap"].iloc[0]
                took = time.perf_counter() - started
                print(f"n={n} {setting} seed={seed}: gap {gap:.1%} ({took:.0f} s)")
    print(summary(frame))


if __name__ == "__main__":
    main()
