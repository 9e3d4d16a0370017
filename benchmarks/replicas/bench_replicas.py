"""Replicas (Pang et al. 2025): assignment solve times, sequencing, decomposition loss.

    ./run python benchmarks/replicas/bench_replicas.py
    ./run python benchmarks/replicas/bench_replicas.py --sections assign \\
        --sizes 100 1000 --seeds 0 1 2 --time-limit 30

1. ``assign``: GSM8K-like requests (``gsm8k``, all at t = 0) on
   ``llama-65b-pang2025`` with C = 4 replicas; both backends, profile loads
   (grid of 1000 steps, and 10^6 steps) and token loads; LPT for reference.
2. ``sequence``: the same instances (oracle predictions) replayed by the evaluator
   under round-robin, LPT and the optimal assignment, and least-outstanding
   dispatch; each assignment with the best of fcfs, mc-sf, sjf and hybrid.
3. ``loss``: the joint slot model against bin packing by KV area + per-replica slot
   optimum, on Jaillet et al. 2025's synthetic family (unit slots, the instance's
   M, all at 0), makespan and total latency.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lsched.evaluator import simulate
from lsched.formulations import replicas
from lsched.generators.families import gsm8k, jaillet
from lsched.predictors import oracle
from lsched.profile import load_profile

PROFILE = "llama-65b-pang2025"
POLICIES = ("fcfs", "mc-sf", "sjf", "hybrid")


def bench_assign(sizes: list[int], seeds: list[int], time_limit: float) -> None:
    profile = load_profile(PROFILE)
    print(f"## assign: gsm8k, {PROFILE}, C = 4, {time_limit:g} s limit, 2 workers\n")
    print("| n | seed | loads | backend | status | runtime (s) | objective | "
          "bound | gap | LPT objective |")  # fmt: skip
    print("|---:|---:|---|---|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        for seed in seeds:
            instance = gsm8k(n, seed=seed)
            cases = [
                ("profile", "profile", replicas.DEFAULT_LOAD_STEPS),
                ("profile, 10^6 steps", "profile", 10**6),
                ("tokens", "tokens", 1),
            ]
            for label, load, steps in cases:
                for backend in replicas.BACKENDS:
                    r = replicas.assign(
                        instance, profile, 4, backend=backend, seed=seed,
                        time_limit=time_limit, load=load, load_steps=steps,
                    )  # fmt: skip
                    print(
                        f"| {n} | {seed} | {label} | {r.solver} | {r.status.value} "
                        f"| {r.runtime_s:.2f} | {r.objective:.6g} | {r.bound:.6g} "
                        f"| {r.gap:.2e} | {r.info['lpt_objective']:.6g} |",
                        flush=True,
                    )


def bench_sequence(sizes: list[int], seeds: list[int], time_limit: float) -> None:
    profile = load_profile(PROFILE)
    print(f"\n## sequence: gsm8k + oracle, {PROFILE}, C = 4, best of "
          f"{', '.join(POLICIES)}\n")  # fmt: skip
    print("| n | seed | assignment | max load (s) | best policy | makespan (s) | "
          "busy fraction |")  # fmt: skip
    print("|---:|---:|---|---:|---|---:|---:|")
    for n in sizes:
        for seed in seeds:
            instance = oracle(gsm8k(n, seed=seed))
            load = replicas.request_loads_s(instance, profile)
            packing = replicas.assign(
                instance, profile, 4, time_limit=time_limit, seed=seed
            )
            cases = {
                "round-robin": np.arange(n) % 4,
                "LPT": replicas.lpt(load, 4),
                f"optimal ({packing.status.value})": packing.assignment,
            }
            for label, where in cases.items():
                r = replicas.sequence(
                    instance, profile, where, policy=POLICIES, replicas=4
                )
                top = np.bincount(where, weights=load, minlength=4).max()
                print(f"| {n} | {seed} | {label} | {top:.3f} | {r.policy} | "
                      f"{r.makespan_s:.3f} | {r.busy_fraction:.3f} |",
                      flush=True)  # fmt: skip
            runs = [
                simulate(instance, profile, p, replicas=4,
                         dispatch="least-outstanding")
                for p in POLICIES
            ]  # fmt: skip
            best = min(runs, key=lambda s: s.metrics["makespan_s"])
            print(f"| {n} | {seed} | least-outstanding | | {best.policy} | "
                  f"{best.metrics['makespan_s']:.3f} | "
                  f"{best.metrics['busy_fraction']:.3f} |", flush=True)  # fmt: skip


def bench_loss(seeds: list[int], time_limit: float) -> None:
    unit = load_profile("unit-slot")
    print(f"\n## loss: jaillet (all at 0), unit slots, {time_limit:g} s per solve\n")
    print("| n | C | objective | seed | joint | joint bound | decomposition | "
          "loss | joint time (s) | decomposition time (s) |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    summary: dict[tuple[int, int, str], list[float]] = {}
    for n, c in ((6, 2), (8, 2), (10, 2), (12, 3)):
        for objective in ("makespan", "latency"):
            for seed in seeds:
                instance = jaillet(n, seed=seed)
                profile = unit.replace(
                    kv_capacity_tokens=instance.params["kv_capacity_tokens"]
                )
                d = replicas.decomposition_loss(
                    instance, profile, c, objective=objective,
                    time_limit=time_limit, seed=seed,
                )  # fmt: skip
                j, p = d.joint, d.decomposition
                mark = "" if j.status.value == "optimal" else " (not proven)"
                print(f"| {n} | {c} | {objective} | {seed} | {j.objective:g}{mark} "
                      f"| {j.bound:g} | {p.objective:g} | {d.loss:.3f} | "
                      f"{j.runtime_s:.2f} | {p.runtime_s:.2f} |",
                      flush=True)  # fmt: skip
                summary.setdefault((n, c, objective), []).append(d.loss)
    print("\n| n | C | objective | mean loss | max loss | cases with a loss |")
    print("|---:|---:|---|---:|---:|---:|")
    for (n, c, objective), losses in summary.items():
        array = np.array(losses)
        print(f"| {n} | {c} | {objective} | {array.mean():.3f} | {array.max():.3f} | "
              f"{int((array > 0).sum())}/{len(array)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["assign", "sequence", "loss"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--loss-seeds", nargs="+", type=int, default=list(range(5)))
    parser.add_argument("--time-limit", type=float, default=30.0)
    args = parser.parse_args()
    began = time.perf_counter()
    if "assign" in args.sections:
        bench_assign(args.sizes, args.seeds, args.time_limit)
    if "sequence" in args.sections:
        bench_sequence(args.sizes, args.seeds, args.time_limit)
    if "loss" in args.sections:
        bench_loss(args.loss_seeds, min(args.time_limit, 20.0))
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
