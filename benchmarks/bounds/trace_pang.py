"""Per-iteration traces of policies in the Pang et al. 2025 setting (issue 23).

    ./run python benchmarks/bounds/trace_pang.py --seeds 0 1 2 --n 1000 \
        --policies vllm hybrid [--packing] [--plots DIR]

For each seed and policy: makespan, the mix of iterations (with prefill,
decode-only; compute- or memory-bound on the profile's roofline), the mean batch
size, KV and slot utilisation (time-averaged), and the time spent in the tail (the
last stretch with an empty waiting queue).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lsched.evaluator import simulate
from lsched.formulations.replicas import assign
from lsched.generators import gsm8k
from lsched.predictors import oracle
from lsched.profile import load_profile


def trace(result, profile) -> dict[str, float]:
    runs = result.runs
    members = result.members
    dur = (runs["end_s"] - runs["start_s"]).to_numpy()
    it = runs["iterations"].to_numpy()
    pre = runs["has_prefill"].to_numpy().astype(bool)
    d = runs["decode_steps"].to_numpy()
    p = runs["prefill_tokens"].to_numpy()
    kv = runs["kv_tokens"].to_numpy() + d * (it - 1) / 2  # mean over the run
    cap = profile.kv_capacity_blocks * profile.block_tokens
    seqs = members.groupby("run").size().reindex(runs.index, fill_value=0).to_numpy()
    total = dur.sum()
    # tail: time after the last admission of a new request, per replica
    first = members[members["kind"] == "prefill"].groupby("request")["run"].min()
    last_admit = runs.loc[first.values].groupby("replica")["end_s"].max()
    end = runs.groupby("replica")["end_s"].max()
    return {
        "makespan_s": result.metrics["makespan_s"],
        "busy": result.metrics["busy_fraction"],
        "iters_prefill": int(it[pre].sum()),
        "iters_decode": int(it[~pre].sum()),
        "time_prefill_s": float(dur[pre].sum()),
        "time_decode_only_s": float(dur[~pre].sum()),
        "mean_prefill_tokens": float((p * dur).sum() / total),
        "mean_decode_steps": float((d * dur).sum() / total),
        "kv_util": float((kv * dur).sum() / total / cap),
        "slot_util": float((seqs * dur).sum() / total / profile.max_num_seqs),
        "tail_s": float((end - last_admit).mean()),
        "preemptions": int(result.requests["preemptions"].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--policies", nargs="+", default=["vllm", "hybrid"])
    parser.add_argument("--packing", action="store_true", help="bin packing first")
    parser.add_argument("--plots", type=Path, default=None)
    args = parser.parse_args()
    profile = load_profile("llama-65b-pang2025")
    for seed in args.seeds:
        instance = oracle(gsm8k(args.n, seed=seed))
        assignment = None
        if args.packing:
            packing = assign(
                instance, profile, profile.replicas, time_limit=10, seed=seed
            )
            assignment = packing.assignment
        for policy in args.policies:
            result = simulate(
                instance,
                profile,
                policy,
                assignment=assignment,
                log=True,
                engine="python",
            )
            row = trace(result, profile)
            print(seed, policy, " ".join(f"{k}={v:.4g}" for k, v in row.items()))
            if args.plots is not None:
                from lsched.plots import batch_composition, kv_usage

                args.plots.mkdir(parents=True, exist_ok=True)
                tag = policy.replace(":", "_").replace("=", "")
                batch_composition(result, path=args.plots / f"batch_{seed}_{tag}.png")
                kv_usage(result, profile, path=args.plots / f"kv_{seed}_{tag}.png")


if __name__ == "__main__":
    main()
