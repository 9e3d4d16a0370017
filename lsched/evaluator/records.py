"""Records of a cluster run: per request, per replica, per pool, and the log.

:func:`collect` turns a :class:`~lsched.evaluator.cluster.ClusterRun` into a
:class:`~lsched.evaluator.result.SimulationResult`. Metrics (:mod:`lsched.metrics`)
are computed over the *served* requests: a rejected request is counted
(``num_rejected``), excluded from latency metrics, and a miss for SLO attainment
(the attainment over served requests times the served share). A served request
whose output was cut at ``max_model_len`` (:mod:`lsched.evaluator.length`) counts
the tokens it emitted (TPOT, throughput, normalised latency) and its cut tokens
(``truncated_tokens``; ``num_truncated`` counts such requests). Per replica and per
pool the same metrics are computed over the requests each served, with its own
busy time, KV integral and capacity (so each one's makespan is its own).
With the log, per request ``tbt_s`` and the metrics of Mooncake's TBT and
effective capacity (:mod:`lsched.evaluator.gaps`, :func:`lsched.metrics.tbt_metrics`;
a rejected request misses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lsched.cluster import Cluster
from lsched.evaluator.cluster import REJECTED, ClusterRun
from lsched.evaluator.engine import ReplicaEngine
from lsched.evaluator.gaps import log_tbt
from lsched.evaluator.result import (
    ADAPTER_LOAD_COLUMNS,
    EVICTION_COLUMNS,
    MEMBER_COLUMNS,
    MERGED_RUN_COLUMNS,
    PREFIX_METRICS,
    REQUEST_COLUMNS,
    RUN_COLUMNS,
    SWAP_COLUMNS,
    SWAP_METRICS,
    SimulationResult,
)
from lsched.instance import Instance
from lsched.metrics import (
    SLO_ATTAINMENT_KEYS,
    adapter_latency,
    migration_metrics,
    schedule_metrics,
    tbt_metrics,
)


def collect(
    instance: Instance,
    cluster: Cluster,
    run: ClusterRun,
    log: bool,
    runtime_s: float,
    path: str = "python",
) -> SimulationResult:
    """The result of ``run``: records, metrics (total, per replica, per pool) and,
    when ``log``, the iteration log; ``path`` says which engine ran. The metrics
    are those of ``run.served`` (the outputs the engines ran) where the run says
    so."""
    if run.served is not None:
        instance = run.served
    n = len(instance)
    truncated = np.zeros(n, dtype=np.int64)
    if run.truncated is not None:
        truncated[:] = run.truncated
    served = run.where != REJECTED
    names = np.array([p.name for p in cluster.pools] + [""], dtype=object)
    columns: dict[str, np.ndarray] = {
        "replica": run.where,
        "admitted_s": np.full(n, np.nan),
        "first_token_s": np.full(n, np.nan),
        "completion_s": np.full(n, np.nan),
        "preemptions": np.zeros(n, dtype=np.int64),
        "recomputed_tokens": np.zeros(n, dtype=np.int64),
        "pool": names[np.where(served, cluster.replica_pool[run.where], -1)],
        "rejected": np.full(n, "", dtype=object),
        "truncated_tokens": truncated,
    }
    for i, reason in run.reasons.items():
        columns["rejected"][i] = reason
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in _LOG_TABLES}
    stages = _stage_columns(run, n)
    for c, (engine, ids) in enumerate(zip(run.engines, run.ids, strict=True)):
        if engine is None:
            continue
        m = len(ids)
        role = cluster.pool_of(c).role
        if role == "decode":
            stages["decode_admitted_s"][ids] = engine.admitted_s[:m]
        else:
            columns["admitted_s"][ids] = engine.admitted_s[:m]
            columns["first_token_s"][ids] = engine.first_token_s[:m]
        # a request that migrated away completes on another replica; a prefill
        # replica completes only the requests that emit one token
        done = ~np.isnan(engine.completion_s[:m])
        if role == "prefill":
            done &= instance.output_tokens[ids] == 1
        columns["completion_s"][ids[done]] = engine.completion_s[:m][done]
        columns["preemptions"][ids] += engine.preemptions[:m]
        columns["recomputed_tokens"][ids] += engine.recomputed[:m]
        if engine.log is not None:
            offset = sum(len(r) for r in frames["runs"])
            for name, frame in _log_frames(engine, c, ids, offset).items():
                frames[name].append(frame)
    engines = [e for e in run.engines if e is not None]
    swaps = _swap_columns(n, run)
    cached = _prefix_columns(n, run, cluster.prefix_cached)
    replicas = cluster.num_replicas
    adapters = cluster.serves_adapters
    tables = _log_tables(frames, cluster.prefix_cached, adapters) if log else {}
    lora = {"adapter": _adapter_names(instance)} if adapters else {}
    if log:  # every token's time is in the log: Mooncake's TBT
        columns["tbt_s"] = log_tbt(instance, cluster, tables["runs"], tables["members"])
    total = _metrics(
        instance, columns, engines, np.arange(n), replicas, _mean_capacity(cluster)
    )
    total |= _moved_metrics(stages)
    if swaps:
        total |= _swap_metrics(cluster, run)
    pools = " + ".join(dict.fromkeys(p.profile.name for p in cluster.pools))
    return SimulationResult(
        policy=" + ".join(dict.fromkeys(p.policy.label for p in cluster.pools)),
        profile=pools,
        replicas=replicas,
        requests=pd.DataFrame(
            columns | stages | swaps | cached | lora,
            columns=[*REQUEST_COLUMNS, *_tbt(columns), *stages, *swaps, *cached, *lora],
        ),
        metrics=total,
        iterations=sum(e.iterations for e in engines),
        runtime_s=runtime_s,
        **tables,
        replica_metrics=_replica_metrics(instance, columns, run, cluster, total),
        pool_metrics=_pool_metrics(instance, columns, run, cluster, total),
        engine=path,
        migrations=run.migrations,
        adapter_metrics=_adapter_frame(instance, columns, cluster),
    )


def _mean_capacity(cluster: Cluster) -> float:
    """The mean KV capacity of a replica, tokens: the total over the ``C``
    replicas is what counts (an int where it divides)."""
    capacity = sum(p.profile.kv_capacity_tokens * p.replicas for p in cluster.pools)
    replicas = cluster.num_replicas
    return capacity // replicas if capacity % replicas == 0 else capacity / replicas


def _moved_metrics(stages: dict[str, np.ndarray]) -> dict[str, float]:
    """The metrics of KV moved between replicas: disaggregated transfers' bytes,
    live migrations (:func:`lsched.metrics.migration_metrics`)."""
    moved: dict[str, float] = {}
    if "transferred_bytes" in stages:
        moved["transferred_bytes"] = float(stages["transferred_bytes"].sum())
    if "migrations" in stages:
        moved |= migration_metrics(
            stages["migrations"],
            stages["migration_aborts"],
            stages["migrated_bytes"],
            stages["migration_downtime_s"],
        )
    return moved


#: The iteration log's tables and their columns (the index of ``runs``: ``run``).
_LOG_TABLES: dict[str, tuple[str, ...]] = {
    "runs": RUN_COLUMNS,
    "members": MEMBER_COLUMNS,
    "preemptions": ("run", "request"),
    "swaps": SWAP_COLUMNS,
    "evictions": EVICTION_COLUMNS,
    "adapter_loads": ADAPTER_LOAD_COLUMNS,
    "merged_runs": MERGED_RUN_COLUMNS,
}


def _tbt(columns: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The request column ``tbt_s`` where the log gave it."""
    return ("tbt_s",) if "tbt_s" in columns else ()


