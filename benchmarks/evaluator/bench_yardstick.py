"""lsched's evaluator against the plain loop of ../shared/yardstick, in one run.

    ./run python benchmarks/evaluator/bench_yardstick.py [--repeats 5]

The plain loop (``plain_loop.py TRACE 200000 [RATE]``: FCFS with each request's
peak KV reserved at admission, one Python step per iteration) and lsched replay
the same thing: ``lsched simulate TRACE --model ../shared/yardstick/plain.toml
--policy orca:reserve=predicted --predictor oracle``, here through the API, on the
Azure code 2023 trace at its own arrival rate and at 4x (``read_trace(...,
rate_scale=4)``, what ``lsched trace convert --rate-scale 4`` writes). Each side
reports its own replay time, parsing excluded: the plain loop's ``runtime_s``, and
``SimulationResult.runtime_s`` (routing, engine, records; compiling or loading
the kernel is ``compile_s``, apart). Best of ``--repeats`` for each; the
iteration counts must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
TRACE = SHARED / "traces" / "azure_code_2023.csv"
PLAIN = SHARED / "yardstick" / "plain_loop.py"
PROFILE = SHARED / "yardstick" / "plain.toml"


def plain_loop(rate: float, repeats: int) -> dict:
    """The plain loop's best time of ``repeats`` runs, and its iterations."""
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, str(PLAIN), str(TRACE), "200000", str(rate)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(done.stdout))
    return min(runs, key=lambda r: r["runtime_s"])


def lsched_replay(rate: float, engine: str, repeats: int) -> tuple[float, int, float]:
    """lsched's best replay time, its iterations and the kernel's compile time."""
    from lsched.evaluator import simulate
    from lsched.predictors import apply_predictor
    from lsched.profile import load_profile
    from lsched.traces import read_trace

    instance, _ = read_trace(TRACE, rate_scale=rate)
    instance = apply_predictor(instance, "oracle")
    profile = load_profile(PROFILE)
    results = [
        simulate(instance, profile, "orca:reserve=predicted", engine=engine)
        for _ in range(repeats)
    ]
    best = min(r.runtime_s for r in results)
    return best, results[0].iterations, results[0].compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not TRACE.exists() or not PLAIN.exists():
        sys.exit(f"needs {TRACE} and {PLAIN}")
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(
        "| rate | iterations | plain loop (s) | lsched compiled (s) | plain / compiled "
        "| lsched python (s) | plain / python | compile (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for rate in (1.0, 4.0):
        plain = plain_loop(rate, args.repeats)
        fast, iterations, compile_s = lsched_replay(rate, "auto", args.repeats)
        slow, python_iterations, _ = lsched_replay(rate, "python", 1)
        if not plain["iterations"] == iterations == python_iterations:
            sys.exit(
                f"iterations differ at rate {rate}: plain {plain['iterations']}, "
                f"compiled {iterations}, python {python_iterations}"
            )
        p = plain["runtime_s"]
        print(
            f"| {rate:g}x | {iterations:,} | {p:.4f} | {fast:.4f} | {p / fast:.1f}x "
            f"| {slow:.3f} | {p / slow:.2f}x | {compile_s:.2f} |",
            flush=True,
        )
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
