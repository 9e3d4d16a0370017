"""An independent check of an iteration log: the referee of the referee.

:func:`validate_schedule` replays an iteration log (the ``runs``, ``members``,
``preemptions`` and, if given, ``swaps`` tables of :mod:`lsched.evaluator.result`)
against the instance and the deployment profile, re-derives every request's
timeline and every metric of DESIGN.md ("Metrics") from scratch, and reports each
rule of DESIGN.md ("The iteration model") that the log breaks. It shares no code
with the engine: it reads the cost model
(:meth:`DeploymentProfile.iteration_time_s`) and the instance as data, restates
the log's column names, and computes the metrics itself rather than calling
:mod:`lsched.metrics`. Violations are collected, not raised.

The log
-------
``runs`` (index = run id; runs of one replica in id order must be in time order):
``replica, start_s, end_s, iterations, prefill_tokens, prefill_attention,
decode_steps, kv_read_tokens, has_prefill, kv_tokens``. A run is ``n >= 1``
iterations with the same members; iteration ``k`` (0-based) has
``K = kv_read_tokens + k * D`` and holds ``kv_tokens + k * D`` KV tokens.
``members``: ``run, request, kind ("prefill" | "decode"), tokens,
processed_before``. ``preemptions``: ``run, request`` (recompute preemption just
before the run starts). ``swaps``: ``run, request, direction ("out" | "in"),
tokens, start_s, end_s`` (the request's KV moved to the host tier or back, decided
just before the run; its copy's times).

Rules (the ``rule`` of a :class:`Violation`)
--------------------------------------------
==========================  ==========================================================
rule                        what is checked
==========================  ==========================================================
``schema``                  columns present, ids known, values of the right kind,
                            ``1 <= iterations <= max o_i``; a log that fails this
                            is not checked further
``run-order``               per replica, runs in id order start at or after the end
                            of the previous run
``run-shape``               a run has members, each request at most once; a run with
                            a prefill chunk has 1 iteration (so a run of ``n > 1``
                            iterations only decodes); a decode member has
                            ``tokens = 1`` (one per iteration)
``run-features``            the run's P, Q, D, K, H columns equal the features
                            recomputed from its members and the validator's own
                            bookkeeping: ``P = sum c``, ``Q = sum c * (before + c)``,
                            ``D = #decode``, ``K = sum (before + 1)`` over decode
                            members, ``H = P > 0``
``run-duration``            ``end_s - start_s`` equals the sum over the run's
                            iterations of ``profile.iteration_time_s(phi)``
                            (``rtol``), phi from the recomputed features
``arrival``                 a request's first run starts at or after ``arrival_s``
                            (less the model's 1 ns arrival tolerance)
``processed-before``        a member's ``processed_before`` equals the KV tokens the
                            validator says the request holds
``prefill-chunk``           ``1 <= c <= target - processed``, target =
                            ``s_i + emitted`` at the request's last admission
``prefill-before-decode``   a request decodes only while running with its
                            prefill done (``processed >= target``)
``kv-capacity``             after every iteration, ``sum ceil(processed / b)`` over
                            running requests (in the batch or not, completing ones
                            included) ``<= kv_capacity_blocks``
``kv-tokens``               the run's ``kv_tokens`` equals the KV tokens held after
                            its first iteration
``max-num-seqs``            members per run ``<= max_num_seqs``
``max-num-batched-tokens``  prefill tokens + decode steps ``<= max_num_batched_tokens``
``token-conservation``      every request completes exactly once with exactly
                            ``o_i' = min(o_i, L - s_i + 1)`` tokens emitted (the
                            chunk that reaches the target emits one, each decode
                            step one; ``L`` below); nothing runs after completion
``max-model-len``           with ``L`` the profile's ``max_model_len`` (a
                            cluster's: the smallest over its pools), a request
                            with ``s_i > L`` is never served (no run, preemption
                            or replica: it is rejected at arrival); a request
                            rejected with a reason that names
                            ``max_model_len`` has ``s_i > L``; a claimed
                            ``truncated_tokens`` is ``o_i - o_i'`` (0 for a
                            rejected request) and a claimed ``num_truncated``
                            counts the served requests with some
``single-replica``          every run and preemption of a request is on one replica
``preemption``              only a running request is preempted, at most once per run
``request-record``          the claimed per-request records agree (``rtol``)
``metric``                  every claimed metric agrees (``rtol``; NaN equals NaN)
``rejection``               (:func:`validate_cluster`) a rejected request has a
                            reason, no times and no run or preemption
``transfer``                (disaggregated) a request moves iff it was prefilled on
                            a prefill replica and ``o_i >= 2``; its transfer starts
                            at or after its first token and ends at or after
                            ``start + latency + bytes / bandwidth``
``link``                    (disaggregated) ``fifo`` (or unbounded bandwidth): one
                            transfer at a time in the order the prefills end, each
                            starting at ``max(f_i, the previous departure)`` and
                            arriving ``bytes / bandwidth + latency`` later, so none
                            overlap; ``share``: each starts at ``f_i`` and arrives
                            ``latency`` after processor sharing lets it leave. Into
                            a pulling decode pool a transfer starts when it is
                            taken: on ``fifo`` at or after ``f_i`` and the previous
                            departure, none overlapping; on ``share`` at or after
                            ``f_i``; each arrives as above
``decode-after-transfer``   (disaggregated) nothing of a request runs on its decode
                            replica before the replica's first iteration boundary
                            at or after its ``transfer_end_s``
``pull``                    (disaggregated, a pulling decode pool) at a take whose
                            time the log settles (the transfer's start, unless it
                            waited for a fifo link), the requests the replica took
                            earlier and has not received hold under ``pull *
                            capacity`` blocks, the prompt's blocks fit beside
                            them, and they are fewer than ``max_num_seqs``
``swap``                    (swaps) a request's swaps alternate out, in, ...,
                            starting with out, and it ends with its KV on the GPU;
                            only a running request swaps out, moving the KV tokens
                            it holds; its swap-in brings the same tokens back and
                            it resumes with them; it is in no run while its KV is
                            off the GPU (see "Swaps")
``swap-copy``               (swaps) a copy lasts ``tokens * kv_bytes_per_token /
                            bandwidth`` (``rtol``); blocking: a run's copies go
                            back to back from its start, outs then ins; async: a
                            copy starts at the later of its decision and its
                            link's previous copy's end
``swap-link``               (swaps) on each replica, a direction's copies go one
                            at a time in the order they were decided (first come,
                            first served): none starts before an earlier one ends
``host-capacity``           (swaps) the host blocks of swapped-out KV never exceed
                            the host tier's capacity
==========================  ==========================================================

A cluster (:func:`validate_cluster`) is checked pool by pool: each pool's runs,
with its replicas numbered from 0 and its requests as a sub-instance, against that
pool's profile, with every rule above and the pool's claimed metrics.

A disaggregated cluster (prefill and decode pools, :mod:`lsched.evaluator.disagg`;
its records carry :data:`STAGE_COLUMNS`) is checked the same way, with what the
stages change. A prefill pool serves its requests as one-token requests; one that
moves keeps ``ceil(s_i / b)`` blocks pinned from its first token until its
``transfer_end_s``, counted in ``kv-capacity`` for every run of its replica that
starts in between (not in ``kv_tokens``), and in the pool's KV token-seconds. A
decode pool's request arrives with token 1 emitted and ``s_i`` tokens of KV: if
its first event there decodes (or preempts it), it was adopted running at the
replica's first boundary at or after its transfer end (its ``decode_admitted_s``),
and its KV counts from then on; if its first event prefills, its KV was dropped
(``s_i`` recomputed tokens) and it is prefilled again (``s_i + 1`` tokens, emitting
token 2). A pulling decode pool's replica holds ``ceil(s_i / b)`` reserved blocks
for a request it took from the transfer's start until its end, counted in
``kv-capacity`` for every run of the replica that starts in between (as pinned
blocks are); KV taken and delivered at once, at a boundary where the replica then
starts a run without it, is adopted at the end of that run's first iteration (the
replica takes at a boundary just before its policy decides). The two stages'
records are put together (first token from the prefill replica, completion from
the decode replica) and compared with the claimed ones, stage columns included;
each pool's metrics are recomputed over the requests it served, with their
end-to-end times, as the records define them; and the
``transferred_bytes`` metric is their sum (``s_i x kv_bytes_per_token`` of the
prefill profile per moving request). Whether a dropped KV could have been adopted
is not checked.

Bookkeeping (per request, in run order): a preemption frees all KV (those
tokens are *recomputed tokens*) and makes the request wait; a prefill chunk to a
waiting request admits it with target ``s_i + emitted``; the request completes at
the end of the iteration that emits token ``o_i'`` and frees its KV then.

Requests that do not fit (DESIGN.md, "Rejection"; restated from vLLM V0, not
from :mod:`lsched.evaluator.length`): a prompt of ``s_i > L`` tokens is ignored
by vLLM V0's scheduler ("Input prompt ... is too long"), so it never runs; a
served request's sequence stops once it is longer than ``L`` (``StopChecker``:
``seq.get_len() > max_model_len``), after ``o_i' = min(o_i, L - s_i + 1)``
tokens. Everything below that says ``o_i`` (token conservation, TPOT,
throughput, normalised latency, a disaggregated request's move) means ``o_i'``;
the metrics are over the served requests, a request rejected for length
counting as a miss for SLO attainment (the attainment over the served requests
times their share).

Swaps
-----
A log whose policy swaps KV to the host tier (:mod:`lsched.tiers`;
:mod:`lsched.policies.base`, "Swap preemption") comes with its ``swaps`` table.
The validator restates the rules; it reads the host tier (``profile.host``:
``memory_bytes``, ``h2d_bytes_per_s``, ``d2h_bytes_per_s``) and
``profile.kv_bytes_per_token`` as data.

The *mode* is the policy's: :func:`validate_schedule` takes it (``swap_mode``,
``"blocking"`` by default, as a policy without one swaps) and
:func:`validate_cluster` reads each pool's policy spec's ``swap_mode`` parameter
(``vllm-v0:preemption=swap`` has none: blocking; ``fastserve:swap=true``:
``async`` unless ``swap_mode=blocking``). A log read in the wrong mode breaks
``run-duration`` or ``swap-copy``.

- A request's events before one run are taken in the order: its swaps (by copy
  start, then row), its preemption, its membership. Asynchronous swaps of one
  request can be decided at several boundaries before one run, while the
  replica idles between them (a swap-in lands, then the request is swapped out
  again or preempted).
- Swap-out (``swap``): of a running request, ``tokens`` = the KV tokens it holds
  (its processed tokens, from the members log); it stops running and is in no
  run from the one the swap-out was decided before until it is swapped in.
  Swap-in: of a swapped-out request, the same tokens; it holds them again, its
  prefill target unchanged, and its next member row has ``processed_before``
  equal to them (``processed-before``). Blocking: it may be in the run the
  swap-in was decided before. Async: it is in no run that starts before its
  copy's end (less the 1 ns tolerance), and its swap-in is decided and its copy
  starts no earlier than its swap-out's copy ends.
- Copies (``swap-copy``, ``swap-link``): device-to-host for out, host-to-device
  for in; each replica's two directions are independent links, first come,
  first served. Blocking: the run a swap was decided before has one iteration
  (``run-shape``), lasts its iteration's time plus its copies' (``run-duration``,
  and the busy time and KV token-seconds count them), and its copies run back to
  back from its start, outs then ins, each in row order. Async: a copy starts at
  the later of its decision, a boundary between the end of the replica's
  previous run and the start of the run it was decided before, and the end of
  its link's previous copy.
- GPU KV (``kv-capacity``, ``kv-tokens``): a swap-out's tokens leave the running
  set before its run, a blocking swap-in's join it before its run, an async
  swap-in's before the first run that starts at or after its copy's end (where
  it lands). Async copies pin blocks (counted against the capacity, not in
  ``kv_tokens`` or the KV token-seconds): a swap-out's during every run that
  starts before its copy ends, a swap-in's from the run it was decided before
  until it lands. Where an async swap-in is decided while the replica idles
  (its copy starts before its run), the blocks surely held at its copy's start
  are checked too: those pinned then, and those of the requests running before
  the next run that did not join on the way.
- Host (``host-capacity``): per replica, a swapped-out request holds ``ceil(tokens
  / b)`` host blocks from its swap-out copy's start until its swap-in copy's end;
  they stay within ``memory_bytes // (b * kv_bytes_per_token)``.
- Records and metrics: ``swap_outs`` (per request, its swap-outs) is compared
  with the claimed column (``request-record``; required when the log swaps);
  ``swap_out_bytes`` and ``swap_in_bytes`` (tokens swapped each way x
  ``kv_bytes_per_token``), ``swap_stall_s`` (the blocking copies' seconds; 0 for
  async) and ``recompute_avoided_tokens`` (tokens swapped out) join the metrics
  when the log swaps (``metric``). A cluster compares their totals over its pools
  with its result's metrics (its pools' metrics need not carry them).

Times the log states (``start_s``, ``end_s``, arrivals) are compared exactly; times
the validator recomputes (durations, records, metrics) within ``rtol`` relative,
plus the float resolution of the absolute times subtracted.

Metrics (keys as in :mod:`lsched.metrics`): ``num_completed``, ``makespan_s``
(``max c - min a``), ``throughput_tok_s`` (``sum o / makespan``; inf for a zero
makespan), ``busy_fraction`` (recomputed iteration times / ``(C * makespan)``; 1 for
a zero makespan), ``kv_utilization`` (sum over iterations of KV tokens held after the
iteration x its duration, / ``(C * kv_capacity_tokens * makespan)``), ``preemptions``,
``recomputed_tokens``, mean/p50/p90/p99 (NumPy's linear percentile) of ``ttft``,
``e2e``, ``tpot`` (``o_i >= 2`` only) and ``normalized_latency`` (``e2e / o_i``), each
as ``<name>_<stat>_s``, ``slo_attainment`` (share of requests meeting every
deadline they carry; NaN without deadlines), ``slo_attainment_ttft`` and
``slo_attainment_tpot`` (each deadline alone; NaN without it).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.instance import Instance
from lsched.profile import DeploymentProfile

#: The iteration model's arrival tolerance (lsched.policies.base restates it): a
#: request may start at a boundary up to 1 ns before its arrival time.
ARRIVAL_TOLERANCE_S = 1e-9

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# The log's columns, restated (lsched.evaluator.result) so that nothing is shared.
RUN_COLUMNS: tuple[str, ...] = (
    "replica",
    "start_s",
    "end_s",
    "iterations",
    "prefill_tokens",
    "prefill_attention",
    "decode_steps",
    "kv_read_tokens",
    "has_prefill",
    "kv_tokens",
)
MEMBER_COLUMNS: tuple[str, ...] = (
    "run",
    "request",
    "kind",
    "tokens",
    "processed_before",
)
PREEMPTION_COLUMNS: tuple[str, ...] = ("run", "request")
SWAP_COLUMNS: tuple[str, ...] = (
    "run",
    "request",
    "direction",
    "tokens",
    "start_s",
    "end_s",
)
#: How swap copies meet the iterations (lsched.tiers restates them).
SWAP_MODES: tuple[str, ...] = ("blocking", "async")
#: The metrics a run that swapped adds (lsched.evaluator.records).
SWAP_METRICS: tuple[str, ...] = (
    "swap_out_bytes",
    "swap_in_bytes",
    "swap_stall_s",
    "recompute_avoided_tokens",
)
REQUEST_COLUMNS: tuple[str, ...] = (
    "replica",
    "admitted_s",
    "first_token_s",
    "completion_s",
    "preemptions",
    "recomputed_tokens",
)
#: The request columns a disaggregated run adds (lsched.evaluator.records).
STAGE_COLUMNS: tuple[str, ...] = (
    "decode_replica",
    "transfer_start_s",
    "transfer_end_s",
    "transferred_bytes",
    "decode_admitted_s",
)

#: The rules a log can break (see the module docstring).
RULES: tuple[str, ...] = (
    "schema",
    "run-order",
    "run-shape",
    "run-features",
    "run-duration",
    "arrival",
    "processed-before",
    "prefill-chunk",
    "prefill-before-decode",
    "kv-capacity",
    "kv-tokens",
    "max-num-seqs",
    "max-num-batched-tokens",
    "token-conservation",
    "single-replica",
    "preemption",
    "request-record",
    "metric",
    "rejection",
    "max-model-len",
    "transfer",
    "link",
    "decode-after-transfer",
    "pull",
    "swap",
    "swap-copy",
    "swap-link",
    "host-capacity",
)

#: Violations kept in a report; the rest are only counted.
MAX_VIOLATIONS = 100

_PREFILL, _DECODE = 0, 1
# The events of a request before one run, in order: its swaps (by copy start, then
# row), its preemption, then its membership. One decision applies preemptions,
# swap-outs, then swap-ins, before its iteration; asynchronous swaps of one request
# can be decided at several boundaries before one run (the replica idles between
# them: a swap-in lands, then the request is swapped out or preempted), while a
# preempted request cannot swap before it runs again.
_SWAP_EVENT, _PREEMPT_EVENT, _MEMBER_EVENT = 0, 1, 2
# Iterations expanded at once when timing runs (bounds memory on long logs).
_CHUNK_ITERATIONS = 1 << 20


@dataclass(frozen=True)
class Violation:
    """One broken rule.

    Attributes
    ----------
    rule
        One of :data:`RULES`.
    run
        The run id concerned, if any.
    request
        The request (instance position) concerned, if any.
    message
        What was expected and what the log says.
    """

    rule: str
    run: int | None
    request: int | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.run is not None:
            where.append(f"run {self.run}")
        if self.request is not None:
            where.append(f"request {self.request}")
        place = f" ({', '.join(where)})" if where else ""
        return f"[{self.rule}]{place} {self.message}"


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_schedule` found.

    Attributes
    ----------
    violations
        The first :data:`MAX_VIOLATIONS` violations, in the order found.
    metrics
        Every metric, recomputed by the validator (empty if the log failed the
        ``schema`` rule).
    first_token_s, completion_s
        Per request (instance order), as the validator derives them; NaN where
        the log never emits the token.
    requests
        The validator's own per-request records (columns of
        :data:`REQUEST_COLUMNS`, and ``swap_outs`` when a swaps table was given;
        replica -1 for a request that never ran).
    suppressed
        Violations found beyond the first :data:`MAX_VIOLATIONS`.
    """

    violations: tuple[Violation, ...]
    metrics: dict[str, float]
    first_token_s: FloatArray
    completion_s: FloatArray
    requests: pd.DataFrame | None = None
    suppressed: int = 0

    @property
    def ok(self) -> bool:
        """True when the log breaks no rule."""
        return not self.violations and self.suppressed == 0

    @property
    def rules(self) -> frozenset[str]:
        """The rules broken by the violations kept."""
        return frozenset(v.rule for v in self.violations)

    def raise_if_invalid(self, limit: int = 10) -> None:
        """Raise ``AssertionError`` listing the first ``limit`` violations, if any."""
        if self.ok:
            return
        total = len(self.violations) + self.suppressed
        lines = [str(v) for v in self.violations[:limit]]
        if total > len(lines):
            lines.append(f"... and {total - len(lines)} more")
        raise AssertionError(
            f"schedule breaks {total} rule check(s):\n" + "\n".join(lines)
        )


