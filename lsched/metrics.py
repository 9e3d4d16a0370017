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
- SLO attainment (:func:`slo_attainment`), over *all* requests, a request that
  was not served (rejected: no first-token time) counting as a miss:
  ``slo_attainment_ttft`` the share with ``ttft <= ttft_deadline_s``,
  ``slo_attainment_tpot`` the share with ``tpot <= tpot_deadline_s`` (a request
  without a TPOT, ``o_i = 1``, cannot miss it), ``slo_attainment`` the share
  meeting every deadline it carries (both); NaN where the instance carries no
  such deadline (:mod:`lsched.slo` puts an SLO's deadlines on an instance);
- preemptions and recomputed tokens, summed;
- with LoRA adapters (:mod:`lsched.adapters`): ``adapter_loads`` (adapter
  copies into a replica's slots) and ``adapter_load_s`` (their seconds, all on
  the critical path of the iterations they lengthen) and ``adapter_switches``
  (changes between merged and unmerged execution), summed over replicas, and
  per adapter (``""``: the base model) the served requests' mean TTFT and E2E
  (:func:`adapter_latency`);
- Mooncake's TBT and effective capacity (:func:`mooncake_tbt`,
  :func:`effective_capacity`), below;
- with live migration (:mod:`lsched.evaluator.migration`,
  :func:`migration_metrics`): ``migrations`` (completed moves),
  ``migration_aborts``, ``migrated_bytes`` (every stage copied, aborted ones
  included) and ``migration_downtime_s`` (the last stages' durations), summed
  over requests, and ``migration_downtime_mean_s`` per completed move.

Mooncake's TBT (Qin et al., FAST 2025, section 8; ../shared/reference/
serving-systems.md): request i emits tokens at ``t_1 < ... < t_e`` (``e``
tokens; ``e = o_i`` unless cut at ``max_model_len``), so it has ``g = e - 1``
inter-token gaps ``t_{j+1} - t_j``. Its TBT is the mean of its ``k = ceil(g /
10)`` largest gaps: "the longest 10 %" rounded up, so every request with a gap
has at least one counted (a request with 1 to 10 gaps is scored by its longest
gap alone, one with 11 to 20 by its two longest, ...); ``k`` is computed in
integers, ``(g + 9) // 10``. A request with one token has no gap and no TBT
(NaN): like TPOT, left out of the TBT distribution (``tbt_mean_s``,
``tbt_p50_s``, ...) and unable to miss a TBT threshold. The gap between a
token and the next counts whatever happened in between: a preemption and the
recompute, a swap, or in a disaggregated cluster the KV transfer between token
1 (the prefill replica) and token 2 (the decode replica).

Mooncake's effective capacity at a TBT threshold ``tau``: the share of *all*
requests with ``TTFT <= 30 s`` (Mooncake's TTFT limit,
:data:`MOONCAKE_TTFT_LIMIT_S`) and ``TBT <= tau`` (a request with no TBT meets
it); a rejected request is a miss. Mooncake reports it at ``tau`` = 100, 200
and 300 ms (:data:`MOONCAKE_TBT_THRESHOLDS_S`), the keys
``effective_capacity_tbt_100ms`` etc. (:func:`tbt_metrics`). Per-token times
exist only in the iteration log, so these metrics (and the request column
``tbt_s``) come with ``log=True`` (:mod:`lsched.evaluator.gaps`).

TTFT and TPOT have a second definition, by name (:data:`DEFINITIONS`,
:func:`latencies`), for comparisons with DistServe's simulator:

