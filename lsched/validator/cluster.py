"""A colocated cluster checked pool by pool (:func:`validate_cluster`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lsched.instance import Instance
from lsched.validator import pools
from lsched.validator.disagg import _validate_disaggregated
from lsched.validator.fit import _check_fit_records, _fit
from lsched.validator.log import _validate_log
from lsched.validator.migration import _validate_migration
from lsched.validator.report import SWAP_METRICS, ValidationReport, _Collector, _frozen


def validate_cluster(
    instance: Instance,
    cluster: Any,
    result: Any,
    *,
    rtol: float = 1e-9,
) -> ValidationReport:
    """Check a cluster run (``simulate_cluster(..., log=True)``) pool by pool (a
    disaggregated one stage by stage, with its transfers: module docstring; one
    with live migration by the rules of :mod:`lsched.validator.migration`).

    Parameters
    ----------
    instance
        The requests.
    cluster
        The :class:`~lsched.cluster.Cluster` (pools in order; replicas numbered
        over the pools).
    result
        The :class:`~lsched.evaluator.SimulationResult`, with its log; its
        ``requests`` name each request's replica and pool, ``rejected`` the
        router's reason.

    Returns
    -------
    ValidationReport
        The violations of every pool (requests and runs named by their position
        in the whole instance and log) and of the ``rejection`` rule; metrics are
        the pools' (``metrics[f"{pool}.{key}"]``); per-request times in instance
        order.
    """
    fit = _fit(instance, min(int(p.profile.max_model_len) for p in cluster.pools))
    if any(pool.role != "colocated" for pool in cluster.pools):
        return _validate_disaggregated(fit, cluster, result, rtol)
    if getattr(result, "migrations", None) is not None:
        return _validate_migration(fit, cluster, result, rtol)
    instance = fit.served  # the outputs a served request emits
    out = _Collector()
    n = len(instance)
    requests = result.requests
    replica = requests["replica"].to_numpy(dtype=np.int64)
    first = np.full(n, np.nan)
    done = np.full(n, np.nan)
    metrics: dict[str, float] = {}
    pools._check_rejections(requests, result, out)
    _check_fit_records(fit, requests, result.metrics, out)
    swaps = pools._cluster_swaps(result, out)
    totals = None if swaps is None else dict.fromkeys(SWAP_METRICS, 0.0)
    start = 0
    for pool in cluster.pools:
        ids = np.flatnonzero((replica >= start) & (replica < start + pool.replicas))
        runs, members, preempted, pool_swaps = pools._pool_log(
            result, start, start + pool.replicas, ids, n, swaps
        )
        claimed = requests.iloc[ids].reset_index(drop=True)
        claimed = claimed.assign(replica=claimed["replica"] - start)
        pool_metrics = None
        if result.pool_metrics is not None and len(ids):
            row = result.pool_metrics.loc[pool.name]
            skip = {"profile", "policy", "replicas", "iterations", "num_rejected"}
            pool_metrics = {k: float(v) for k, v in row.items() if k not in skip}
        if len(ids):
            report, _, _ = _validate_log(
                instance.subset(ids), pool.profile, runs, members, preempted,
                replicas=pool.replicas, requests=claimed, metrics=pool_metrics,
                rtol=rtol, swaps=pool_swaps, swap_mode=pools._swap_mode(pool),
                swap_totals=False, prefix=pools._pool_evictions(result, pool, runs),
                adapters=pools._pool_adapter_loads(result, pool, runs),
            )  # fmt: skip
            pools._add_pool_violations(out, pool, ids, report)
            first[ids] = report.first_token_s
            done[ids] = report.completion_s
            metrics |= {f"{pool.name}.{k}": v for k, v in report.metrics.items()}
            pools._add_swap_totals(totals, report.metrics)
        start += pool.replicas
    metrics |= pools._check_swap_totals(totals, swaps, result.metrics, rtol, out)
    return ValidationReport(
        tuple(out.kept), metrics, _frozen(first), _frozen(done), None, out.extra
    )
