"""The metrics of DESIGN.md recomputed from the validator's own times, and the
comparison of claimed records and metrics with the validator's."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from lsched.instance import Instance
from lsched.validator.report import (
    REQUEST_COLUMNS,
    FloatArray,
    _close,
    _close_array,
    _Collector,
)


def _stats(prefix: str, values: FloatArray) -> dict[str, float]:
    keys = (f"{prefix}_mean_s", f"{prefix}_p50_s", f"{prefix}_p90_s", f"{prefix}_p99_s")
    if len(values) == 0:
        return dict.fromkeys(keys, math.nan)
    figures = [float(np.mean(values))]
    figures += [float(np.percentile(values, q)) for q in (50, 90, 99)]
    return dict(zip(keys, figures, strict=True))


def _metrics(
    instance: Instance,
    first: FloatArray,
    done: FloatArray,
    *,
    busy_s: float,
    kv_token_seconds: float,
    capacity_tokens: int,
    replicas: int,
    preemptions: int,
    recomputed: int,
) -> dict[str, float]:
    """The metrics of DESIGN.md, from the validator's own times."""
    arrival, output = instance.arrival_s, instance.output_tokens
    ttft = first - arrival
    e2e = done - arrival
    multi = output >= 2
    tpot = (done[multi] - first[multi]) / (output[multi] - 1)
    makespan = float(np.max(done) - np.min(arrival))
    metrics = {
        "num_completed": float(np.count_nonzero(np.isfinite(done))),
        "makespan_s": makespan,
        "throughput_tok_s": (
            float(output.sum()) / makespan if makespan > 0 else math.inf
        ),
        "busy_fraction": busy_s / (replicas * makespan) if makespan > 0 else 1.0,
        "kv_utilization": (
            kv_token_seconds / (replicas * capacity_tokens * makespan)
            if makespan != 0
            else 0.0
        ),
        "preemptions": float(preemptions),
        "recomputed_tokens": float(recomputed),
    }
    metrics |= _stats("ttft", ttft)
    metrics |= _stats("e2e", e2e)
    metrics |= _stats("tpot", tpot)
    metrics |= _stats("normalized_latency", e2e / output)
    ttft_limit, tpot_limit = instance.ttft_deadline_s, instance.tpot_deadline_s
    met = np.ones(len(instance), dtype=bool)
    metrics["slo_attainment_ttft"] = metrics["slo_attainment_tpot"] = math.nan
    if ttft_limit is not None:
        on_time = ttft <= ttft_limit
        metrics["slo_attainment_ttft"] = float(on_time.mean())
        met &= on_time
    if tpot_limit is not None:
        per_token = np.full(len(instance), -math.inf)  # one token: no TPOT to miss
        per_token[multi] = tpot
        on_time = per_token <= tpot_limit
        metrics["slo_attainment_tpot"] = float(on_time.mean())
        met &= on_time
    no_limits = ttft_limit is None and tpot_limit is None
    metrics["slo_attainment"] = math.nan if no_limits else float(met.mean())
    return metrics


def _compare_records(
    own: pd.DataFrame, claimed: pd.DataFrame, rtol: float, out: _Collector
) -> None:
    missing = [c for c in REQUEST_COLUMNS if c not in claimed.columns]
    if missing:
        out.add("schema", f"requests lacks column(s) {missing}")
        return
    if len(claimed) != len(own) or not np.array_equal(
        claimed.index.to_numpy(), own.index.to_numpy()
    ):
        out.add(
            "schema",
            f"requests: expected one row per request, indexed 0..{len(own) - 1}",
        )
        return
    columns = list(REQUEST_COLUMNS)
    extras = (
        ("swap_outs", "the log swaps"),
        ("cached_tokens", "the replicas have a prefix cache"),
    )
    for extra, what in extras:
        if extra not in own.columns:
            continue
        if extra in claimed.columns:
            columns.append(extra)
        elif own[extra].any():
            out.add("schema", f"requests lacks column {extra} ({what})")
    if "tbt_s" in own.columns and "tbt_s" in claimed.columns:  # with the log
        columns.append("tbt_s")
    for column in columns:
        mine = own[column].to_numpy(dtype=np.float64)
        theirs = claimed[column].to_numpy(dtype=np.float64)
        for i in np.flatnonzero(~_close_array(theirs, mine, rtol)).tolist():
            out.add(
                "request-record",
                f"{column} = {float(theirs[i])!r}; the log gives {float(mine[i])!r}",
                request=i,
            )


def _compare_metrics(
    own: dict[str, float], claimed: Mapping[str, float], rtol: float, out: _Collector
) -> None:
    for key, value in own.items():
        if key not in claimed:
            out.add("metric", f"{key} is missing; the log gives {value!r}")
        elif not _close(float(claimed[key]), value, rtol):
            out.add(
                "metric", f"{key} = {float(claimed[key])!r}; the log gives {value!r}"
            )
