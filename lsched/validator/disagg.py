"""A disaggregated cluster checked stage by stage, its two stages' records put
together."""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import numpy as np
import pandas as pd

from lsched.instance import Instance
from lsched.validator.fit import _check_fit_records, _Fit
from lsched.validator.log import _validate_log
from lsched.validator.metrics import _compare_metrics, _metrics
from lsched.validator.pools import (
    _add_pool_violations,
    _add_swap_totals,
    _check_rejections,
    _check_swap_totals,
    _cluster_swaps,
    _pool_evictions,
    _pool_log,
    _swap_mode,
)
from lsched.validator.prefix import PREFIX_METRICS, TIER_METRICS
from lsched.validator.report import (
    REQUEST_COLUMNS,
    STAGE_COLUMNS,
    SWAP_METRICS,
    IntArray,
    ValidationReport,
    Violation,
    _close_array,
    _Collector,
    _frozen,
)
from lsched.validator.stages import _Stages
from lsched.validator.tbt import _compare_tbt_metrics, _tbt_of
from lsched.validator.transfers import _check_transfers

#: Per pool: the pool, its requests, its busy seconds, its KV token-seconds and
#: its prefix cache's metrics (none without a cache).
_Part = tuple[Any, IntArray, float, float, dict[str, float]]


def _validate_disaggregated(
    fit: _Fit, cluster: Any, result: Any, rtol: float
) -> ValidationReport:
    """:func:`validate_cluster` for a cluster with prefill and decode pools.

    Each pool's log is replayed on its own: a prefill pool serves its requests as
    one-token requests and keeps the KV of those that move pinned until their
    transfer ends; a decode pool receives them with token 1 emitted and ``s_i``
    tokens of KV, adopted at its first boundary at or after the transfer end (or
    dropped and prefilled again). The per-request records of both stages are put
    together and compared with the claimed ones; the transfers are checked
    against their links; each pool's metrics are recomputed as the records
    define them (over the requests it served, with their end-to-end times),
    with its prefix cache's from the replay of its log (a prefill pool's KV
    pool walked in time order over its replicas:
    :mod:`lsched.validator.prefix`), and the caches' token and copy sums over
    the pools compared with the cluster's. Every request counts the outputs it
    emits within ``max_model_len`` (``fit``).
    """
    instance = fit.served
    out = _Collector()
    requests = result.requests
    missing = [c for c in (*REQUEST_COLUMNS, *STAGE_COLUMNS) if c not in requests]
    if missing or result.runs is None:
        what = f"requests lacks column(s) {missing}" if missing else "no iteration log"
        out.add("schema", f"a disaggregated run: {what}")
        nan = np.full(len(instance), np.nan)
        return ValidationReport(
            tuple(out.kept), {}, _frozen(nan), _frozen(nan), None, out.extra
        )
    _check_rejections(requests, result, out)
    _check_fit_records(fit, requests, result.metrics, out)
    swaps = _cluster_swaps(result, out)
    totals = None if swaps is None else dict.fromkeys(SWAP_METRICS, 0.0)
    claimed = {c: requests[c].to_numpy() for c in (*REQUEST_COLUMNS, *STAGE_COLUMNS)}
    own = _blank_records(len(instance), claimed)
    if cluster.prefix_cached:  # compared where the run claims them
        own["cached_tokens"] = np.zeros(len(instance), dtype=np.int64)
        if "cached_tokens" in requests:
            claimed["cached_tokens"] = requests["cached_tokens"].to_numpy()
        else:
            out.add("schema", "requests lacks column cached_tokens (a prefix cache)")
    if swaps is not None:
        own["swap_outs"] = np.zeros(len(instance), dtype=np.int64)
        if "swap_outs" in requests:
            claimed["swap_outs"] = requests["swap_outs"].to_numpy()
        elif len(swaps):
            out.add("schema", "requests lacks column swap_outs (the log swaps)")
    times: list[list[float]] = [[] for _ in range(len(instance))]
    parts = [
        _replay_pool(
            instance,
            cluster,
            result,
            pool,
            lo,
            own,
            claimed,
            swaps,
            totals,
            times,
            rtol,
            out,
        )
        for pool, lo in zip(cluster.pools, _first_replicas(cluster), strict=True)
    ]
    tbt = _tbt_of([sorted(t) for t in times])
    own["tbt_s"] = tbt
    if "tbt_s" in requests:
        claimed["tbt_s"] = requests["tbt_s"].to_numpy()
    ttft = own["first_token_s"] - instance.arrival_s
    records = pd.DataFrame(own)
    records.index.name = "request"
    _compare_stage_records(own, claimed, rtol, out)
    _check_transfers(instance, cluster, own, claimed, rtol, out, result.runs)

    metrics = _stage_metrics(instance, own, parts, result, rtol, out)
    metrics |= _cache_totals(parts, result.metrics, rtol, out)
    metrics |= _check_swap_totals(totals, swaps, result.metrics, rtol, out)
    metrics |= _compare_tbt_metrics(ttft, tbt, result.metrics, rtol, out)
    moved = float(own["transferred_bytes"].sum())
    metrics["transferred_bytes"] = moved
    if "transferred_bytes" in result.metrics:
        _compare_metrics(
            {"transferred_bytes": moved},
            {"transferred_bytes": result.metrics["transferred_bytes"]},
            rtol,
            out,
        )
    return ValidationReport(
        tuple(out.kept),
        metrics,
        _frozen(own["first_token_s"]),
        _frozen(own["completion_s"]),
        records,
        out.extra,
    )


