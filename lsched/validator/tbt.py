"""Mooncake's TBT and effective capacity, recomputed from the validator's walk.

Mooncake (Qin et al., FAST 2025; ../shared/reference/serving-systems.md): a
request's TBT is the mean of its longest 10 % of inter-token gaps, here the
``ceil(g / 10)`` largest of its ``g`` gaps (at least one; none for a request of
one token, whose TBT is NaN and cannot miss a threshold); the effective capacity
at a threshold ``tau`` is the share of all requests with TTFT <= 30 s and TBT <=
``tau`` (a request rejected for length misses), reported at 100, 200 and 300 ms.

The tokens are those the walk (:mod:`lsched.validator.replay`) saw each member
emit: ``count`` tokens at the ends of the first ``count`` iterations of its run.
Iteration ``k`` of a run ends at ``start_s + sum_{j <= k} t_j`` (``t_j`` the
cost model on the run's features), the last one at the logged ``end_s``.
A disaggregated cluster's request emits token 1 on its prefill pool and the
rest on its decode pool: the validator of :mod:`lsched.validator.disagg` puts
each pool's token times together (:func:`_token_times`) before taking the gaps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from lsched.instance import Instance
from lsched.profile import DeploymentProfile
from lsched.validator.metrics import _compare_metrics
from lsched.validator.replay import _Log, _Replay
from lsched.validator.report import Features, FloatArray, _Collector
from lsched.validator.timing import _phi

#: Mooncake's TTFT limit and TBT thresholds, seconds (module docstring).
_TTFT_LIMIT_S = 30.0
_THRESHOLDS_S = (0.1, 0.2, 0.3)


def _ends(
    profile: DeploymentProfile, log: _Log, features: Features, r: int
) -> list[float]:
    """The end of every iteration of the run at position ``r``."""
    n = int(log.n_it[r])
    if n == 1:
        return [float(log.end[r])]
    P, Q, D, K0 = (f[r : r + 1] for f in features)
    phi, _, _ = _phi(P, Q, D, K0, log.n_it[r : r + 1])
    times = float(log.start[r]) + np.cumsum(profile.iteration_time_s(phi))
    ends = times.tolist()
    ends[-1] = float(log.end[r])
    return ends


def _token_times(
    profile: DeploymentProfile,
    log: _Log,
    features: Features,
    replay: _Replay,
    n: int,
) -> list[list[float]]:
    """Per request (``n``), the times of the tokens the walk saw it emit."""
    emitted: list[list[float]] = [[] for _ in range(n)]
    cache: dict[int, list[float]] = {}
    for i, r, count in replay.tokens:
        if r not in cache:
            cache[r] = _ends(profile, log, features, r)
        emitted[i].extend(cache[r][:count])
    return emitted


def _tbt_of(emitted: list[list[float]]) -> FloatArray:
    """Per request, its TBT from its tokens' times in emission order."""
    tbt = np.full(len(emitted), math.nan)
    for i, times in enumerate(emitted):
        gaps = sorted((b - a for a, b in itertools.pairwise(times)), reverse=True)
        if gaps:
            k = math.ceil(len(gaps) / 10)
            tbt[i] = sum(gaps[:k]) / k
    return tbt


def _tbt_metrics(ttft: FloatArray, tbt: FloatArray) -> dict[str, float]:
    """TBT's mean and p50/p90/p99 over the requests with one, and the effective
    capacity at each threshold over all requests (NaN TTFT: a miss)."""
    have = tbt[~np.isnan(tbt)]
    keys = ("tbt_mean_s", "tbt_p50_s", "tbt_p90_s", "tbt_p99_s")
    if len(have):
        values = [float(np.mean(have))]
        values += [float(np.percentile(have, q)) for q in (50, 90, 99)]
    else:
        values = [math.nan] * 4
    metrics = dict(zip(keys, values, strict=True))
    for tau in _THRESHOLDS_S:
        met = [
            t <= _TTFT_LIMIT_S and (math.isnan(b) or b <= tau)
            for t, b in zip(ttft.tolist(), tbt.tolist(), strict=True)
        ]
        share = sum(met) / len(met) if met else math.nan
        metrics[f"effective_capacity_tbt_{round(tau * 1000)}ms"] = share
    return metrics


def _check_tbt(
    instance: Instance,
    profile: DeploymentProfile,
    log: _Log,
    features: Features,
    replay: _Replay,
    first: FloatArray,
    records: pd.DataFrame,
    metrics: Mapping[str, float] | None,
    rtol: float,
    out: _Collector,
) -> dict[str, float]:
    """Put each request's TBT in the validator's ``records`` (``tbt_s``),
    compare the TBT metrics with the claimed ``metrics`` where they carry them
    (a run kept with its log), and return them."""
    tbt = _tbt_of(_token_times(profile, log, features, replay, len(instance)))
    records["tbt_s"] = tbt
    return _compare_tbt_metrics(first - instance.arrival_s, tbt, metrics, rtol, out)


def _compare_tbt_metrics(
    ttft: FloatArray,
    tbt: FloatArray,
    metrics: Mapping[str, float] | None,
    rtol: float,
    out: _Collector,
) -> dict[str, float]:
    """The TBT metrics of ``tbt`` (and ``ttft``), compared with the claimed
    ``metrics`` where they carry them."""
    own = _tbt_metrics(ttft, tbt)
    if metrics is not None and "tbt_mean_s" in metrics:
        _compare_metrics(own, metrics, rtol, out)
    return own
