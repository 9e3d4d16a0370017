"""``lsched simulate``: replay a trace under one or more online policies.

Ctrl-C (SIGINT) requests a stop (:mod:`lsched.interrupt`); the run in progress
sees it at its next progress report (every 0.5 % of the requests; a replica on
the compiled path when its kernel returns) and is dropped; the runs already
finished are kept, printed and written, the JSON says ``"status":
"interrupted"`` with the policies not finished in ``skipped_policies``, and the
exit status is 130.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from rich.progress import Progress, TaskID

from lsched.atomic import check_output
from lsched.checks import check_int
from lsched.cli._common import (
    INTERRUPTED_EXIT,
    AdaptersOpt,
    FormatOpt,
    JsonOpt,
    LimitOpt,
    MaxLenOpt,
    ModelOpt,
    PrefixCacheOpt,
    ReplicasOpt,
    TraceArg,
    adapters_spec,
    predictor_seed,
    prefix_cache_spec,
    print_json,
    print_table,
    profile_file,
    refuse_beside_cluster,
    say_started,
    with_slo,
)
from lsched.cluster import Cluster, load_cluster
from lsched.errors import InputError
from lsched.evaluator import (
    ENGINES,
    SimulationResult,
    check_dispatch,
    check_inputs,
    simulate_cluster,
)
from lsched.evaluator.result import HOST_PREFIX_METRICS, PREFIX_METRICS, SWAP_METRICS
from lsched.instance import Instance
from lsched.interrupt import requested, sigint_requests_stop
from lsched.metrics import (
    MIGRATION_METRICS,
    MOONCAKE_TBT_THRESHOLDS_S,
    SLO_ATTAINMENT_KEYS,
    effective_capacity_key,
)
from lsched.overrides import SET_HELP, deployment_profile, parse_overrides
from lsched.policies import parse_policy
from lsched.predictors import apply_predictor
from lsched.prefix.spec import PrefixCacheSpec

if TYPE_CHECKING:
    from lsched.adapters import AdapterSpec
from lsched.provenance import Provenance, provenance, write_frame
from lsched.routers import parse_router
from lsched.slo import SLO, parse_slo
from lsched.traces import read_trace

#: Metrics shown in the table, in order (all are in the JSON).
TABLE_METRICS: tuple[str, ...] = (
    "makespan_s",
    "ttft_mean_s",
    "ttft_p99_s",
    "e2e_mean_s",
    "tpot_mean_s",
    "throughput_tok_s",
    "busy_fraction",
    "kv_utilization",
    "preemptions",
)
#: Counts shown in the table where some run has them (every one is in the JSON):
#: requests rejected, and requests whose output was cut at max_model_len.
COUNTED: tuple[str, ...] = ("num_rejected", "num_truncated")
#: Mooncake's metrics, shown where a run kept its log (``--tbt``).
TBT_TABLE: tuple[str, ...] = (
    "tbt_mean_s",
    "tbt_p90_s",
    *(effective_capacity_key(t) for t in MOONCAKE_TBT_THRESHOLDS_S),
)
#: Suffixes of ``--requests-out``.
_TABLE_SUFFIXES = (".csv", ".parquet")

PolicyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--policy", "-p", help="NAME[:key=value,...]; repeat to compare (fcfs)."
    ),
]
ClusterOpt = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        help="Cluster TOML (pools of replicas with their profile and policy, "
        "and a router), instead of --model/--policy/--replicas.",
    ),
]
RouterOpt = Annotated[
    str | None,
    typer.Option(
        "--dispatch",
        "--router",
        help="Router: round-robin (default), least-outstanding (fewest "
        "unfinished requests), least-kv (fewest KV tokens held), least-queued "
        "(fewest not in the iteration in flight), random:seed=0, prefix "
        "(longest cached prefix), conductor:ttft_slo_s=S,tbt_slo_s=S "
        "(Mooncake's) or a registered one; overrides a cluster file's.",
    ),
]
KvCapacityOpt = Annotated[
    int | None,
    typer.Option(
        help="Override the KV capacity; by default an instance that carries "
        "its own (params kv_capacity_tokens, e.g. Jaillet's M) uses it."
    ),
]
PredictorOpt = Annotated[
    str | None,
    typer.Option(
        help="Output-length predictions for length-aware policies: oracle, "
        "noise:sigma=0.5,seed=0, interval:width=2, buckets:edges=64/256/1024."
    ),
]
RequestsOutOpt = Annotated[
    Path | None,
    typer.Option(help="Write per-request records (.csv or .parquet)."),
]
TimelineOutOpt = Annotated[
    Path | None,
    typer.Option(
        help="Write the iteration log as a timeline (.parquet), one row per "
        "run and member, with a policy column."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="FIELD=VALUE", help=SET_HELP),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="compiled: the compiled path where a replica can take it "
        "(standard policies, stateless router, no timeline), else Python; "
        "auto: the same for replicas with 1,000 requests or more; python: "
        "always the Python engine. The output says which ran."
    ),
]
SloOpt = Annotated[
    str | None,
    typer.Option(
        "--slo",
        metavar="ttft=S,tpot=S",
        help="Deadlines for every request, seconds (or 250ms): the metrics "
        "then report their attainment. The trace's own deadline columns are "
        "kept unless --slo-override.",
    ),
]
TbtOpt = Annotated[
    bool,
    typer.Option(
        "--tbt",
        help="Keep the iteration log (the Python engine) to report Mooncake's "
        "TBT (mean of each request's longest 10 % of inter-token gaps) and "
        "effective capacity (share with TTFT <= 30 s and TBT <= 100, 200, "
        "300 ms); --timeline-out reports them too.",
    ),
]
SloOverrideOpt = Annotated[
    bool,
    typer.Option(
        "--slo-override",
        help="Let --slo replace deadline columns the trace carries.",
    ),
]


def simulate_command(
    trace: TraceArg,
    model: ModelOpt = None,
    policy: PolicyOpt = None,
    replicas: ReplicasOpt = None,
    cluster_file: ClusterOpt = None,
    dispatch: RouterOpt = None,
    kv_capacity_tokens: KvCapacityOpt = None,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    max_model_len: MaxLenOpt = None,
    predictor: PredictorOpt = None,
    json_output: JsonOpt = False,
    requests_out: RequestsOutOpt = None,
    timeline_out: TimelineOutOpt = None,
    settings: SetOpt = None,
    engine: EngineOpt = "auto",
    slo_text: SloOpt = None,
    slo_override: SloOverrideOpt = False,
    prefix_cache: PrefixCacheOpt = None,
    tbt: TbtOpt = False,
    adapters: AdaptersOpt = None,
) -> None:
    """Replay TRACE on a deployment under each policy; print their metrics."""
    slo = None if slo_text is None else parse_slo(slo_text, field="--slo")
    cache = prefix_cache_spec(prefix_cache)
    lora = adapters_spec(adapters)
    _check_options(engine, requests_out, timeline_out)
    inputs = [trace, cluster_file, profile_file(model)]
    _check_outputs(requests_out, timeline_out, inputs)
    if cluster_file is not None:
        refuse_beside_cluster(
            {"--model": model, "--policy": policy, "--replicas": replicas,
             "--set": settings, "--kv-capacity-tokens": kv_capacity_tokens,
             "--prefix-cache": prefix_cache, "--adapters": adapters}
        )  # fmt: skip
        clusters = [load_cluster(cluster_file)]
        inputs += [pool.profile.path for pool in clusters[0].pools]
        _check_outputs(requests_out, timeline_out, inputs)
        if dispatch is not None:
            clusters = [replace(clusters[0], router=parse_router(dispatch))]
        instance, _ = read_trace(
            trace, format, limit=limit, max_model_len=max_model_len
        )
        if predictor is not None:
            instance = apply_predictor(instance, predictor)
        instance = with_slo(instance, slo, slo_override)
    else:
        instance, clusters = _colocated(
            trace, model, policy, replicas, dispatch, kv_capacity_tokens, settings,
            format, limit, max_model_len, predictor, slo, slo_override, cache, lora,
        )  # fmt: skip
    record = _provenance(trace, cluster_file, clusters, instance, predictor)
    log = tbt or timeline_out is not None  # every token's time is in the log
    _run(instance, clusters, engine, json_output, requests_out, timeline_out,
         record, log)  # fmt: skip


def _check_options(
    engine: str, requests_out: Path | None, timeline_out: Path | None
) -> None:
    """Check the engine and the output suffixes before any work."""
    if engine not in ENGINES:
        raise InputError(
            f"got {engine!r}; expected one of {', '.join(ENGINES)}", field="engine"
        )
    if requests_out is not None and requests_out.suffix.lower() not in _TABLE_SUFFIXES:
        raise InputError(
            f"got suffix {requests_out.suffix.lower()!r}; expected .csv or .parquet",
            field="requests-out",
        )
    if timeline_out is not None and timeline_out.suffix.lower() != ".parquet":
        raise InputError(
            f"got suffix {timeline_out.suffix!r}; expected .parquet",
            field="timeline-out",
        )


def _colocated(
    trace: Path,
    model: str | None,
    policy: list[str] | None,
    replicas: int | None,
    dispatch: str | None,
    kv_capacity_tokens: int | None,
    settings: list[str] | None,
    format: str | None,
    limit: int | None,
    max_model_len: int | None,
    predictor: str | None,
    slo: SLO | None,
    slo_override: bool,
    cache: PrefixCacheSpec | None,
    lora: AdapterSpec | None,
) -> tuple[Instance, list[Cluster]]:
    """The trace and one colocated cluster per ``--policy`` (no cluster file),
    with a prefix cache on each replica where ``cache`` names one and the
    adapters of ``lora``."""
    if model is None:
        raise InputError("expected --model PROFILE or --cluster FILE", field="model")
    specs = [parse_policy(p) for p in policy or ["fcfs"]]
    overrides = parse_overrides(settings)
    if (
        kv_capacity_tokens is not None
        and overrides.get("kv_capacity_tokens", kv_capacity_tokens)
        != kv_capacity_tokens
    ):
        raise InputError(
            f"got {kv_capacity_tokens}, but --set kv_capacity_tokens="
            f"{overrides['kv_capacity_tokens']}; expected one capacity",
            field="kv-capacity-tokens",
        )
    # 'static' is refused here: it needs an assignment, which the CLI cannot take
    router = check_dispatch(dispatch or "round-robin", has_assignment=False)
    if replicas is not None:
        check_int(replicas, "--replicas", 1)
    instance, _ = read_trace(trace, format, limit=limit, max_model_len=max_model_len)
    if predictor is not None:
        instance = apply_predictor(instance, predictor)
    profile = deployment_profile(
        model, overrides, instance, kv_capacity_tokens=kv_capacity_tokens
    )
    instance = with_slo(instance, slo, slo_override)
    try:
        clusters = [
            Cluster.colocated(profile, spec, replicas, router, cache, lora)
            for spec in specs
        ]
    except InputError as exc:
        where = exc.field or ""
        if where.startswith("pool pool0: adapters"):
            raise InputError(exc.message, field="--adapters") from None
        if not where.startswith("pool pool0: prefix_cache"):
            raise
        raise InputError(exc.message, field="--prefix-cache") from None
    return instance, clusters


def _provenance(
    trace: Path,
    cluster_file: Path | None,
    clusters: list[Cluster],
    instance: Instance,
    predictor: str | None,
) -> Provenance:
    """The run's record: the trace, the cluster file, every pool's profile, the
    policies (one cluster per ``--policy``) and the predictor's seed."""
    pools = [pool for cluster in clusters for pool in cluster.pools]
    return provenance(
        [("trace", trace), ("cluster", cluster_file),
         *(("profile", pool.profile.path) for pool in pools)],
        policies=[" + ".join(p.policy.label for p in c.pools) for c in clusters],
        seeds={"predictor": predictor_seed(instance, predictor)},
    )  # fmt: skip


