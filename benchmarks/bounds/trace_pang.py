"""Per-iteration traces of policies in the Pang et al. 2025 setting (issue 23).

    ./run python benchmarks/bounds/trace_pang.py --seeds 0 1 2 --n 1000 \
        --policies vllm hybrid [--packing] [--plots DIR]

For each seed and policy: makespan, the mix of iterations (with prefill,
decode-only; compute- or memory-bound on the profile's roofline), the mean batch
size, KV and slot utilisation (time-averaged), and the time spent in the tail (the
last stretch with an empty waiting queue). For ``hybrid``, the terms of its
insertion rule at every refusal (``Delta_w <= 0``): how often the horizon ``H``
caps the gain (``H < r_w``), how often the gain ``A min(r_w, H)`` is below the
delay ``theta c_w d`` alone (the refusal stands with ``lambda = 0``), how often
the KV price is positive, and their medians.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lsched.evaluator import simulate
from lsched.formulations.replicas import assign
from lsched.generators import gsm8k
from lsched.policies import hybrid as hybrid_module
from lsched.predictors import oracle
from lsched.profile import load_profile


def trace(result, profile) -> dict[str, float]:
    """Iteration mix, utilisations and tail of one simulation with its log."""
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
    # the compute piece of the roofline over the iteration time (a hardware
    # utilisation: the share of the time the compute units are the bottleneck's
    # fill; K at the run's mean)
    compute_piece = profile.iteration_time.regimes[0][0]
    features = np.stack(
        [
            np.ones_like(dur),
            p,
            runs["prefill_attention"].to_numpy(),
            d,
            runs["kv_read_tokens"].to_numpy() + d * (it - 1) / 2,
            pre.astype(float),
        ],
        axis=1,
    )
    compute = (features @ compute_piece) * it
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
        "compute_util": float(compute.sum() / total),
        "tail_s": float((end - last_admit).mean()),
        "preemptions": int(result.requests["preemptions"].sum()),
    }


def refusals(calls: list[tuple[float, ...]]) -> dict[str, float]:
    """Shares and medians of the insertion-rule terms at ``hybrid``'s refusals."""
    a = np.array(calls).reshape(-1, 6)
    ref = a[a[:, 5] <= 0]
    gain, delay, price, r, horizon, _ = ref.T
    return {
        "calls": len(a),
        "refusals": len(ref),
        "share_H_caps_gain": float(np.mean(horizon < r)),
        "share_gain_below_delay": float(np.mean(gain <= delay)),
        "share_price_positive": float(np.mean(price > 0)),
        "share_refused_by_price_only": float(np.mean(gain > delay)),
        "median_gain": float(np.median(gain)),
        "median_delay": float(np.median(delay)),
        "median_price": float(np.median(price)),
        "median_H": float(np.median(horizon)),
        "median_r": float(np.median(r)),
    }


def record_terms(calls: list[tuple[float, ...]]) -> None:
    """Make ``Hybrid.benefit`` append (gain, delay, price, lambda, r, H, Delta)."""
    original = hybrid_module.Hybrid.benefit

    def benefit(self, c, remaining, base, d, horizon, kv_tokens):
        p = self.params
        value = original(self, c, remaining, base, d, horizon, kv_tokens)
        gain = p.overhead_tokens * min(remaining, horizon)
        delay = p.delay_weight * c * d
        calls.append((gain, delay, gain - delay - value, remaining, horizon, value))
        return value

    hybrid_module.Hybrid.benefit = benefit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--policies", nargs="+", default=["vllm", "hybrid"])
    parser.add_argument("--packing", action="store_true", help="bin packing first")
    parser.add_argument("--plots", type=Path, default=None)
    args = parser.parse_args()
    calls: list[tuple[float, ...]] = []
    record_terms(calls)
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
            if calls:
                terms = refusals(calls)
                print("  refusals:", " ".join(f"{k}={v:.4g}" for k, v in terms.items()))
                calls.clear()
            if args.plots is not None:
                from lsched.plots import batch_composition, kv_usage

                args.plots.mkdir(parents=True, exist_ok=True)
                tag = policy.replace(":", "_").replace("=", "")
                batch_composition(result, path=args.plots / f"batch_{seed}_{tag}.png")
                kv_usage(result, profile, path=args.plots / f"kv_{seed}_{tag}.png")


if __name__ == "__main__":
    main()
