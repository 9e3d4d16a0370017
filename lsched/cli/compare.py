"""``lsched compare`` and ``lsched bound``: policies against bounds and optimum."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from lsched.atomic import check_output
from lsched.checks import check_solver_options, check_time_limit
from lsched.cli._common import (
    INTERRUPTED_EXIT,
    FormatOpt,
    JsonOpt,
    LimitOpt,
    ModelOpt,
    PrefixCacheOpt,
    ProgressLine,
    ReplicasOpt,
    TraceArg,
    native_stdout_to_stderr,
    predictor_seed,
    prefix_cache_spec,
    print_json,
    print_table,
    profile_file,
    refuse_beside_cluster,
)
from lsched.cluster import Cluster, Pool, load_cluster
from lsched.comparison import DEFAULT_POLICIES, Comparison, compare, compare_cluster
from lsched.errors import InputError
from lsched.formulations.bounds.suite import (
    best_bound,
    bound_report,
    cluster_bound_report,
)
from lsched.formulations.bounds.work import OBJECTIVES
from lsched.formulations.result import Skipped, certified_gap
from lsched.instance import Instance
from lsched.interrupt import requested, sigint_requests_stop
from lsched.overrides import SET_HELP, deployment_profile, parse_overrides
from lsched.policies import parse_policy
from lsched.predictors import apply_predictor
from lsched.prefix.spec import PrefixCacheSpec
from lsched.profile import DeploymentProfile
from lsched.provenance import Provenance, provenance, write_png
from lsched.routers import migrates
from lsched.traces import read_trace

#: Per-policy metrics shown in the table (all are in the JSON).
TABLE_METRICS: tuple[str, ...] = ("e2e_mean_s", "ttft_mean_s", "preemptions")
#: How the tables name a bound's scope (the schedules it holds for).
SCOPE_LABELS = {"any": "all", "slot": "non-preemptive", "recompute": "recompute-only"}

ClusterOpt = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        help="Cluster TOML (pools, roles, links: as in simulate) instead of "
        "--model/--replicas/--set; the bounds are the cluster's.",
    ),
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(help="latency (total E2E seconds) or makespan (seconds)."),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", metavar="FIELD=VALUE", help=SET_HELP)
]
LpTimeLimitOpt = Annotated[
    float,
    typer.Option(help="Wall-clock seconds for each LP relaxation of the bounds."),
]


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise InputError(
            f"got {objective!r}; expected one of {', '.join(OBJECTIVES)}",
            field="--objective",
        )


def _load(
    trace: Path,
    model: str | None,
    settings: list[str] | None,
    format: str | None,
    limit: int | None,
    objective: str,
) -> tuple[Instance, DeploymentProfile]:
    _check_objective(objective)
    if model is None:
        raise InputError("expected --model PROFILE or --cluster FILE", field="model")
    overrides = parse_overrides(settings)
    instance, _ = read_trace(trace, format, limit=limit)
    return instance, deployment_profile(model, overrides, instance)


def _load_cluster(
    cluster_file: Path,
    objective: str,
    model: str | None,
    replicas: int | None,
    settings: list[str] | None,
    prefix_cache: str | None = None,
) -> Cluster:
    """The cluster file's cluster; InputError if an option says what it says."""
    _check_objective(objective)
    given = {"--model": model, "--replicas": replicas, "--set": settings}
    refuse_beside_cluster({**given, "--prefix-cache": prefix_cache})
    return load_cluster(cluster_file)


