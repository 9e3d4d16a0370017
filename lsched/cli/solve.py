"""``lsched solve``: the offline optimum of a trace in the slot model.

Reads the trace, builds :class:`~lsched.formulations.slot.SlotProblem` on the
deployment (the instance's own KV capacity applies unless ``--set
kv_capacity_tokens=...`` is given), solves it with CP-SAT or the MILP (HiGHS)
under one wall-clock limit, and replays the schedule through the evaluator
(:func:`~lsched.evaluator.fixed.replay_start_slots`) as an independent check of
its objective. Exit status: 0 with a schedule (optimal, feasible or time limit),
1 without one (infeasible, unknown) or if the replay disagrees, 2 on bad input,
130 when stopped by Ctrl-C (status ``interrupted``, the best schedule kept).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from lsched.atomic import check_output
from lsched.checks import check_number, check_seed, check_time_limit, check_workers
from lsched.cli._common import (
    INTERRUPTED_EXIT,
    FormatOpt,
    JsonOpt,
    LimitOpt,
    ProgressLine,
    TraceArg,
    native_stdout_to_stderr,
    print_json,
    print_table,
    profile_file,
)
from lsched.errors import InputError
from lsched.formulations.backends import (
    BACKENDS,
    replay_objective,
    replay_timed_objective,
    solve,
)
from lsched.formulations.result import SolveResult, Status
from lsched.formulations.slot import OBJECTIVES, SlotProblem, slot_length_s
from lsched.formulations.timed import OBJECTIVES as TIMED_OBJECTIVES
from lsched.formulations.timed import TimedProblem, timed_schedule
from lsched.instance import Instance
from lsched.interrupt import sigint_requests_stop
from lsched.overrides import SET_HELP, deployment_profile, parse_overrides
from lsched.profile import DeploymentProfile
from lsched.provenance import Provenance, provenance, write_frame
from lsched.traces import read_trace

#: ``--formulation`` values.
FORMULATIONS: tuple[str, ...] = ("slot", "timed")
#: Columns of ``--out``: one row per request, times in slots.
SCHEDULE_COLUMNS: tuple[str, ...] = (
    "request",
    "arrival_slot",
    "start_slot",
    "first_token_slot",
    "completion_slot",
)
#: Relative tolerance of the replay check.
REPLAY_RTOL = 1e-9
#: The timed model's (DESIGN.md: float seconds, summed in another order).
TIMED_REPLAY_RTOL = 1e-6


def _choice(value: str, accepted: tuple[str, ...], option: str) -> str:
    if value not in accepted:
        raise InputError(
            f"got {value!r}; expected one of: {', '.join(accepted)}", field=option
        )
    return value


def solve_command(
    trace: TraceArg,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Deployment profile name or TOML.")
    ],
    formulation: Annotated[
        str,
        typer.Option(
            metavar="slot|timed",
            help="slot (one iteration = one slot) or timed (iterations priced by "
            "the profile's cost model; objectives in seconds).",
        ),
    ] = "slot",
    backend: Annotated[
        str,
        typer.Option(
            metavar="cpsat|milp|lns",
            help="Solver: cpsat (OR-Tools), milp (Pyomo + HiGHS) or lns (CP-SAT LNS, "
            "then the full CP-SAT model; slot model only).",
        ),
    ] = "cpsat",
    objective: Annotated[
        str,
        typer.Option(
            metavar="latency|makespan|ttft",
            help="latency (sum of E2E), makespan (last completion - first "
            "arrival) or ttft (sum of time to first token); in slots.",
        ),
    ] = "latency",
    time_limit: Annotated[
        float, typer.Option(help="Wall-clock seconds for the whole solve.")
    ] = 60.0,
    workers: Annotated[
        int | None,
        typer.Option(help="Solver threads (cpsat 2, milp 1 by default)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Solver random seed.")] = 0,
    slot_s: Annotated[
        float | None,
        typer.Option(
            help="Seconds per slot; by default 1 on a unit-slot profile, else the "
            "profile's decode iteration at the mean context."
        ),
    ] = None,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the schedule, one row per request (.parquet/.csv)."),
    ] = None,
    json_output: JsonOpt = False,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="FIELD=VALUE", help=SET_HELP),
    ] = None,
) -> None:
    """Solve TRACE offline in the slot model; print the optimum, bound and gap."""
    _check_options(trace, model, formulation, backend, objective, time_limit,
                   workers, seed, slot_s, out)  # fmt: skip
    overrides = parse_overrides(settings)

    instance, _ = read_trace(trace, format, limit=limit)
    profile = deployment_profile(model, overrides, instance)
    record = provenance(
        [("trace", trace), ("profile", profile.path)],
        seeds={"seed": seed},
        time_limits={"time_limit": time_limit},
    )
    if formulation == "timed":
        _solve_timed(instance, profile, objective, backend, time_limit, workers, seed,
                     out, json_output, record)  # fmt: skip
        return
    _solve_slot_model(instance, profile, overrides, objective, backend, time_limit,
                      workers, seed, slot_s, out, json_output, record)  # fmt: skip


def _check_options(
    trace: Path,
    model: str,
    formulation: str,
    backend: str,
    objective: str,
    time_limit: float,
    workers: int | None,
    seed: int,
    slot_s: float | None,
    out: Path | None,
) -> None:
    """Check the options before any work; InputError naming the option."""
    _choice(formulation, FORMULATIONS, "--formulation")
    _choice(backend, tuple(BACKENDS["slot"]), "--backend")
    _choice(objective, OBJECTIVES, "--objective")
    check_time_limit(time_limit, "--time-limit")
    if workers is not None:
        check_workers(workers, "--workers")
    check_seed(seed, "--seed")
    if slot_s is not None:
        check_number(slot_s, "--slot-s", 0, strict=True, what="seconds")
    if out is not None:
        _check_out(out, (trace, profile_file(model)))


def _solve_slot_model(
    instance: Instance,
    profile: DeploymentProfile,
    overrides: dict[str, Any],
    objective: str,
    backend: str,
    time_limit: float,
    workers: int | None,
    seed: int,
    slot_s: float | None,
    out: Path | None,
    json_output: bool,
    record: Provenance,
) -> None:
    """``--formulation slot``: solve, replay in the evaluator, report."""
    tau = slot_length_s(instance, profile) if slot_s is None else slot_s
    problem = _slot_problem(instance, profile, overrides, objective, tau)
    result = _solve(problem, backend, time_limit, workers, seed)
    replay = None if result.start is None else replay_objective(problem, result.start)
    summary = {
        **result.summary(),
        "formulation": "slot",
        "backend": backend,
        "objective_name": objective,
        "num_requests": len(problem),
        "slot_s": tau,
        "replay_objective": replay,
        "incumbent_source": _incumbent_source(result),
        "kv_capacity_tokens": profile.kv_capacity_tokens,
        "profile": profile.name,
        "instance": instance.name,
    }
    agrees = (
        replay is not None
        and result.objective is not None
        and math.isclose(replay, result.objective, rel_tol=REPLAY_RTOL, abs_tol=1e-9)
    )
    if out is not None and result.start is not None and agrees:
        write_frame(out, _slot_schedule_frame(problem, result.start), record)
        summary["out"] = str(out)
    summary = record.attach(summary)
    _report(summary, result, replay, agrees, json_output,
            f"{instance.name} on {profile.name}: {objective}, slot model, {backend} "
            f"({len(problem)} requests)",
            ("status", "objective", "bound", "gap", "runtime_s", "solver",
             "incumbent_source", "replay_objective", "slot_s",
             "kv_capacity_tokens"))  # fmt: skip


def _slot_problem(
    instance: Instance,
    profile: DeploymentProfile,
    overrides: dict[str, Any],
    objective: str,
    tau: float,
) -> SlotProblem:
    """The slot model of the trace (slots of ``tau`` seconds); an InputError
    on its KV capacity says where the capacity came from."""
    try:
        problem = SlotProblem.from_instance(
            instance, profile, objective=objective, slot_s=tau
        )
    except InputError as exc:
        if exc.field == "kv_capacity_blocks":  # say where the capacity came from
            source = (
                "--set kv_capacity_tokens"
                if "kv_capacity_tokens" in overrides
                else "the instance's params"
                if "kv_capacity_tokens" in instance.params
                else f"profile {profile.name!r}"
            )
            raise InputError(
                f"{exc.message} (kv_capacity_tokens = {profile.kv_capacity_tokens} "
                f"from {source})",
                field="kv_capacity_tokens",
            ) from None
        raise
    return problem


def _report(
    summary: dict[str, Any],
    result: SolveResult,
    replay: float | None,
    agrees: bool,
    json_output: bool,
    title: str,
    keys: tuple[str, ...],
) -> None:
    """Print the summary; exit 1 without a schedule or when the replay disagrees,
    130 when the user stopped the solve (Ctrl-C)."""
    if json_output:
        print_json(summary)
    else:
        print_table(title, ["field", "value"], [[k, summary[k]] for k in keys])
    if result.status is Status.INTERRUPTED and (result.start is None or agrees):
        kept = "no schedule" if result.start is None else "the best schedule found"
        print(f"lsched: interrupted; kept {kept}", file=sys.stderr)
        raise typer.Exit(INTERRUPTED_EXIT)
    if result.start is None:
        print(
            f"lsched: no schedule found (status {result.status.value})",
            file=sys.stderr,
        )
        raise typer.Exit(1)
    if not agrees:
        print(
            f"lsched: error: replay check failed: the evaluator scores the schedule "
            f"{replay!r}, the solver reported {result.objective!r}",
            file=sys.stderr,
        )
        raise typer.Exit(1)


def _solve_timed(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str,
    backend: str,
    time_limit: float,
    workers: int | None,
    seed: int,
    out: Path | None,
    json_output: bool,
    record: Provenance,
) -> None:
    """``--formulation timed``: solve, replay in the evaluator, report."""
    _choice(backend, tuple(BACKENDS["timed"]), "--backend")
    if objective not in TIMED_OBJECTIVES:
        raise InputError(
            f"got {objective!r}; the timed model takes {' or '.join(TIMED_OBJECTIVES)}",
            field="--objective",
        )
    problem = TimedProblem.from_instance(instance, profile, objective=objective)
    options: dict[str, Any] = {"time_limit": time_limit, "seed": seed}
    if workers is not None:
        options["num_workers"] = workers
    with (
        sigint_requests_stop(),
        native_stdout_to_stderr(),
        ProgressLine(f"solving (timed, {backend}, {objective})") as line,
    ):
        result = solve(problem, backend, on_progress=line, **options)
    replay = (
        None if result.start is None else replay_timed_objective(problem, result.start)
    )
    summary = {
        **result.summary(),
        "formulation": "timed",
        "backend": backend,
        "objective_name": objective,
        "num_requests": len(instance),
        "replay_objective": replay,
        "profile": profile.name,
        "instance": instance.name,
    }
    agrees = (
        replay is not None
        and result.objective is not None
        and math.isclose(replay, result.objective, rel_tol=TIMED_REPLAY_RTOL)
    )
    if out is not None and result.start is not None and agrees:
        times = timed_schedule(problem, result.start)
        frame = pd.DataFrame(
            {
                "request": np.arange(len(instance), dtype=np.int64),
                "arrival_s": instance.arrival_s,
                "start_iteration": times.start,
                "first_token_s": times.first_token_s,
                "completion_s": times.completion_s,
            }
        )
        write_frame(out, frame, record)
        summary["out"] = str(out)
    summary = record.attach(summary)
    _report(summary, result, replay, agrees, json_output,
            f"{instance.name} on {profile.name}: {objective} (s), timed model, "
            f"{backend} ({len(instance)} requests)",
            ("status", "objective", "bound", "gap", "runtime_s", "solver",
             "replay_objective"))  # fmt: skip


def _check_out(path: Path, inputs: tuple[Path | None, ...]) -> None:
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet"}:
        raise InputError(
            f"got suffix {suffix!r}; expected .parquet or .csv", field="--out"
        )
    check_output(path, inputs, "--out")


def _solve(
    problem: SlotProblem,
    backend: str,
    time_limit: float,
    workers: int | None,
    seed: int,
) -> SolveResult:
    options: dict[str, Any] = {"time_limit": time_limit, "seed": seed}
    if workers is not None:
        options["num_workers"] = workers
    with (
        sigint_requests_stop(),
        native_stdout_to_stderr(),
        ProgressLine(f"solving ({backend}, {problem.objective})") as line,
    ):
        return solve(problem, backend, on_progress=line, **options)


def _incumbent_source(result: SolveResult) -> str | None:
    """Who found the returned schedule: the solver, a heuristic or the start."""
    source = result.info.get("incumbent", result.info.get("source"))
    return None if source is None else str(source)


def _slot_schedule_frame(problem: SlotProblem, start: np.ndarray) -> pd.DataFrame:
    start = np.asarray(start, dtype=np.int64)
    return pd.DataFrame(
        {
            "request": np.arange(len(problem), dtype=np.int64),
            "arrival_slot": problem.arrival,
            "start_slot": start,
            "first_token_slot": start + 1,
            "completion_slot": start + problem.output_tokens,
        },
        columns=list(SCHEDULE_COLUMNS),
    )
