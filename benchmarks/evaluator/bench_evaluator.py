"""Evaluator speed: both engines against the naive reference, in one run.

    ./run python benchmarks/evaluator/bench_evaluator.py [--skip-million]

Cases (policy ``fcfs``, profile ``llama2-70b-a100-tp4``, one replica):

- the Azure code 2023 trace (../shared/traces, skipped if absent);
- a seeded 20,000-request synthetic trace (Poisson 2 req/s, lognormal prompt
  median 512 / output median 128 tokens);
- a seeded 1,000,000-request synthetic trace of the same shape at 8 req/s over 4
  replicas, compiled then Python engine (the naive one would take hours): wall
  time and peak resident memory of this process so far.

The Python engine (held stretches in closed form) and the compiled path
(``engine="compiled"``; its kernel's compile or load time, ``compile_s``, is left
out) must agree with the naive engine on every completion time (rel 1e-9) and the
iterations for a ratio to count.
The machine's load average (1, 5, 15 min) is printed before and after: timings on
a busy machine are slower, the fast/naive ratio less so.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the naive engine lives with the tests

from reference_engine import simulate_naive  # noqa: E402

from lsched.evaluator import simulate  # noqa: E402
from lsched.generators import LogNormal, Poisson, generate  # noqa: E402
from lsched.instance import Instance  # noqa: E402
from lsched.profile import load_profile  # noqa: E402
from lsched.traces import read_trace  # noqa: E402

PROFILE = "llama2-70b-a100-tp4"


def synthetic(n: int, rate_per_s: float) -> Instance:
    return generate(
        n,
        arrivals=Poisson(rate_per_s=rate_per_s),
        prompt=LogNormal(median=512, sigma=1.0, max_tokens=3000),
        output=LogNormal(median=128, sigma=1.0, max_tokens=1000),
        seed=0,
    )


def timed(instance: Instance, engine: str, replicas: int = 1) -> tuple[float, Any]:
    """Wall time of one replay on ``engine`` (compiling or loading a kernel,
    ``compile_s``, left out) and its result."""
    profile = load_profile(PROFILE)
    t0 = time.perf_counter()
    result = simulate(instance, profile, "fcfs", replicas=replicas, engine=engine)
    return time.perf_counter() - t0 - result.compile_s, result


def compare(label: str, instance: Instance) -> None:
    t_python, python = timed(instance, "python")
    t_compiled, compiled = timed(instance, "compiled")
    assert compiled.engine == "compiled", compiled.engine
    t0 = time.perf_counter()
    naive = simulate_naive(instance, load_profile(PROFILE), "fcfs")
    t_naive = time.perf_counter() - t0
    agree = all(
        np.allclose(r.requests["completion_s"], naive.completion_s, rtol=1e-9, atol=0)
        and r.iterations == naive.iterations
        for r in (python, compiled)
    )
    print(
        f"| {label} | {len(instance):,} | {python.iterations:,} | {t_python:.2f} | "
        f"{t_compiled:.3f} | {t_naive:.2f} | {t_naive / t_python:.1f}x | "
        f"{t_naive / t_compiled:.0f}x | {'yes' if agree else 'NO'} |"
    )


def million(replicas: int) -> None:
    instance = synthetic(1_000_000, 2.0 * replicas)
    for engine in ("compiled", "python"):
        elapsed, result = timed(instance, engine, replicas)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            f"| 1,000,000 synthetic, {replicas} replicas | {engine} "
            f"| {result.iterations:,} | {elapsed:.1f} | {peak_gib:.2f} | "
            f"{result.metrics['num_completed']:,.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-million", action="store_true")
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()}, NumPy {np.__version__}, "
        f"{os.cpu_count()} cores, load average before {_load()}"
    )
    print()
    print(
        "| case | requests | iterations | python (s) | compiled (s) | naive (s) "
        "| naive / python | naive / compiled | agree |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    azure = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
    if azure.exists():
        compare("Azure code 2023", read_trace(azure)[0])
    compare("synthetic 2 req/s", synthetic(20_000, 2.0))
    if not args.skip_million:
        print()
        print("| case | engine | iterations | wall (s) | peak RSS (GiB) | completed |")
        print("|---|---|---:|---:|---:|---:|")
        million(4)
    print()
    print(f"load average after {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