class _Collector:
    """Keeps the first ``cap`` violations and counts the rest."""

    def __init__(self, cap: int = MAX_VIOLATIONS) -> None:
        self.cap = cap
        self.kept: list[Violation] = []
        self.extra = 0

    def add(
        self,
        rule: str,
        message: str,
        *,
        run: int | None = None,
        request: int | None = None,
    ) -> None:
        assert rule in RULES, rule
        if len(self.kept) < self.cap:
            self.kept.append(Violation(rule, run, request, message))
        else:
            self.extra += 1


@dataclass(frozen=True)
class _Fit:
    """An instance against ``max_model_len`` (module docstring): ``served`` has
    the outputs a served request emits (a request too long keeps its own),
    ``too_long`` marks ``s_i > L``, ``truncated`` the tokens cut."""

    cap: int
    served: Instance
    too_long: npt.NDArray[np.bool_]
    truncated: IntArray


def _fit(instance: Instance, cap: int) -> _Fit:
    prompt, output = instance.prompt_tokens, instance.output_tokens
    too_long = prompt > cap
    emits = np.where(too_long, output, np.minimum(output, cap - prompt + 1))
    served = instance
    if np.any(emits != output):
        served = instance.replace(output_tokens=emits)
    truncated = np.where(too_long, 0, output - emits).astype(np.int64)
    return _Fit(int(cap), served, too_long, truncated)


def _check_fit_records(
    fit: _Fit,
    requests: pd.DataFrame | None,
    metrics: Mapping[str, float] | None,
    out: _Collector,
) -> None:
    """The ``max-model-len`` rule on the claimed records and metrics: no request
    too long has a replica, a length rejection is of a request too long, and
    ``truncated_tokens`` and ``num_truncated`` are right (where claimed)."""
    cap, too_long = fit.cap, fit.too_long
    prompt = fit.served.prompt_tokens
    served = np.ones(len(too_long), dtype=bool)
    if requests is not None and "replica" in requests.columns:
        replica = requests["replica"].to_numpy()
        served = replica != -1
        for i in np.flatnonzero(too_long & served).tolist():
            out.add(
                "max-model-len",
                f"prompt {int(prompt[i])} tokens > max_model_len {cap}, but it "
                f"is served (replica {replica[i]}); expected it rejected",
                request=i,
            )
    if requests is not None and "rejected" in requests.columns:
        reason = requests["rejected"].astype(str).to_numpy()
        named = np.char.find(reason.astype(str), "max_model_len") >= 0
        for i in np.flatnonzero(named & ~too_long).tolist():
            out.add(
                "max-model-len",
                f"rejected for length ({reason[i]!r}), but its prompt of "
                f"{int(prompt[i])} tokens fits max_model_len {cap}",
                request=i,
            )
    if requests is not None and "truncated_tokens" in requests.columns:
        claimed = requests["truncated_tokens"].to_numpy(dtype=np.float64)
        for i in np.flatnonzero(claimed != fit.truncated).tolist():
            out.add(
                "max-model-len",
                f"truncated_tokens = {float(claimed[i])!r}; with max_model_len "
                f"{cap} it emits {int(fit.served.output_tokens[i])} of its "
                f"{int(fit.truncated[i] + fit.served.output_tokens[i])} tokens, so "
                f"{int(fit.truncated[i])} are cut",
                request=i,
            )
    if metrics is not None and "num_truncated" in metrics:
        count = int(np.count_nonzero(fit.truncated[served & ~too_long]))
        if float(metrics["num_truncated"]) != count:
            out.add(
                "max-model-len",
                f"num_truncated = {metrics['num_truncated']!r}; {count} served "
                f"request(s) are cut at max_model_len {cap}",
            )


