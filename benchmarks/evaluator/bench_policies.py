"""Every registered policy's time per iteration: this checkout against a commit.

    ./run python benchmarks/evaluator/bench_policies.py REV [--repeats 3]

The Azure code 2023 trace clipped to 4,096 tokens (``max_model_len=4096``) at 4x
its arrival rate, on ``llama2-70b-a100-tp4``, one replica, oracle predictions and
a synthetic tenant column (four tenants, round robin, for ``vtc``). Each policy
runs in its own process for each version (``bench_versions.checkout``), best wall
time of ``--repeats`` (the first run of the compiled path loads its kernel, so the
best excludes that); the table gives seconds per iteration and the ratio. Rows
whose records differ between the versions (relative 1e-9, iterations) are marked.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from bench_versions import AZURE, ROOT, checkout, run_child

_CHILD = """
import json, sys, time
import numpy as np
from lsched.evaluator import simulate
from lsched.policies import REGISTRY
from lsched.predictors import apply_predictor
from lsched.profile import load_profile
from lsched.traces import read_trace
trace, policy, repeats, out = sys.argv[1:]
instance, _ = read_trace(trace, rate_scale=4.0, max_model_len=4096)
instance = apply_predictor(instance, "oracle")
tenants = np.array(["a", "b", "c", "d"], dtype=object)[np.arange(len(instance)) % 4]
instance = instance.replace(tenant=tenants)
profile = load_profile("llama2-70b-a100-tp4")
best = float("inf")
for _ in range(int(repeats)):
    t0 = time.perf_counter()
    try:
        got = simulate(instance, profile, policy)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__ + ": " + str(exc)[:80]}))
        sys.exit(0)
    best = min(best, time.perf_counter() - t0)
np.save(out, got.requests[["first_token_s", "completion_s"]].to_numpy())
engine = getattr(got, "engine", "python")
print(json.dumps({"seconds": best, "iterations": got.iterations, "engine": engine}))
"""

_NAMES = (
    "import json; from lsched.policies import REGISTRY; "
    "print(json.dumps(list(REGISTRY)))"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    names = run_child(ROOT, _NAMES, [])
    print(
        "| policy | iterations | REV (us/iter) | this (us/iter) | REV / this "
        "| this engine | agree |"
    )
    print("|---|---:|---:|---:|---:|---|---|")
    with checkout(args.rev) as old, tempfile.TemporaryDirectory() as tmp:
        for name in names:
            outs = [Path(tmp) / "new.npy", Path(tmp) / "old.npy"]
            new, before = (
                run_child(tree, _CHILD, [str(AZURE), name, str(args.repeats), str(o)])
                for tree, o in zip((ROOT, old), outs, strict=True)
            )
            if "error" in new or "error" in before:
                print(f"| {name} | {new.get('error') or before.get('error')} |||||")
                continue
            a, b = (np.load(o) for o in outs)
            agree = new["iterations"] == before["iterations"] and np.allclose(
                a, b, rtol=1e-9, atol=0, equal_nan=True
            )
            per_new = new["seconds"] / new["iterations"] * 1e6
            per_old = before["seconds"] / before["iterations"] * 1e6
            print(
                f"| {name} | {new['iterations']:,} | {per_old:.1f} | {per_new:.1f} "
                f"| {per_old / per_new:.1f}x | {new['engine']} "
                f"| {'yes' if agree else 'NO'} |",
                flush=True,
            )
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