def _log_frames(
    engine: ReplicaEngine, replica: int, ids: np.ndarray, offset: int
) -> dict[str, pd.DataFrame]:
    """Replica ``replica``'s log tables, requests by instance position and runs
    numbered from ``offset``."""
    assert engine.log is not None
    return {
        "runs": _runs_frame(engine, replica, offset),
        "members": _members_frame(engine.log.members, ids, offset),
        "preemptions": pd.DataFrame(
            [(r + offset, int(ids[k])) for r, k in engine.log.preemptions],
            columns=["run", "request"],
            dtype=np.int64,
        ),
        "swaps": _swaps_frame(engine.log.swaps, ids, offset),
        "evictions": _evictions_frame(engine, offset),
        "adapter_loads": _adapter_loads_frame(engine, offset),
        "merged_runs": _merged_runs_frame(engine, offset),
    }


def _merged_runs_frame(engine: ReplicaEngine, offset: int) -> pd.DataFrame:
    """A replica's merged runs and their adapters, runs numbered from
    ``offset`` (none without adapters)."""
    adapters = getattr(engine, "adapters", None)
    merged = [] if adapters is None else adapters.merged
    names = [] if adapters is None else adapters.names
    return pd.DataFrame(
        [(run + offset, names[c]) for run, c in merged],
        columns=list(MERGED_RUN_COLUMNS),
    )