def compare_command(
    trace: TraceArg,
    model: ModelOpt = None,
    cluster_file: ClusterOpt = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            "-p",
            help="NAME[:key=value,...]; repeat. Default: "
            + ", ".join(DEFAULT_POLICIES)
            + "; with --cluster, the cluster file's (a policy given runs every "
            "pool).",
        ),
    ] = None,
    objective: ObjectiveOpt = "latency",
    backend: Annotated[
        str,
        typer.Option(help="Slot-model backend: cpsat, milp, lns, or none."),
    ] = "cpsat",
    time_limit: Annotated[
        float, typer.Option(help="Wall-clock seconds for the solve.")
    ] = 10.0,
    workers: Annotated[int, typer.Option(help="Solver worker threads.")] = 2,
    seed: Annotated[int, typer.Option(help="Solver random seed.")] = 0,
    lp_time_limit: LpTimeLimitOpt = 10.0,
    replicas: ReplicasOpt = None,
    predictor: Annotated[
        str | None,
        typer.Option(
            help="Output-length predictions for length-aware policies (as in "
            "simulate); the oracle's when the trace has none."
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a gap-to-bound bar chart (PNG).")
    ] = None,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    json_output: JsonOpt = False,
    settings: SetOpt = None,
    prefix_cache: PrefixCacheOpt = None,
) -> None:
    """Bounds, the best offline schedule and each policy's gap to the bound."""
    _check_options(time_limit, workers, seed, lp_time_limit, plot)
    cache = prefix_cache_spec(prefix_cache)
    cluster = None
    inputs = [trace, profile_file(model)]
    if cluster_file is not None:
        cluster = _load_cluster(cluster_file, objective, model, replicas, settings,
                                prefix_cache)  # fmt: skip
        inputs += [cluster_file, *(p.profile.path for p in cluster.pools)]
    if plot is not None:
        check_output(plot, inputs, "--plot")
    options = {
        "objective": objective,
        "backend": None if backend == "none" else backend,
        "time_limit": time_limit,
        "num_workers": workers,
        "seed": seed,
        "lp_time_limit": lp_time_limit,
    }
    if cluster is None:
        instance, profile = _load(trace, model, settings, format, limit, objective)
        _check_cache(instance, profile, policy or DEFAULT_POLICIES, cache)
        where = profile.name
    else:
        instance, _ = read_trace(trace, format, limit=limit)
        where = cluster.describe()
    if predictor is not None:
        instance = apply_predictor(instance, predictor)
    pools = [profile] if cluster is None else [p.profile for p in cluster.pools]
    record = provenance(
        [("trace", trace), ("cluster", cluster_file),
         *(("profile", p.path) for p in pools)],
        policies=_labels(policy, cluster),
        seeds={"seed": seed, "predictor": predictor_seed(instance, predictor)},
        time_limits={"time_limit": time_limit, "lp_time_limit": lp_time_limit},
    )  # fmt: skip
    with (
        sigint_requests_stop(),
        native_stdout_to_stderr(),
        ProgressLine(f"comparing ({where}, {objective})") as line,
    ):
        if cluster is None:
            result = compare(instance, profile, policies=policy or DEFAULT_POLICIES,
                             replicas=replicas, on_progress=line,
                             prefix_cache=cache, **options)  # fmt: skip
        else:
            result = compare_cluster(instance, cluster, policies=policy or None,
                                     on_progress=line, **options)  # fmt: skip
    title = f"{instance.name} on {where} ({len(instance)} requests)"
    _report(result, record, plot, json_output, title)


def _report(
    result: Comparison,
    record: Provenance,
    plot: Path | None,
    json_output: bool,
    title: str,
) -> None:
    """Write the plot if asked and print the comparison (JSON or tables); exit
    130 when it was interrupted (Ctrl-C), with what was finished."""
    if plot is not None:
        _plot(plot, result, record)
    if json_output:
        print_json(record.attach(result.to_dict()))
    else:
        _print(result, title)
    if result.interrupted:
        skipped = ", ".join(result.skipped) or "none"
        print(
            f"lsched: interrupted; kept what was finished (policies not run: "
            f"{skipped})",
            file=sys.stderr,
        )
        raise typer.Exit(INTERRUPTED_EXIT)


def _check_options(
    time_limit: float,
    workers: int,
    seed: int,
    lp_time_limit: float,
    plot: Path | None,
) -> None:
    """Check the solver options and the plot's suffix before any work."""
    check_solver_options(
        time_limit, workers, seed, names=("--time-limit", "--workers", "--seed")
    )
    check_time_limit(lp_time_limit, "--lp-time-limit", zero=True)
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"got suffix {plot.suffix!r}; expected .png", field="--plot")


def _check_cache(
    instance: Instance,
    profile: DeploymentProfile,
    policies: Sequence[str],
    cache: PrefixCacheSpec | None,
) -> None:
    """``--prefix-cache`` against the trace and the deployment before any work:
    the trace has prefix block hashes, and the cache fits a replica of
    ``profile`` under every policy (:class:`~lsched.cluster.Pool`'s checks)."""
    if cache is None:
        return
    if instance.prefix_hash_offsets is None:
        raise InputError(
            "got a trace without prefix block hashes; expected Mooncake hash_ids "
            "or a prefix_hashes column",
            field="--prefix-cache",
        )
    for spec in [parse_policy(p) for p in policies]:
        try:
            Pool(profile, spec, prefix_cache=cache)
        except InputError as exc:
            if not (exc.field or "").startswith("pool pool0: prefix_cache"):
                raise
            raise InputError(exc.message, field="--prefix-cache") from None


def _labels(policy: list[str] | None, cluster: Cluster | None) -> list[str]:
    """The policies compared, as labels: those given, else the default ones (a
    cluster file: its pools' policies, as one)."""
    if policy:
        return [parse_policy(p).label for p in policy]
    if cluster is None:
        return list(DEFAULT_POLICIES)
    return [" + ".join(p.policy.label for p in cluster.pools)]


def _plot(path: Path, result: Comparison, record: Provenance) -> None:
    from lsched.plots import gap_bars  # matplotlib is only loaded when asked

    values = {row.policy: row.objective_value for row in result.policies}
    if result.solve is not None and result.solve_objective is not None:
        values[f"{result.solve.solver} ({result.solve_model})"] = result.solve_objective
    figure = gap_bars(
        values,
        result.best_bound,
        title=f"{result.objective}: gap to the best bound for every schedule",
    )
    write_png(figure, path, record)


