"""A cluster's log cut into its pools' logs, its rejections, and the swap
totals over its pools."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from lsched.validator.metrics import _compare_metrics
from lsched.validator.report import (
    SWAP_COLUMNS,
    SWAP_METRICS,
    SWAP_MODES,
    IntArray,
    ValidationReport,
    _Collector,
)
from lsched.validator.schema import _integral


def _swap_mode(pool: Any) -> str:
    """A pool's swap mode: its policy spec's ``swap_mode`` parameter (``fastserve``
    has one, async by default); ``"blocking"`` for a policy without one (vLLM V0's
    swaps, and the default of :func:`lsched.policies.base.swap_mode`)."""
    mode = getattr(pool.policy.params, "swap_mode", "blocking")
    return mode if mode in SWAP_MODES else "blocking"


def _cluster_swaps(result: Any, out: _Collector) -> pd.DataFrame | None:
    """The result's swaps table, if it has one whose rows each name a run of the
    log (the pools then take their runs' swaps); ``None`` otherwise."""
    swaps = getattr(result, "swaps", None)
    if swaps is None:
        return None
    missing = [c for c in SWAP_COLUMNS if c not in swaps.columns]
    if missing:
        out.add("schema", f"table swaps lacks column(s) {missing}")
        return None
    request = swaps["request"]
    n = len(result.requests)
    if not _integral(request) or not request.between(0, n - 1).all():
        out.add("schema", f"swaps.request: expected requests 0..{n - 1}")
        return None
    unknown = ~swaps["run"].isin(result.runs.index).to_numpy()
    if np.any(unknown):
        out.add("schema", f"swaps: run {swaps['run'].iloc[np.flatnonzero(unknown)[0]]} "
                "is not in runs")  # fmt: skip
    return swaps


def _add_swap_totals(
    totals: dict[str, float] | None, metrics: dict[str, float]
) -> None:
    """Add a pool's swap metrics (if it swapped) to the cluster's ``totals``."""
    if totals is None:
        return
    for key in SWAP_METRICS:
        totals[key] += metrics.get(key, 0.0)


def _check_swap_totals(
    totals: dict[str, float] | None,
    swaps: pd.DataFrame | None,
    claimed: Mapping[str, float],
    rtol: float,
    out: _Collector,
) -> dict[str, float]:
    """Compare the cluster's swap metrics with the claimed ones (which a run that
    swapped has, and one that did not may lack); returns them if it swapped."""
    if totals is None or swaps is None:
        return {}
    swapped = len(swaps) > 0
    if swapped or any(key in claimed for key in SWAP_METRICS):
        _compare_metrics(totals, claimed, rtol, out)
    return totals if swapped else {}


def _check_rejections(requests: pd.DataFrame, result: Any, out: _Collector) -> None:
    rejected = requests["replica"].to_numpy() == -1
    reason = requests["rejected"].astype(str).to_numpy()
    logged = set(result.members["request"].tolist()) | set(
        result.preemptions["request"].tolist()
    )
    swaps = getattr(result, "swaps", None)
    if swaps is not None and "request" in swaps.columns:
        logged |= set(swaps["request"].tolist())
    times = requests[["admitted_s", "first_token_s", "completion_s"]].to_numpy()
    for i in np.flatnonzero(rejected | (reason != "")).tolist():
        if not rejected[i] or not reason[i]:
            out.add("rejection", "a rejected request needs replica -1 and a reason",
                    request=i)  # fmt: skip
        if i in logged or not np.isnan(times[i]).all():
            out.add("rejection", "a rejected request ran", request=i)


def _pool_log(
    result: Any,
    lo: int,
    hi: int,
    ids: IntArray,
    n: int,
    swaps: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The log of replicas ``lo..hi-1`` (numbered from 0), with its requests ``ids``
    numbered by their position in ``ids`` (-1: not among them); its swaps too,
    from the cluster's ``swaps``."""
    runs = result.runs[result.runs["replica"].between(lo, hi - 1)]
    runs = runs.assign(replica=runs["replica"] - lo)
    members = result.members[result.members["run"].isin(runs.index)]
    preempted = result.preemptions[result.preemptions["run"].isin(runs.index)]
    local = np.full(n, -1, dtype=np.int64)
    local[ids] = np.arange(len(ids))
    members = members.assign(request=local[members["request"].to_numpy()])
    preempted = preempted.assign(request=local[preempted["request"].to_numpy()])
    if swaps is not None:
        swaps = swaps[swaps["run"].isin(runs.index)]
        swaps = swaps.assign(request=local[swaps["request"].to_numpy(dtype=np.int64)])
    return runs, members, preempted, swaps


def _pool_evictions(
    result: Any, pool: Any, runs: pd.DataFrame, cluster: Any = None
) -> tuple[Any, pd.DataFrame | None, Any]:
    """A pool's prefix cache (``None`` without one), the evictions of its
    ``runs`` from the result's table, and where its replicas share a KV pool
    (``pool_capacity_tokens``) the ``cluster``'s link from the pool to itself
    (else ``None``)."""
    spec = getattr(pool, "prefix_cache", None)
    link = None
    if cluster is not None and getattr(spec, "pool_capacity_tokens", None):
        link = cluster.link(pool.name, pool.name)
    evictions = getattr(result, "evictions", None)
    if spec is None or evictions is None or "run" not in evictions.columns:
        return spec, evictions, link
    return spec, evictions[evictions["run"].isin(runs.index)], link


def _pool_adapter_loads(
    result: Any, pool: Any, runs: pd.DataFrame
) -> tuple[Any, pd.DataFrame | None, pd.DataFrame | None]:
    """A pool's adapter spec (``None`` without one), and the adapter loads and
    merged runs of its ``runs`` from the result's tables."""
    spec = getattr(pool, "adapters", None)
    tables = [getattr(result, name, None) for name in ("adapter_loads", "merged_runs")]
    if spec is None:
        return spec, None, None
    loads, merged = (
        None if t is None else t[t["run"].isin(runs.index)] for t in tables
    )
    return spec, loads, merged


def _add_pool_violations(
    out: _Collector, pool: Any, ids: IntArray, report: ValidationReport
) -> None:
    """A pool's violations as the cluster's: named by the pool, a request by its
    position in the whole instance (``ids``: the pool's requests); its
    suppressed ones counted."""
    for v in report.violations:
        request = None if v.request is None else int(ids[v.request])
        out.add(v.rule, f"pool {pool.name}: {v.message}", run=v.run,
                request=request)  # fmt: skip
    out.extra += report.suppressed
