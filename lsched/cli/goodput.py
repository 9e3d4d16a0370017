"""``lsched goodput``: the largest rate per GPU at which a trace meets its SLO."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lsched.atomic import check_output, write_text_atomic
from lsched.checks import check_int
from lsched.cli._common import (
    FormatOpt,
    JsonOpt,
    LimitOpt,
    MaxLenOpt,
    ModelOpt,
    PoissonOpt,
    ReplicasOpt,
    TraceArg,
    print_json,
    print_table,
    profile_file,
    refuse_beside_cluster,
    with_slo,
)
from lsched.cluster import Cluster, load_cluster
from lsched.errors import InputError
from lsched.evaluator import ENGINES, check_dispatch
from lsched.goodput import (
    DEFAULT_RTOL,
    DEFAULT_TARGET,
    GoodputResult,
    RateTrial,
    check_options,
    goodput,
    poisson_arrivals,
)
from lsched.instance import Instance
from lsched.overrides import SET_HELP, deployment_profile, parse_overrides
from lsched.policies import parse_policy
from lsched.provenance import Provenance, provenance, write_frame, write_png
from lsched.routers import parse_router
from lsched.slo import parse_slo
from lsched.traces import read_trace

#: Suffixes ``--out`` writes: the JSON report or the table of rates tried.
OUT_SUFFIXES = (".json", ".csv")
#: Library option -> the command's option, for messages.
_OPTIONS = {
    "target": "--attain",
    "low": "--low",
    "high": "--high",
    "rtol": "--rtol",
    "definitions": "--definitions",
}

SloOpt = Annotated[
    str,
    typer.Option(
        "--slo",
        metavar="ttft=S,tpot=S",
        help="Deadlines in seconds (or 250ms), one or both: TTFT and TPOT.",
    ),
]
PolicyOpt = Annotated[
    str | None, typer.Option("--policy", "-p", help="NAME[:key=value,...] (fcfs).")
]
ClusterOpt = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        help="Cluster TOML instead of --model/--policy/--replicas.",
    ),
]
RouterOpt = Annotated[
    str | None,
    typer.Option(
        "--router",
        "--dispatch",
        help="Router (round-robin by default); overrides a cluster file's.",
    ),
]
AttainOpt = Annotated[
    float,
    typer.Option(help="Share of all requests that must meet both deadlines."),
]
DefinitionsOpt = Annotated[
    str,
    typer.Option(
        help="TTFT/TPOT definitions: lsched (TPOT (c-f)/(o-1)) or simdistserve "
        "(TPOT (c-f)/o)."
    ),
]
SloOverrideOpt = Annotated[
    bool,
    typer.Option(
        "--slo-override",
        help="Let --slo replace deadline columns the trace carries (kept by default).",
    ),
]
LowOpt = Annotated[
    float | None,
    typer.Option(help="Lowest rate per GPU to try (req/s); fails: goodput 0."),
]
HighOpt = Annotated[
    float | None,
    typer.Option(help="Highest rate per GPU to try (req/s)."),
]
RtolOpt = Annotated[
    float, typer.Option(help="Relative width at which the bisection stops.")
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(help="Write attainment against rate, with the target (PNG)."),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(help="Write the report (.json) or the rates tried (.csv)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="FIELD=VALUE", help=SET_HELP),
]
EngineOpt = Annotated[
    str, typer.Option(help="auto, compiled or python (as in simulate).")
]


def goodput_command(
    trace: TraceArg,
    slo_text: SloOpt,
    model: ModelOpt = None,
    policy: PolicyOpt = None,
    replicas: ReplicasOpt = None,
    cluster_file: ClusterOpt = None,
    dispatch: RouterOpt = None,
    attain: AttainOpt = DEFAULT_TARGET,
    definitions: DefinitionsOpt = "lsched",
    slo_override: SloOverrideOpt = False,
    low: LowOpt = None,
    high: HighOpt = None,
    rtol: RtolOpt = DEFAULT_RTOL,
    plot: PlotOpt = None,
    json_output: JsonOpt = False,
    out: OutOpt = None,
    settings: SetOpt = None,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    max_model_len: MaxLenOpt = None,
    poisson: PoissonOpt = None,
    engine: EngineOpt = "auto",
) -> None:
    """Largest request rate per GPU at which TRACE meets its SLO (goodput)."""
    slo = parse_slo(slo_text, field="--slo")
    _check_options(attain, rtol, low, high, definitions, engine, plot, out)
    inputs: list[Path | str | None] = [trace, cluster_file, profile_file(model)]
    _check_outputs(plot, out, inputs)
    if cluster_file is not None:
        refuse_beside_cluster(
            {"--model": model, "--policy": policy, "--replicas": replicas,
             "--set": settings}
        )  # fmt: skip
        cluster = load_cluster(cluster_file)
        _check_outputs(plot, out, [*inputs, *(p.profile.path for p in cluster.pools)])
        if dispatch is not None:
            cluster = replace(cluster, router=parse_router(dispatch))
        instance, _ = read_trace(
            trace, format, limit=limit, max_model_len=max_model_len
        )
    else:
        instance, cluster = _colocated(
            trace, model, policy, replicas, dispatch, settings, format, limit,
            max_model_len,
        )  # fmt: skip
    if poisson is not None:
        instance = poisson_arrivals(instance, poisson)
    instance = with_slo(instance, slo, slo_override)
    record = provenance(
        [("trace", trace), ("cluster", cluster_file),
         *(("profile", p.profile.path) for p in cluster.pools)],
        policies=[" + ".join(p.policy.label for p in cluster.pools)],
        seeds={"poisson": poisson},
    )  # fmt: skip
    with _Status(enabled=not json_output) as status:
        result = goodput(
            instance,
            cluster,
            slo,
            target=attain,
            definitions=definitions,
            low=low,
            high=high,
            rtol=rtol,
            override=slo_override,
            engine=engine,
            on_trial=status,
        )
    report = record.attach(
        {"instance": instance.name, "pools": _pools(cluster)} | result.to_dict()
    )
    _write_and_print(instance, cluster, result, report, record, plot, out,
                     json_output)  # fmt: skip


def _check_options(
    attain: float,
    rtol: float,
    low: float | None,
    high: float | None,
    definitions: str,
    engine: str,
    plot: Path | None,
    out: Path | None,
) -> None:
    """Check the options before any work; InputError naming the option."""
    try:
        check_options(attain, rtol, low, high, definitions)
    except InputError as exc:
        raise InputError(exc.message, field=_OPTIONS.get(exc.field or "")) from None
    if engine not in ENGINES:
        raise InputError(
            f"got {engine!r}; expected one of {', '.join(ENGINES)}", field="--engine"
        )
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"got suffix {plot.suffix!r}; expected .png", field="--plot")
    if out is not None and out.suffix.lower() not in OUT_SUFFIXES:
        raise InputError(
            f"got suffix {out.suffix!r}; expected .json or .csv", field="--out"
        )


def _colocated(
    trace: Path,
    model: str | None,
    policy: str | None,
    replicas: int | None,
    dispatch: str | None,
    settings: list[str] | None,
    format: str | None,
    limit: int | None,
    max_model_len: int | None,
) -> tuple[Instance, Cluster]:
    """The trace and the colocated cluster the options say (no cluster file)."""
    if model is None:
        raise InputError("expected --model PROFILE or --cluster FILE", field="model")
    spec = parse_policy(policy or "fcfs")
    overrides = parse_overrides(settings)
    router = check_dispatch(dispatch or "round-robin", has_assignment=False)
    if replicas is not None:
        check_int(replicas, "--replicas", 1)
    instance, _ = read_trace(trace, format, limit=limit, max_model_len=max_model_len)
    profile = deployment_profile(model, overrides, instance)
    return instance, Cluster.colocated(profile, spec, replicas, router)


def _write_and_print(
    instance: Instance,
    cluster: Cluster,
    result: GoodputResult,
    report: dict[str, object],
    record: Provenance,
    plot: Path | None,
    out: Path | None,
    json_output: bool,
) -> None:
    """Write the plot and ``--out`` if asked; print the report (JSON or table)."""
    if plot is not None:
        from lsched.plots import goodput_curve  # matplotlib only when asked

        figure = goodput_curve(result, title=_title(instance, cluster, result))
        write_png(figure, plot, record)
    if out is not None:
        _write_out(out, result, report, record)
    if json_output:
        print_json(report)
        return
    print(_title(instance, cluster, result))
    print_table(
        "rates tried (step: the order tried); share of requests within SLO",
        ["step", "rate/GPU (req/s)", "rate (req/s)", "TTFT", "TPOT", "both", "result"],
        [_row(t) for t in sorted(result.trials, key=lambda t: t.rate_per_gpu)],
    )
    print(result.message)


def _check_outputs(
    plot: Path | None, out: Path | None, inputs: list[Path | str | None]
) -> None:
    """Check the output files before any work: none of them is an input."""
    for path, option in ((plot, "--plot"), (out, "--out")):
        if path is not None:
            check_output(path, inputs, option)
    if plot is not None and out is not None and plot.resolve() == out.resolve():
        raise InputError(f"{out} is also --plot; expected two files", field="--out")


def _pools(cluster: Cluster) -> list[dict[str, object]]:
    return [
        {
            "pool": p.name,
            "role": p.role,
            "profile": p.profile.name,
            "policy": p.policy.label,
            "replicas": p.replicas,
            "gpus_per_replica": p.profile.hardware.num_gpus,
        }
        for p in cluster.pools
    ]


def _title(instance: Instance, cluster: Cluster, result: GoodputResult) -> str:
    pools = " + ".join(
        f"{p.replicas} x {p.profile.name} ({p.policy.label})" for p in cluster.pools
    )
    slo = str(result.slo) if result.slo is not None else "the trace's deadlines"
    return (
        f"{instance.name} ({result.num_requests} requests) on {pools}, "
        f"{result.gpus} GPU{'s' * (result.gpus != 1)}: SLO {slo}, target "
        f"{result.target:.6g}, {result.definitions} definitions"
    )


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2%}"


def _row(trial: RateTrial) -> list[object]:
    return [
        trial.step,
        trial.rate_per_gpu,
        trial.rate_per_s,
        _share(trial.attainment_ttft),
        _share(trial.attainment_tpot),
        _share(trial.attainment),
        "pass" if trial.passed else "fail",
    ]


def _write_out(
    path: Path, result: GoodputResult, report: dict[str, object], record: Provenance
) -> None:
    if path.suffix.lower() == ".json":
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
        return
    import pandas as pd

    frame = pd.DataFrame([vars(t) for t in result.trials])
    write_frame(path, frame, record)


class _Status:
    """A live line on stderr (a terminal only) naming each rate as it is tried."""

    def __init__(self, enabled: bool) -> None:
        console = Console(stderr=True)
        self.status = None
        if enabled and console.is_terminal:
            self.status = console.status("goodput: first rate")

    def __enter__(self) -> _Status:
        if self.status is not None:
            self.status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)

    def __call__(self, trial: RateTrial) -> None:
        if self.status is not None:
            verdict = "pass" if trial.passed else "fail"
            self.status.update(
                f"goodput: {trial.step + 1} rates tried; {trial.rate_per_gpu:.6g} "
                f"req/s per GPU: {_share(trial.attainment)} within SLO, {verdict}"
            )
