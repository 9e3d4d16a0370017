"""The evaluator of this checkout against an earlier commit, in one run.

    ./run python benchmarks/evaluator/bench_versions.py REV [--repeats 3]

REV's tree is checked out (``git worktree``) in a temporary folder; each version
runs in its own process with its own ``lsched`` (``PYTHONPATH``), case by case,
alternating, and reports its best wall time of ``--repeats`` runs and every
request's times. A ratio counts only if both versions give the same records
(relative 1e-9; iterations equal).

Cases: the Azure code 2023 trace (../shared/traces, skipped if absent) and a seeded
20,000-request synthetic trace (Poisson 2 req/s, lognormal prompt median 512 and
output median 128), on ``llama2-70b-a100-tp4``, under ``fcfs``, ``vllm`` and
``sarathi`` (Azure) or ``vllm-v0`` (synthetic: on Azure its whole prompts over
the token budget stall) on one replica, and ``fcfs`` on 4 replicas with the
``least-kv`` router (the joint path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
CASES = [
    ("azure", "fcfs", 1, "round-robin"),
    ("azure", "vllm", 1, "round-robin"),
    ("azure", "sarathi", 1, "round-robin"),
    ("azure", "fcfs", 4, "least-kv"),
    ("synthetic", "fcfs", 1, "round-robin"),
    ("synthetic", "vllm", 1, "round-robin"),
    ("synthetic", "vllm-v0", 1, "round-robin"),
    ("synthetic", "fcfs", 4, "least-kv"),
]

#: Run in each version's process: time one case, print times and records.
_CHILD = """
import json, sys, time
import numpy as np
from lsched.evaluator import simulate
from lsched.generators import LogNormal, Poisson, generate
from lsched.profile import load_profile
from lsched.traces import read_trace
trace, policy, replicas, router, repeats, out = sys.argv[1:]
if trace == "azure":
    instance, _ = read_trace(sys.argv[0])
else:
    instance = generate(20_000, arrivals=Poisson(rate_per_s=2.0),
        prompt=LogNormal(median=512, sigma=1.0, max_tokens=3000),
        output=LogNormal(median=128, sigma=1.0, max_tokens=1000), seed=0)
profile = load_profile("llama2-70b-a100-tp4")
best = float("inf")
for _ in range(int(repeats)):
    t0 = time.perf_counter()
    got = simulate(instance, profile, policy, replicas=int(replicas), dispatch=router)
    best = min(best, time.perf_counter() - t0)
np.save(out, got.requests[["first_token_s", "completion_s"]].to_numpy())
print(json.dumps({"seconds": best, "iterations": got.iterations}))
"""


def run_child(tree: Path, code: str, args: list[str]) -> dict:
    """Run ``code`` with ``args`` in a process importing ``tree``'s lsched; the
    JSON object it prints last."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(tree: Path, case: tuple, repeats: int, out: Path) -> dict:
    trace, policy, replicas, router = case
    code = _CHILD.replace("sys.argv[0]", repr(str(AZURE)))
    args = [trace, policy, str(replicas), router, str(repeats), str(out)]
    return run_child(tree, code, args)


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``rev``'s tree in a temporary git worktree."""
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield old
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                check=False,
                capture_output=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    with checkout(args.rev) as old, tempfile.TemporaryDirectory() as tmp:
        print("| case | this (s) | REV (s) | REV / this | agree |")
        print("|---|---:|---:|---:|---|")
        for case in CASES:
            if case[0] == "azure" and not AZURE.exists():
                continue
            new = run_case(ROOT, case, args.repeats, Path(tmp) / "new.npy")
            before = run_case(old, case, args.repeats, Path(tmp) / "old.npy")
            a, b = np.load(Path(tmp) / "new.npy"), np.load(Path(tmp) / "old.npy")
            agree = new["iterations"] == before["iterations"] and np.allclose(
                a, b, rtol=1e-9, atol=0, equal_nan=True
            )
            label = f"{case[0]} {case[1]} x{case[2]} {case[3]}"
            ratio = before["seconds"] / new["seconds"]
            print(
                f"| {label} | {new['seconds']:.3f} | {before['seconds']:.3f} "
                f"| {ratio:.2f}x | {'yes' if agree else 'NO'} |",
                flush=True,
            )
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
