"""Start-up time of the ``lsched`` command line, for one or more source trees.

Each command runs as ``python -m lsched.cli ...`` in a fresh interpreter with the
tree on ``PYTHONPATH``, from a temporary folder; the runs of the trees alternate so
that a busy machine slows them alike. Reports the best and the median wall-clock
time of ``--repeat`` runs per command and tree.

::

    git worktree add --detach /tmp/old a662f87
    ./run python benchmarks/cli/bench_startup.py --tree old=/tmp/old --tree new=.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "instances" / "default.csv"
COMMANDS: dict[str, list[str]] = {
    "lsched --help": ["--help"],
    "lsched --version": ["--version"],
    "lsched simulate instances/default.csv --model unit-slot": [
        "simulate",
        str(DEFAULT),
        "--model",
        "unit-slot",
    ],
}


def _time(tree: Path, args: list[str], cwd: str) -> float | None:
    """Seconds for one run; ``None`` if the command failed (e.g. no --version)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lsched.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    return elapsed if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree", action="append", required=True, help="NAME=PATH of a source tree"
    )
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    trees = {
        name: Path(path).resolve()
        for name, path in (t.split("=", 1) for t in options.tree)
    }
    with tempfile.TemporaryDirectory() as cwd:
        for label, args in COMMANDS.items():
            times: dict[str, list[float]] = {name: [] for name in trees}
            failed: set[str] = set()
            for _ in range(options.repeat):
                for name, tree in trees.items():
                    seconds = _time(tree, args, cwd)
                    if seconds is None:
                        failed.add(name)
                    else:
                        times[name].append(seconds)
            for name in trees:
                if name in failed:
                    print(f"{label:60s} {name:5s} failed (exit status not 0)")
                    continue
                best, median = min(times[name]), statistics.median(times[name])
                print(
                    f"{label:60s} {name:5s} best {best:6.3f} s  median {median:6.3f} s"
                )


if __name__ == "__main__":
    main()
