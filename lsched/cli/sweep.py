"""``lsched sweep``: run instances x profiles x methods, one Parquet row per case.

::

    lsched sweep sweep.toml                          # local processes
    lsched sweep sweep.toml --workers 4 --out r.parquet
    lsched sweep sweep.toml --executor dask --address tcp://10.0.0.5:8786

The config format, the case ids and the storage are described in
:mod:`lsched.sweep`. Each finished case is stored at once, so an interrupted
sweep loses nothing and a rerun runs only what is missing. Ctrl-C (SIGINT) stops
the sweep at once: the finished cases stay stored, the cases in flight are
dropped (a rerun runs them), the report says ``interrupted``. Exit status: 0
when the run ended (cases that failed are rows with status ``error``, counted in
the report), 2 on bad input, 130 when stopped by Ctrl-C.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from lsched.cli._common import (
    INTERRUPTED_EXIT,
    JSON_HELP,
    print_json,
    print_table,
)
from lsched.errors import InputError
from lsched.interrupt import sigint_requests_stop
from lsched.sweep import (
    SweepReport,
    check_executor,
    check_out,
    load_config,
    run_sweep,
)


def _method_summary(results: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (profile, method): cases, errors, mean objective and mean gap."""
    rows: list[dict[str, Any]] = []
    if results.empty:
        return rows
    for (profile, method), group in results.groupby(["profile", "method"], sort=False):
        ok = group[group["status"] != "error"]
        rows.append(
            {
                "profile": profile,
                "method": method,
                "kind": group["kind"].iloc[0],
                "cases": len(group),
                "errors": int((group["status"] == "error").sum()),
                "objective_mean": _mean(ok["objective_value"]),
                "gap_mean": _mean(ok["gap"]),
            }
        )
    return rows


def _mean(values: pd.Series) -> float | None:
    mean = float(values.mean()) if values.notna().any() else math.nan
    return None if math.isnan(mean) else mean


def sweep_command(
    config: Annotated[
        Path, typer.Argument(help="Sweep config (TOML); see lsched.sweep.")
    ],
    executor: Annotated[
        str,
        typer.Option(
            metavar="local|dask",
            help="local: a pool of processes; dask: the cluster at --address.",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address, tcp://HOST:PORT."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes (local; default: CPU count) or cases in flight (dask; "
            "default: the cluster's threads)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Results file (.parquet) instead of the config's out."),
    ] = None,
    max_cases: Annotated[
        int | None,
        typer.Option(help="Run at most N cases, then stop; a rerun goes on."),
    ] = None,
    retry_errors: Annotated[
        bool, typer.Option(help="Run again the cases stored with status error.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Run every case of CONFIG not already in its results file."""
    try:
        check_executor(executor, address=address, workers=workers)
    except InputError as exc:
        raise InputError(exc.message, field=f"--{exc.field}") from None
    if max_cases is not None and max_cases < 0:
        raise InputError(f"got {max_cases}; expected >= 0", field="--max-cases")
    if out is not None:
        try:
            check_out(out)
        except InputError as exc:
            raise InputError(exc.message, field="--out") from None
    settings = load_config(config)
    if out is not None:
        try:
            check_out(out, settings.input_files())
        except InputError as exc:
            raise InputError(exc.message, field="--out") from None
    try:
        with sigint_requests_stop():  # Ctrl-C: run_sweep keeps what is stored
            report = run_sweep(
                settings,
                executor=executor,
                address=address,
                workers=workers,
                out=out,
                max_cases=max_cases,
                retry_errors=retry_errors,
                progress=not (quiet or json_output),
            )
    except InputError as exc:
        if exc.file is None and exc.field == "address":  # scheduler unreachable
            raise InputError(exc.message, field="--address") from None
        raise
    methods = _method_summary(report.results)
    if json_output:
        summary = {**report.summary(), "methods": methods}
        print_json(summary if report.provenance is None else
                   report.provenance.attach(summary))  # fmt: skip
    else:
        _print(config, report, methods)
    if report.interrupted:
        print(
            f"lsched: interrupted; kept the {report.ran} case(s) finished now, "
            f"{report.remaining} left; run the same command again to go on",
            file=sys.stderr,
        )
        raise typer.Exit(INTERRUPTED_EXIT)


def _print(config: Path, report: SweepReport, methods: list[dict[str, Any]]) -> None:
    """The report's table and where the results are."""
    print_table(
        f"sweep {config.name}: {report.cases} cases, {report.ran} run now, "
        f"{report.skipped} already done, {report.remaining} left, "
        f"{report.errors} errors",
        ["profile", "method", "cases", "errors", "objective mean", "gap mean"],
        [
            [
                m["profile"],
                m["method"],
                m["cases"],
                m["errors"],
                m["objective_mean"],
                m["gap_mean"],
            ]
            for m in methods
        ],
    )
    print(f"results: {report.out}")
    if report.remaining and not report.interrupted:
        print(
            f"lsched: {report.remaining} case(s) left; run the same command again "
            "to go on",
            file=sys.stderr,
        )