def _adapter_loads_frame(engine: ReplicaEngine, offset: int) -> pd.DataFrame:
    """A replica's adapter loads, runs numbered from ``offset`` (none without
    adapters)."""
    adapters = getattr(engine, "adapters", None)
    loads = [] if adapters is None else adapters.loads
    names = [] if adapters is None else adapters.names
    return pd.DataFrame(
        [
            (run + offset, names[c], start, end, names[e] if e >= 0 else "")
            for run, c, start, end, e in loads
        ],
        columns=list(ADAPTER_LOAD_COLUMNS),
    )


def _log_tables(
    frames: dict[str, list[pd.DataFrame]], cached: bool, lora: bool = False
) -> dict[str, pd.DataFrame | None]:
    """Every replica's log tables put together (``evictions`` only where a
    replica has a prefix cache: ``cached``; ``adapter_loads`` only where one
    serves adapters: ``lora``)."""
    tables: dict[str, pd.DataFrame | None] = {
        name: _concat(frames[name], columns, index="run" if name == "runs" else None)
        for name, columns in _LOG_TABLES.items()
    }
    if not cached:
        tables["evictions"] = None
    if not lora:
        tables["adapter_loads"] = tables["merged_runs"] = None
    return tables


def _stage_columns(run: ClusterRun, n: int) -> dict[str, np.ndarray]:
    """The stage columns of a disaggregated run, or the migration columns of a
    run with migration (none for another colocated one)."""
    if run.stages is None:
        return {}
    if "decode_replica" not in run.stages:
        return dict(run.stages)
    return dict(run.stages) | {"decode_admitted_s": np.full(n, np.nan)}


def _swap_columns(n: int, run: ClusterRun) -> dict[str, np.ndarray]:
    """Per request, its swap-outs (none where no replica swapped)."""
    swapped = [
        (engine, ids)
        for engine, ids in zip(run.engines, run.ids, strict=True)
        if getattr(engine, "host", None) is not None and engine.host.out_tokens
    ]
    if not swapped:
        return {}
    outs = np.zeros(n, dtype=np.int64)
    for engine, ids in swapped:
        outs[ids] += engine.swaps[: len(ids)]
    return {"swap_outs": outs}


def _prefix_columns(n: int, run: ClusterRun, cached: bool) -> dict[str, np.ndarray]:
    """Per request, the cached tokens it took, where some pool has a prefix
    cache (``cached``; a replica that served nothing has no engine)."""
    if not cached:
        return {}
    tokens = np.zeros(n, dtype=np.int64)
    for engine, ids in zip(run.engines, run.ids, strict=True):
        if getattr(engine, "prefix", None) is not None:
            tokens[ids] += engine.prefix.cached[: len(ids)]
    return {"cached_tokens": tokens}


def _adapter_names(instance: Instance) -> np.ndarray:
    """Per request its adapter's name (``""``: the base model)."""
    if instance.adapter is None:
        return np.full(len(instance), "", dtype=object)
    return instance.adapter.astype(object)


def _adapter_metrics(engines: list[ReplicaEngine]) -> dict[str, float]:
    """Adapter loads and their seconds over ``engines`` that serve adapters
    (none if no engine does; :mod:`lsched.evaluator.adapters`)."""
    served = [a for e in engines if (a := getattr(e, "adapters", None)) is not None]
    if not served:
        return {}
    return {
        "adapter_loads": float(sum(len(a.loads) for a in served)),
        "adapter_load_s": sum(a.loaded_s for a in served),
        "adapter_switches": float(sum(a.switches for a in served)),
    }


def _adapter_frame(
    instance: Instance, columns: dict[str, np.ndarray], cluster: Cluster
) -> pd.DataFrame | None:
    """Per adapter, the served requests' mean TTFT and E2E
    (:func:`lsched.metrics.adapter_latency`), where some pool serves adapters."""
    if not cluster.serves_adapters:
        return None
    per = adapter_latency(
        _adapter_names(instance),
        columns["first_token_s"] - instance.arrival_s,
        columns["completion_s"] - instance.arrival_s,
    )
    return pd.DataFrame.from_dict(per, orient="index").rename_axis("adapter")


