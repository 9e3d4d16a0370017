"""`lsched trace gen`: write a seeded, generated instance to a trace file.

::

    lsched trace gen jaillet --n 10 --seed 0 --out j10.csv
    lsched trace gen gsm8k --n 1000 --seed 1 --rate 4 --out gsm.parquet
    lsched trace gen poisson --rate 2 --prompt lognormal:median=512,sigma=1.0 \\
        --output lognormal:mean=128,cv=1 --out p.csv
    lsched trace gen resample --source ../shared/traces/azure_code_2023.csv \\
        --n 500 --out r.csv

Families (see :mod:`lsched.generators`):

- ``jaillet``: Jaillet et al. 2025 synthetic (``--kv-capacity`` fixes ``M``;
  ``--convention jaillet`` uses their released code's slot model);
- ``gsm8k``: GSM8K under an 8-shot CoT prompt (``--few-shot-tokens``,
  ``--output`` override the estimated lengths);
- ``poisson``: the generic ``synthetic`` family, ``--rate`` required, ``--prompt``
  and ``--output`` required (length specs, see
  :func:`lsched.generators.parse_length_spec`);
- ``resample``: joint (prompt, output) bootstrap of ``--source`` (read with
  ``lsched.traces.read_trace``); arrivals default to a Poisson process at the
  source's mean rate.

Arrivals, for every family: ``--rate R`` gives a Poisson process at ``R`` req/s;
``--rate R --cv C`` a Gamma renewal process with gap CV ``C`` (burstiness);
neither gives the family's default (all at ``t = 0``, or the source rate for
``resample``). ``--adapters N[:alpha=A]`` adds an ``adapter`` column over
``N`` adapters of power-law popularity with exponent ``A`` (default 1), drawn
with ``--seed`` (:mod:`lsched.generators.adapters`). An option that does not
apply to the chosen family is an error, not silently ignored. The file is
written atomically by ``lsched.traces.write_trace`` (native CSV for ``.csv``,
Parquet for ``.parquet``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from lsched.atomic import check_output
from lsched.cli._common import JsonOpt, print_json, print_table
from lsched.errors import InputError
from lsched.generators.build import (
    CLI_FAMILIES,
    OPTION_OF,
    arrival_process,
    build_family,
    check_applicable,
)
from lsched.instance import Instance


def _summary(instance: Instance, out: Path) -> dict[str, Any]:
    def stats(column: np.ndarray) -> dict[str, float | int]:
        return {
            "mean": float(column.mean()),
            "min": int(column.min()),
            "max": int(column.max()),
        }

    return {
        "file": str(out),
        "name": instance.name,
        "family": instance.family,
        "seed": instance.seed,
        "n": len(instance),
        "params": dict(instance.params),
        "arrival_span_s": float(instance.arrival_s[-1] - instance.arrival_s[0]),
        "prompt_tokens": stats(instance.prompt_tokens),
        "output_tokens": stats(instance.output_tokens),
    }


def gen(
    family: Annotated[
        str, typer.Argument(help=f"Instance family: {', '.join(CLI_FAMILIES)}.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file (.csv or .parquet).")
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of requests.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (>= 0).")] = 0,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="Arrival rate (req/s); default: family's own."),
    ] = None,
    cv: Annotated[
        float | None,
        typer.Option("--cv", help="Gap CV: Gamma arrivals at --rate (1 = Poisson)."),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="Prompt lengths, e.g. lognormal:median=512,sigma=1.0 (poisson).",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help="Output lengths, e.g. uniform:low=1,high=64 (poisson, gsm8k).",
        ),
    ] = None,
    kv_capacity: Annotated[
        int | None,
        typer.Option("--kv-capacity", help="Fix the KV capacity M (jaillet)."),
    ] = None,
    convention: Annotated[
        str | None,
        typer.Option(
            "--convention",
            help="jaillet: lsched (default) or jaillet (their code's slot model).",
        ),
    ] = None,
    few_shot_tokens: Annotated[
        int | None,
        typer.Option("--few-shot-tokens", help="Few-shot prefix tokens (gsm8k)."),
    ] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="Trace to resample (resample).")
    ] = None,
    trace_format: Annotated[
        str | None,
        typer.Option("--format", help="Format of --source; default: from its name."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Instance name; default: derived.")
    ] = None,
    adapters: Annotated[
        str | None,
        typer.Option(
            "--adapters", help="N[:alpha=A]: an adapter column, power-law popularity."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate a seeded instance and write it to --out."""
    if family not in CLI_FAMILIES:
        raise InputError(
            f"got {family!r}; expected one of {', '.join(CLI_FAMILIES)}",
            field="FAMILY",
        )
    check_output(out, (source,), "--out")
    popularity = _popularity(adapters)  # refused before anything is generated
    given = {
        "--prompt": prompt,
        "--output": output,
        "--kv-capacity": kv_capacity,
        "--few-shot-tokens": few_shot_tokens,
        "--convention": convention,
        "--source": source,
        "--format": trace_format,
    }
    check_applicable(family, given)
    instance = _build(family, n, seed, name, rate, cv, prompt, output, kv_capacity,
                      few_shot_tokens, source, trace_format, convention)  # fmt: skip
    if popularity is not None:
        from lsched.generators.adapters import assign_adapters

        count, alpha = popularity
        instance = assign_adapters(instance, count, alpha=alpha, seed=seed)
    from lsched.provenance import provenance
    from lsched.traces import write_trace  # pulls in pandas/pyarrow: load on use

    record = provenance([("source", source)], seeds={"seed": seed})
    write_trace(instance, out, provenance=record)
    summary = _summary(instance, out)
    if as_json:
        print_json(record.attach(summary))
        return
    _print_summary(instance, summary)


