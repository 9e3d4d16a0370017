"""One log checked and its metrics recomputed: :func:`validate_schedule` and the
replay of one pool's log that the cluster checks share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.instance import Instance
from lsched.profile import DeploymentProfile
from lsched.validator.checks import (
    _check_features,
    _check_kv,
    _check_limits,
    _check_order,
    _check_shape,
)
from lsched.validator.fit import _check_fit_records, _fit
from lsched.validator.metrics import _compare_metrics, _compare_records, _metrics
from lsched.validator.replay import _replay, _SwapRows
from lsched.validator.report import (
    _DECODE,
    _PREFILL,
    SWAP_MODES,
    IntArray,
    ValidationReport,
    _close_array,
    _Collector,
    _frozen,
)
from lsched.validator.schema import _check_schema, _check_swap_schema
from lsched.validator.stages import _adoptions, _pins, _Stages
from lsched.validator.swaps import (
    _check_copies,
    _check_host,
    _copy_seconds,
    _swap_kv,
    _swap_metrics,
)
from lsched.validator.timing import _iteration_end, _run_times, _Timeline


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
                                 too_long=fit.too_long)  # fmt: skip
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
) -> tuple[ValidationReport, float, float]:
    """:func:`validate_schedule`, and for a pool of a disaggregated cluster what its
    ``stages`` add; also returns the busy seconds and the KV token-seconds (pinned
    KV included). ``swap_totals``: compare the swap metrics with ``metrics``
    (a cluster compares its totals itself). ``instance`` has the outputs a
    served request emits (:func:`_fit`); ``too_long``: the requests that must
    not run (prompt over ``max_model_len``), left out of the metrics."""
    if swap_mode not in SWAP_MODES:
        raise ValueError(f"swap_mode: got {swap_mode!r}; expected one of {SWAP_MODES}")
    out = _Collector()
    n = len(instance)
    nan = np.full(n, np.nan)
    ok = _check_schema(instance, runs, members, preemptions, replicas, out)
    if ok and swaps is not None:
        ok = _check_swap_schema(instance, runs, swaps, out)
    if not ok:
        report = ValidationReport(
            tuple(out.kept), {}, _frozen(nan), _frozen(nan), None, out.extra
        )
        return report, 0.0, 0.0

    runs = runs.sort_index()
    run_ids = [int(r) for r in runs.index]
    m = len(runs)
    replica = runs["replica"].to_numpy(dtype=np.int64)
    start = runs["start_s"].to_numpy(dtype=np.float64)
    end = runs["end_s"].to_numpy(dtype=np.float64)
    n_it = runs["iterations"].to_numpy(dtype=np.int64)

    m_pos = runs.index.get_indexer(members["run"]).astype(np.int64)
    m_req = members["request"].to_numpy(dtype=np.int64)
    m_kind = np.where(members["kind"].astype(str).to_numpy() == "prefill", 0, 1)
    m_tokens = members["tokens"].to_numpy(dtype=np.int64)
    p_pos = runs.index.get_indexer(preemptions["run"]).astype(np.int64)
    p_req = preemptions["request"].to_numpy(dtype=np.int64)

    sw = None if swaps is None else _SwapRows.of(swaps, runs)
    async_swaps = swap_mode == "async"

    _check_order(run_ids, replica, start, end, replicas, out)
    _check_shape(run_ids, n_it, m_pos, m_req, m_kind, p_pos, p_req, out)

    replay = _replay(
        instance,
        run_ids,
        replica.tolist(),
        start.tolist(),
        n_it.tolist(),
        m_pos,
        m_req,
        m_kind,
        m_tokens,
        members["processed_before"].to_numpy(dtype=np.int64),
        p_pos,
        p_req,
        out,
        None if stages is None else stages.carried,
        sw,
        async_swaps,
    )

    # features of every run from its members and the validator's bookkeeping
    pre, dec = m_kind == _PREFILL, m_kind == _DECODE

    def per_run(mask: npt.NDArray[np.bool_], values: npt.ArrayLike) -> IntArray:
        weights = np.broadcast_to(np.asarray(values, dtype=np.float64), mask.shape)
        # float sums of integers are exact below 2**53
        sums = np.bincount(m_pos[mask], weights=weights[mask], minlength=m)
        return sums.astype(np.int64)

    c = m_tokens
    P = per_run(pre, c)
    Q = per_run(pre, c * (replay.before + c))
    D = per_run(dec, 1)
    K0 = per_run(dec, replay.before + 1)
    H = (P > 0).astype(np.int64)
    _check_features(runs, run_ids, {"P": P, "Q": Q, "D": D, "K": K0, "H": H}, out)
    seqs = np.bincount(m_pos, minlength=m)
    _check_limits(profile, run_ids, seqs, P + D, out)

    duration, weighted = _run_times(profile, P, Q, D, K0, n_it)
    stall = np.zeros(m)
    swap_kv, swap_metrics, copy_s = None, None, np.zeros(0)
    if sw is not None:
        copy_s = _copy_seconds(profile, sw, replay.moved)
        if not async_swaps:  # blocking copies run before the forward pass
            stall = np.bincount(sw.pos, weights=copy_s, minlength=m)
            for r in np.flatnonzero((stall > 0) & (n_it != 1)).tolist():
                out.add(
                    "run-shape",
                    f"has {n_it[r]} iterations after blocking swaps; a run whose "
                    "batch swaps has exactly 1",
                    run=run_ids[r],
                )
        _check_copies(profile, sw, replay.moved, copy_s, async_swaps, run_ids,
                      replica, start, end, rtol, out)  # fmt: skip
        _check_host(profile, sw, replay, run_ids, replica, out)
        swap_kv = _swap_kv(profile, sw, replay, async_swaps, replica, start)
        if len(sw.pos):
            swap_metrics = _swap_metrics(profile, sw, replay.moved, copy_s,
                                         async_swaps)  # fmt: skip
    duration = duration + stall
    # the logged duration is a difference of absolute times: allow their rounding
    atol = 4 * np.finfo(np.float64).eps * np.maximum(np.abs(start), np.abs(end))
    for r in np.flatnonzero(~_close_array(end - start, duration, rtol, atol)).tolist():
        copies = (
            f" and {float(stall[r])!r} s of blocking swap copies" if stall[r] else ""
        )
        out.add(
            "run-duration",
            f"lasts {float(end[r] - start[r])!r} s; its {n_it[r]} iteration(s)"
            f"{copies} take {float(duration[r])!r} s",
            run=run_ids[r],
        )

    # per-request times
    features = list(zip(P.tolist(), Q.tolist(), D.tolist(), K0.tolist(), strict=True))
    first, done = nan.copy(), nan.copy()
    for times, marks in ((first, replay.first_at), (done, replay.done_at)):
        for i, r, k in marks:
            times[i] = _iteration_end(profile, start[r], end[r], n_it[r], k,
                                      features[r])  # fmt: skip

    arrivals, pinned, pinned_token_seconds = None, None, 0.0
    if stages is not None:
        timeline = _Timeline(profile, replica, start, end, n_it, (P, Q, D, K0))
        if stages.carried is not None:
            assert stages.delivered_s is not None
            arrivals = _adoptions(stages, replay, timeline, run_ids, out)
        if stages.pinned_until is not None:
            pinned, pinned_token_seconds = _pins(
                instance, profile, stages.pinned_until, replay, done, timeline
            )
        if stages.reserved_s is not None:
            assert stages.delivered_s is not None
            pinned, _ = _pins(instance, profile, stages.delivered_s, replay,
                              stages.reserved_s, timeline)  # fmt: skip
    kv_first = _check_kv(profile, runs, run_ids, replica, n_it, D, m_pos, p_pos,
                         replay, replicas, out, arrivals, pinned,
                         swap_kv)  # fmt: skip
    kv_token_seconds = float(np.sum(kv_first * duration + D * weighted))
    kv_token_seconds += pinned_token_seconds

    # token conservation for requests never completed; a prompt over
    # max_model_len must not run at all
    output = instance.output_tokens
    barred = np.zeros(n, dtype=bool) if too_long is None else too_long
    ran = np.zeros(n, dtype=bool)
    ran[m_req[(m_req >= 0) & (m_req < n)]] = True
    ran[p_req[(p_req >= 0) & (p_req < n)]] = True
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

    keep = ~barred if not barred.all() else np.ones(n, dtype=bool)
    share = float((~barred).mean())
    own = _metrics(
        instance if keep.all() else instance.subset(keep),
        first[keep],
        done[keep],
        busy_s=float(duration.sum()),
        kv_token_seconds=kv_token_seconds,
        capacity_tokens=profile.kv_capacity_tokens,
        replicas=replicas,
        preemptions=int(replay.preemptions.sum()),
        recomputed=int(replay.recomputed.sum()),
    )
    if share < 1:  # a request rejected for length is a miss
        for key in ("slo_attainment", "slo_attainment_ttft", "slo_attainment_tpot"):
            own[key] *= share
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
    if sw is not None:
        outs = sw.req[sw.inbound == 0]
        records["swap_outs"] = np.bincount(outs, minlength=n).astype(np.int64)
    records.index.name = "request"
    if requests is not None:
        _compare_records(records, requests, rtol, out)
    if metrics is not None:
        _compare_metrics(own, metrics, rtol, out)
    if swap_metrics is not None:
        if metrics is not None and swap_totals:
            _compare_metrics(swap_metrics, metrics, rtol, out)
        own |= swap_metrics
    report = ValidationReport(
        tuple(out.kept), own, _frozen(first), _frozen(done), records, out.extra
    )
    return report, float(duration.sum()), kv_token_seconds