def _prefix_metrics(engines: list[ReplicaEngine]) -> dict[str, float]:
    """The prefix cache's metrics over ``engines`` that have one (none if no
    engine has): prefill tokens saved, and their share of the prefill targets of
    the admissions; with a host tier or a KV pool, the tokens copied from it
    and the copies' seconds; with a KV pool, the tokens copied from another
    replica (:mod:`lsched.evaluator.prefix`)."""
    prefixes = [e.prefix for e in engines if getattr(e, "prefix", None) is not None]
    if not prefixes:
        return {}
    saved = sum(int(p.cached.sum()) for p in prefixes)
    needed = sum(p.needed for p in prefixes)
    ratio = saved / needed if needed else 0.0
    metrics = dict(zip(PREFIX_METRICS, (ratio, float(saved)), strict=True))
    tiered = [p for p in prefixes if p.tier is not None]
    if tiered:
        metrics["host_hit_tokens"] = float(sum(p.copied for p in tiered))
        metrics["host_copy_s"] = sum(p.copy_s for p in tiered)
    if any(p.pool is not None for p in prefixes):
        metrics["remote_hit_tokens"] = float(sum(p.remote for p in prefixes))
    return metrics


def _evictions_frame(engine: ReplicaEngine, offset: int) -> pd.DataFrame:
    """One replica's evictions (runs numbered globally); none without a cache."""
    prefix = engine.prefix
    rows = [] if prefix is None or prefix.evictions is None else prefix.evictions
    return pd.DataFrame(
        [(run + offset, blocks) for run, blocks in rows],
        columns=list(EVICTION_COLUMNS),
        dtype=np.int64,
    )


def _swap_metrics(cluster: Cluster, run: ClusterRun) -> dict[str, float]:
    """Bytes swapped each way, blocking copy seconds, tokens not recomputed."""
    out = inbound = stall = 0.0
    avoided = 0
    for c, engine in enumerate(run.engines):
        host = getattr(engine, "host", None)
        if host is None:
            continue
        per_token = cluster.pool_of(c).profile.kv_bytes_per_token
        out += host.out_tokens * per_token
        inbound += host.in_tokens * per_token
        stall += host.stall_s
        avoided += host.out_tokens
    return dict(zip(SWAP_METRICS, (out, inbound, stall, float(avoided)), strict=True))


def _swaps_frame(
    swaps: list[tuple[int, int, int, int, float, float]],
    ids: np.ndarray,
    offset: int,
) -> pd.DataFrame:
    """One replica's swap log, with instance ids and runs numbered globally."""
    return pd.DataFrame(
        {
            "run": np.array([s[0] + offset for s in swaps], dtype=np.int64),
            "request": np.array([int(ids[s[1]]) for s in swaps], dtype=np.int64),
            "direction": np.array(
                ["in" if s[2] else "out" for s in swaps], dtype=object
            ),
            "tokens": np.array([s[3] for s in swaps], dtype=np.int64),
            "start_s": np.array([s[4] for s in swaps], dtype=np.float64),
            "end_s": np.array([s[5] for s in swaps], dtype=np.float64),
        },
        columns=list(SWAP_COLUMNS),
    )


def _metrics(
    instance: Instance,
    columns: dict[str, np.ndarray],
    engines: list[ReplicaEngine],
    rows: np.ndarray,
    replicas: int,
    capacity_tokens: float,
) -> dict[str, float]:
    """Metrics of the requests ``rows`` served by ``engines`` (``replicas`` of
    ``capacity_tokens`` each, on average)."""
    served = columns["replica"][rows] != REJECTED
    ids = rows[served]
    if not len(ids):  # every request rejected (e.g. by an SLO-aware router)
        return {"num_completed": 0.0, "num_rejected": float(len(rows))}
    subset = instance if len(ids) == len(instance) else instance.subset(ids)
    metrics = schedule_metrics(
        subset,
        columns["first_token_s"][ids],
        columns["completion_s"][ids],
        busy_s=sum(e.busy_s for e in engines),
        kv_token_seconds=sum(e.kv_token_seconds for e in engines),
        kv_capacity_tokens=capacity_tokens,  # type: ignore[arg-type]
        replicas=replicas,
        preemptions=int(columns["preemptions"][ids].sum()),
        recomputed_tokens=int(columns["recomputed_tokens"][ids].sum()),
    )
    metrics |= _prefix_metrics(engines)
    metrics |= _adapter_metrics(engines)
    if "tbt_s" in columns:  # over every request: a rejection is a miss
        ttft = columns["first_token_s"][rows] - instance.arrival_s[rows]
        metrics |= tbt_metrics(ttft, columns["tbt_s"][rows])
    rejected = len(rows) - len(ids)
    metrics["num_rejected"] = float(rejected)
    metrics["num_truncated"] = float(np.count_nonzero(columns["truncated_tokens"][ids]))
    for key in SLO_ATTAINMENT_KEYS if rejected else ():  # a rejection is a miss
        metrics[key] *= len(ids) / len(rows)  # NaN (no deadlines) stays NaN
    return metrics