def _popularity(adapters: str | None) -> tuple[int, float] | None:
    """``--adapters N[:alpha=A]`` as ``(N, A)``, or ``None`` without it."""
    if adapters is None:
        return None
    from lsched.generators.adapters import parse_adapter_popularity

    return parse_adapter_popularity(adapters)


def _build(
    family: str,
    n: int,
    seed: int,
    name: str | None,
    rate: float | None,
    cv: float | None,
    prompt: str | None,
    output: str | None,
    kv_capacity: int | None,
    few_shot_tokens: int | None,
    source: Path | None,
    trace_format: str | None,
    convention: str | None,
) -> Instance:
    """The instance of ``family`` the options describe; an InputError names the
    CLI option rather than the generator's keyword argument."""
    try:
        return build_family(
            family,
            n=n,
            seed=seed,
            name=name,
            arrivals=arrival_process(rate, cv),
            prompt=prompt,
            output=output,
            kv_capacity=kv_capacity,
            few_shot_tokens=few_shot_tokens,
            source=source,
            trace_format=trace_format,
            convention=convention,
        )
    except InputError as exc:
        # name the CLI option rather than the generator's keyword argument
        if exc.field in OPTION_OF and exc.file is None:
            raise InputError(exc.message, field=OPTION_OF[exc.field]) from None
        raise


def _print_summary(instance: Instance, summary: dict[str, Any]) -> None:
    """The instance written, as a table of fields."""
    rows = [
        ("file", summary["file"]),
        ("name", instance.name),
        ("family", instance.family),
        ("seed", instance.seed),
        ("requests", len(instance)),
        ("arrival span (s)", summary["arrival_span_s"]),
    ]
    for column in ("prompt_tokens", "output_tokens"):
        stats = summary[column]
        # parentheses, not brackets: rich would read "[min, max]" as markup
        rows.append(
            (
                f"{column} mean (min-max)",
                f"{stats['mean']:,.1f} ({stats['min']:,}-{stats['max']:,})",
            )
        )
    print_table("lsched trace gen", ["field", "value"], rows)


def register(app: typer.Typer) -> None:
    """Add the ``gen`` command to the ``lsched trace`` app."""
    app.command("gen")(gen)