def _check_outputs(
    requests_out: Path | None,
    timeline_out: Path | None,
    inputs: list[str | Path | None],
) -> None:
    """Check the output files before any work: none of them is an input."""
    for path, option in (
        (requests_out, "requests-out"),
        (timeline_out, "timeline-out"),
    ):
        if path is not None:
            check_output(path, inputs, option)


class _Stopped(Exception):
    """Raised from the progress callback once a stop was requested."""


def _run(
    instance: Instance,
    clusters: list[Cluster],
    engine: str,
    json_output: bool,
    requests_out: Path | None,
    timeline_out: Path | None,
    record: Provenance,
    log: bool = False,
) -> None:
    """Simulate each cluster (keeping the log where ``log``); write and print
    what was asked for, each with the run's provenance.

    Ctrl-C drops the run in progress and keeps those finished (module docstring).
    """
    for cluster in clusters:  # refuse bad input before the progress bar starts
        check_inputs(instance, cluster)
    labels = [" + ".join(p.policy.label for p in c.pools) for c in clusters]
    results: list[SimulationResult] = []

    def advance(bar: Progress, task: TaskID, done: int) -> None:
        if requested():  # Ctrl-C: the run in progress is dropped
            raise _Stopped
        bar.update(task, completed=done)

    with sigint_requests_stop(), Progress(transient=True, disable=json_output) as bar:
        try:
            for k, (cluster, label) in enumerate(zip(clusters, labels, strict=True)):
                say_started(
                    f"simulating {label} ({k + 1}/{len(clusters)})",
                    "the runs finished",
                )
                task = bar.add_task(label, total=len(instance))
                results.append(
                    simulate_cluster(
                        instance,
                        cluster,
                        log=log,
                        progress=lambda done, task=task: advance(bar, task, done),
                        engine=engine,
                    )
                )
        except (_Stopped, KeyboardInterrupt):  # a second Ctrl-C raises at once
            pass
        interrupted = requested()
    skipped = labels[len(results) :]
    if results and requests_out is not None:
        _write_requests(requests_out, results, record)
    if results and timeline_out is not None:
        _write_timeline(timeline_out, results, record)
    if json_output:
        print_json(
            record.attach(
                {
                    "policies": [r.summary() for r in results],
                    "status": "interrupted" if interrupted else "complete",
                    "skipped_policies": skipped,
                }
            )
        )
    elif results:
        _print(instance, results)
    if interrupted:
        print(
            "lsched: interrupted; kept the runs finished (policies not run: "
            f"{', '.join(skipped)})",
            file=sys.stderr,
        )
        raise typer.Exit(INTERRUPTED_EXIT)