- ``"lsched"`` (the one above, used by every metric of this module);
- ``"simdistserve"``: TTFT ``f_i - a_i`` as well, and TPOT ``(c_i - f_i) / o_i``,
  defined for every request (0 for ``o_i = 1``). simdistserve
  (``simdistserve/base/organize_data.py``, ``calculate_per_request_latency``)
  measures TTFT from a request's ``init`` event (its arrival) to its first
  ``wait_decode`` event, logged when its prefill ends, which is when lsched emits
  token 1, so ``f_i``; and TPOT as the decode span (first ``wait_decode`` to
  ``exit_system``, ``c_i - f_i``) divided by the request's ``output_lens``. That
  ``output_lens`` is the workload's output length, the number lsched reads as
  ``o_i``; but simdistserve's ``Request(output_lens=L)`` runs ``L`` decode steps
  *after* its prefill (``counter`` goes from 0 to ``L``; its prefill emits no
  token), where lsched runs ``o_i - 1`` (its prefill emits token 1). So for the
  same trace simdistserve's span has one decode step more and its TPOT is the
  mean decode-step time, while ``(c_i - f_i) / o_i`` on lsched's replay is
  lsched's TPOT times ``(o_i - 1) / o_i``: the same span over one more token.
  With the work matched instead (lsched's ``o_i = L + 1``), simdistserve's TPOT
  is lsched's ``(c_i - f_i) / (o_i - 1)``.

Distributions are reported as mean, p50, p90 and p99 (NumPy's linear
interpolation between order statistics).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.instance import Instance

PERCENTILES: tuple[int, ...] = (50, 90, 99)
#: TTFT and TPOT definitions by name (module docstring), for :func:`latencies`.
DEFINITIONS: dict[str, str] = {
    "lsched": "TTFT f - a; TPOT (c - f) / (o - 1), none for o = 1",
    "simdistserve": "TTFT f - a (end of prefill); TPOT (c - f) / o "
    "(decode span over the output length)",
}
#: The SLO attainment metrics, all requests counted (:func:`slo_attainment`).
SLO_ATTAINMENT_KEYS: tuple[str, ...] = (
    "slo_attainment",
    "slo_attainment_ttft",
    "slo_attainment_tpot",
)
#: Mooncake's TTFT limit of its effective capacity, seconds (module docstring).
MOONCAKE_TTFT_LIMIT_S: float = 30.0
#: Mooncake's TBT thresholds of its effective capacity, seconds (100, 200 and
#: 300 ms; module docstring).
MOONCAKE_TBT_THRESHOLDS_S: tuple[float, ...] = (0.1, 0.2, 0.3)
#: Metrics (and per-pool, per-replica columns) that count something: whole numbers,
#: written as JSON integers (``16``, not ``16.0``) though tables hold them as floats.
COUNT_METRICS: frozenset[str] = frozenset(
    {
        "num_completed",
        "num_rejected",
        "num_truncated",
        "preemptions",
        "recomputed_tokens",
        "recompute_avoided_tokens",
        "prefill_tokens_saved",
        "adapter_loads",
        "adapter_switches",
        "iterations",
        "replicas",
        "migrations",
        "migration_aborts",
    }
)


#: The metrics of a run with live migration (:func:`migration_metrics`).
MIGRATION_METRICS: tuple[str, ...] = (
    "migrations",
    "migration_aborts",
    "migrated_bytes",
    "migration_downtime_s",
    "migration_downtime_mean_s",
)


def migration_metrics(
    migrations: npt.ArrayLike,
    aborts: npt.ArrayLike,
    migrated_bytes: npt.ArrayLike,
    downtime_s: npt.ArrayLike,
) -> dict[str, float]:
    """The migration metrics (module docstring) from their per-request columns."""
    moved = float(np.sum(migrations))
    down = float(np.sum(downtime_s))
    values = (
        moved,
        float(np.sum(aborts)),
        float(np.sum(migrated_bytes)),
        down,
        down / moved if moved else 0.0,
    )
    return dict(zip(MIGRATION_METRICS, values, strict=True))


def adapter_latency(
    adapter: npt.ArrayLike, ttft_s: npt.ArrayLike, e2e_s: npt.ArrayLike
) -> dict[str, dict[str, float]]:
    """Per adapter name, in sorted order (``""``: the base model): its served
    requests (those with a finite ``e2e_s``), their mean TTFT and mean E2E
    (NaN where it served none)."""
    names = np.asarray(adapter, dtype=str)
    ttft = np.asarray(ttft_s, dtype=np.float64)
    e2e = np.asarray(e2e_s, dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for name in np.unique(names).tolist():
        served = (names == name) & np.isfinite(e2e)
        count = int(served.sum())
        nan = float("nan")
        out[name] = {
            "requests": float(count),
            "ttft_mean_s": float(ttft[served].mean()) if count else nan,
            "e2e_mean_s": float(e2e[served].mean()) if count else nan,
        }
    return out


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
    ttft, tpot = latencies(instance, first, done)
    return {
        "ttft_s": ttft,
        "e2e_s": done - a,
        "tpot_s": tpot,
        "normalized_latency_s": (done - a) / o,
    }


def latencies(
    instance: Instance,
    first_token_s: npt.ArrayLike,
    completion_s: npt.ArrayLike,
    definitions: str = "lsched",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-request TTFT and TPOT under ``definitions`` (:data:`DEFINITIONS`).

    ``"lsched"``: TTFT ``f - a``, TPOT ``(c - f) / (o - 1)`` (NaN where
    ``o = 1``); ``"simdistserve"``: TTFT ``f - a``, TPOT ``(c - f) / o`` (see
    the module docstring for how simdistserve's output length maps to ``o``).
    NaN times (a request not served) give NaN.

    Raises
    ------
    InputError
        On an unknown ``definitions``.
    """
    first = np.asarray(first_token_s, dtype=np.float64)
    done = np.asarray(completion_s, dtype=np.float64)
    o = instance.output_tokens
    ttft = first - instance.arrival_s
    if definitions == "lsched":
        decode_tokens = o - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(decode_tokens > 0, (done - first) / decode_tokens, np.nan)
    elif definitions == "simdistserve":
        tpot = (done - first) / o
    else:
        raise InputError(
            f"got {definitions!r}; expected one of {', '.join(DEFINITIONS)}",
            field="definitions",
        )
    return ttft, tpot


def slo_attainment(
    instance: Instance,
    first_token_s: npt.ArrayLike,
    completion_s: npt.ArrayLike,
    definitions: str = "lsched",
) -> dict[str, float]:
    """The SLO attainment metrics (:data:`SLO_ATTAINMENT_KEYS`) of one schedule.

    Shares of *all* requests of ``instance``: a request whose first-token or
    completion time is NaN (not served, e.g. rejected) misses every deadline.
    ``slo_attainment_ttft``: TTFT within ``ttft_deadline_s``;
    ``slo_attainment_tpot``: TPOT within ``tpot_deadline_s`` (a request with no
    TPOT, ``o = 1`` under lsched's definition, cannot miss it);
    ``slo_attainment``: every deadline the request carries met (both, where both
    columns are there). A deadline column the instance lacks gives NaN (and NaN
    for ``slo_attainment`` if it has neither). Within means ``<=``.
    """
    first = np.asarray(first_token_s, dtype=np.float64)
    done = np.asarray(completion_s, dtype=np.float64)
    ttft, tpot = latencies(instance, first, done, definitions)
    served = np.isfinite(first) & np.isfinite(done)
    nan = float("nan")
    met = {}
    if instance.ttft_deadline_s is not None:
        met["ttft"] = served & (ttft <= instance.ttft_deadline_s)
    if instance.tpot_deadline_s is not None:
        met["tpot"] = served & (np.isnan(tpot) | (tpot <= instance.tpot_deadline_s))
    both = np.logical_and.reduce(list(met.values())) if met else None
    return {
        "slo_attainment": nan if both is None else float(both.mean()),
        "slo_attainment_ttft": float(met["ttft"].mean()) if "ttft" in met else nan,
        "slo_attainment_tpot": float(met["tpot"].mean()) if "tpot" in met else nan,
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
    metrics |= slo_attainment(instance, first_token_s, completion_s)
    return metrics


def tbt_gaps_counted(gaps: npt.ArrayLike) -> np.ndarray:
    """How many of a request's ``gaps`` inter-token gaps its TBT averages:
    ``ceil(gaps / 10)``, in integers (0 for no gap; module docstring)."""
    return (np.asarray(gaps, dtype=np.int64) + 9) // 10


def mooncake_tbt(
    request: npt.ArrayLike, emitted_s: npt.ArrayLike, num_requests: int
) -> np.ndarray:
    """Per request ``0..num_requests-1``, Mooncake's TBT (module docstring): the
    mean of its ``ceil(g / 10)`` largest inter-token gaps, NaN with no gap.

    Parameters
    ----------
    request, emitted_s
        One entry per output token: the request that emitted it and when,
        seconds (any order).
    num_requests
        Number of requests.
    """
    req = np.asarray(request, dtype=np.int64)
    when = np.asarray(emitted_s, dtype=np.float64)
    order = np.lexsort((when, req))
    req, when = req[order], when[order]
    same = req[1:] == req[:-1]
    owner, gap = req[1:][same], np.diff(when)[same]
    order = np.lexsort((-gap, owner))  # per request, the largest gap first
    owner, gap = owner[order], gap[order]
    count = np.bincount(owner, minlength=num_requests)
    rank = np.arange(len(gap)) - (np.cumsum(count) - count)[owner]
    counted = tbt_gaps_counted(count)
    kept = rank < counted[owner]
    total = np.bincount(owner[kept], weights=gap[kept], minlength=num_requests)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / counted, np.nan)


def effective_capacity(
    ttft_s: npt.ArrayLike,
    tbt_s: npt.ArrayLike,
    tbt_threshold_s: float,
    ttft_limit_s: float = MOONCAKE_TTFT_LIMIT_S,
) -> float:
    """Mooncake's effective capacity: the share of the requests with ``TTFT <=
    ttft_limit_s`` and ``TBT <= tbt_threshold_s`` (module docstring).

    A NaN TTFT (a request not served) misses; a NaN TBT (one token, no gap)
    meets the threshold. NaN for no request.

    Raises
    ------
    InputError
        If a threshold is not a positive number.
    """
    for name, value in (("tbt_threshold_s", tbt_threshold_s),
                        ("ttft_limit_s", ttft_limit_s)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"got {value!r}; expected a number of seconds", field=name)
        if not value > 0:
            raise InputError(f"got {value}; expected a number > 0", field=name)
    ttft = np.asarray(ttft_s, dtype=np.float64)
    tbt = np.asarray(tbt_s, dtype=np.float64)
    if len(ttft) == 0:
        return float("nan")
    met = (ttft <= ttft_limit_s) & (np.isnan(tbt) | (tbt <= tbt_threshold_s))
    return float(met.mean())


def effective_capacity_key(tbt_threshold_s: float) -> str:
    """The metric's name at a TBT threshold: ``effective_capacity_tbt_100ms``."""
    return f"effective_capacity_tbt_{round(tbt_threshold_s * 1000)}ms"


def tbt_metrics(ttft_s: npt.ArrayLike, tbt_s: npt.ArrayLike) -> dict[str, float]:
    """TBT's mean and percentiles over the requests that have one
    (``tbt_mean_s``, ...) and the effective capacity at Mooncake's thresholds
    (:data:`MOONCAKE_TBT_THRESHOLDS_S`) over every request given (a NaN TTFT,
    one not served, a miss)."""
    tbt = np.asarray(tbt_s, dtype=np.float64)
    metrics = _describe("tbt", tbt[~np.isnan(tbt)])
    for threshold in MOONCAKE_TBT_THRESHOLDS_S:
        key = effective_capacity_key(threshold)
        metrics[key] = effective_capacity(ttft_s, tbt, threshold)
    return metrics
