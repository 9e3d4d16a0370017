"""One builder for the generated families, shared by ``lsched trace gen`` and sweeps.

:func:`build_family` turns a family name and its options into an
:class:`~lsched.instance.Instance`, so a sweep's ``jaillet`` n = 10, seed 0 is the
same instance as ``lsched trace gen jaillet --n 10 --seed 0``. Errors name the
``lsched trace gen`` option (``--rate``, ``--prompt``, ...), the vocabulary both
front ends share; :data:`OPTION_OF` maps generator keywords to those options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsched.errors import InputError
from lsched.generators.arrivals import ArrivalProcess, Gamma, Poisson
from lsched.generators.families import generate, gsm8k, jaillet, resample
from lsched.generators.lengths import parse_length_spec
from lsched.instance import Instance

#: CLI family names, in help order.
CLI_FAMILIES: tuple[str, ...] = ("jaillet", "gsm8k", "poisson", "resample")

#: Family-specific options: option name -> families that take it.
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "--prompt": ("poisson",),
    "--output": ("poisson", "gsm8k"),
    "--kv-capacity": ("jaillet",),
    "--convention": ("jaillet",),
    "--few-shot-tokens": ("gsm8k",),
    "--source": ("resample",),
    "--format": ("resample",),
}


#: Generator keyword argument -> the CLI option that sets it.
OPTION_OF: dict[str, str] = {
    "n": "--n",
    "seed": "--seed",
    "kv_capacity_tokens": "--kv-capacity",
    "convention": "--convention",
    "few_shot_tokens": "--few-shot-tokens",
}


def arrival_process(
    rate_per_s: float | None, cv: float | None
) -> ArrivalProcess | None:
    """A Poisson process at ``rate_per_s``, Gamma with gap CV ``cv``, or ``None``."""
    if cv is not None and rate_per_s is None:
        raise InputError(
            "needs --rate: a CV alone does not set the arrival rate", field="--cv"
        )
    if rate_per_s is None:
        return None
    try:
        if cv is None:
            return Poisson(rate_per_s=rate_per_s)
        return Gamma(rate_per_s=rate_per_s, cv=cv)
    except InputError as exc:
        option = "--rate" if exc.field == "rate_per_s" else "--cv"
        raise InputError(exc.message, field=option) from None


def check_applicable(family: str, given: dict[str, Any]) -> None:
    """Raise on an option given (not ``None``) that ``family`` does not take."""
    for option, value in given.items():
        if value is not None and family not in APPLIES_TO[option]:
            takers = ", ".join(APPLIES_TO[option])
            raise InputError(
                f"does not apply to family {family!r}; it applies to: {takers}",
                field=option,
            )


def build_family(
    family: str,
    *,
    n: int,
    seed: int,
    name: str | None,
    arrivals: ArrivalProcess | None,
    prompt: str | None,
    output: str | None,
    kv_capacity: int | None,
    few_shot_tokens: int | None,
    source: Path | None,
    trace_format: str | None,
    convention: str | None = None,
) -> Instance:
    """The instance of ``family`` (one of :data:`CLI_FAMILIES`) with these options.

    Raises
    ------
    InputError
        Naming the ``lsched trace gen`` option that is missing or bad.
    """
    if family == "jaillet":
        return jaillet(
            n,
            seed=seed,
            arrivals=arrivals,
            name=name,
            kv_capacity_tokens=kv_capacity,
            convention="lsched" if convention is None else convention,
        )
    if family == "gsm8k":
        options: dict[str, Any] = {}
        if few_shot_tokens is not None:
            options["few_shot_tokens"] = few_shot_tokens
        if output is not None:
            options["output"] = parse_length_spec(output, option="--output")
        return gsm8k(n, seed=seed, arrivals=arrivals, name=name, **options)
    if family == "poisson":
        if arrivals is None:
            raise InputError("is required for family 'poisson'", field="--rate")
        for option, spec in (("--prompt", prompt), ("--output", output)):
            if spec is None:
                raise InputError(
                    "is required for family 'poisson', e.g. "
                    f"{option} lognormal:median=512,sigma=1.0",
                    field=option,
                )
        assert prompt is not None and output is not None
        return generate(
            n,
            arrivals=arrivals,
            prompt=parse_length_spec(prompt, option="--prompt"),
            output=parse_length_spec(output, option="--output"),
            seed=seed,
            name=name,
        )
    # resample
    if source is None:
        raise InputError("is required for family 'resample'", field="--source")
    from lsched.traces import read_trace  # pulls in pandas/pyarrow: load on use

    trace, _report = read_trace(source, format=trace_format)
    return resample(
        trace, n, seed=seed, arrivals=arrivals, source_label=str(source), name=name
    )


__all__ = [
    "APPLIES_TO",
    "CLI_FAMILIES",
    "OPTION_OF",
    "arrival_process",
    "build_family",
    "check_applicable",
]
