"""``lsched simulate``: replay a trace under one or more online policies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.progress import Progress

from lsched.atomic import atomic_target
from lsched.cli._common import JSON_HELP, print_json, print_table
from lsched.errors import InputError
from lsched.evaluator import SimulationResult, simulate
from lsched.overrides import SET_HELP, deployment_profile, parse_overrides
from lsched.policies import parse_policy
from lsched.predictors import apply_predictor
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


def simulate_command(
    trace: Annotated[Path, typer.Argument(help="Trace file (any supported format).")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Deployment profile name or TOML.")
    ],
    policy: Annotated[
        list[str],
        typer.Option("--policy", "-p", help="NAME[:key=value,...]; repeat to compare."),
    ] = ["fcfs"],  # noqa: B006  (Typer reads list defaults; never mutated)
    replicas: Annotated[
        int | None, typer.Option(help="Replicas (the profile's by default).")
    ] = None,
    dispatch: Annotated[
        str,
        typer.Option(
            help="Replica dispatch: round-robin, least-outstanding (fewest "
            "unfinished requests) or least-kv (fewest KV tokens held); the last two "
            "simulate the replicas jointly."
        ),
    ] = "round-robin",
    kv_capacity_tokens: Annotated[
        int | None,
        typer.Option(
            help="Override the KV capacity; by default an instance that carries "
            "its own (params kv_capacity_tokens, e.g. Jaillet's M) uses it."
        ),
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="Trace format.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="First N requests.")] = None,
    predictor: Annotated[
        str | None,
        typer.Option(
            help="Output-length predictions for length-aware policies: oracle, "
            "noise:sigma=0.5,seed=0, interval:width=2, buckets:edges=64/256/1024."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    requests_out: Annotated[
        Path | None,
        typer.Option(help="Write per-request records (.csv or .parquet)."),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="FIELD=VALUE", help=SET_HELP),
    ] = None,
) -> None:
    """Replay TRACE on a deployment under each policy; print their metrics."""
    specs = [parse_policy(p) for p in policy]
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
    if dispatch == "static":
        raise InputError(
            "dispatch 'static' needs an assignment, which the CLI cannot take; "
            "expected round-robin, least-outstanding or least-kv",
            field="dispatch",
        )
    instance, _ = read_trace(trace, format, limit=limit)
    if predictor is not None:
        instance = apply_predictor(instance, predictor)
    profile = deployment_profile(
        model, overrides, instance, kv_capacity_tokens=kv_capacity_tokens
    )
    results: list[SimulationResult] = []
    with Progress(transient=True, disable=json_output) as bar:
        for spec in specs:
            task = bar.add_task(spec.label, total=len(instance))
            results.append(
                simulate(
                    instance,
                    profile,
                    spec,
                    replicas=replicas,
                    dispatch=dispatch,
                    progress=lambda done, task=task: bar.update(task, completed=done),
                )
            )
    if requests_out is not None:
        _write_requests(requests_out, results)
    if json_output:
        print_json({"policies": [r.summary() for r in results]})
        return
    # one column per policy: metrics read down, policies compare across
    print_table(
        f"{instance.name} on {profile.name} ({len(instance)} requests)",
        ["metric", *(r.policy for r in results)],
        [
            *([m, *(r.metrics[m] for r in results)] for m in TABLE_METRICS),
            ["iterations", *(r.iterations for r in results)],
            ["runtime_s", *(r.runtime_s for r in results)],
        ],
    )


def _write_requests(path: Path, results: list[SimulationResult]) -> None:
    frame = pd.concat(
        [
            r.requests.rename_axis("request").reset_index().assign(policy=r.policy)
            for r in results
        ],
        ignore_index=True,
    )
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet"}:
        raise InputError(
            f"got suffix {suffix!r}; expected .csv or .parquet", field="requests-out"
        )
    with atomic_target(path) as temporary:
        if suffix == ".csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
