"""``lsched placement``: every split of N GPUs into pools, rated by goodput per GPU.

Examples::

    lsched placement trace.csv --gpus 4 --slo ttft=0.25,tpot=0.1 \\
        --profiles opt-13b-a100-tp1-distserve,opt-13b-a100-tp2-distserve
    lsched placement trace.csv --gpus 8 --slo ttft=0.25,tpot=0.1 \\
        --profiles opt-13b-a100-tp1-distserve --executor dask --address tcp://h:8786
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lsched.atomic import check_output, write_text_atomic
from lsched.cli._common import (
    FormatOpt,
    JsonOpt,
    LimitOpt,
    MaxLenOpt,
    PoissonOpt,
    TraceArg,
    print_json,
    print_table,
)
from lsched.errors import InputError
from lsched.goodput import (
    DEFAULT_RTOL,
    DEFAULT_TARGET,
    check_options,
    poisson_arrivals,
)
from lsched.placement import PlacementOptions, placements, search
from lsched.policies import parse_policy
from lsched.profile import DeploymentProfile, load_profile
from lsched.provenance import Provenance, provenance, write_frame
from lsched.slo import parse_slo
from lsched.sweep import check_executor
from lsched.traces import read_trace

if TYPE_CHECKING:
    import pandas as pd

#: Suffixes ``--out`` writes: the JSON report or the table.
OUT_SUFFIXES = (".json", ".csv")

ProfilesOpt = Annotated[
    str,
    typer.Option(help="Deployment profiles (names or TOMLs), comma-separated."),
]
SloOpt = Annotated[
    str,
    typer.Option("--slo", metavar="ttft=S,tpot=S", help="Deadlines in seconds."),
]
AttainOpt = Annotated[
    float,
    typer.Option(help="Share of all requests that must meet both deadlines."),
]
PrefillPolicyOpt = Annotated[
    str | None, typer.Option(help="The prefill pools' policy (--policy).")
]
DecodePolicyOpt = Annotated[
    str | None, typer.Option(help="The decode pools' policy (--policy).")
]
ExecutorOpt = Annotated[
    str,
    typer.Option(help="local: a pool of processes; dask: the cluster at --address."),
]


def placement_command(
    trace: TraceArg,
    gpus: Annotated[int, typer.Option(help="GPUs to split into pools.")],
    profiles: ProfilesOpt,
    slo_text: SloOpt,
    policy: Annotated[
        str, typer.Option("--policy", "-p", help="Every pool's policy.")
    ] = "vllm-v0",
    prefill_policy: PrefillPolicyOpt = None,
    decode_policy: DecodePolicyOpt = None,
    router: Annotated[
        str, typer.Option(help="Router of arrivals.")
    ] = "least-outstanding",
    decode_router: Annotated[
        str, typer.Option(help="Router of prefilled requests.")
    ] = "round-robin",
    bandwidth: Annotated[
        float | None,
        typer.Option(help="Link bandwidth, bytes/s (unbounded by default)."),
    ] = None,
    latency: Annotated[float, typer.Option(help="Link latency, s.")] = 0.0,
    sharing: Annotated[str, typer.Option(help="fifo or share.")] = "fifo",
    pull: Annotated[
        float | None,
        typer.Option(help="DistServe's pull on decode pools (e.g. 0.05)."),
    ] = None,
    colocated: Annotated[
        bool, typer.Option(help="Rate colocated pools too, for comparison.")
    ] = True,
    attain: AttainOpt = DEFAULT_TARGET,
    definitions: Annotated[
        str, typer.Option(help="TTFT/TPOT definitions: lsched or simdistserve.")
    ] = "lsched",
    rtol: Annotated[
        float, typer.Option(help="Relative width at which each bisection stops.")
    ] = DEFAULT_RTOL,
    executor: ExecutorOpt = "local",
    address: Annotated[
        str | None, typer.Option(help="Dask scheduler address, tcp://HOST:PORT.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes (local) or tasks in flight (dask).")
    ] = None,
    json_output: JsonOpt = False,
    out: Annotated[
        Path | None, typer.Option(help="Write the report (.json) or table (.csv).")
    ] = None,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    max_model_len: MaxLenOpt = None,
    poisson: PoissonOpt = None,
) -> None:
    """Every split of N GPUs into pools, best goodput per GPU first."""
    slo = parse_slo(slo_text, field="--slo")
    _check_options(trace, attain, rtol, definitions, executor, address, workers, out)
    loaded = _load_profiles(profiles)
    link = _link(bandwidth, latency, sharing)
    options = PlacementOptions(
        policy, prefill_policy, decode_policy, router, decode_router, link, pull,
        colocated,
    )  # fmt: skip
    candidates = placements(gpus, loaded, options)
    instance, _ = read_trace(trace, format, limit=limit, max_model_len=max_model_len)
    if poisson is not None:
        instance = poisson_arrivals(instance, poisson)
    given = (policy, prefill_policy, decode_policy)
    record = provenance(
        [("trace", trace), *(("profile", p.path) for p in loaded)],
        policies=dict.fromkeys(parse_policy(p).label for p in given if p is not None),
        seeds={"poisson": poisson},
    )
    goodput_options = {"target": attain, "definitions": definitions, "rtol": rtol}
    table = search(
        instance,
        candidates,
        slo,
        goodput_options=goodput_options,
        executor=executor,
        address=address,
        workers=workers,
    )
    report = record.attach(
        {"instance": instance.name, "gpus": gpus, "slo": str(slo), "target": attain,
         "placements": table.to_dict(orient="records")}
    )  # fmt: skip
    if out is not None:
        _write_out(out, report, table, record)
    if json_output:
        print_json(report)
        return
    print_table(
        f"{instance.name} ({len(instance)} requests) on {gpus} GPUs: SLO {slo}, "
        f"target {attain:.6g}; best goodput per GPU first",
        list(table.columns),
        table.values.tolist(),
    )


def _check_options(
    trace: Path,
    attain: float,
    rtol: float,
    definitions: str,
    executor: str,
    address: str | None,
    workers: int | None,
    out: Path | None,
) -> None:
    """Check the options before any work; InputError naming the option."""
    try:
        check_options(attain, rtol, None, None, definitions)
    except InputError as exc:
        raise InputError(exc.message, field=f"--{exc.field}") from None
    check_executor(executor, address=address, workers=workers)
    if out is not None:
        if out.suffix.lower() not in OUT_SUFFIXES:
            raise InputError(
                f"got suffix {out.suffix!r}; expected .json or .csv", field="--out"
            )
        check_output(out, [trace], "--out")


def _link(bandwidth: float | None, latency: float, sharing: str) -> dict[str, Any]:
    """The link between pools the options describe (unbounded bandwidth unless
    given)."""
    link: dict[str, Any] = {"latency_s": latency, "sharing": sharing}
    if bandwidth is not None:
        link["bandwidth_bytes_per_s"] = bandwidth
    return link


def _load_profiles(profiles: str) -> list[DeploymentProfile]:
    """The comma-separated profiles, loaded; InputError naming the one that fails."""
    names = [p.strip() for p in profiles.split(",") if p.strip()]
    loaded = []
    for name in names:
        try:
            loaded.append(load_profile(name))
        except InputError as exc:
            raise InputError(f"{name}: {exc.message}", field="--profiles") from None
    return loaded


def _write_out(
    out: Path, report: dict[str, object], table: pd.DataFrame, record: Provenance
) -> None:
    """``--out``: the JSON report, or the table (CSV)."""
    if out.suffix.lower() == ".json":
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    else:
        write_frame(out, table, record)