def _frozen(array: npt.ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    out = np.array(array, dtype=dtype)
    out.flags.writeable = False
    return out


def _close(a: float, b: float, rtol: float, atol: float = 0.0) -> bool:
    """Equal within ``rtol`` (relative to the larger) plus ``atol``; NaN == NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:  # also inf == inf
        return True
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + atol


def _close_array(
    a: FloatArray, b: FloatArray, rtol: float, atol: npt.ArrayLike = 0.0
) -> npt.NDArray[np.bool_]:
    """:func:`_close`, elementwise."""
    with np.errstate(invalid="ignore"):
        near = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b)) + atol
    return (a == b) | near | (np.isnan(a) & np.isnan(b))


# -- schema ----------------------------------------------------------------------


def _integral(values: pd.Series) -> bool:
    array = values.to_numpy()
    if array.size == 0 or np.issubdtype(array.dtype, np.integer):
        return True
    if array.dtype == bool:
        return True
    if not np.issubdtype(array.dtype, np.number):
        return False
    return bool(np.all(np.isfinite(array)) and np.all(array == np.round(array)))


def _check_schema(
    instance: Instance,
    runs: pd.DataFrame,
    members: pd.DataFrame,
    preemptions: pd.DataFrame,
    replicas: int,
    out: _Collector,
) -> bool:
    """Check the log's shape; False if it cannot be replayed."""
    ok = True
    for table, name, columns in (
        (runs, "runs", RUN_COLUMNS),
        (members, "members", MEMBER_COLUMNS),
        (preemptions, "preemptions", PREEMPTION_COLUMNS),
    ):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            out.add("schema", f"table {name} lacks column(s) {missing}")
            ok = False
    if not ok:
        return False
    if not runs.index.is_unique or not _integral(runs.index.to_series()):
        out.add("schema", "runs: expected unique integer run ids as the index")
        return False
    integer_columns = [
        (runs, "runs", c) for c in RUN_COLUMNS if c not in ("start_s", "end_s")
    ]
    integer_columns += [(members, "members", c) for c in MEMBER_COLUMNS if c != "kind"]
    integer_columns += [(preemptions, "preemptions", c) for c in PREEMPTION_COLUMNS]
    for table, name, column in integer_columns:
        if not _integral(table[column]):
            out.add("schema", f"{name}.{column}: expected integers")
            ok = False
    for column in ("start_s", "end_s"):
        values = runs[column].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            out.add("schema", f"runs.{column}: expected finite times")
            ok = False
    if not ok:
        return False
    n = len(instance)
    replica = runs["replica"].to_numpy()
    if np.any((replica < 0) | (replica >= replicas)):
        run = int(runs.index[np.flatnonzero((replica < 0) | (replica >= replicas))[0]])
        out.add("schema", f"replica outside 0..{replicas - 1}", run=run)
        ok = False
    iterations = runs["iterations"].to_numpy()
    # no valid run is longer than the longest output (each iteration emits a token)
    longest = int(instance.output_tokens.max())
    bad = (iterations < 1) | (iterations > longest)
    if np.any(bad):
        run = int(runs.index[np.flatnonzero(bad)[0]])
        out.add(
            "schema",
            f"iterations = {int(iterations[np.flatnonzero(bad)[0]])}; expected "
            f"1..{longest} (the longest output)",
            run=run,
        )
        ok = False
    known = set(runs.index.tolist())
    for table, name in ((members, "members"), (preemptions, "preemptions")):
        unknown = ~table["run"].isin(known).to_numpy()
        if np.any(unknown):
            out.add(
                "schema",
                f"{name}: run {int(table['run'].iloc[np.flatnonzero(unknown)[0]])} "
                "is not in runs",
            )
            ok = False
        request = table["request"].to_numpy()
        outside = (request < 0) | (request >= n)
        if np.any(outside):
            out.add(
                "schema",
                f"{name}: request {int(request[np.flatnonzero(outside)[0]])} is not "
                f"in the instance (0..{n - 1})",
            )
            ok = False
    kinds = set(members["kind"].astype(str).unique().tolist())
    if not kinds <= {"prefill", "decode"}:
        out.add("schema", f"members.kind: got {sorted(kinds)}; expected prefill/decode")
        ok = False
    return ok


def _check_swap_schema(
    instance: Instance, runs: pd.DataFrame, swaps: pd.DataFrame, out: _Collector
) -> bool:
    """Check the swaps table's shape (runs already passed); False if it cannot be
    replayed."""
    missing = [c for c in SWAP_COLUMNS if c not in swaps.columns]
    if missing:
        out.add("schema", f"table swaps lacks column(s) {missing}")
        return False
    ok = True
    for column in ("run", "request", "tokens"):
        if not _integral(swaps[column]):
            out.add("schema", f"swaps.{column}: expected integers")
            ok = False
    for column in ("start_s", "end_s"):
        values = swaps[column].to_numpy()
        numeric = values.size == 0 or np.issubdtype(values.dtype, np.number)
        if not numeric or not np.all(np.isfinite(values.astype(np.float64))):
            out.add("schema", f"swaps.{column}: expected finite times")
            ok = False
    directions = set(swaps["direction"].astype(str).unique().tolist())
    if not directions <= {"out", "in"}:
        out.add("schema", f"swaps.direction: got {sorted(directions)}; expected out/in")
        ok = False
    if not ok:
        return False
    run = swaps["run"].to_numpy(dtype=np.int64)
    request = swaps["request"].to_numpy(dtype=np.int64)
    tokens = swaps["tokens"].to_numpy(dtype=np.int64)
    start = swaps["start_s"].to_numpy(dtype=np.float64)
    end = swaps["end_s"].to_numpy(dtype=np.float64)
    unknown = ~np.isin(run, runs.index.to_numpy())
    if np.any(unknown):
        out.add("schema", f"swaps: run {int(run[unknown][0])} is not in runs")
        ok = False
    n = len(instance)
    outside = (request < 0) | (request >= n)
    if np.any(outside):
        out.add(
            "schema",
            f"swaps: request {int(request[outside][0])} is not in the instance "
            f"(0..{n - 1})",
        )
        ok = False
    for bad, what in (
        (tokens < 1, lambda k: f"tokens = {int(tokens[k])}; expected >= 1"),
        (
            end < start,
            lambda k: (
                f"copy ends at {float(end[k])!r} s, before it starts at "
                f"{float(start[k])!r} s"
            ),
        ),
    ):
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            out.add("schema", f"swaps: {what(k)}", run=int(run[k]),
                    request=int(request[k]))  # fmt: skip
            ok = False
    return ok


# -- iteration times ------------------------------------------------------------


def _phi(
    P: IntArray, Q: IntArray, D: IntArray, K0: IntArray, n: IntArray
) -> tuple[FloatArray, IntArray, IntArray]:
    """Every iteration of some runs: phi rows, the run of each row, and its k."""
    run = np.repeat(np.arange(len(n)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    phi = np.empty((len(run), 6), dtype=np.float64)
    phi[:, 0] = 1.0
    phi[:, 1] = P[run]
    phi[:, 2] = Q[run]
    phi[:, 3] = D[run]
    phi[:, 4] = K0[run] + k * D[run]  # each decode step of the run adds a token
    phi[:, 5] = P[run] > 0
    return phi, run, k


def _run_times(
    profile: DeploymentProfile,
    P: IntArray,
    Q: IntArray,
    D: IntArray,
    K0: IntArray,
    n: IntArray,
) -> tuple[FloatArray, FloatArray]:
    """Per run: total time ``sum_k t_k`` and ``sum_k k * t_k`` over its iterations."""
    m = len(n)
    total = np.zeros(m, dtype=np.float64)
    weighted = np.zeros(m, dtype=np.float64)
    ends = np.cumsum(n)
    lo = 0
    while lo < m:
        done_before = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, done_before + _CHUNK_ITERATIONS, side="right"))
        hi = max(hi, lo + 1)
        phi, run, k = _phi(P[lo:hi], Q[lo:hi], D[lo:hi], K0[lo:hi], n[lo:hi])
        t = profile.iteration_time_s(phi)
        total[lo:hi] = np.bincount(run, weights=t, minlength=hi - lo)
        weighted[lo:hi] = np.bincount(run, weights=k * t, minlength=hi - lo)
        lo = hi
    return total, weighted


# -- the replay ------------------------------------------------------------------


@dataclass(frozen=True)
class _SwapRows:
    """The swaps table as arrays, in its row order: the run position each was
    decided before, the request, 1 for a swap-in (0 out), tokens, copy times."""

    pos: IntArray
    req: IntArray
    inbound: IntArray
    tokens: IntArray
    start: FloatArray
    end: FloatArray

    @classmethod
    def empty(cls) -> _SwapRows:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, none, none, none.astype(np.float64),
                   none.astype(np.float64))  # fmt: skip

    @classmethod
    def of(cls, swaps: pd.DataFrame, runs: pd.DataFrame) -> _SwapRows:
        """Rows of a table that passed :func:`_check_swap_schema`."""
        return cls(
            pos=runs.index.get_indexer(swaps["run"]).astype(np.int64),
            req=swaps["request"].to_numpy(dtype=np.int64),
            inbound=(swaps["direction"].astype(str).to_numpy() == "in").astype(
                np.int64
            ),
            tokens=swaps["tokens"].to_numpy(dtype=np.int64),
            start=swaps["start_s"].to_numpy(dtype=np.float64),
            end=swaps["end_s"].to_numpy(dtype=np.float64),
        )


@dataclass(frozen=True)
class _Replay:
    """Outcome of the per-request bookkeeping.

    Member rows and preemption rows keep the order of their tables; marks are
    ``(request, run position, iteration within the run)``.
    """

    before: IntArray  # per member: KV tokens held before the run (own bookkeeping)
    after: IntArray  # per member: KV tokens held after the run
    completes: npt.NDArray[np.bool_]  # per member: the request completes in it
    freed: IntArray  # per preemption: KV tokens freed
    replica: IntArray  # per request: its first replica, -1 if it never ran
    admitted_s: FloatArray
    preemptions: IntArray
    recomputed: IntArray
    emitted: IntArray  # per request: tokens emitted in all
    first_at: list[tuple[int, int, int]]  # where token 1 is emitted
    done_at: list[tuple[int, int, int]]  # where token o_i is emitted
    first_pos: IntArray  # per request: run position of its first event, -1 if none
    adopted: npt.NDArray[np.bool_]  # per request: arrived prefilled and running
    moved: IntArray  # per swap: KV tokens it moves (own bookkeeping; logged if void)
    valid: npt.NDArray[np.bool_]  # per swap: not void (a running request's
    # swap-out, or a swapped-out request's swap-in)
    pair: IntArray  # per swap-out: the row of the swap-in that ends it, -1 if none


