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
                            (``rtol``), phi from the recomputed features, plus
                            its blocking copies (swaps; a prefix cache's
                            host-tier hits)
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
``migration-overlap``,      (live migration, :mod:`lsched.validator.migration`)
``migration-tokens``,       a request's runs never overlap, it changes replica
``migration-kv``,           only by a completed move and runs there from its
``migration-downtime``      end; its tokens over its replicas are ``o_i'`` and
                            the KV it moves is what its stages copied; each
                            replica's resident blocks plus reservations stay
                            within its capacity after every run; each stage
                            lasts ``latency + bytes / bandwidth`` and the
                            downtime is the last stages' durations
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
``prefix-cache``            (a prefix cache) an admission's cached tokens were
                            computed by an earlier request of its replica whose
                            blocks are still resident (at most ``min(h B, s_i,
                            T - 1)``, whole hash blocks unless exactly that); no
                            more blocks evicted than are evictable; the
                            evictable blocks count in ``kv-capacity``; with a
                            host tier, blocks copied from the host were
                            resident in its cache (see "Prefix cache")
``max-loras``               (adapters) a run's members use at most ``max_loras``
                            distinct adapters (:mod:`lsched.validator.adapters`)
``adapter-resident``        (adapters) a member's adapter is resident during its
                            run; a load brings a non-resident adapter into a free
                            slot or evicts a resident one no member uses
``adapter-load``            (adapters) a run's loads go back to back from its
                            start, each ``size / h2d_bytes_per_s``; they and the
                            adapter columns lengthen the run (``run-duration``)
``adapter-memory``          (adapters) at most ``slots`` adapters resident
``merged-batch``            (adapters) a merged run's members all use its adapter;
                            a change of mode costs ``merge_switch_s``
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

Prefix cache
------------
A log whose replicas run a prefix cache (:mod:`lsched.evaluator.prefix`) is
checked with the cache (:func:`validate_schedule`'s ``prefix_cache`` and
``evictions``; :func:`validate_cluster` reads each pool's ``prefix_cache`` and
the result's ``evictions``): an admission holds the ``processed_before`` of its
first member (its cached tokens, held from that run on in ``kv-capacity`` and
``kv-tokens``), and :mod:`lsched.validator.prefix` replays each replica's cache
from the log to check them. ``cached_tokens`` per request and the metrics
``prefix_hit_ratio`` and ``prefill_tokens_saved`` are recomputed and compared.
With a host tier (``host_capacity_tokens``) the replay keeps each replica's host
cache too: the blocks an admission copies from it (those not on the GPU) must be
resident there, and their copy, ``tokens x kv_bytes_per_token /
h2d_bytes_per_s``, lengthens the admitting run (``run-duration``); the metrics
``host_hit_tokens`` and ``host_copy_s`` are recomputed and compared. With a KV
pool shared by a prefill pool's replicas (``pool_capacity_tokens``, Mooncake's)
the replay walks that pool's runs in time order with one pool cache whose
writes are due at the end of the run that made them: a hit's blocks off the GPU
must be in the pool when the run starts, and are copied over the host-to-device
link (homed at the admitting replica) or the pool's link to itself (homed at
another), in the run's duration; ``remote_hit_tokens`` joins the metrics. A
disaggregated cluster compares each pool's cache metrics and their sums over
the pools.

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
``slo_attainment_tpot`` (each deadline alone; NaN without it). Mooncake's TBT
(:mod:`lsched.validator.tbt`: per request ``tbt_s``, the mean of its ``ceil(g /
10)`` longest gaps between the ends of the iterations that emit its tokens;
``tbt_mean_s`` and its percentiles over the requests with a gap) and effective
capacity (``effective_capacity_tbt_100ms``, ``_200ms``, ``_300ms``: the share of
all requests with TTFT <= 30 s and TBT within the threshold, one with no gap
meeting it, one rejected for length missing it) are recomputed from the tokens
the walk counts, and compared where the claimed records and metrics carry them
(a run simulated with its log does); on a disaggregated cluster from each
request's tokens on both pools put together, token 1 from its prefill pool.
"""

from lsched.validator.cluster import validate_cluster
from lsched.validator.log import validate_schedule
from lsched.validator.report import (
    MAX_VIOLATIONS,
    RULES,
    ValidationReport,
    Violation,
)

__all__ = [
    "MAX_VIOLATIONS",
    "RULES",
    "ValidationReport",
    "Violation",
    "validate_cluster",
    "validate_schedule",
]
