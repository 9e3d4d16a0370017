"""`lsched trace` commands: ``info`` (summarise a trace) and ``convert`` (write it in
lsched's native CSV or Parquet).

Both read with :func:`lsched.traces.read_trace`, so they share its format
detection and its transformations, applied in the order window, limit, rate
scale, clip. Bad input is an :class:`~lsched.errors.InputError`, which
:func:`lsched.cli.main` prints as one line with exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lsched.atomic import check_output
from lsched.cli import trace_gen
from lsched.cli._common import JSON_HELP, MaxLenOpt, print_json, print_table
from lsched.provenance import provenance
from lsched.traces import FORMATS, WRITE_FORMATS, read_trace, trace_summary, write_trace
from lsched.traces.detect import format_from_suffix, normalise_format
from lsched.traces.io import ReadReport

app = typer.Typer(
    help="Read, summarise, convert and generate request traces.",
    no_args_is_help=True,
    add_completion=False,
)

PathArg = Annotated[str, typer.Argument(help="Trace file.", show_default=False)]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help=f"Input format, one of {', '.join(FORMATS)}; detected when omitted.",
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option(help="Keep the first N requests (of the window).")
]
StartOpt = Annotated[
    float | None,
    typer.Option("--start-s", help="Window start, seconds after the first arrival."),
]
EndOpt = Annotated[
    float | None,
    typer.Option(
        "--end-s", help="Window end (exclusive), seconds after the first arrival."
    ),
]
RateOpt = Annotated[
    float, typer.Option("--rate-scale", help="Multiply the arrival rate (2 = twice).")
]
DropOpt = Annotated[
    bool,
    typer.Option(
        "--drop-failed",
        help="Drop rows with a zero prompt or output "
        "length (failed requests) and count them.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


def _counts_rows(report: ReadReport) -> list[tuple[str, Any]]:
    return [
        ("format", report.format),
        ("rows read", report.rows_read),
        ("dropped (failed)", report.dropped_failed),
        ("dropped (window)", report.dropped_window),
        ("dropped (limit)", report.dropped_limit),
        ("clipped", report.clipped),
        ("requests", report.num_requests),
    ]


@app.command()
def info(
    path: PathArg,
    format: FormatOpt = None,
    limit: LimitOpt = None,
    start_s: StartOpt = None,
    end_s: EndOpt = None,
    rate_scale: RateOpt = 1.0,
    max_model_len: MaxLenOpt = None,
    drop_failed: DropOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Summarise a trace: requests, token statistics, span, rate, drops and clips."""
    instance, report = read_trace(
        path,
        format,
        limit=limit,
        start_s=start_s,
        end_s=end_s,
        rate_scale=rate_scale,
        max_model_len=max_model_len,
        drop_failed=drop_failed,
    )
    summary = trace_summary(instance)
    if json_output:
        record = provenance([("trace", path)])
        print_json(record.attach({**summary, **report.as_dict()}))
        return
    rows = [
        *_counts_rows(report),
        ("span (s)", summary["span_s"]),
        ("rate (req/s)", summary["rate_per_s"]),
        ("inter-arrival CV", summary["interarrival_cv"]),
        ("max prompt + output", summary["max_total_tokens"]),
        ("optional columns", ", ".join(summary["optional_columns"]) or "-"),
        ("prefix hashes", "yes" if summary["has_prefix_hashes"] else "no"),
    ]
    print_table(f"trace {instance.name}", ["quantity", "value"], rows)
    stats = ("sum", "mean", "min", "p50", "p90", "p99", "max")
    print_table(
        "token lengths",
        ["statistic", "prompt", "output"],
        [
            (s, summary[f"prompt_tokens_{s}"], summary[f"output_tokens_{s}"])
            for s in stats
        ],
    )


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="Trace file to read.")],
    target: Annotated[str, typer.Argument(help="Native trace file to write.")],
    format: FormatOpt = None,
    to: Annotated[
        str | None,
        typer.Option(
            help=f"Output format, {' or '.join(WRITE_FORMATS)}; from the "
            "output suffix when omitted."
        ),
    ] = None,
    limit: LimitOpt = None,
    start_s: StartOpt = None,
    end_s: EndOpt = None,
    rate_scale: RateOpt = 1.0,
    max_model_len: MaxLenOpt = None,
    drop_failed: DropOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Convert a trace to lsched's native CSV or Parquet (written atomically)."""
    # decide the output format and check the output before reading a possibly
    # large input
    out_format = (
        format_from_suffix(target)
        if to is None
        else normalise_format(to, WRITE_FORMATS)
    )
    check_output(target, (source,), "TARGET")
    instance, report = read_trace(
        source,
        format,
        limit=limit,
        start_s=start_s,
        end_s=end_s,
        rate_scale=rate_scale,
        max_model_len=max_model_len,
        drop_failed=drop_failed,
    )
    record = provenance([("trace", source)])
    write_trace(instance, target, out_format, provenance=record)
    written = {
        "output": str(Path(target)),
        "output_format": out_format,
        **report.as_dict(),
    }
    if json_output:
        print_json(record.attach(written))
        return
    print_table(
        f"wrote {report.num_requests:,} requests to {target} ({out_format})",
        ["quantity", "value"],
        _counts_rows(report),
    )


trace_gen.register(app)  # `lsched trace gen` lives beside the generators