def _replay(
    instance: Instance,
    run_ids: list[int],
    run_replica: list[int],
    run_start: list[float],
    run_n: list[int],
    m_pos: IntArray,
    m_req: IntArray,
    m_kind: IntArray,
    m_tokens: IntArray,
    m_logged_before: IntArray,
    p_pos: IntArray,
    p_req: IntArray,
    out: _Collector,
    carried: IntArray | None = None,
    swaps: _SwapRows | None = None,
    async_swaps: bool = False,
) -> _Replay:
    """Walk each request's preemptions, swaps and memberships in run order.

    One plain loop over events sorted by (request, run, then its swaps by copy
    start, its preemption, its membership): the state of a request (processed,
    target, emitted, running, swapped, done) depends only on its own earlier
    events.

    ``carried`` (a disaggregated decode pool): the KV tokens each request brings,
    its token 1 emitted. A request whose first event decodes (or preempts or
    swaps it out) was adopted running with that KV; one whose first event
    prefills had it dropped (recomputed tokens) and is prefilled again.

    ``swaps`` (rule ``swap``): a swap-out moves a running request's KV (its
    processed tokens) to the host and stops it running; the swap-in that follows
    brings the same tokens back, and it runs on with them, its target unchanged.
    Blocking, it may be in the run the swap-in was decided before; asynchronous
    (``async_swaps``), it runs from the first run that starts at or after its
    copy's end, and the swap-in starts no earlier than the swap-out's copy ends.
    """
    n = len(instance)
    arrival = instance.arrival_s.tolist()
    prompt = instance.prompt_tokens.tolist()
    output = instance.output_tokens.tolist()
    num_members, num_preempt = len(m_pos), len(p_pos)
    if swaps is None:
        swaps = _SwapRows.empty()
    num_swaps = len(swaps.pos)

    # events: members, preemptions and swaps, in one order
    req = np.concatenate([m_req, p_req, swaps.req])
    pos = np.concatenate([m_pos, p_pos, swaps.pos])
    kind = np.concatenate(
        [
            np.full(num_members, _MEMBER_EVENT),
            np.full(num_preempt, _PREEMPT_EVENT),
            np.full(num_swaps, _SWAP_EVENT),
        ]
    )
    row = np.concatenate(
        [np.arange(num_members), np.arange(num_preempt), np.arange(num_swaps)]
    )
    when = np.concatenate([np.zeros(num_members + num_preempt), swaps.start])
    order = np.lexsort((row, when, kind, pos, req))
    is_in = np.concatenate([np.zeros(num_members + num_preempt, dtype=np.int64),
                            swaps.inbound])  # fmt: skip
    s_tokens = swaps.tokens.tolist()
    s_start, s_end = swaps.start.tolist(), swaps.end.tolist()
    s_pos = swaps.pos.tolist()
    moved = swaps.tokens.astype(np.int64).copy()
    valid = np.zeros(num_swaps, dtype=bool)
    pair = np.full(num_swaps, -1, dtype=np.int64)

    before = np.zeros(num_members, dtype=np.int64)
    after = np.zeros(num_members, dtype=np.int64)
    completes = np.zeros(num_members, dtype=bool)
    freed = np.zeros(num_preempt, dtype=np.int64)
    replica_of = np.full(n, -1, dtype=np.int64)
    admitted_s = np.full(n, np.nan)
    preempted = np.zeros(n, dtype=np.int64)
    recomputed = np.zeros(n, dtype=np.int64)
    first_at: list[tuple[int, int, int]] = []  # (request, run position, iteration)
    done_at: list[tuple[int, int, int]] = []
    member_kind, member_tokens = m_kind.tolist(), m_tokens.tolist()
    logged_before = m_logged_before.tolist()

    emitted_of = np.zeros(n, dtype=np.int64)
    first_pos = np.full(n, -1, dtype=np.int64)
    adopted = np.zeros(n, dtype=bool)
    current = -1
    processed = target = emitted = 0
    running = done = warned_replica = warned_after = False
    swapped, host, out_row, resume_s = False, 0, -1, -math.inf

    def never_back(i: int, out_row: int) -> None:
        """The request ends with its KV on the host."""
        out.add(
            "swap",
            f"its KV stays on the host: swapped out before run "
            f"{run_ids[s_pos[out_row]]}, never swapped back in",
            run=run_ids[s_pos[out_row]],
            request=i,
        )

    for e_req, e_pos, e_kind, e_row, e_in in zip(
        req[order].tolist(),
        pos[order].tolist(),
        kind[order].tolist(),
        row[order].tolist(),
        is_in[order].tolist(),
        strict=True,
    ):
        if e_req != current:  # a new request: fresh state
            if swapped:
                never_back(current, out_row)
            current = e_req
            processed = target = emitted = 0
            running = done = warned_replica = warned_after = False
            swapped, host, out_row, resume_s = False, 0, -1, -math.inf
            first_pos[e_req] = e_pos
            if carried is not None and carried[e_req] > 0:
                emitted = 1  # token 1 came from its prefill replica
                if e_kind != _MEMBER_EVENT or member_kind[e_row] == _DECODE:
                    processed = target = int(carried[e_req])  # adopted, running
                    running = True
                    adopted[e_req] = True
                else:  # its KV was dropped: prefilled again
                    recomputed[e_req] += int(carried[e_req])
        i, run = e_req, run_ids[e_pos]
        if replica_of[i] < 0:
            replica_of[i] = run_replica[e_pos]
        elif run_replica[e_pos] != replica_of[i] and not warned_replica:
            out.add(
                "single-replica",
                f"on replica {run_replica[e_pos]}, earlier on replica {replica_of[i]}",
                run=run,
                request=i,
            )
            warned_replica = True

        if e_kind == _SWAP_EVENT and not e_in:
            if not running:
                state = "swapped out" if swapped else "completed" if done else "waiting"
                out.add(
                    "swap",
                    f"swapped out while {state}; only a running request swaps out",
                    run=run,
                    request=i,
                )
                continue
            if s_tokens[e_row] != processed:
                out.add(
                    "swap",
                    f"swap-out of {s_tokens[e_row]} tokens; the request holds "
                    f"{processed} KV tokens",
                    run=run,
                    request=i,
                )
            moved[e_row], valid[e_row] = processed, True
            swapped, host, out_row = True, processed, e_row
            processed, running = 0, False
            continue
        if e_kind == _SWAP_EVENT:
            if not swapped:
                state = "running" if running else "completed" if done else "waiting"
                out.add(
                    "swap",
                    f"swapped in while {state}; swaps of a request alternate out, "
                    "in, out, ..., starting with out",
                    run=run,
                    request=i,
                )
                continue
            if s_tokens[e_row] != host:
                out.add(
                    "swap",
                    f"swap-in of {s_tokens[e_row]} tokens; it swapped out {host}",
                    run=run,
                    request=i,
                )
            ready = s_end[out_row]
            if async_swaps and (
                run_start[e_pos] < ready - ARRIVAL_TOLERANCE_S
                or s_start[e_row] < ready - ARRIVAL_TOLERANCE_S
            ):
                out.add(
                    "swap",
                    f"swapped in (decided before a run starting at "
                    f"{run_start[e_pos]!r} s, copy from {s_start[e_row]!r} s) "
                    f"before its swap-out copy ends at {ready!r} s",
                    run=run,
                    request=i,
                )
            moved[e_row], valid[e_row], pair[out_row] = host, True, e_row
            swapped, running, processed = False, True, host
            resume_s = s_end[e_row] if async_swaps else -math.inf
            continue
        if e_kind == _PREEMPT_EVENT:
            if not running:
                state = "swapped out" if swapped else "completed" if done else "waiting"
                out.add("preemption", f"preempted while {state}", run=run, request=i)
                continue
            freed[e_row] = processed
            recomputed[i] += processed
            preempted[i] += 1
            processed, running = 0, False
            continue

        if done:
            if not warned_after:
                out.add(
                    "token-conservation",
                    "runs after it completed",
                    run=run,
                    request=i,
                )
                warned_after = True
            before[e_row] = after[e_row] = 0  # holds nothing: its KV was freed
            continue
        if swapped:
            out.add(
                "swap",
                f"in the run while its KV is on the host (swapped out before run "
                f"{run_ids[s_pos[out_row]]}, not swapped back in)",
                run=run,
                request=i,
            )
            swapped, running, processed = False, True, host  # as if it came back
        elif run_start[e_pos] < resume_s - ARRIVAL_TOLERANCE_S:
            out.add(
                "swap",
                f"in a run starting at {run_start[e_pos]!r} s, before its swap-in "
                f"copy ends at {resume_s!r} s",
                run=run,
                request=i,
            )
        resume_s = -math.inf
        if math.isnan(admitted_s[i]):
            admitted_s[i] = run_start[e_pos]
            if run_start[e_pos] < arrival[i] - ARRIVAL_TOLERANCE_S:
                out.add(
                    "arrival",
                    f"first run starts at {run_start[e_pos]!r} s, before its "
                    f"arrival at {arrival[i]!r} s",
                    run=run,
                    request=i,
                )
        if logged_before[e_row] != processed:
            out.add(
                "processed-before",
                f"processed_before = {logged_before[e_row]}; the request holds "
                f"{processed} KV tokens",
                run=run,
                request=i,
            )
        before[e_row] = processed
        emitted_before = emitted
        if member_kind[e_row] == _PREFILL:
            c = member_tokens[e_row]
            if not running:  # admission: re-prefill the prompt and emitted tokens
                running, target = True, prompt[i] + emitted
            if not 1 <= c <= target - processed:
                out.add(
                    "prefill-chunk",
                    f"chunk of {c} tokens; expected 1..{target - processed} "
                    f"(target {target}, processed {processed})",
                    run=run,
                    request=i,
                )
            if processed < target <= processed + c:  # this chunk ends the prefill
                emitted += 1
            processed += c
            steps = 1
        else:
            if not running or processed < target:  # prefill not finished
                out.add(
                    "prefill-before-decode",
                    f"decodes while {'running' if running else 'waiting'} with "
                    f"{processed} of {target} prefill tokens processed",
                    run=run,
                    request=i,
                )
                running = True
            if member_tokens[e_row] != 1:
                out.add(
                    "run-shape",
                    f"decode member with tokens = {member_tokens[e_row]}; "
                    "expected 1 (one per iteration)",
                    run=run,
                    request=i,
                )
            steps = run_n[e_pos]
            processed += steps
            emitted += steps
        after[e_row] = processed
        emitted_of[i] = emitted
        if emitted_before == 0 and emitted > 0:
            first_at.append((i, e_pos, 0))
        if emitted >= output[i]:
            if emitted > output[i]:
                out.add(
                    "token-conservation",
                    f"emits {emitted} tokens; expected {output[i]}",
                    run=run,
                    request=i,
                )
            # the iteration that emits token o_i ends the request
            done_at.append((i, e_pos, steps - 1 - (emitted - output[i])))
            completes[e_row] = True
            done, running = True, False
    if swapped:
        never_back(current, out_row)

    return _Replay(
        before=before,
        after=after,
        completes=completes,
        freed=freed,
        replica=replica_of,
        admitted_s=admitted_s,
        preemptions=preempted,
        recomputed=recomputed,
        emitted=emitted_of,
        first_at=first_at,
        done_at=done_at,
        first_pos=first_pos,
        adopted=adopted,
        moved=moved,
        valid=valid,
        pair=pair,
    )


