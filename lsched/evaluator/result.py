"""What a simulation returns: per-request records, the iteration log, metrics.

Per-request records (``SimulationResult.requests``, one row per request, indexed by
the request's position in the instance):

==================== ==============================================================
column               meaning
==================== ==============================================================
``replica``          replica that served the request
``admitted_s``       start of the iteration that first admitted it
``first_token_s``    end of the iteration that emitted output token 1
``completion_s``     end of the iteration that emitted token ``o_i``
``preemptions``      times it was preempted (recompute)
``recomputed_tokens`` KV tokens it lost to preemption and computed again
``pool``             the replica's pool ("" if rejected)
``rejected``         why it was rejected at arrival, "" if served (a rejected
                     request has replica -1 and no times): the router's reason,
                     or ``prompt S tokens > max_model_len L``
                     (:mod:`lsched.evaluator.length`)
``truncated_tokens`` output tokens cut at ``max_model_len``: the request emitted
                     ``min(o_i, L - s_i + 1)`` tokens, ``o_i`` less these (0 if
                     not cut or rejected)
==================== ==============================================================

The metrics add ``num_rejected`` (requests rejected) and ``num_truncated``
(served requests whose output was cut).

Per replica and per pool (``replica_metrics``, ``pool_metrics``): the metrics of
:mod:`lsched.metrics` over the requests each served, with its own busy time, KV
and capacity, plus ``iterations``.

The iteration log is stored as *runs*: maximal stretches of iterations in which the
batch keeps the same members (one iteration for a batch with prefill; many for a
held decode batch). Table ``runs`` (one row per run, index ``run``):

===================== =============================================================
column                meaning
===================== =============================================================
``replica``           replica
``start_s``, ``end_s`` start of its first iteration, end of its last
``iterations``        number of iterations n >= 1
``prefill_tokens``    P of every iteration (0 for a decode run)
``prefill_attention`` Q of every iteration
``decode_steps``      D of every iteration
``kv_read_tokens``    K of the *first* iteration; iteration k has ``K + k * D``
``has_prefill``       H
``kv_tokens``         KV tokens held on the replica after the first iteration
                      (every running request, in the batch or not); iteration k
                      holds ``kv_tokens + k * D``
===================== =============================================================

Table ``members`` (run, request, kind, tokens, processed_before): request ``request``
(instance position) takes part in run ``run`` with a ``"prefill"`` chunk of
``tokens`` tokens or ``"decode"`` steps (``tokens = 1`` per iteration), holding
``processed_before`` KV tokens before the run. Table ``preemptions`` (run, request):
the request was preempted (recompute) just before the run started. Table ``swaps``
(run, request, direction, tokens, start_s, end_s): the request's KV was swapped
``"out"`` to the host tier or ``"in"`` back (:mod:`lsched.tiers`), decided at a
boundary before the run (the first run after the decision: with asynchronous
copies the replica may idle in between); its copy of ``tokens`` tokens ran from
``start_s`` to ``end_s`` (inside the run for a blocking swap, overlapping the runs
for an asynchronous one).

A run with a prefix cache (:mod:`lsched.evaluator.prefix`) adds per request
``cached_tokens`` (prompt tokens it found cached, over its admissions), the
metrics ``prefix_hit_ratio`` (token-weighted: cached tokens over the prefill
targets of the admissions; per replica and pool too) and
``prefill_tokens_saved`` (the cached tokens), and to the log the table
``evictions`` (run, blocks): unreferenced cached blocks evicted to make room for
run ``run``, after its admissions took their cached prefixes. A prefill member's
``processed_before`` at its admission is its cached tokens. A cache with a host
tier adds the metrics ``host_hit_tokens`` (cached tokens copied from the host
tier) and ``host_copy_s`` (those copies' seconds, :data:`HOST_PREFIX_METRICS`);
a KV pool shared by a prefill pool's replicas adds these (its copies) and
``remote_hit_tokens`` (the cached tokens copied from another replica's share).

A run in which some request swapped adds per request ``swap_outs`` (times its KV
went to the host tier) and the metrics ``swap_out_bytes``, ``swap_in_bytes``,
``swap_stall_s`` (seconds blocking copies added to iterations: swap time on the
critical path) and ``recompute_avoided_tokens`` (tokens swapped out: what
recompute preemption would have computed again).

A run with live migration (:mod:`lsched.evaluator.migration`) adds per request
``migrations`` (moves completed), ``migration_aborts``, ``migrated_bytes`` (bytes
of every stage it copied, aborted moves included) and ``migration_downtime_s``
(the last stages' durations), their sums as metrics (and
``migration_downtime_mean_s``, per completed move), and the table
``migrations``: one row per copy stage (request, source, target, stage, start_s,
end_s, blocks, bytes, last, outcome: ``migrated`` or ``aborted`` on a move's
last row, else empty). A moved request's ``replica`` is the one it arrived at.

A run on a cluster that serves LoRA adapters (:mod:`lsched.adapters`) adds per
request ``adapter`` (its name, ``""`` for the base model), the metrics
``adapter_loads`` and ``adapter_load_s`` (total, per replica and pool) and the
table ``adapter_metrics``: per adapter its served requests and their mean TTFT
and E2E (:func:`lsched.metrics.adapter_latency`); with the log, the table
``adapter_loads`` (run, adapter, start_s, end_s, evicted): each adapter copied
into a slot of the replica of run ``run`` before it (lengthening it), the
copy's times, and the adapter it evicted (``""``: a free slot); and the table
``merged_runs`` (run, adapter): the runs that ran merged (dLoRA), with their
adapter. The metric ``adapter_switches`` counts the switches between merged and
unmerged execution (:mod:`lsched.evaluator.adapters`, rule 4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lsched.metrics import COUNT_METRICS

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
#: The metrics of a run in which some request swapped (module docstring).
SWAP_METRICS: tuple[str, ...] = (
    "swap_out_bytes",
    "swap_in_bytes",
    "swap_stall_s",
    "recompute_avoided_tokens",
)
#: The metrics of a run with a prefix cache (module docstring).
PREFIX_METRICS: tuple[str, ...] = ("prefix_hit_ratio", "prefill_tokens_saved")
#: The metrics a prefix cache with a host tier adds (module docstring).
HOST_PREFIX_METRICS: tuple[str, ...] = (
    "host_hit_tokens",
    "host_copy_s",
    "remote_hit_tokens",
)
#: The log's adapter loads of a run that serves adapters (module docstring).
ADAPTER_LOAD_COLUMNS: tuple[str, ...] = (
    "run",
    "adapter",
    "start_s",
    "end_s",
    "evicted",
)
#: The log's merged runs of a run that serves adapters (module docstring).
MERGED_RUN_COLUMNS: tuple[str, ...] = ("run", "adapter")
#: The log's evictions of a run with a prefix cache.
EVICTION_COLUMNS: tuple[str, ...] = ("run", "blocks")
SWAP_COLUMNS: tuple[str, ...] = (
    "run",
    "request",
    "direction",
    "tokens",
    "start_s",
    "end_s",
)
MEMBER_COLUMNS: tuple[str, ...] = (
    "run",
    "request",
    "kind",
    "tokens",
    "processed_before",
)
REQUEST_COLUMNS: tuple[str, ...] = (
    "replica",
    "admitted_s",
    "first_token_s",
    "completion_s",
    "preemptions",
    "recomputed_tokens",
    "pool",
    "rejected",
    "truncated_tokens",
)


@dataclass(frozen=True)
class SimulationResult:
    """A replayed schedule: records, optional iteration log, metrics.

    Attributes
    ----------
    policy
        Policy label (``name[:params]``) or schedule source.
    profile
        Deployment profile name.
    replicas
        Number of replicas.
    requests
        Per-request records (see the module docstring).
    metrics
        :func:`lsched.metrics.schedule_metrics` of the schedule.
    iterations
        Iterations run, all replicas together.
    runtime_s
        Wall-clock seconds the simulation took.
    runs, members, preemptions, swaps
        The iteration log, when it was asked for.
    evictions
        The log's evictions, when it was asked for and a replica has a prefix
        cache.
    adapter_loads, merged_runs
        The log's adapter loads and merged runs, when it was asked for and a
        replica serves adapters.
    replica_metrics, pool_metrics
        The metrics per replica (index ``replica``, with its ``pool``) and per
        pool (index ``pool``, with its ``profile``, ``policy``, ``replicas``).
    engine
        Which path replayed it: ``compiled``, ``python`` (with the reason the
        compiled path was not taken, where it was asked for) or a count of each.
    compile_s
        Seconds spent compiling or loading compiled kernels (once per process),
        not counted in ``runtime_s``.
    migrations
        A run with live migration: one row per copy stage (module docstring).
    adapter_metrics
        Per adapter (index ``adapter``), its served requests and their mean
        TTFT and E2E, on a cluster that serves adapters; else ``None``.
    """

    policy: str
    profile: str
    replicas: int
    requests: pd.DataFrame
    metrics: dict[str, float]
    iterations: int
    runtime_s: float
    runs: pd.DataFrame | None = None
    members: pd.DataFrame | None = None
    preemptions: pd.DataFrame | None = field(default=None)
    swaps: pd.DataFrame | None = field(default=None)
    evictions: pd.DataFrame | None = field(default=None)
    adapter_loads: pd.DataFrame | None = field(default=None)
    merged_runs: pd.DataFrame | None = field(default=None)
    replica_metrics: pd.DataFrame | None = field(default=None)
    pool_metrics: pd.DataFrame | None = field(default=None)
    engine: str = "python"
    compile_s: float = 0.0
    migrations: pd.DataFrame | None = field(default=None)
    adapter_metrics: pd.DataFrame | None = field(default=None)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary the CLI prints per policy."""
        return {
            "policy": self.policy,
            "profile": self.profile,
            "replicas": self.replicas,
            "metrics": {k: _json_number(k, v) for k, v in self.metrics.items()},
            "iterations": self.iterations,
            "runtime_s": self.runtime_s,
            "engine": self.engine,
            "compile_s": self.compile_s,
            "pools": _records(self.pool_metrics),
            "per_replica": _records(self.replica_metrics),
        } | (
            {}
            if self.adapter_metrics is None
            else {"adapters": _records(self.adapter_metrics)}
        )

    @property
    def metrics_frame(self) -> pd.DataFrame:
        """The metrics as a one-row DataFrame indexed by policy (for concatenation)."""
        return pd.DataFrame(
            [self.metrics], index=pd.Index([self.policy], name="policy")
        )

    def timeline(self) -> pd.DataFrame:
        """The iteration log as one table, one row per (run, member): the run's
        columns (replica, times, features, KV) and the member's (request, kind,
        tokens, processed_before), plus a row of kind ``"preempt"`` (0 tokens) for
        each request preempted just before a run; ``policy`` and ``profile``
        columns name the run. Raises if the log was not kept (``log=True``)."""
        if self.runs is None or self.members is None or self.preemptions is None:
            raise ValueError("no iteration log: simulate with log=True")
        preempted = self.preemptions.assign(
            kind="preempt", tokens=0, processed_before=0
        )
        return (
            self.runs.reset_index()
            .merge(
                pd.concat([self.members, preempted], ignore_index=True),
                on="run",
                how="inner",
            )
            .sort_values(["run", "request"], kind="stable")
            .reset_index(drop=True)
            .assign(policy=self.policy, profile=self.profile)
        )

    @classmethod
    def from_timeline(
        cls, timeline: pd.DataFrame, num_requests: int
    ) -> SimulationResult:
        """A result holding the log of a :meth:`timeline` (one policy's rows, e.g.
        read back from ``--timeline-out``), for the plots of :mod:`lsched.plots`.

        Only the log and each request's replica are known: times and metrics are
        left out (NaN, empty). ``num_requests``: the instance's size.
        """
        policies = timeline["policy"].unique()
        if len(policies) != 1:
            raise ValueError(
                f"expected the rows of one policy, got {sorted(map(str, policies))}"
            )
        runs = timeline.drop_duplicates("run").set_index("run")[list(RUN_COLUMNS)]
        preempt = (timeline["kind"] == "preempt").to_numpy()
        members = timeline.loc[~preempt, list(MEMBER_COLUMNS)].reset_index(drop=True)
        preemptions = timeline.loc[preempt, ["run", "request"]].reset_index(drop=True)
        requests = pd.DataFrame(
            index=pd.RangeIndex(num_requests), columns=list(REQUEST_COLUMNS)
        )
        where = timeline.drop_duplicates("request").set_index("request")["replica"]
        requests["replica"] = where.reindex(requests.index, fill_value=-1)
        return cls(
            policy=str(policies[0]),
            profile=str(timeline["profile"].iloc[0]),
            replicas=int(runs["replica"].max()) + 1 if len(runs) else 0,
            requests=requests,
            metrics={},
            iterations=int(runs["iterations"].sum()),
            runtime_s=math.nan,
            runs=runs,
            members=members,
            preemptions=preemptions,
        )

    def to_json(self, *, include_log: bool = False) -> str:
        """Summary, per-request records and, if asked and kept, the iteration log."""
        record = self.summary()
        tables = {"requests": self.requests}
        if include_log:
            tables |= {
                "runs": self.runs,
                "members": self.members,
                "preemptions": self.preemptions,
                "swaps": self.swaps,
                "evictions": self.evictions,
                "adapter_loads": self.adapter_loads,
                "merged_runs": self.merged_runs,
            }
        for name, table in tables.items():
            if table is not None:
                record[name] = json.loads(table.to_json(orient="records"))
        return json.dumps(record)


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    """A per-replica or per-pool table as JSON-ready rows (index included)."""
    if frame is None:
        return None
    rows = json.loads(frame.reset_index().to_json(orient="records"))
    return [{k: _json_number(k, v) for k, v in row.items()} for row in rows]


def _json_number(name: str, value: Any) -> Any:
    """A metric as JSON wants it: ``None`` for NaN (JSON has none, e.g. an SLO
    attainment without deadlines), an ``int`` for a count (:data:`COUNT_METRICS`)."""
    if not isinstance(value, float):
        return value
    if math.isnan(value):
        return None
    if name in COUNT_METRICS and value.is_integer():
        return int(value)
    return value