def _print(instance: Instance, results: list[SimulationResult]) -> None:
    """The metrics table, one column per run, and per-pool tables."""
    # one column per policy: metrics read down, policies compare across; SLO
    # attainment where the trace has deadlines
    shown = TABLE_METRICS
    # requests rejected at arrival or cut at max_model_len, where a run has some
    shown += tuple(m for m in COUNTED if any(r.metrics.get(m) for r in results))
    if instance.ttft_deadline_s is not None or instance.tpot_deadline_s is not None:
        shown += SLO_ATTAINMENT_KEYS
    # what only some runs have (none is 0 there): KV moved between pools or tiers
    moved = ("transferred_bytes", *MIGRATION_METRICS, *SWAP_METRICS,
             *PREFIX_METRICS, *HOST_PREFIX_METRICS, "adapter_loads",
             "adapter_load_s", *TBT_TABLE)  # fmt: skip
    shown += tuple(m for m in moved if any(m in r.metrics for r in results))
    print_table(
        f"{instance.name} on {results[0].profile} ({len(instance)} requests)",
        ["metric", *(r.policy for r in results)],
        [
            *([m, *(r.metrics.get(m, 0.0) for r in results)] for m in shown),
            ["iterations", *(r.iterations for r in results)],
            ["runtime_s", *(r.runtime_s for r in results)],
            ["engine", *(r.engine for r in results)],
            ["compile_s", *(r.compile_s for r in results)],
        ],
    )
    for r in results:
        pools = r.pool_metrics
        if pools is not None and len(pools) > 1:  # one pool: the table above
            print_table(
                f"per pool: {r.policy}",
                ["metric", *pools.index],
                [[m, *pools[m]] for m in ("replicas", "num_completed", *TABLE_METRICS)],
            )


def _write_timeline(
    path: Path, results: list[SimulationResult], record: Provenance
) -> None:
    frame = pd.concat([r.timeline() for r in results], ignore_index=True)
    write_frame(path, frame, record)


def _write_requests(
    path: Path, results: list[SimulationResult], record: Provenance
) -> None:
    frame = pd.concat(
        [
            r.requests.rename_axis("request").reset_index().assign(policy=r.policy)
            for r in results
        ],
        ignore_index=True,
    )
    write_frame(path, frame, record)
