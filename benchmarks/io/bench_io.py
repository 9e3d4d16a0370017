"""Trace I/O benchmark: generate, write and read a 1,000,000-request trace.

Run from the repository root::

    ./run python benchmarks/io/bench_io.py [--requests 1000000] [--repeat 3]

Steps, each timed ``--repeat`` times (best and median wall-clock seconds):

* ``generate``: a seeded synthetic trace with NumPy (Poisson arrivals at 100
  req/s, log-normal prompt and output lengths) built into an ``Instance``;
* ``write parquet`` / ``read parquet``: lsched's native Parquet
  (``write_trace`` / ``read_trace``);
* ``write csv`` / ``read csv``: lsched's native CSV, same instance;
* ``read azure``: the Azure code 2023 trace (8,819 requests) from ../shared, when
  present.

Files go to ``benchmarks/io/data/`` (git-ignored). Every read is checked to equal
the instance written, so a fast wrong reader cannot pass. The distributions are
illustrative only; they are not fitted to any trace.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lsched.instance import Instance
from lsched.traces import read_trace, write_trace

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
AZURE = HERE.parents[1].parent / "shared" / "traces" / "azure_code_2023.csv"


def generate(n: int, seed: int) -> Instance:
    """A synthetic trace: Poisson(100/s) arrivals, log-normal lengths (illustrative)."""
    rng = np.random.default_rng(seed)
    arrival_s = np.cumsum(rng.exponential(1 / 100.0, n))
    arrival_s -= arrival_s[0]
    prompt = np.clip(np.rint(rng.lognormal(7.0, 1.0, n)), 1, 32_768).astype(np.int64)
    output = np.clip(np.rint(rng.lognormal(4.5, 1.0, n)), 1, 4_096).astype(np.int64)
    return Instance(
        arrival_s,
        prompt,
        output,
        name=f"synthetic_{n}",
        family="bench-io",
        seed=seed,
        params={"rate_per_s": 100.0},
    )


def timed(step: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20250101)
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    n, repeat = args.requests, args.repeat
    parquet, csv_path = DATA / f"synthetic_{n}.parquet", DATA / f"synthetic_{n}.csv"

    results: dict[str, list[float]] = {}
    results["generate"], instance = timed(lambda: generate(n, args.seed), repeat)
    results["write parquet"], _ = timed(lambda: write_trace(instance, parquet), repeat)
    results["read parquet"], (back, _) = timed(lambda: read_trace(parquet), repeat)
    assert back == instance, "Parquet round trip changed the instance"
    results["write csv"], _ = timed(lambda: write_trace(instance, csv_path), repeat)
    results["read csv"], (back, _) = timed(lambda: read_trace(csv_path), repeat)
    assert back == instance, "CSV round trip changed the instance"
    if AZURE.is_file():
        results["read azure (8,819)"], (azure, _) = timed(
            lambda: read_trace(AZURE), repeat
        )
        assert len(azure) == 8819

    best = {step: min(times) for step, times in results.items()}
    print(f"# lsched trace I/O, {n:,} requests, best and median of {repeat}")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pandas "
        f"{pd.__version__}, pyarrow {pa.__version__}, {platform.machine()}, "
        f"{platform.processor() or platform.system()}"
    )
    print(
        f"files: parquet {parquet.stat().st_size / 1e6:.1f} MB, "
        f"csv {csv_path.stat().st_size / 1e6:.1f} MB\n"
    )
    print("| step | best (s) | median (s) | requests/s (best) |")
    print("|---|---:|---:|---:|")
    for step, times in results.items():
        count = 8819 if step.startswith("read azure") else n
        print(
            f"| {step} | {min(times):.3f} | {statistics.median(times):.3f} | "
            f"{count / min(times):,.0f} |"
        )
    print()
    ratios = {
        "read parquet / generate": best["read parquet"] / best["generate"],
        "read csv / read parquet": best["read csv"] / best["read parquet"],
        "write csv / write parquet": best["write csv"] / best["write parquet"],
    }
    for name, value in ratios.items():
        print(f"- {name}: {value:.2f}")


if __name__ == "__main__":
    main()