def _part_metrics(
    instance: Instance,
    columns: dict[str, np.ndarray],
    engines: list[ReplicaEngine],
    ids: np.ndarray,
    pool: Any,
    replicas: int,
    total: dict[str, float] | None,
) -> dict[str, float]:
    """Metrics of a replica or a pool (``replicas`` of ``pool``'s profile) that
    served ``ids``; ``total`` when it is the whole cluster (the same numbers)."""
    if not len(ids):
        return {"num_completed": 0.0, "iterations": 0}
    if total is not None:
        metrics = dict(total)
    else:
        capacity = pool.profile.kv_capacity_tokens
        metrics = _metrics(instance, columns, engines, ids, replicas, capacity)
    return metrics | {"iterations": sum(e.iterations for e in engines)}


def _replica_metrics(
    instance: Instance,
    columns: dict[str, np.ndarray],
    run: ClusterRun,
    cluster: Cluster,
    total: dict[str, float],
) -> pd.DataFrame:
    whole = total if cluster.num_replicas == 1 and not run.reasons else None
    rows = []
    for c, (engine, ids) in enumerate(zip(run.engines, run.ids, strict=True)):
        pool = cluster.pool_of(c)
        engines = [] if engine is None else [engine]
        # a decode replica's requests are in the order they reached it, not in
        # instance (arrival) order, which a sub-instance needs
        ids = np.sort(ids)
        metrics = _part_metrics(instance, columns, engines, ids, pool, 1, whole)
        rows.append({"replica": c, "pool": pool.name} | metrics)
    return pd.DataFrame(rows).set_index("replica")


def _pool_metrics(
    instance: Instance,
    columns: dict[str, np.ndarray],
    run: ClusterRun,
    cluster: Cluster,
    total: dict[str, float],
) -> pd.DataFrame:
    whole = total if len(cluster.pools) == 1 and not run.reasons else None
    rows = []
    pool_of = cluster.replica_pool
    for k, pool in enumerate(cluster.pools):
        members = np.flatnonzero(pool_of == k).tolist()
        engines = [run.engines[c] for c in members if run.engines[c] is not None]
        # a request that migrated between two of its replicas counts once
        ids = np.unique(np.concatenate([run.ids[c] for c in members]))
        record = {
            "pool": pool.name,
            "profile": pool.profile.name,
            "policy": pool.policy.label,
            "replicas": pool.replicas,
        }
        metrics = _part_metrics(
            instance,
            columns,
            engines,
            ids,
            pool,
            pool.replicas,
            whole,  # type: ignore[arg-type]
        )
        rows.append(record | metrics)
    return pd.DataFrame(rows).set_index("pool")


def _runs_frame(engine: ReplicaEngine, replica: int, offset: int) -> pd.DataFrame:
    assert engine.log is not None
    frame = pd.DataFrame(engine.log.runs, columns=list(RUN_COLUMNS[1:]))
    frame.insert(0, "replica", replica)
    frame.index = pd.RangeIndex(offset, offset + len(frame), name="run")
    return frame


def _members_frame(
    parts: list[tuple[np.ndarray, ...]], ids: np.ndarray, offset: int
) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=list(MEMBER_COLUMNS))
    run, local, kind, tokens, before = (
        np.concatenate(c) for c in zip(*parts, strict=True)
    )
    return pd.DataFrame(
        {
            "run": run + offset,
            "request": ids[local],
            "kind": kind,
            "tokens": tokens,
            "processed_before": before,
        }
    )


def _concat(
    frames: list[pd.DataFrame], columns: tuple[str, ...], index: str | None = None
) -> pd.DataFrame:
    if not frames:
        frame = pd.DataFrame(columns=list(columns))
        if index:
            frame.index.name = index
        return frame
    return pd.concat(frames, ignore_index=index is None)