def _iteration_end(
    profile: DeploymentProfile,
    start: float,
    end: float,
    n: int,
    k: int,
    features: tuple[int, int, int, int],
) -> float:
    """End of iteration ``k`` of a run (the logged end for its last iteration)."""
    if k >= n - 1:
        return end
    P, Q, D, K0 = features
    phi, _, _ = _phi(*(np.array([x], dtype=np.int64) for x in (P, Q, D, K0, k + 1)))
    return start + float(profile.iteration_time_s(phi).sum())


# -- metrics -------------------------------------------------------------------


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


# -- the front door ---------------------------------------------------------------


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


@dataclass(frozen=True)
class _Stages:
    """What a disaggregated cluster adds to one pool's log (:func:`validate_cluster`).

    ``carried`` (a decode pool): per request, the KV tokens it brings, arriving at
    ``delivered_s`` (its ``transfer_end_s``). ``reserved_s`` (a pulling decode
    pool): when the replica took it and reserved its blocks (its
    ``transfer_start_s``), held until ``delivered_s``. ``pinned_until`` (a prefill
    pool): per request, when the KV it keeps pinned from the end of its prefill is
    freed (its ``transfer_end_s``; NaN for one that does not move).
    """

    carried: IntArray | None = None
    delivered_s: FloatArray | None = None
    reserved_s: FloatArray | None = None
    pinned_until: FloatArray | None = None


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


# -- the stages of a disaggregated cluster ------------------------------------------


class _Timeline:
    """The runs of one pool's log, per replica in time order, with the end of any
    iteration inside a run on demand."""

    def __init__(
        self,
        profile: DeploymentProfile,
        replica: IntArray,
        start: FloatArray,
        end: FloatArray,
        n_it: IntArray,
        features: tuple[IntArray, IntArray, IntArray, IntArray],
    ) -> None:
        self.profile = profile
        self.start, self.end, self.n_it = start, end, n_it
        self.features = features
        self.runs = {
            int(rep): np.flatnonzero(replica == rep) for rep in np.unique(replica)
        }

    def of(self, rep: int) -> IntArray:
        """Run positions of replica ``rep``, in time order."""
        return self.runs.get(rep, np.zeros(0, dtype=np.int64))

    def starts_at(self, rep: int, t: float) -> bool:
        """Whether a run of replica ``rep`` starts at ``t`` (within the arrival
        tolerance)."""
        starts = self.start[self.of(rep)]
        k = int(np.searchsorted(starts, t - ARRIVAL_TOLERANCE_S))
        return k < len(starts) and starts[k] <= t + ARRIVAL_TOLERANCE_S

    def boundary(self, rep: int, t: float) -> float:
        """The first iteration boundary of replica ``rep`` at or after ``t``: the
        end of the iteration in flight at ``t`` (one that started more than the
        arrival tolerance before it), else ``t`` itself (the replica is at a
        boundary or idle)."""
        index = self.of(rep)
        k = int(np.searchsorted(self.start[index] + ARRIVAL_TOLERANCE_S, t)) - 1
        if k < 0:
            return t
        r = int(index[k])
        if self.end[r] + ARRIVAL_TOLERANCE_S < t:
            return t
        if self.n_it[r] == 1:
            return float(self.end[r])
        P, Q, D, K0 = (f[r : r + 1] for f in self.features)
        phi, _, _ = _phi(P, Q, D, K0, self.n_it[r : r + 1])
        ends = self.start[r] + np.cumsum(self.profile.iteration_time_s(phi))
        ends[-1] = self.end[r]
        return float(ends[np.searchsorted(ends + ARRIVAL_TOLERANCE_S, t)])


def _adoptions(
    stages: _Stages,
    replay: _Replay,
    timeline: _Timeline,
    run_ids: list[int],
    out: _Collector,
) -> tuple[IntArray, IntArray]:
    """A decode pool: where each request's KV arrives (run positions, tokens).

    A request's KV reaches its decode replica at ``delivered_s``; the replica
    adopts it (or drops it) at its first boundary at or after then, and nothing of
    the request runs there earlier (``decode-after-transfer``). An adopted
    request's admission is that boundary, and its KV counts from the first run
    that ends after it. A pulling replica that took a request at a boundary
    decided there before its KV could arrive: KV delivered at its take, at a
    boundary where a run without the request starts, is adopted at that run's
    first iteration end.
    """
    assert stages.carried is not None and stages.delivered_s is not None
    positions: list[int] = []
    tokens: list[int] = []
    for i in np.flatnonzero(stages.carried > 0).tolist():
        rep, first = int(replay.replica[i]), int(replay.first_pos[i])
        if rep < 0 or first < 0:
            continue  # it never ran: token conservation says so
        t = float(stages.delivered_s[i])
        if not math.isfinite(t):
            out.add(
                "decode-after-transfer",
                "runs on a decode replica with no transfer end recorded",
                run=run_ids[first],
                request=i,
            )
            continue
        adopted = timeline.boundary(rep, t)
        begins = float(timeline.start[first])
        reserved = stages.reserved_s
        if (
            reserved is not None
            and t <= reserved[i] + ARRIVAL_TOLERANCE_S
            and begins > adopted + ARRIVAL_TOLERANCE_S
            and timeline.starts_at(rep, adopted)
        ):
            # taken and delivered at once, at a boundary where the replica then
            # decided a run without it: it decided before the KV came (it takes
            # just before deciding), and adopts it at the next boundary
            adopted = timeline.boundary(rep, adopted + 2 * ARRIVAL_TOLERANCE_S)
        slack = 2 * ARRIVAL_TOLERANCE_S + 1e-12 * abs(adopted)
        if begins < adopted - slack:
            out.add(
                "decode-after-transfer",
                f"runs on its decode replica at {begins!r} s, before its KV arrives "
                f"at {t!r} s (transfer_end_s) and the replica's first boundary at or "
                f"after then, {adopted!r} s",
                run=run_ids[first],
                request=i,
            )
        if replay.adopted[i]:
            replay.admitted_s[i] = adopted
            index = timeline.of(rep)
            k = int(np.searchsorted(timeline.end[index], adopted + ARRIVAL_TOLERANCE_S,
                                    side="right"))  # fmt: skip
            if k < len(index):
                positions.append(int(index[k]))
                tokens.append(int(stages.carried[i]))
    return np.array(positions, dtype=np.int64), np.array(tokens, dtype=np.int64)


def _pins(
    instance: Instance,
    profile: DeploymentProfile,
    until: FloatArray,
    replay: _Replay,
    done: FloatArray,
    timeline: _Timeline,
) -> tuple[IntArray, float]:
    """A prefill pool: the blocks pinned during each run, and the pinned KV's
    token-seconds. A request that moves keeps ``ceil(s_i / b)`` blocks from the end
    of its prefill (``done`` here: it emits one token) until ``until``, in every
    run of its replica that starts in between (a run that starts when the pin is
    freed, within the arrival tolerance, no longer holds it).

    A pulling decode pool's reservations are counted the same way: ``done`` is
    when the replica took the request (its transfer's start), ``until`` its
    transfer's end (the token-seconds are not the pool's: reserved blocks hold no
    KV yet)."""
    pinned = np.zeros(len(timeline.start), dtype=np.int64)
    token_seconds = 0.0
    prompt = instance.prompt_tokens
    for i in np.flatnonzero(np.isfinite(until)).tolist():
        rep, since = int(replay.replica[i]), float(done[i])
        if rep < 0 or math.isnan(since):
            continue
        index = timeline.of(rep)
        starts = timeline.start[index]
        lo = int(np.searchsorted(starts, since - ARRIVAL_TOLERANCE_S))
        hi = int(np.searchsorted(starts, until[i] - ARRIVAL_TOLERANCE_S))
        pinned[index[lo:hi]] += int(profile.kv_blocks(prompt[i : i + 1])[0])
        token_seconds += int(prompt[i]) * (float(until[i]) - since)
    return pinned, token_seconds


# -- the checks ------------------------------------------------------------------


def _check_order(
    run_ids: list[int],
    replica: IntArray,
    start: FloatArray,
    end: FloatArray,
    replicas: int,
    out: _Collector,
) -> None:
    """Per replica, in run id order: each run starts at or after the previous end."""
    for rep in range(replicas):
        index = np.flatnonzero(replica == rep)
        early = np.flatnonzero(start[index[1:]] < end[index[:-1]])
        for j in early.tolist():
            prev, run = index[j], index[j + 1]
            out.add(
                "run-order",
                f"starts at {float(start[run])!r} s, before run {run_ids[prev]} "
                f"on replica {rep} ends at {float(end[prev])!r} s",
                run=run_ids[run],
            )


def _check_shape(
    run_ids: list[int],
    n_it: IntArray,
    m_pos: IntArray,
    m_req: IntArray,
    m_kind: IntArray,
    p_pos: IntArray,
    p_req: IntArray,
    out: _Collector,
) -> None:
    m = len(run_ids)
    seqs = np.bincount(m_pos, minlength=m)
    for r in np.flatnonzero(seqs == 0).tolist():
        out.add("run-shape", "has no members", run=run_ids[r])
    prefills = np.bincount(m_pos[m_kind == _PREFILL], minlength=m)
    for r in np.flatnonzero((prefills > 0) & (n_it != 1)).tolist():
        out.add(
            "run-shape",
            f"has {n_it[r]} iterations and a prefill chunk; a run with prefill has "
            "exactly 1",
            run=run_ids[r],
        )
    for pos, req, rule in ((m_pos, m_req, "run-shape"), (p_pos, p_req, "preemption")):
        pairs = pd.DataFrame({"pos": pos, "req": req})
        for r, i in pairs[pairs.duplicated()].itertuples(index=False):
            out.add(rule, "listed twice in the run", run=run_ids[r], request=int(i))


def _check_features(
    runs: pd.DataFrame,
    run_ids: list[int],
    own: dict[str, IntArray],
    out: _Collector,
) -> None:
    columns = {
        "P": "prefill_tokens",
        "Q": "prefill_attention",
        "D": "decode_steps",
        "K": "kv_read_tokens",
        "H": "has_prefill",
    }
    logged = {k: runs[c].to_numpy(dtype=np.int64) for k, c in columns.items()}
    wrong = np.zeros(len(run_ids), dtype=bool)
    for k in columns:
        wrong |= logged[k] != own[k]
    for r in np.flatnonzero(wrong).tolist():
        parts = [
            f"{columns[k]} = {logged[k][r]}, expected {own[k][r]}"
            for k in columns
            if logged[k][r] != own[k][r]
        ]
        out.add("run-features", "; ".join(parts), run=run_ids[r])


