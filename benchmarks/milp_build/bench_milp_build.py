"""Time the slot MILP's Pyomo build and its compilation to HiGHS matrices.

For every (n, arrival setting, seed) the instance ``jaillet(n, seed=seed)`` (its
own M, unit slots, total latency) gets the best heuristic's safe deadlines
(:func:`lsched.formulations.slot.horizon.deadlines`), as
:func:`lsched.formulations.slot.milp.solve` does; then
:func:`lsched.formulations.slot.milp.build.build_model` is timed, and the compilation
(:func:`lsched.formulations.solvers.highs.load`). A fingerprint of the compiled
model (every row as its sorted ``(variable name, coefficient)`` terms and its
bounds; column bounds, integrality and costs by name; all order-free) shows that
two versions of the build give the same model. ``--against FILE`` times the
``build_model`` of another version of ``lsched/formulations/milp/slot.py`` too,
alternating with this one on each instance (the same machine load for both),
and fails if a fingerprint differs.

    python benchmarks/milp_build/bench_milp_build.py --sizes 40 60 --seeds 0 1 2
    git show a467beb:lsched/formulations/milp/slot.py > /tmp/old_slot.py
    python benchmarks/milp_build/bench_milp_build.py --against /tmp/old_slot.py
    python benchmarks/milp_build/bench_milp_build.py --sizes 10 --seeds 0 1 2 \\
        --solve 60        # also the objective milp.solve finds within 60 s
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lsched.formulations.slot import SlotProblem, milp
from lsched.formulations.slot.horizon import deadlines
from lsched.formulations.slot.incumbent import best_heuristic
from lsched.formulations.slot.milp.build import build_model
from lsched.formulations.solvers import highs
from lsched.generators.families import jaillet
from lsched.profile import load_profile

SETTINGS = {"all-at-0": None, "poisson-1.0": 1.0}


def problem_of(n: int, setting: str, seed: int) -> SlotProblem:
    rate = SETTINGS[setting]
    arrivals = None if rate is None else {"kind": "poisson", "rate_per_s": rate}
    instance = jaillet(n, seed=seed, arrivals=arrivals)
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    return SlotProblem.from_instance(instance, profile)


def fingerprint(loaded: highs.LoadedModel) -> str:
    """An order-free digest of the compiled model (module docstring)."""
    lp = loaded.highs.getLp()
    names = [v.name for v in loaded.columns]
    a = lp.a_matrix_
    starts = np.asarray(a.start_)
    index = np.asarray(a.index_)
    value = np.asarray(a.value_)
    rows: list[list[tuple[str, float]]] = [[] for _ in range(lp.num_row_)]
    for j, name in enumerate(names):
        for k in range(starts[j], starts[j + 1]):
            rows[index[k]].append((name, float(value[k])))
    lower, upper = list(lp.row_lower_), list(lp.row_upper_)
    text = sorted(
        repr((sorted(terms), lower[r], upper[r])) for r, terms in enumerate(rows)
    )
    integrality = list(lp.integrality_) or [0] * len(names)
    columns = sorted(
        repr((name, lo, hi, int(kind), cost))
        for name, lo, hi, kind, cost in zip(
            names,
            lp.col_lower_,
            lp.col_upper_,
            integrality,
            lp.col_cost_,
            strict=True,
        )
    )
    digest = hashlib.sha256()
    for line in (*text, *columns, repr(lp.offset_)):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def other_build(path: Path) -> Callable[..., Any]:
    """``build_model`` of another version of ``lsched/formulations/milp/slot.py``."""
    spec = importlib.util.spec_from_file_location("other_slot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_slot"] = module
    spec.loader.exec_module(module)
    return module.build_model  # type: ignore[no-any-return]


def measure(
    build: Callable[..., Any], problem: SlotProblem, deadline: Any, upper: int
) -> tuple[float, float, highs.LoadedModel]:
    """Build and compile seconds, and the compiled model."""
    gc.collect()  # no garbage of the run before
    began = time.perf_counter()
    built = build(problem, deadline, upper_bound=upper)
    build_s = time.perf_counter() - began
    began = time.perf_counter()
    loaded = highs.load(built.model)
    return build_s, time.perf_counter() - began, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 60])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--against", type=Path, default=None, metavar="SLOT_PY")
    parser.add_argument("--solve", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args()
    builds = {"this": build_model}
    if args.against is not None:
        builds["other"] = other_build(args.against)
    warm = problem_of(3, "all-at-0", 0)  # load the compiler's code: not timed
    highs.load(build_model(warm, deadlines(warm, 10**6)).model)
    head = ["n", "arrivals", "seed", "nonzeros"]
    for name in builds:
        head += [f"build s ({name})", f"compile s ({name})"]
    head += ["fingerprint"] + (["objective", "status"] if args.solve else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n in args.sizes:
        for setting in args.settings:
            for seed in args.seeds:
                problem = problem_of(n, setting, seed)
                _, start = best_heuristic(problem)
                upper = problem.integer_objective(start)
                deadline = deadlines(problem, upper)
                cells: list[Any] = [n, setting, seed, None]
                marks = set()
                for build in builds.values():
                    build_s, compile_s, loaded = measure(
                        build, problem, deadline, upper
                    )
                    cells += [f"{build_s:.2f}", f"{compile_s:.2f}"]
                    cells[3] = f"{loaded.size['nonzeros']:,}"
                    marks.add(fingerprint(loaded))
                    del loaded
                if len(marks) != 1:
                    raise SystemExit(f"the builds differ on {n}/{setting}/{seed}")
                cells.append(marks.pop())
                if args.solve:
                    result = milp.solve(problem, time_limit=args.solve)
                    cells += [result.objective, result.status.value]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
