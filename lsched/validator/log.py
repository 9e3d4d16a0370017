"""One log checked and its metrics recomputed: :func:`validate_schedule` and the
replay of one pool's log that the cluster checks share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.instance import Instance
from lsched.profile import DeploymentProfile
from lsched.validator.adapters import _AdapterCheck, _check_adapters
from lsched.validator.checks import (
    _check_durations,
    _check_features,
    _check_kv,
    _check_limits,
    _check_order,
    _check_shape,
    _run_features,
)
from lsched.validator.fit import _check_fit_records, _fit
from lsched.validator.metrics import _compare_metrics, _compare_records, _metrics
from lsched.validator.prefix import _check_prefix
from lsched.validator.replay import _Log, _Replay, _replay, _SwapRows
from lsched.validator.report import (
    SWAP_MODES,
    Features,
    FloatArray,
    ValidationReport,
    _Collector,
    _frozen,
)
from lsched.validator.schema import _check_schema, _check_swap_schema
from lsched.validator.stages import _stage_kv, _Stages
from lsched.validator.swaps import _check_swaps
from lsched.validator.tbt import _check_tbt, _token_times
from lsched.validator.timing import _iteration_end, _run_times


def validate_schedule(
    instance: Instance,
    profile: DeploymentProfile,
    runs: pd.DataFrame,
    members: pd.DataFrame,
    preemptions: pd.DataFrame,
    *,
    replicas: int,
    requests: pd.DataFrame | None = None,
    metrics: Mapping[str, float] | None = None,
    rtol: float = 1e-9,
    swaps: pd.DataFrame | None = None,
    swap_mode: str = "blocking",
    prefix_cache: Any = None,
    evictions: pd.DataFrame | None = None,
) -> ValidationReport:
    """Check an iteration log against the iteration model and recompute its metrics.

    Parameters
    ----------
    instance
        The requests the log serves.
    profile
        The deployment: cost model, KV capacity and block size, batch limits
        (possibly ``replace``-d, e.g. with an instance's memory limit).
    runs, members, preemptions
        The iteration log (module docstring).
    replicas
        Number of replicas ``C`` (runs name replicas ``0..C-1``).
    requests
        Claimed per-request records (index = request position; columns of
        :data:`REQUEST_COLUMNS`), compared with the validator's own if given.
    metrics
        Claimed metrics, compared key by key with the validator's own if given.
    rtol
        Relative tolerance for recomputed times and metrics.
    swaps
        The log's ``swaps`` table (module docstring, "Swaps"), or ``None``: no
        request swapped (the log is checked as it always was).
    swap_mode
        How the swaps' copies meet the iterations, ``"blocking"`` or ``"async"``
        (the policy's ``swap_mode``; :func:`validate_cluster` reads it from each
        pool's policy spec).
    prefix_cache
        The replicas' prefix cache (``eviction`` and ``capacity_tokens``, as
        :class:`~lsched.prefix.spec.PrefixCacheSpec` has them), or ``None``: no
        cache (:mod:`lsched.validator.prefix`).
    evictions
        The log's ``evictions`` table (run, blocks) of a run with a cache.

    Returns
    -------
    ValidationReport
        Every violation found (the first :data:`MAX_VIOLATIONS`, and a count of
        the rest), the recomputed metrics and per-request times.
    """
    fit = _fit(instance, profile.max_model_len)
    report, _, _ = _validate_log(fit.served, profile, runs, members, preemptions,
                                 replicas=replicas, requests=requests,
                                 metrics=metrics, rtol=rtol, swaps=swaps,
                                 swap_mode=swap_mode,
                                 too_long=fit.too_long,
                                 prefix=(prefix_cache, evictions, None))  # fmt: skip
    if report.requests is None:  # a log that failed the schema rule
        return report
    out = _Collector()
    _check_fit_records(fit, requests, metrics, out)
    if not out.kept:
        return report
    return replace(
        report,
        violations=report.violations + tuple(out.kept),
        suppressed=report.suppressed + out.extra,
    )


def _malformed(
    instance: Instance, out: _Collector
) -> tuple[ValidationReport, float, float]:
    """The report of a log whose tables are malformed: its errors, no figures."""
    nan = np.full(len(instance), np.nan)
    report = ValidationReport(
        tuple(out.kept), {}, _frozen(nan), _frozen(nan), None, out.extra
    )
    return report, 0.0, 0.0


def _validate_log(
    instance: Instance,
    profile: DeploymentProfile,
    runs: pd.DataFrame,
    members: pd.DataFrame,
    preemptions: pd.DataFrame,
    *,
    replicas: int,
    requests: pd.DataFrame | None,
    metrics: Mapping[str, float] | None,
    rtol: float,
    stages: _Stages | None = None,
    swaps: pd.DataFrame | None = None,
    swap_mode: str = "blocking",
    swap_totals: bool = True,
    too_long: npt.NDArray[np.bool_] | None = None,
    prefix: tuple[Any, pd.DataFrame | None, Any] = (None, None, None),
    adapters: tuple[Any, pd.DataFrame | None, pd.DataFrame | None] = (None, None, None),
    token_times: list[list[float]] | None = None,
) -> tuple[ValidationReport, float, float]:
    """:func:`validate_schedule`, and for a pool of a disaggregated cluster what its
    ``stages`` add; also returns the busy seconds and the KV token-seconds (pinned
    KV included). ``swap_totals``: compare the swap metrics with ``metrics`` (a
    cluster compares its totals itself). ``instance`` has the outputs a served
    request emits (:func:`_fit`); ``too_long``: the requests that must not run,
    left out of the metrics; ``prefix``: the cache, its evictions and, with a
    KV pool, the pool's link to itself (``None``: ideal); ``adapters``: the
    adapter spec and its loads; ``token_times``: filled with each
    request's token times instead of checking TBT (:mod:`.disagg`)."""
    if swap_mode not in SWAP_MODES:
        raise ValueError(f"swap_mode: got {swap_mode!r}; expected one of {SWAP_MODES}")
    out = _Collector()
    ok = _check_schema(instance, runs, members, preemptions, replicas, out)
    if ok and swaps is not None:
        ok = _check_swap_schema(instance, runs, swaps, out)
    if not ok:
        return _malformed(instance, out)

    log = _Log.of(runs, members, preemptions)
    sw = None if swaps is None else _SwapRows.of(swaps, log.runs)
    async_swaps = swap_mode == "async"
    _check_order(log, replicas, out)
    _check_shape(log, out)
    carried = None if stages is None else stages.carried
    cached = prefix[0] is not None  # the prefix cache's spec
    replay = _replay(instance, log, out, carried, sw, async_swaps, cached)
    features = _run_features(log, replay)
    _check_features(log, features, out)
    _check_limits(profile, log, features, out)

    D = features[2]  # decode steps per run
    duration, weighted = _run_times(profile, *features, log.n_it)
    stall, swap_kv, swap_metrics = np.zeros(len(log.run_ids)), None, None
    if sw is not None:
        stall, swap_kv, swap_metrics = _check_swaps(profile, log, sw, replay,
                                                    async_swaps, rtol, out)  # fmt: skip
    cache, lora, stall = _cache_and_adapters(instance, profile, log, replay, prefix,
                                             adapters, stall, rtol, out)  # fmt: skip
    duration = duration + stall
    _check_durations(log, duration, stall, rtol, out)
    first, done = _request_times(profile, log, features, replay, len(instance))
    arrivals, pinned, pinned_token_seconds = None, None, 0.0
    if stages is not None:
        arrivals, pinned, pinned_token_seconds = _stage_kv(
            instance, profile, log, features, stages, replay, done, out
        )
    if cache is not None:  # a colocated or a prefill pool (which adopts nothing)
        hit = replay.hits > 0
        arrivals = (log.m_pos[hit], replay.hits[hit])
        pinned = cache.charged if pinned is None else pinned + cache.charged
    kv_first = _check_kv(profile, log, D, replay, replicas, out, arrivals, pinned,
                         swap_kv)  # fmt: skip
    kv_token_seconds = float(np.sum(kv_first * duration + D * weighted))
    kv_token_seconds += pinned_token_seconds
    barred = _check_served(instance, profile, log, replay, done, too_long, out)

    own = _own_metrics(instance, profile, replay, first, done, barred,
                       busy_s=float(duration.sum()),
                       kv_token_seconds=kv_token_seconds,
                       replicas=replicas)  # fmt: skip
    if cache is not None:
        own |= cache.metrics
    own |= lora.metrics  # none without adapters
    records = _own_records(replay, first, done, sw, log if cache else None)
    tbt: dict[str, float] = {}  # Mooncake's; a disaggregated pool's times only
    if token_times is not None:
        token_times[:] = _token_times(profile, log, features, replay, len(instance))
    else:
        tbt = _check_tbt(instance, profile, log, features, replay, first, records,
                         metrics, rtol, out)  # fmt: skip
    if requests is not None:
        _compare_records(records, requests, rtol, out)
    if metrics is not None:
        _compare_metrics(own, metrics, rtol, out)
    own |= tbt
    own |= _swap_part(swap_metrics, metrics if swap_totals else None, rtol, out)
    report = ValidationReport(
        tuple(out.kept), own, _frozen(first), _frozen(done), records, out.extra
    )
    return report, float(duration.sum()), kv_token_seconds


def _swap_part(
    swap_metrics: dict[str, float] | None,
    metrics: Mapping[str, float] | None,
    rtol: float,
    out: _Collector,
) -> dict[str, float]:
    """The swap metrics (none without swaps), compared with the claimed
    ``metrics`` where given."""
    if swap_metrics is None:
        return {}
    if metrics is not None:
        _compare_metrics(swap_metrics, metrics, rtol, out)
    return swap_metrics


def _cache_and_adapters(
    instance: Instance,
    profile: DeploymentProfile,
    log: _Log,
    replay: _Replay,
    prefix: tuple[Any, pd.DataFrame | None, Any],
    adapters: tuple[Any, pd.DataFrame | None, pd.DataFrame | None],
    stall: FloatArray,
    rtol: float,
    out: _Collector,
) -> tuple[Any, _AdapterCheck, FloatArray]:
    """The prefix cache's check (``None`` without a cache) and the adapters'
    (:mod:`lsched.validator.adapters`), and ``stall`` (per run, the seconds of
    its blocking copies) plus the seconds they add: hits copied from a host
    tier or a KV pool, adapters loaded, the adapter columns."""
    spec, evictions, link = prefix
    extra = stall
    cache = None
    if spec is not None:  # a colocated or a prefill pool
        cache = _check_prefix(instance, profile, log, replay, spec, evictions, out,
                              link)  # fmt: skip
        extra = extra + cache.copy_s  # hits copied from a host tier or a KV pool
    lora = _check_adapters(instance, profile, log, *adapters, rtol, out)
    return cache, lora, extra + lora.extra_s


def _request_times(
    profile: DeploymentProfile,
    log: _Log,
    features: Features,
    replay: _Replay,
    n: int,
) -> tuple[FloatArray, FloatArray]:
    """Per request (``n``), when its first token and its last are emitted: the
    end of the iteration that emits it (NaN where no iteration does)."""
    rows = list(zip(*(f.tolist() for f in features), strict=True))
    first, done = np.full(n, np.nan), np.full(n, np.nan)
    for times, marks in ((first, replay.first_at), (done, replay.done_at)):
        for i, r, k in marks:
            times[i] = _iteration_end(profile, log.start[r], log.end[r],
                                      log.n_it[r], k, rows[r])  # fmt: skip
    return first, done


def _check_served(
    instance: Instance,
    profile: DeploymentProfile,
    log: _Log,
    replay: _Replay,
    done: FloatArray,
    too_long: npt.NDArray[np.bool_] | None,
    out: _Collector,
) -> npt.NDArray[np.bool_]:
    """``max-model-len``: a request ``too_long`` (prompt over ``max_model_len``)
    never runs; ``token-conservation``: every other request completes. Returns
    the requests barred (too long)."""
    n = len(instance)
    output = instance.output_tokens
    barred = np.zeros(n, dtype=bool) if too_long is None else too_long
    ran = np.zeros(n, dtype=bool)
    for req in (log.m_req, log.p_req):
        ran[req[(req >= 0) & (req < n)]] = True
    for i in np.flatnonzero(barred & ran).tolist():
        out.add(
            "max-model-len",
            f"prompt {int(instance.prompt_tokens[i])} tokens > max_model_len "
            f"{profile.max_model_len}, but it runs; expected it rejected at arrival",
            request=i,
        )
    for i in np.flatnonzero(np.isnan(done) & ~barred).tolist():
        out.add(
            "token-conservation",
            f"emits {replay.emitted[i]} of its {output[i]} tokens and never completes",
            request=i,
        )
    return barred


def _own_metrics(
    instance: Instance,
    profile: DeploymentProfile,
    replay: _Replay,
    first: FloatArray,
    done: FloatArray,
    barred: npt.NDArray[np.bool_],
    *,
    busy_s: float,
    kv_token_seconds: float,
    replicas: int,
) -> dict[str, float]:
    """The metrics over the requests served (not ``barred``); a request rejected
    for length is a miss for SLO attainment."""
    keep = ~barred if not barred.all() else np.ones(len(instance), dtype=bool)
    share = float((~barred).mean())
    own = _metrics(
        instance if keep.all() else instance.subset(keep),
        first[keep],
        done[keep],
        busy_s=busy_s,
        kv_token_seconds=kv_token_seconds,
        capacity_tokens=profile.kv_capacity_tokens,
        replicas=replicas,
        preemptions=int(replay.preemptions.sum()),
        recomputed=int(replay.recomputed.sum()),
    )
    if share < 1:  # a request rejected for length is a miss
        for key in ("slo_attainment", "slo_attainment_ttft", "slo_attainment_tpot"):
            own[key] *= share
    return own


def _own_records(
    replay: _Replay,
    first: FloatArray,
    done: FloatArray,
    swaps: _SwapRows | None,
    cached: _Log | None = None,
) -> pd.DataFrame:
    """The validator's per-request records (:data:`REQUEST_COLUMNS`, and
    ``swap_outs`` when the log has a swaps table, ``cached_tokens`` when its
    replicas have a prefix cache: ``cached``, the log)."""
    records = pd.DataFrame(
        {
            "replica": replay.replica,
            "admitted_s": replay.admitted_s,
            "first_token_s": first,
            "completion_s": done,
            "preemptions": replay.preemptions,
            "recomputed_tokens": replay.recomputed,
        }
    )
    if swaps is not None:
        outs = swaps.req[swaps.inbound == 0]
        records["swap_outs"] = np.bincount(outs, minlength=len(first)).astype(np.int64)
    if cached is not None:
        taken = np.bincount(cached.m_req, weights=replay.hits, minlength=len(first))
        records["cached_tokens"] = taken.astype(np.int64)
    records.index.name = "request"
    return records
