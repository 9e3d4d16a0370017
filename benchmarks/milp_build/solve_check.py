"""Two versions of the slot MILP's build give the same matrices and optimum.

For a few small instances (Jaillet n = 8 and 10; latency, TTFT, makespan; one with
a batch cap and a token budget), the models of this ``build_model`` and of
another version of ``lsched/formulations/milp/slot.py`` are compiled and
compared array for array (same rows and columns in the same order, so HiGHS
takes the same path), then :func:`lsched.formulations.slot.milp.solve` runs with
each and prints its objective, status and runtime.

    git show a467beb:lsched/formulations/milp/slot.py > /tmp/old_slot.py
    python benchmarks/milp_build/solve_check.py /tmp/old_slot.py --time-limit 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_milp_build import other_build

import lsched.formulations.slot.milp as milp
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.horizon import deadlines
from lsched.formulations.slot.incumbent import best_heuristic
from lsched.formulations.solvers import highs
from lsched.generators.families import jaillet
from lsched.profile import load_profile

LP_FIELDS = ("col_cost_", "col_lower_", "col_upper_", "row_lower_", "row_upper_")
MATRIX_FIELDS = ("start_", "index_", "value_")


def problem(
    n: int, seed: int, rate: float | None, objective: str, caps: bool
) -> SlotProblem:
    arrivals = None if rate is None else {"kind": "poisson", "rate_per_s": rate}
    instance = jaillet(n, seed=seed, arrivals=arrivals)
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    if caps:
        profile = profile.replace(max_num_seqs=4, max_num_batched_tokens=9)
    return SlotProblem.from_instance(instance, profile, objective=objective)


def identical(a: object, b: object) -> bool:
    """Whether two ``HighsLp`` are the same arrays in the same order."""

    def same(x: object, y: object, fields: tuple[str, ...]) -> bool:
        return all(
            np.array_equal(np.asarray(getattr(x, f)), np.asarray(getattr(y, f)))
            for f in fields
        )

    return same(a, b, (*LP_FIELDS, "integrality_")) and same(
        a.a_matrix_,  # type: ignore[attr-defined]
        b.a_matrix_,  # type: ignore[attr-defined]
        MATRIX_FIELDS,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="another version of slot.py")
    parser.add_argument("--time-limit", type=float, default=40.0)
    args = parser.parse_args()
    builds = {"this": milp.build_model, "other": other_build(args.other)}
    cases = [(10, s, r, "latency", False) for s in (0, 1, 2) for r in (None, 1.0)]
    cases += [
        (8, 0, None, "makespan", False),
        (8, 1, 1.0, "ttft", False),
        (8, 2, None, "latency", True),
    ]
    print("| n | seed | arrivals | objective | caps | same matrices | "
          "this: objective, status, s | other: objective, status, s |")  # fmt: skip
    print("|" + "---|" * 8)
    for n, seed, rate, objective, caps in cases:
        p = problem(n, seed, rate, objective, caps)
        _, start = best_heuristic(p)
        upper = p.integer_objective(start)
        deadline = deadlines(p, upper)
        lps = [
            highs.load(b(p, deadline, upper_bound=upper).model).highs.getLp()
            for b in builds.values()
        ]
        cells = []
        for build in builds.values():
            milp.build_model = build  # what milp.solve builds with
            result = milp.solve(p, time_limit=args.time_limit)
            cells.append(
                f"{result.objective:g}, {result.status.value}, {result.runtime_s:.1f}"
            )
        milp.build_model = builds["this"]
        arrivals = "all at 0" if rate is None else f"Poisson {rate}"
        print(f"| {n} | {seed} | {arrivals} | {objective} | {'yes' if caps else ''} "
              f"| {'yes' if identical(*lps) else 'NO'} | {cells[0]} | {cells[1]} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