def _print(result: Comparison, title: str) -> None:
    unit = "total E2E, s" if result.objective == "latency" else "makespan, s"
    print_table(
        f"{title}: bounds ({unit})",
        ["bound", "value", "holds for"],
        [[b.name, b.value, SCOPE_LABELS[b.scope]] for b in result.bounds],
    )
    rows = []
    if result.solve is not None:
        solve = result.solve
        rows.append(
            [
                f"{solve.solver} ({result.solve_model})",
                result.solve_objective,
                solve.status.value,
                _pct(certified_gap(result.solve_objective, result.best_slot_bound)),
            ]
        )
    best = result.best_schedule()
    rows.append(
        [
            f"best: {best['source']}",
            best["objective_value"],
            best["status"],
            _pct(best["gap"]),
        ]
    )
    print_table("schedules", ["source", "objective", "status", "gap"], rows)
    print_table(
        "policies: gap to the best bound that holds for the run",
        ["policy", "objective", "gap", "bound", *TABLE_METRICS],
        [
            [
                row.policy,
                row.objective_value,
                _pct(row.gap),
                SCOPE_LABELS[row.bound_scope],
                *(row.result.metrics[m] for m in TABLE_METRICS),
            ]
            for row in result.policies
        ],
    )
    _print_not_computed(result.not_computed)


def _print_not_computed(items: list[Skipped]) -> None:
    """One row per bound, solve or policy not computed, with the reason."""
    if items:
        print_table(
            "not computed",
            ["name", "kind", "reason", "detail"],
            [[i.name, i.kind, i.reason.value, i.detail] for i in items],
        )


def _pct(gap: float | None) -> str:
    return "" if gap is None else f"{gap:.2%}"


def bound_command(
    trace: TraceArg,
    model: ModelOpt = None,
    cluster_file: ClusterOpt = None,
    objective: ObjectiveOpt = "latency",
    replicas: ReplicasOpt = None,
    lp_time_limit: LpTimeLimitOpt = 10.0,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    json_output: JsonOpt = False,
    settings: SetOpt = None,
) -> None:
    """Every lower bound on the objective, with the schedules it holds for."""
    check_time_limit(lp_time_limit, "--lp-time-limit", zero=True)
    if cluster_file is not None:
        cluster = _load_cluster(cluster_file, objective, model, replicas, settings)
        instance, _ = read_trace(trace, format, limit=limit)
        profiles = [p.profile for p in cluster.pools]
        record = _bound_provenance(trace, cluster_file, profiles, lp_time_limit)
        where = cluster.describe()
    else:
        instance, profile = _load(trace, model, settings, format, limit, objective)
        record = _bound_provenance(trace, None, [profile], lp_time_limit)
        where = profile.name
    # Ctrl-C: the bounds finished are kept, the rest listed as interrupted
    with (
        sigint_requests_stop(),
        native_stdout_to_stderr(),
        ProgressLine(f"bounds ({where}, {objective})", "the bounds computed"),
    ):
        if cluster_file is not None:
            report = cluster_bound_report(
                instance, cluster, objective, lp_time_limit=lp_time_limit,
                migrates=migrates(cluster.router),
            )  # fmt: skip
        else:
            report = bound_report(instance, profile, objective, replicas=replicas,
                                  lp_time_limit=lp_time_limit)  # fmt: skip
        interrupted = requested()
    bounds = report.bounds
    best = best_bound(bounds, "slot")
    if json_output:
        print_json(
            {
                "objective": objective,
                "bounds": {b.name: b.value for b in bounds},
                "scopes": {b.name: b.scope for b in bounds},
                "holds_for": {b.name: b.holds_for for b in bounds},
                "best": best if math.isfinite(best) else None,
                "best_any": best_bound(bounds, "any"),
                "skipped": [item.to_dict() for item in report.skipped],
                "status": "interrupted" if interrupted else "complete",
                "provenance": record.to_dict(),
            }
        )
    else:
        print_table(
            f"{instance.name} on {where}: bounds on {objective}",
            ["bound", "value", "holds for"],
            [
                [b.name, b.value, SCOPE_LABELS[b.scope]]
                for b in sorted(bounds, key=lambda b: -b.value)
            ],
        )
        _print_not_computed(report.skipped)
    if interrupted:
        print("lsched: interrupted; kept the bounds computed", file=sys.stderr)
        raise typer.Exit(INTERRUPTED_EXIT)


def _bound_provenance(
    trace: Path,
    cluster_file: Path | None,
    profiles: Sequence[DeploymentProfile],
    lp_time_limit: float,
) -> Provenance:
    """``lsched bound``'s record: the trace, the cluster file, the profiles and
    the LP time limit."""
    return provenance(
        [("trace", trace), ("cluster", cluster_file),
         *(("profile", p.path) for p in profiles)],
        time_limits={"lp_time_limit": lp_time_limit},
    )  # fmt: skip
