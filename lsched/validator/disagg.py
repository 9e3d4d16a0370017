"""A disaggregated cluster checked stage by stage, its two stages' records put
together."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lsched.validator.fit import _check_fit_records, _Fit
from lsched.validator.log import _validate_log
from lsched.validator.metrics import _compare_metrics, _metrics
from lsched.validator.pools import (
    _add_swap_totals,
    _check_rejections,
    _check_swap_totals,
    _cluster_swaps,
    _pool_log,
    _swap_mode,
)
from lsched.validator.report import (
    REQUEST_COLUMNS,
    STAGE_COLUMNS,
    SWAP_METRICS,
    ValidationReport,
    Violation,
    _close_array,
    _Collector,
    _frozen,
)
from lsched.validator.stages import _Stages
from lsched.validator.transfers import _check_transfers


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
    define them (over the requests it served, with their end-to-end times).
    Every request counts the outputs it emits within ``max_model_len`` (``fit``).
    """
    instance = fit.served
    out = _Collector()
    n = len(instance)
    nan = np.full(n, np.nan)
    requests = result.requests
    missing = [c for c in (*REQUEST_COLUMNS, *STAGE_COLUMNS) if c not in requests]
    if missing or result.runs is None:
        what = f"requests lacks column(s) {missing}" if missing else "no iteration log"
        out.add("schema", f"a disaggregated run: {what}")
        return ValidationReport(
            tuple(out.kept), {}, _frozen(nan), _frozen(nan), None, out.extra
        )
    _check_rejections(requests, result, out)
    _check_fit_records(fit, requests, result.metrics, out)
    swaps = _cluster_swaps(result, out)
    totals = None if swaps is None else dict.fromkeys(SWAP_METRICS, 0.0)
    claimed = {c: requests[c].to_numpy() for c in (*REQUEST_COLUMNS, *STAGE_COLUMNS)}
    prompt, output = instance.prompt_tokens, instance.output_tokens
    own: dict[str, np.ndarray] = {
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
    if swaps is not None:
        own["swap_outs"] = np.zeros(n, dtype=np.int64)
        if "swap_outs" in requests:
            claimed["swap_outs"] = requests["swap_outs"].to_numpy()
        elif len(swaps):
            out.add("schema", "requests lacks column swap_outs (the log swaps)")
    end_s = own["transfer_end_s"]
    parts = []  # (pool, its requests, busy seconds, KV token-seconds)
    lo = 0
    for pool in cluster.pools:
        hi = lo + pool.replicas
        holder = claimed["decode_replica" if pool.role == "decode" else "replica"]
        ids = np.flatnonzero((holder >= lo) & (holder < hi))
        if not len(ids):
            parts.append((pool, ids, 0.0, 0.0))
            lo = hi
            continue
        runs, members, preempted, pool_swaps = _pool_log(result, lo, hi, ids, n, swaps)
        sub = instance.subset(ids)
        stages = None
        if pool.role == "prefill":  # one-token requests; the moving ones pin
            sub = sub.replace(output_tokens=np.ones(len(ids), dtype=np.int64))
            moving = output[ids] > 1
            stages = _Stages(pinned_until=np.where(moving, end_s[ids], np.nan))
            own["transferred_bytes"][ids[moving]] = (
                prompt[ids[moving]] * pool.profile.kv_bytes_per_token
            )
        elif pool.role == "decode":
            pulled = None if pool.pull is None else own["transfer_start_s"][ids]
            stages = _Stages(carried=prompt[ids].astype(np.int64),
                             delivered_s=end_s[ids], reserved_s=pulled)  # fmt: skip
        report, busy_s, kv_token_seconds = _validate_log(
            sub, pool.profile, runs, members, preempted, replicas=pool.replicas,
            requests=None, metrics=None, rtol=rtol, stages=stages,
            swaps=pool_swaps, swap_mode=_swap_mode(pool), swap_totals=False,
        )  # fmt: skip
        _add_swap_totals(totals, report.metrics)
        for v in report.violations:
            request = None if v.request is None else int(ids[v.request])
            out.add(v.rule, f"pool {pool.name}: {v.message}", run=v.run,
                    request=request)  # fmt: skip
        out.extra += report.suppressed
        parts.append((pool, ids, busy_s, kv_token_seconds))
        lo = hi
        mine = report.requests
        if mine is None:
            continue
        where = mine["replica"].to_numpy()
        where = np.where(where >= 0, where + (hi - pool.replicas), -1)
        if pool.role == "decode":
            own["decode_replica"][ids] = where
            own["decode_admitted_s"][ids] = mine["admitted_s"]
            own["completion_s"][ids] = mine["completion_s"]
        else:
            own["replica"][ids] = where
            own["admitted_s"][ids] = mine["admitted_s"]
            own["first_token_s"][ids] = mine["first_token_s"]
            ends = pool.role == "colocated" or output[ids] == 1
            own["completion_s"][ids] = np.where(
                ends, mine["completion_s"], own["completion_s"][ids]
            )
        own["preemptions"][ids] += mine["preemptions"].to_numpy(dtype=np.int64)
        if "swap_outs" in mine and "swap_outs" in own:
            own["swap_outs"][ids] += mine["swap_outs"].to_numpy(dtype=np.int64)
        own["recomputed_tokens"][ids] += mine["recomputed_tokens"].to_numpy(
            dtype=np.int64
        )

    records = pd.DataFrame(own)
    records.index.name = "request"
    for column, mine in own.items():
        if column in ("transfer_start_s", "transfer_end_s"):
            continue  # the transfers are checked against their links below
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
    _check_transfers(instance, cluster, own, claimed, rtol, out, result.runs)

    metrics: dict[str, float] = {}
    skip = {"profile", "policy", "replicas", "iterations", "num_rejected"}
    for pool, ids, busy_s, kv_token_seconds in parts:
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
    metrics |= _check_swap_totals(totals, swaps, result.metrics, rtol, out)
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