def _check_limits(
    profile: DeploymentProfile,
    run_ids: list[int],
    seqs: IntArray,
    batched: IntArray,
    out: _Collector,
) -> None:
    for r in np.flatnonzero(seqs > profile.max_num_seqs).tolist():
        out.add(
            "max-num-seqs",
            f"{seqs[r]} requests in the batch; max_num_seqs = {profile.max_num_seqs}",
            run=run_ids[r],
        )
    limit = profile.max_num_batched_tokens
    for r in np.flatnonzero(batched > limit).tolist():
        out.add(
            "max-num-batched-tokens",
            f"{batched[r]} prefill tokens + decode steps; max_num_batched_tokens = "
            f"{limit}",
            run=run_ids[r],
        )


def _check_kv(
    profile: DeploymentProfile,
    runs: pd.DataFrame,
    run_ids: list[int],
    replica: IntArray,
    n_it: IntArray,
    D: IntArray,
    m_pos: IntArray,
    p_pos: IntArray,
    replay: _Replay,
    replicas: int,
    out: _Collector,
    arrivals: tuple[IntArray, IntArray] | None = None,
    pinned: IntArray | None = None,
    swap: _SwapKV | None = None,
) -> IntArray:
    """KV capacity and the ``kv_tokens`` column; returns KV after each first iteration.

    The KV a replica holds changes by: members' growth during a run, preemptions
    (before it) and completions (freed after its last iteration, so a completing
    request still counts in that iteration). Within a run KV only grows, so its
    last iteration holds the most. In a disaggregated cluster, ``arrivals`` (run
    positions, tokens) is KV adopted on a decode replica, held from that run on,
    and ``pinned`` the blocks a prefill replica keeps pinned during each run
    (counted against the capacity, not in ``kv_tokens``). ``swap``: KV that swaps
    move off and back onto the running set, the blocks asynchronous copies pin
    during each run, and at each asynchronous swap-in decided while the replica
    idles the blocks surely held then (:func:`_swap_kv`): those pinned, and those
    of the requests running before the next run that did not join on the way.
    """
    m = len(run_ids)
    blocks = profile.kv_blocks
    completing = replay.completes

    def per_run(pos: IntArray, values: IntArray) -> IntArray:
        return np.bincount(pos, weights=values.astype(np.float64), minlength=m).astype(
            np.int64
        )

    during_tokens = per_run(m_pos, replay.after - replay.before) - per_run(
        p_pos, replay.freed
    )
    during_blocks = per_run(
        m_pos, blocks(replay.after) - blocks(replay.before)
    ) - per_run(p_pos, blocks(replay.freed))
    if arrivals is not None:
        pos, tokens = arrivals
        during_tokens += per_run(pos, tokens)
        during_blocks += per_run(pos, blocks(tokens))
    if swap is not None:
        during_tokens += per_run(swap.pos, swap.tokens)
        during_blocks += per_run(swap.pos, swap.blocks)
    freed_tokens = per_run(m_pos[completing], replay.after[completing])
    freed_blocks = per_run(m_pos[completing], blocks(replay.after[completing]))

    last_tokens = np.zeros(m, dtype=np.int64)
    last_blocks = np.zeros(m, dtype=np.int64)
    for rep in range(replicas):
        index = np.flatnonzero(replica == rep)
        # held after run r = all changes up to r, less the frees after r itself
        last_tokens[index] = (
            np.cumsum(during_tokens[index] - freed_tokens[index]) + freed_tokens[index]
        )
        last_blocks[index] = (
            np.cumsum(during_blocks[index] - freed_blocks[index]) + freed_blocks[index]
        )
    capacity = profile.kv_capacity_blocks
    # held before the run's iterations: after them, less what its members grew
    before_blocks = last_blocks - per_run(
        m_pos, blocks(replay.after) - blocks(replay.before)
    )
    pins = np.zeros(m, dtype=np.int64)
    if pinned is not None:
        pins += pinned
    if swap is not None:
        pins += swap.pinned
    last_blocks = last_blocks + pins
    over = last_blocks > capacity
    for r in np.flatnonzero(over).tolist():
        also = "" if not pins[r] else f" ({pins[r]} pinned or reserved)"
        out.add(
            "kv-capacity",
            f"holds {last_blocks[r]} KV blocks{also} after its last iteration; "
            f"capacity {capacity} blocks of {profile.block_tokens} tokens",
            run=run_ids[r],
        )
    if swap is not None and swap.idle:
        # running while the replica idles before run k: those held before it,
        # less those that joined on the way (an adoption, an asynchronous swap-in)
        running = before_blocks - swap.joined
        if arrivals is not None:
            running -= per_run(arrivals[0], blocks(arrivals[1]))
        flagged: set[int] = set()
        for k, t, held in swap.idle:
            total = int(running[k]) + held
            if total > capacity and k not in flagged and not over[k]:
                flagged.add(k)
                out.add(
                    "kv-capacity",
                    f"holds at least {total} KV blocks ({held} pinned by swap "
                    f"copies) at {t!r} s, where a swap-in is decided while the "
                    f"replica idles before the run; capacity {capacity} blocks of "
                    f"{profile.block_tokens} tokens",
                    run=run_ids[k],
                )
    first_tokens = last_tokens - (n_it - 1) * D
    logged = runs["kv_tokens"].to_numpy(dtype=np.int64)
    for r in np.flatnonzero(logged != first_tokens).tolist():
        out.add(
            "kv-tokens",
            f"kv_tokens = {logged[r]}; the replica holds {first_tokens[r]} KV tokens "
            "after the first iteration",
            run=run_ids[r],
        )
    return first_tokens


# -- swaps (the host tier) ----------------------------------------------------------


def _copy_seconds(
    profile: DeploymentProfile, swaps: _SwapRows, tokens: IntArray
) -> FloatArray:
    """Seconds each copy of ``tokens`` tokens takes on its direction's link."""
    host = profile.host
    assert host is not None  # a profile always has one
    bandwidth = np.where(swaps.inbound == 1, host.h2d_bytes_per_s, host.d2h_bytes_per_s)
    return tokens * profile.kv_bytes_per_token / bandwidth


def _replica_runs(replica: IntArray) -> tuple[dict[int, IntArray], IntArray]:
    """Run positions of each replica (in time order) and each run's index there."""
    index = {int(rep): np.flatnonzero(replica == rep) for rep in np.unique(replica)}
    local = np.zeros(len(replica), dtype=np.int64)
    for positions in index.values():
        local[positions] = np.arange(len(positions))
    return index, local


_DIRECTION = ("out", "in")
_LINK = ("device-to-host", "host-to-device")


def _check_copies(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    moved: IntArray,
    copy_s: FloatArray,
    async_swaps: bool,
    run_ids: list[int],
    replica: IntArray,
    start: FloatArray,
    end: FloatArray,
    rtol: float,
    out: _Collector,
) -> None:
    """``swap-copy`` and ``swap-link``: each copy lasts ``tokens *
    kv_bytes_per_token / bandwidth``; on each replica a direction's copies go
    one at a time in the order they were decided (run, then row), none
    overlapping. Blocking: a run's copies go back to back from its start, outs
    then ins (each in row order). Asynchronous: a copy starts at the later of
    its decision (a boundary between the end of the replica's previous run and
    the start of the run it was decided before) and the end of its link's
    previous copy."""
    host = profile.host
    assert host is not None
    bandwidth = (host.d2h_bytes_per_s, host.h2d_bytes_per_s)
    per_token = profile.kv_bytes_per_token
    tol = ARRIVAL_TOLERANCE_S
    pos, req, inbound = swaps.pos.tolist(), swaps.req.tolist(), swaps.inbound.tolist()
    begin, finish = swaps.start.tolist(), swaps.end.tolist()
    seconds = copy_s.tolist()

    def flag(rule: str, r: int, message: str) -> None:
        out.add(rule, message, run=run_ids[pos[r]], request=req[r])

    def near(a: float, b: float) -> bool:
        return _close(a, b, rtol, tol)

    atol = (
        4
        * np.finfo(np.float64).eps
        * np.maximum(np.abs(swaps.start), np.abs(swaps.end))
    )
    wrong = ~_close_array(swaps.end - swaps.start, copy_s, rtol, atol)
    for r in np.flatnonzero(wrong).tolist():
        d = inbound[r]
        flag(
            "swap-copy",
            r,
            f"swap-{_DIRECTION[d]} copy of {int(moved[r])} tokens lasts "
            f"{finish[r] - begin[r]!r} s; {int(moved[r])} tokens x {per_token} "
            f"bytes at {bandwidth[d]!r} bytes/s take {seconds[r]!r} s",
        )
    index, _ = _replica_runs(replica)
    previous_end = np.full(len(start), -math.inf)
    for positions in index.values():
        previous_end[positions[1:]] = end[positions[:-1]]
    links: dict[tuple[int, int], list[int]] = {}
    for r in sorted(range(len(pos)), key=lambda r: (pos[r], r)):
        links.setdefault((int(replica[pos[r]]), inbound[r]), []).append(r)
    for (rep, d), rows in links.items():
        free, last = -math.inf, -1
        for r in rows:
            k = pos[r]
            if begin[r] < free - tol - rtol * abs(free):
                flag(
                    "swap-link",
                    r,
                    f"swap-{_DIRECTION[d]} copy starts at {begin[r]!r} s, before "
                    f"the copy decided before it on replica {rep}'s {_LINK[d]} link "
                    f"(request {req[last]}, before run {run_ids[pos[last]]}) ends "
                    f"at {free!r} s: one direction's copies run one at a time, "
                    "first come, first served",
                )
            elif async_swaps:
                lo = max(float(previous_end[k]), free)
                hi = max(float(start[k]), free)
                early = begin[r] < lo - tol - rtol * abs(lo)
                if early or begin[r] > hi + tol + rtol * abs(hi):
                    flag(
                        "swap-copy",
                        r,
                        f"swap-{_DIRECTION[d]} copy starts at {begin[r]!r} s; "
                        f"decided at a boundary before run {run_ids[k]} (in "
                        f"[{float(previous_end[k])!r}, {float(start[k])!r}] s) on a "
                        f"{_LINK[d]} link busy until {free!r} s, it starts at the "
                        f"later of the two, in [{lo!r}, {hi!r}] s",
                    )
            if finish[r] > free:
                free, last = finish[r], r
    if async_swaps:
        return
    runs: dict[int, list[int]] = {}
    for r in sorted(range(len(pos)), key=lambda r: (pos[r], inbound[r], r)):
        runs.setdefault(pos[r], []).append(r)
    for k, rows in runs.items():
        t = float(start[k])
        for r in rows:
            if not near(begin[r], t):
                flag(
                    "swap-copy",
                    r,
                    f"blocking swap-{_DIRECTION[inbound[r]]} copy starts at "
                    f"{begin[r]!r} s; a run's copies go back to back from its "
                    f"start ({float(start[k])!r} s), outs then ins: expected {t!r} s",
                )
            t += seconds[r]