def _first_replicas(cluster: Any) -> list[int]:
    """Each pool's first replica (replicas are numbered over the pools)."""
    sizes = [pool.replicas for pool in cluster.pools]
    return list(accumulate(sizes[:-1], initial=0))


def _blank_records(n: int, claimed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The validator's records of ``n`` requests before any pool fills them in,
    the transfer times taken as claimed (checked against their links)."""
    nan = np.full(n, np.nan)
    return {
        "replica": np.full(n, -1, dtype=np.int64),
        "admitted_s": nan.copy(),
        "first_token_s": nan.copy(),
        "completion_s": nan.copy(),
        "preemptions": np.zeros(n, dtype=np.int64),
        "recomputed_tokens": np.zeros(n, dtype=np.int64),
        "decode_replica": np.full(n, -1, dtype=np.int64),
        "transfer_start_s": claimed["transfer_start_s"].astype(np.float64),
        "transfer_end_s": claimed["transfer_end_s"].astype(np.float64),
        "transferred_bytes": np.zeros(n),
        "decode_admitted_s": nan.copy(),
    }


def _replay_pool(
    instance: Instance,
    cluster: Any,
    result: Any,
    pool: Any,
    lo: int,
    own: dict[str, np.ndarray],
    claimed: dict[str, np.ndarray],
    swaps: pd.DataFrame | None,
    totals: dict[str, float] | None,
    times: list[list[float]],
    rtol: float,
    out: _Collector,
) -> _Part:
    """Replay the log of ``pool`` (replicas from ``lo``) over the requests the
    claimed records give it, with what its stage adds; its violations join
    ``out``, its records ``own``, its swap metrics ``totals``, the times of the
    tokens each request emitted here ``times``."""
    hi = lo + pool.replicas
    holder = claimed["decode_replica" if pool.role == "decode" else "replica"]
    ids = np.flatnonzero((holder >= lo) & (holder < hi))
    if not len(ids):
        return pool, ids, 0.0, 0.0, {}
    n = len(instance)
    runs, members, preempted, pool_swaps = _pool_log(result, lo, hi, ids, n, swaps)
    sub, stages = _pool_stage(instance, pool, ids, own)
    local: list[list[float]] = []
    report, busy_s, kv_token_seconds = _validate_log(
        sub, pool.profile, runs, members, preempted, replicas=pool.replicas,
        requests=None, metrics=None, rtol=rtol, stages=stages,
        swaps=pool_swaps, swap_mode=_swap_mode(pool), swap_totals=False,
        prefix=_pool_evictions(result, pool, runs, cluster), token_times=local,
    )  # fmt: skip
    for i, emitted in zip(ids.tolist(), local, strict=False):
        times[i] += emitted
    _add_swap_totals(totals, report.metrics)
    _add_pool_violations(out, pool, ids, report)
    if report.requests is not None:
        _merge_records(instance, pool, ids, lo, report.requests, own)
    cache = {
        k: report.metrics[k]
        for k in (*PREFIX_METRICS, *TIER_METRICS)
        if k in report.metrics
    }
    return pool, ids, busy_s, kv_token_seconds, cache


def _pool_stage(
    instance: Instance, pool: Any, ids: IntArray, own: dict[str, np.ndarray]
) -> tuple[Instance, _Stages | None]:
    """The requests ``ids`` as ``pool`` serves them, and what its stage adds: a
    prefill pool serves one-token requests, the moving ones pinning their KV
    until their transfer ends (their bytes join ``own``); a decode pool receives
    each request's prompt KV at its transfer's end (a pulling one reserves its
    blocks from the transfer's start)."""
    sub = instance.subset(ids)
    prompt, output = instance.prompt_tokens, instance.output_tokens
    end_s = own["transfer_end_s"]
    if pool.role == "prefill":  # one-token requests; the moving ones pin
        sub = sub.replace(output_tokens=np.ones(len(ids), dtype=np.int64))
        moving = output[ids] > 1
        own["transferred_bytes"][ids[moving]] = (
            prompt[ids[moving]] * pool.profile.kv_bytes_per_token
        )
        return sub, _Stages(pinned_until=np.where(moving, end_s[ids], np.nan))
    if pool.role == "decode":
        pulled = None if pool.pull is None else own["transfer_start_s"][ids]
        return sub, _Stages(carried=prompt[ids].astype(np.int64),
                            delivered_s=end_s[ids], reserved_s=pulled)  # fmt: skip
    return sub, None


def _merge_records(
    instance: Instance,
    pool: Any,
    ids: IntArray,
    lo: int,
    mine: pd.DataFrame,
    own: dict[str, np.ndarray],
) -> None:
    """Put a pool's records of its requests ``ids`` (replicas numbered from its
    first, ``lo``) into the cluster's: a decode pool gives the decode replica,
    admission and completion, another the replica, admission, first token and
    (where the request ends there) completion; preemptions, swap-outs and
    recomputed tokens add up."""
    where = mine["replica"].to_numpy()
    where = np.where(where >= 0, where + lo, -1)
    if pool.role == "decode":
        own["decode_replica"][ids] = where
        own["decode_admitted_s"][ids] = mine["admitted_s"]
        own["completion_s"][ids] = mine["completion_s"]
    else:
        own["replica"][ids] = where
        own["admitted_s"][ids] = mine["admitted_s"]
        own["first_token_s"][ids] = mine["first_token_s"]
        ends = pool.role == "colocated" or instance.output_tokens[ids] == 1
        own["completion_s"][ids] = np.where(
            ends, mine["completion_s"], own["completion_s"][ids]
        )
    own["preemptions"][ids] += mine["preemptions"].to_numpy(dtype=np.int64)
    if "cached_tokens" in mine and "cached_tokens" in own:
        own["cached_tokens"][ids] += mine["cached_tokens"].to_numpy(dtype=np.int64)
    if "swap_outs" in mine and "swap_outs" in own:
        own["swap_outs"][ids] += mine["swap_outs"].to_numpy(dtype=np.int64)
    own["recomputed_tokens"][ids] += mine["recomputed_tokens"].to_numpy(dtype=np.int64)


def _compare_stage_records(
    own: dict[str, np.ndarray],
    claimed: dict[str, np.ndarray],
    rtol: float,
    out: _Collector,
) -> None:
    """``request-record``: the claimed records agree with the stages' put
    together (the transfer times aside: they are checked against their links)."""
    for column, mine in own.items():
        if column in ("transfer_start_s", "transfer_end_s"):
            continue  # the transfers are checked against their links
        if column not in claimed:
            continue  # swap_outs of a run that did not swap
        theirs = claimed[column].astype(np.float64)
        close = _close_array(theirs, mine.astype(np.float64), rtol)
        for i in np.flatnonzero(~close).tolist():
            out.add(
                "request-record",
                f"{column} = {float(theirs[i])!r}; the log gives {float(mine[i])!r}",
                request=i,
            )


def _stage_metrics(
    instance: Instance,
    own: dict[str, np.ndarray],
    parts: list[_Part],
    result: Any,
    rtol: float,
    out: _Collector,
) -> dict[str, float]:
    """Each pool's metrics over the requests it served, with their end-to-end
    times, as the records define them, and its prefix cache's
    (``metrics[f"{pool}.{key}"]``), compared with the pool's claimed metrics."""
    metrics: dict[str, float] = {}
    skip = {"profile", "policy", "replicas", "iterations", "num_rejected"}
    for pool, ids, busy_s, kv_token_seconds, cache in parts:
        if not len(ids):
            continue
        mine_metrics = _metrics(
            instance.subset(ids),
            own["first_token_s"][ids],
            own["completion_s"][ids],
            busy_s=busy_s,
            kv_token_seconds=kv_token_seconds,
            capacity_tokens=pool.profile.kv_capacity_tokens,
            replicas=pool.replicas,
            preemptions=int(own["preemptions"][ids].sum()),
            recomputed=int(own["recomputed_tokens"][ids].sum()),
        )
        mine_metrics |= cache  # its prefix cache's, replayed with its log
        if result.pool_metrics is not None:
            row = result.pool_metrics.loc[pool.name]
            theirs = {k: float(v) for k, v in row.items() if k not in skip}
            before = len(out.kept)
            _compare_metrics(mine_metrics, theirs, rtol, out)
            out.kept[before:] = [
                Violation(v.rule, v.run, v.request, f"pool {pool.name}: {v.message}")
                for v in out.kept[before:]
            ]
        metrics |= {f"{pool.name}.{k}": v for k, v in mine_metrics.items()}
    return metrics


def _cache_totals(
    parts: list[_Part], claimed: dict[str, float], rtol: float, out: _Collector
) -> dict[str, float]:
    """The prefix caches' tokens saved and copied and their copies' seconds
    summed over the pools that have them, compared with the cluster's claimed
    metrics (``metric``)."""
    totals: dict[str, float] = {}
    for *_, cache in parts:
        for key in ("prefill_tokens_saved", *TIER_METRICS):
            if key in cache:
                totals[key] = totals.get(key, 0.0) + cache[key]
    _compare_metrics(totals, claimed, rtol, out)
    return totals
