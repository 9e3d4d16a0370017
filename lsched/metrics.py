"""Schedule metrics, each defined once (DESIGN.md, "Metrics").

For request i with arrival ``a_i``, output length ``o_i``, first-token time ``f_i``
and completion time ``c_i`` (seconds):

- TTFT ``f_i - a_i``; E2E latency ``c_i - a_i``;
- TPOT ``(c_i - f_i) / (o_i - 1)``, defined only for ``o_i >= 2``;
- normalised latency ``(c_i - a_i) / o_i``;
- makespan ``max_i c_i - min_i a_i``; throughput ``sum_i o_i / makespan``;
- busy fraction ``sum of iteration times / (C * makespan)`` over ``C`` replicas;
- KV utilisation: time-average KV tokens held / capacity, i.e.
  ``integral KV(t) dt / (C * capacity * makespan)``;
- SLO attainment: the share of requests meeting every deadline they carry
  (``ttft <= ttft_deadline_s`` and ``tpot <= tpot_deadline_s``);
- preemptions and recomputed tokens, summed.

Distributions are reported as mean, p50, p90 and p99 (NumPy's linear
interpolation between order statistics).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.instance import Instance

PERCENTILES: tuple[int, ...] = (50, 90, 99)
#: Metrics (and per-pool, per-replica columns) that count something: whole numbers,
#: written as JSON integers (``16``, not ``16.0``) though tables hold them as floats.
COUNT_METRICS: frozenset[str] = frozenset(
    {
        "num_completed",
        "num_rejected",
        "preemptions",
        "recomputed_tokens",
        "iterations",
        "replicas",
    }
)


def _describe(prefix: str, values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:  # e.g. TPOT when every request emits one token
        nan = float("nan")
        return {f"{prefix}_mean_s": nan} | {
            f"{prefix}_p{q}_s": nan for q in PERCENTILES
        }
    stats = {f"{prefix}_mean_s": float(values.mean())}
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        stats[f"{prefix}_p{q}_s"] = float(v)
    return stats


def request_metrics(
    instance: Instance,
    first_token_s: npt.ArrayLike,
    completion_s: npt.ArrayLike,
) -> dict[str, np.ndarray]:
    """Per-request TTFT, E2E, TPOT (NaN where ``o_i = 1``) and normalised latency."""
    first = np.asarray(first_token_s, dtype=np.float64)
    done = np.asarray(completion_s, dtype=np.float64)
    a, o = instance.arrival_s, instance.output_tokens
    decode_tokens = o - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(decode_tokens > 0, (done - first) / decode_tokens, np.nan)
    return {
        "ttft_s": first - a,
        "e2e_s": done - a,
        "tpot_s": tpot,
        "normalized_latency_s": (done - a) / o,
    }


def schedule_metrics(
    instance: Instance,
    first_token_s: npt.ArrayLike,
    completion_s: npt.ArrayLike,
    *,
    busy_s: float,
    kv_token_seconds: float,
    kv_capacity_tokens: int,
    replicas: int = 1,
    preemptions: int = 0,
    recomputed_tokens: int = 0,
) -> dict[str, float]:
    """Every metric of DESIGN.md for one finished schedule.

    Parameters
    ----------
    instance
        The requests (arrivals, output lengths, deadlines).
    first_token_s, completion_s
        Per-request first-token and completion times, seconds.
    busy_s
        Sum of iteration times over all replicas.
    kv_token_seconds
        Integral over time of the KV tokens held, summed over replicas.
    kv_capacity_tokens
        KV capacity of one replica, tokens.
    replicas
        Number of replicas ``C``.
    preemptions, recomputed_tokens
        Totals over the schedule.
    """
    per = request_metrics(instance, first_token_s, completion_s)
    done = np.asarray(completion_s, dtype=np.float64)
    makespan_s = float(done.max() - instance.arrival_s.min())
    output_sum = int(instance.output_tokens.sum())
    capacity_time = replicas * kv_capacity_tokens * makespan_s
    metrics: dict[str, float] = {
        "num_completed": float(np.isfinite(done).sum()),
        "makespan_s": makespan_s,
        "throughput_tok_s": output_sum / makespan_s if makespan_s > 0 else np.inf,
        "busy_fraction": busy_s / (replicas * makespan_s) if makespan_s > 0 else 1.0,
        "kv_utilization": kv_token_seconds / capacity_time if capacity_time else 0.0,
        "preemptions": float(preemptions),
        "recomputed_tokens": float(recomputed_tokens),
    }
    metrics |= _describe("ttft", per["ttft_s"])
    metrics |= _describe("e2e", per["e2e_s"])
    metrics |= _describe("tpot", per["tpot_s"][~np.isnan(per["tpot_s"])])
    metrics |= _describe("normalized_latency", per["normalized_latency_s"])
    metrics["slo_attainment"] = _slo_attainment(instance, per)
    return metrics


def _slo_attainment(instance: Instance, per: dict[str, np.ndarray]) -> float:
    """Share of requests meeting all their deadlines (NaN if none carries one)."""
    met = np.ones(len(instance), dtype=bool)
    if instance.ttft_deadline_s is None and instance.tpot_deadline_s is None:
        return float("nan")
    if instance.ttft_deadline_s is not None:
        met &= per["ttft_s"] <= instance.ttft_deadline_s
    if instance.tpot_deadline_s is not None:
        # a one-token request has no TPOT, so it cannot miss a TPOT deadline
        tpot = per["tpot_s"]
        met &= np.isnan(tpot) | (tpot <= instance.tpot_deadline_s)
    return float(met.mean())