def _check_host(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    replay: _Replay,
    run_ids: list[int],
    replica: IntArray,
    out: _Collector,
) -> None:
    """``host-capacity``: per replica, the host blocks of swapped-out KV
    (``ceil(tokens / b)`` per request, from its swap-out's start until its
    swap-in's end) never exceed ``memory_bytes // (b * kv_bytes_per_token)``."""
    host = profile.host
    assert host is not None
    b, per_token = profile.block_tokens, profile.kv_bytes_per_token
    capacity = host.memory_bytes // (b * per_token)
    tol = ARRIVAL_TOLERANCE_S
    held: dict[int, list[tuple[float, float, int, int]]] = {}
    for r in np.flatnonzero(replay.valid & (swaps.inbound == 0)).tolist():
        back = int(replay.pair[r])
        until = float(swaps.end[back]) if back >= 0 else math.inf
        blocks = -(-int(replay.moved[r]) // b)
        rep = int(replica[swaps.pos[r]])
        held.setdefault(rep, []).append((float(swaps.start[r]), until, blocks, r))
    for rep, spans in held.items():
        used = 0
        ends: list[tuple[float, int]] = []
        for since, until, blocks, r in sorted(spans):
            while ends and ends[0][0] <= since + tol:
                used -= heapq.heappop(ends)[1]
            used += blocks
            heapq.heappush(ends, (until, blocks))
            if used > capacity:
                out.add(
                    "host-capacity",
                    f"from {since!r} s replica {rep} holds {used} host blocks of "
                    f"swapped-out KV; its host tier holds {capacity} "
                    f"({host.memory_bytes} bytes in blocks of {b} tokens x "
                    f"{per_token} bytes)",
                    run=run_ids[int(swaps.pos[r])],
                    request=int(swaps.req[r]),
                )


@dataclass(frozen=True)
class _SwapKV:
    """What swaps change in a pool's GPU KV (:func:`_check_kv`).

    ``pos``, ``tokens``, ``blocks``: KV leaving (negative) or joining the running
    set before the run at ``pos``. ``pinned``: per run, the blocks asynchronous
    copies in flight when it starts pin. ``joined``: per run, the blocks of
    asynchronous swap-ins that join the running set before it. ``idle``: per
    asynchronous swap-in decided while its replica idles, ``(run position, its
    copy's start, the blocks pinned then)``."""

    pos: IntArray
    tokens: IntArray
    blocks: IntArray
    pinned: IntArray
    joined: IntArray
    idle: list[tuple[int, float, int]]


def _swap_kv(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    replay: _Replay,
    async_swaps: bool,
    replica: IntArray,
    start: FloatArray,
) -> _SwapKV:
    """The KV the swaps move on and off each replica's GPU.

    A swap-out's tokens leave the running set before the run it was decided
    before; asynchronous, its blocks stay pinned during every run that starts
    before its copy ends (less the arrival tolerance), as the copy lands at the
    first boundary at or after its end. A blocking swap-in's tokens join the
    running set before its run; an asynchronous one's blocks are pinned from its
    run until the first run that starts at or after its copy's end, where its
    tokens join the running set.

    An asynchronous swap-in decided while the replica idles (its copy starts
    before the run it was decided before) takes its blocks then, at ``t`` (its
    copy's start, at or after its decision). Surely pinned at ``t``: the blocks
    of every swap-in decided by then (before an earlier run, or copying from
    ``t`` or earlier) whose copy ends after ``t``, and of every swap-out decided
    by then whose copy ends after ``t`` (both beyond the tolerance)."""
    m = len(start)
    tol = ARRIVAL_TOLERANCE_S
    index, local = _replica_runs(replica)
    pinned = np.zeros(m + 1, dtype=np.int64)  # differences, per replica index
    joined = np.zeros(m, dtype=np.int64)
    starts = {rep: start[positions] for rep, positions in index.items()}
    valid = replay.valid
    blocks = profile.kv_blocks(replay.moved)
    pos: list[int] = []
    tokens: list[int] = []
    for r in np.flatnonzero(valid).tolist():
        k = int(swaps.pos[r])
        rep = int(replica[k])
        positions = index[rep]
        a = int(local[k])
        x = int(replay.moved[r])
        # runs that start before its copy ends (less the tolerance)
        top = max(a, int(np.searchsorted(starts[rep], float(swaps.end[r]) - tol)))
        if swaps.inbound[r] == 0:
            pos.append(k)
            tokens.append(-x)
            if not async_swaps:
                continue
        elif not async_swaps:
            pos.append(k)
            tokens.append(x)
            continue
        elif top < len(positions):  # it lands before that run
            pos.append(int(positions[top]))
            tokens.append(x)
            joined[positions[top]] += int(blocks[r])
        pinned[positions[a]] += int(blocks[r])
        pinned[positions[top] if top < len(positions) else m] -= int(blocks[r])
    # the differences run along each replica's positions, not along all runs
    pinned_runs = np.zeros(m, dtype=np.int64)
    for positions in index.values():
        pinned_runs[positions] = np.cumsum(pinned[positions])
    idle: list[tuple[int, float, int]] = []
    if async_swaps:
        rep_of = replica[swaps.pos]
        gaps = valid & (swaps.inbound == 1) & (swaps.start < start[swaps.pos] - tol)
        for r in np.flatnonzero(gaps).tolist():
            k, t = int(swaps.pos[r]), float(swaps.start[r])
            decided = (local[swaps.pos] < local[k]) | (
                (swaps.pos == k) & (swaps.start <= t)
            )
            held = valid & (rep_of == rep_of[r]) & decided & (swaps.end > t + tol)
            idle.append((k, t, int(blocks[held].sum())))
    token_array = np.array(tokens, dtype=np.int64)
    return _SwapKV(
        pos=np.array(pos, dtype=np.int64),
        tokens=token_array,
        blocks=np.sign(token_array) * profile.kv_blocks(np.abs(token_array)),
        pinned=pinned_runs,
        joined=joined,
        idle=idle,
    )


def _swap_metrics(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    moved: IntArray,
    copy_s: FloatArray,
    async_swaps: bool,
) -> dict[str, float]:
    """The four swap metrics, from the validator's own tokens and copy times."""
    outs = swaps.inbound == 0
    out_tokens = int(moved[outs].sum())
    in_tokens = int(moved[~outs].sum())
    per_token = profile.kv_bytes_per_token
    return {
        "swap_out_bytes": float(out_tokens * per_token),
        "swap_in_bytes": float(in_tokens * per_token),
        "swap_stall_s": 0.0 if async_swaps else float(copy_s.sum()),
        "recompute_avoided_tokens": float(out_tokens),
    }


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
    if "swap_outs" in own.columns:  # a swaps table was given
        if "swap_outs" in claimed.columns:
            columns.append("swap_outs")
        elif own["swap_outs"].any():
            out.add("schema", "requests lacks column swap_outs (the log swaps)")
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


__all__ = [
    "MAX_VIOLATIONS",
    "RULES",
    "ValidationReport",
    "Violation",
    "validate_cluster",
    "validate_schedule",
]


def validate_cluster(
    instance: Instance,
    cluster: Any,
    result: Any,
    *,
    rtol: float = 1e-9,
) -> ValidationReport:
    """Check a cluster run (``simulate_cluster(..., log=True)``) pool by pool (a
    disaggregated one stage by stage, with its transfers: module docstring).

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
    instance = fit.served  # the outputs a served request emits
    out = _Collector()
    n = len(instance)
    requests = result.requests
    replica = requests["replica"].to_numpy(dtype=np.int64)
    first = np.full(n, np.nan)
    done = np.full(n, np.nan)
    metrics: dict[str, float] = {}
    _check_rejections(requests, result, out)
    _check_fit_records(fit, requests, result.metrics, out)
    swaps = _cluster_swaps(result, out)
    totals = None if swaps is None else dict.fromkeys(SWAP_METRICS, 0.0)
    start = 0
    for pool in cluster.pools:
        ids = np.flatnonzero((replica >= start) & (replica < start + pool.replicas))
        mine = result.runs["replica"].between(start, start + pool.replicas - 1)
        runs = result.runs[mine].assign(replica=lambda r, s=start: r["replica"] - s)
        members = result.members[result.members["run"].isin(runs.index)]
        preempted = result.preemptions[result.preemptions["run"].isin(runs.index)]
        local = np.full(n, -1, dtype=np.int64)
        local[ids] = np.arange(len(ids))
        members = members.assign(request=local[members["request"].to_numpy()])
        preempted = preempted.assign(request=local[preempted["request"].to_numpy()])
        pool_swaps = None
        if swaps is not None:
            pool_swaps = swaps[swaps["run"].isin(runs.index)]
            pool_swaps = pool_swaps.assign(
                request=local[pool_swaps["request"].to_numpy(dtype=np.int64)]
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
                rtol=rtol, swaps=pool_swaps, swap_mode=_swap_mode(pool),
                swap_totals=False,
            )  # fmt: skip
            for v in report.violations:
                request = None if v.request is None else int(ids[v.request])
                out.add(v.rule, f"pool {pool.name}: {v.message}", run=v.run,
                        request=request)  # fmt: skip
            out.extra += report.suppressed
            first[ids] = report.first_token_s
            done[ids] = report.completion_s
            metrics |= {f"{pool.name}.{k}": v for k, v in report.metrics.items()}
            _add_swap_totals(totals, report.metrics)
        start += pool.replicas
    metrics |= _check_swap_totals(totals, swaps, result.metrics, rtol, out)
    return ValidationReport(
        tuple(out.kept), metrics, _frozen(first), _frozen(done), None, out.extra
    )


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


def _check_transfers(
    instance: Instance,
    cluster: Any,
    own: dict[str, np.ndarray],
    claimed: dict[str, np.ndarray],
    rtol: float,
    out: _Collector,
    runs: pd.DataFrame,
) -> None:
    """Every transfer against its request and its link (``runs``: the log's).

    ``transfer``: a request prefilled on a prefill replica with ``o_i >= 2`` moves
    (and no other): its transfer starts no earlier than its first token and ends
    no earlier than ``start + latency + bytes / bandwidth``. ``link``: on a
    ``fifo`` link (or one of unbounded bandwidth) transfers go one at a time in
    the order their prefills end, each starting at ``max(f_i, the previous one's
    departure)`` and ending ``bytes / bandwidth + latency`` later; on a ``share``
    link each starts at ``f_i`` and ends ``latency`` after processor sharing of the
    bandwidth lets it depart. A link into a pulling decode pool starts each
    transfer when the decode replica takes it: a ``fifo`` one at ``max(the take,
    the previous departure)``, in the order of the takes, a ``share`` one at the
    take; its starts are only bounded below (by ``f_i``, and on ``fifo`` by the
    previous departure), and the takes are checked by :func:`_check_takes`.
    """
    pools = [p for p in cluster.pools for _ in range(p.replicas)]
    taken_s: dict[int, float] = {}  # pulled requests whose take time is known
    first: list[float] = own["first_token_s"].tolist()
    start: list[float] = own["transfer_start_s"].tolist()
    end: list[float] = own["transfer_end_s"].tolist()
    nbytes: list[float] = own["transferred_bytes"].tolist()
    output = instance.output_tokens
    links: dict[tuple[str, str], list[int]] = {}

    def flag(rule: str, i: int, message: str) -> None:
        out.add(rule, message, request=i)

    for i in range(len(instance)):
        c = int(own["replica"][i])
        if c < 0:
            continue  # rejected, or never ran: other rules say so
        moves = pools[c].role == "prefill" and output[i] > 1
        d = int(claimed["decode_replica"][i])
        recorded = not (math.isnan(start[i]) and math.isnan(end[i])) or d >= 0
        if not moves:
            if recorded or claimed["transferred_bytes"][i] != 0:
                flag(
                    "transfer",
                    i,
                    "records a transfer, but the request does not "
                    "move (colocated, or one output token)",
                )
            continue
        if not (0 <= d < len(pools) and pools[d].role == "decode"):
            flag("transfer", i, f"moves, but decode_replica = {d} is no decode replica")
            continue
        if not (math.isfinite(start[i]) and math.isfinite(end[i])):
            flag("transfer", i, "moves, but its transfer has no finite start and end")
            continue
        link = cluster.link(pools[c].name, pools[d].name)
        if start[i] < first[i] - ARRIVAL_TOLERANCE_S:
            flag(
                "transfer",
                i,
                f"starts at {start[i]!r} s, before its prefill ends at {first[i]!r} s",
            )
        least = start[i] + link.latency_s + nbytes[i] / link.bandwidth_bytes_per_s
        if end[i] < least - rtol * abs(least) - ARRIVAL_TOLERANCE_S:
            flag(
                "transfer",
                i,
                f"ends at {end[i]!r} s; {nbytes[i]!r} bytes from "
                f"{start[i]!r} s over the link {link.source} -> {link.target} "
                f"arrive at {least!r} s at the earliest",
            )
        links.setdefault((link.source, link.target), []).append(i)
    for (source, target), ids in links.items():
        link = cluster.link(source, target)
        bandwidth, latency = link.bandwidth_bytes_per_s, link.latency_s
        name = f"{source} -> {target}"

        def near(a: float, b: float) -> bool:
            return _close(a, b, rtol, ARRIVAL_TOLERANCE_S)

        pulled = cluster.pools[[p.name for p in cluster.pools].index(target)].pull
        if pulled is not None:
            _check_pulled_link(link, ids, (first, start, end, nbytes), taken_s,
                               flag, near)  # fmt: skip
            continue
        if link.sharing == "fifo" or math.isinf(bandwidth):
            free, latest = -math.inf, -math.inf
            for i in sorted(ids, key=lambda i: (start[i], first[i], i)):
                expected = max(first[i], free)
                if not near(start[i], expected):
                    flag(
                        "link",
                        i,
                        f"starts at {start[i]!r} s on the fifo link "
                        f"{name}; expected {expected!r} s (its prefill's end or "
                        "the previous transfer's departure)",
                    )
                if first[i] < latest - ARRIVAL_TOLERANCE_S:
                    flag(
                        "link",
                        i,
                        f"goes on the fifo link {name} after a transfer "
                        "whose prefill ended later",
                    )
                leaves = start[i] + nbytes[i] / bandwidth
                if not near(end[i], leaves + latency):
                    flag(
                        "link",
                        i,
                        f"ends at {end[i]!r} s; alone on the fifo link "
                        f"{name} from {start[i]!r} s it arrives at "
                        f"{leaves + latency!r} s",
                    )
                free, latest = max(free, end[i] - latency), max(latest, first[i])
            continue
        for i in ids:
            if not near(start[i], first[i]):
                flag(
                    "link",
                    i,
                    f"starts at {start[i]!r} s on the shared link {name}; "
                    f"expected its prefill's end, {first[i]!r} s",
                )
        departs = _shared_departures(
            np.array([start[i] for i in ids]),
            np.array([nbytes[i] for i in ids]),
            bandwidth,
        )
        for i, leaves in zip(ids, departs.tolist(), strict=True):
            if not near(end[i], leaves + latency):
                flag(
                    "link",
                    i,
                    f"ends at {end[i]!r} s; sharing the link {name} with "
                    f"the transfers on it, it arrives at {leaves + latency!r} s",
                )
    if taken_s:
        decode = claimed["decode_replica"].astype(np.int64)
        _check_takes(instance, pools, decode, (start, end), taken_s, flag, runs)


def _check_takes(
    instance: Instance,
    pools: list[Any],
    decode: IntArray,
    times: tuple[list[float], list[float]],
    taken_s: dict[int, float],
    flag: Callable[[str, int, str], None],
    runs: pd.DataFrame,
) -> None:
    """``pull``: DistServe's rule at each take whose time the log settles
    (``taken_s``), as far as the transfers and the decode replica's runs show it.
    The replica takes at one of its iteration boundaries or while idle, never
    inside an iteration. The requests it took before (transfer started more than
    the arrival tolerance earlier) and has not received (transfer ends later) are
    part of what it took and has not admitted, and hold reserved blocks: their
    blocks must be under ``pull * capacity``, the taken prompt's blocks must fit
    beside them, and they must be fewer than ``max_num_seqs``. (The rule also
    counts the requests waiting on the replica, and its running ones in the last
    two: a necessary check.) The iterations inside a run are timed from the
    run's logged features (``run-features`` checks them)."""
    start, end = times
    prompt = instance.prompt_tokens
    replica = runs["replica"].to_numpy(dtype=np.int64)
    columns = ("prefill_tokens", "prefill_attention", "decode_steps", "kv_read_tokens")
    features = tuple(runs[c].to_numpy(dtype=np.int64) for c in columns)
    timelines: dict[int, _Timeline] = {}
    groups: dict[int, list[int]] = {}
    for i in taken_s:
        groups.setdefault(int(decode[i]), [])
    for i in np.flatnonzero(np.isin(decode, list(groups))).tolist():
        if math.isfinite(start[i]) and math.isfinite(end[i]):
            groups[int(decode[i])].append(i)  # every pulled transfer to it
    tol = ARRIVAL_TOLERANCE_S
    for d, group in groups.items():
        pool = pools[d]
        capacity = pool.profile.kv_capacity_blocks
        b = pool.profile.block_tokens
        limit, seqs = pool.pull * capacity, pool.profile.max_num_seqs
        blocks = {i: -(-int(prompt[i]) // b) for i in group}
        by_start = sorted(group, key=lambda j: (start[j], j))
        k, held, count = 0, 0, 0
        flight: list[tuple[float, int]] = []  # (transfer end, request)
        if d not in timelines:
            timelines[d] = _Timeline(
                pool.profile,
                replica,
                runs["start_s"].to_numpy(dtype=np.float64),
                runs["end_s"].to_numpy(dtype=np.float64),
                runs["iterations"].to_numpy(dtype=np.int64),
                features,  # type: ignore[arg-type]
            )
        for t, i in sorted((taken_s[i], i) for i in group if i in taken_s):
            boundary = timelines[d].boundary(d, t)
            if boundary > t + 2 * tol + 1e-12 * abs(t):
                flag(
                    "pull",
                    i,
                    f"taken at {t!r} s by decode replica {d}, inside an iteration "
                    f"that ends at {boundary!r} s (a replica takes at its "
                    "boundaries, or when idle)",
                )
            while k < len(by_start) and start[by_start[k]] < t - tol:
                j = by_start[k]
                heapq.heappush(flight, (end[j], j))
                held, count, k = held + blocks[j], count + 1, k + 1
            while flight and flight[0][0] <= t + tol:
                _, j = heapq.heappop(flight)
                held, count = held - blocks[j], count - 1
            broken = []
            if held >= limit:
                broken.append(
                    f"the {count} request(s) it took before and has not received "
                    f"hold {held} blocks, not under pull x capacity = {limit!r}"
                )
            if blocks[i] + held > capacity:
                broken.append(
                    f"its prompt's {blocks[i]} blocks and the {held} reserved for "
                    f"requests on their way exceed the capacity of {capacity} blocks"
                )
            if count >= seqs:
                broken.append(
                    f"{count} request(s) on their way to it, max_num_seqs = {seqs}"
                )
            if broken:
                flag("pull", i, f"taken at {t!r} s by decode replica {d}: "
                     + "; ".join(broken))  # fmt: skip


def _check_pulled_link(
    link: Any,
    ids: list[int],
    times: tuple[list[float], list[float], list[float], list[float]],
    taken_s: dict[int, float],
    flag: Callable[[str, int, str], None],
    near: Callable[[float, float], bool],
) -> None:
    """``link`` rules for the transfers ``ids`` into a pulling decode pool (each
    starts when its decode replica takes it); records in ``taken_s`` the take of
    each whose take time the log settles (on ``share``: its start; on ``fifo``:
    its start unless it waited for the link, where the take lies between its
    first token and its start). ``times``: first token, transfer start, transfer
    end and bytes of every request."""
    first, start, end, nbytes = times
    bandwidth, latency = link.bandwidth_bytes_per_s, link.latency_s
    name = f"{link.source} -> {link.target}"
    if link.sharing == "fifo" or math.isinf(bandwidth):
        free = -math.inf
        for i in sorted(ids, key=lambda i: (start[i], i)):
            if start[i] < free - ARRIVAL_TOLERANCE_S:
                flag(
                    "link",
                    i,
                    f"starts at {start[i]!r} s on the fifo link {name}, before the "
                    f"previous transfer leaves it at {free!r} s",
                )
            leaves = start[i] + nbytes[i] / bandwidth
            if not near(end[i], leaves + latency):
                flag(
                    "link",
                    i,
                    f"ends at {end[i]!r} s; alone on the fifo link {name} from "
                    f"{start[i]!r} s it arrives at {leaves + latency!r} s",
                )
            if (
                start[i] > free + ARRIVAL_TOLERANCE_S
                or start[i] <= first[i] + ARRIVAL_TOLERANCE_S
            ):
                taken_s[i] = start[i]  # the link was free: it left when taken
            free = max(free, end[i] - latency)
        return
    departs = _shared_departures(
        np.array([start[i] for i in ids]), np.array([nbytes[i] for i in ids]), bandwidth
    )
    for i, leaves in zip(ids, departs.tolist(), strict=True):
        taken_s[i] = start[i]
        if not near(end[i], leaves + latency):
            flag(
                "link",
                i,
                f"ends at {end[i]!r} s; sharing the link {name} with the transfers "
                f"on it, it arrives at {leaves + latency!r} s",
            )


def _shared_departures(
    start: FloatArray, nbytes: FloatArray, bandwidth: float
) -> FloatArray:
    """When each transfer leaves a link whose ``bandwidth`` the active transfers
    share equally (processor sharing), given when each starts and its bytes."""
    order = np.argsort(start, kind="stable").tolist()
    left: dict[int, float] = {}
    departs = np.full(len(start), np.nan)
    now = -math.inf
    k = 0
    while k < len(order) or left:
        coming = float(start[order[k]]) if k < len(order) else math.inf
        leaving, who = math.inf, -1
        if left:
            who = min(left, key=lambda j: (left[j], j))
            leaving = now + max(0.0, left[who]) * len(left) / bandwidth
        t = min(coming, leaving)
        if left and t > now:
            sent = (t - now) * bandwidth / len(left)
            for j in left:
                left[j] -= sent
        now = max(now, t)
        if coming <= leaving:
            left[order[k]] = float(nbytes[order[k]])
            k += 1
        else:
            del left[who]
            departs[who] = t
    return departs
