"""Output helpers shared by the CLI sub-apps: one JSON object, or a rich table."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lsched.errors import InputError

if TYPE_CHECKING:
    from lsched.adapters import AdapterSpec
    from lsched.instance import Instance
    from lsched.prefix.spec import PrefixCacheSpec
    from lsched.slo import SLO

JSON_HELP = "Print one JSON object instead of a table."
#: Console width for tables written to a file or a pipe: wider than any row.
UNBOUNDED_WIDTH = 100_000


def _plain(value: Any) -> Any:
    # NumPy values exist only once NumPy is loaded: no import for plain data
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or (
        np is not None and isinstance(value, np.ndarray)
    ):
        return [_plain(v) for v in value]
    return value


def profile_file(model: str | None) -> Path | None:
    """The file a ``--model`` value reads: the path given, or a named profile's
    file (``None`` for no model or an unknown name, which loading reports)."""
    if model is None:
        return None
    candidate = Path(model)
    if candidate.suffix == ".toml" or candidate.exists():
        return candidate
    from lsched._models import find_profile

    return find_profile(model)


def predictor_seed(instance: Instance, predictor: str | None) -> int | None:
    """The seed of ``--predictor``'s draws once applied to ``instance`` (``None``
    without a predictor or for one that draws nothing), for the provenance."""
    if predictor is None:
        return None
    how = instance.params.get("predictor")
    seed = how.get("seed") if isinstance(how, Mapping) else None
    return seed if isinstance(seed, int) else None


def print_json(obj: Mapping[str, Any]) -> None:
    """Print ``obj`` as one JSON object on stdout (NumPy scalars made plain)."""
    print(json.dumps(_plain(obj), indent=2))


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Print a rich table; no number is ever cut.

    A terminal keeps its width and a cell too long for it folds onto the next
    line; a file or a pipe has no width, so the table takes the width of its
    longest row (rich would otherwise squeeze it into 80 columns and cut numbers
    to ``1.25606e+…``).
    """
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text, not str: a path with [brackets] must not be read as rich markup
        table.add_row(*(Text(_format(v)) for v in row))
    console = Console()
    if not console.is_terminal:
        console = Console(width=UNBOUNDED_WIDTH)
    console.print(table)


def _format(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Send what native solver code prints on file descriptor 1 to stderr.

    HiGHS prints a banner to the C-level stdout when a solver object is created,
    whatever its options; stdout must stay one JSON object under ``--json``.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1: nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


#: Exit status of a command the user stopped with Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT = 130


def say_started(label: str, kept: str = "the best found so far") -> None:
    """One line on stderr, where it is not a terminal (a log, a test), that the
    work ``label`` started and what Ctrl-C keeps of it."""
    if Console(stderr=True).is_terminal:
        return
    print(
        f"lsched: {label} started; Ctrl-C stops it and keeps {kept}",
        file=sys.stderr,
        flush=True,
    )


class ProgressLine:
    """A live status line on stderr: objective and bound as the solver improves.

    Quiet when stderr is not a terminal (piped, captured), so ``--json`` output and
    logs stay clean.
    """

    def __init__(self, label: str, kept: str = "the best found so far") -> None:
        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal
        self.label = label
        self.kept = kept
        self.status = self.console.status(label) if self.enabled else None

    def __enter__(self) -> ProgressLine:
        if self.status is not None:
            self.status.__enter__()
        else:  # one line, so that a log (or a test) sees the work start
            say_started(self.label, self.kept)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)

    def __call__(self, time_s: float, objective: float | None, bound: float) -> None:
        if self.status is None:
            return
        parts = [f"{self.label}  {time_s:7.1f} s"]
        if objective is not None:
            parts.append(f"objective {objective:,.6g}")
        if math.isfinite(bound):
            parts.append(f"bound {bound:,.6g}")
        if objective is not None and math.isfinite(bound) and objective != 0:
            parts.append(f"gap {max(0.0, (objective - bound) / abs(objective)):.2%}")
        self.status.update("  ".join(parts))


def with_slo(instance: Instance, slo: SLO | None, override: bool) -> Instance:
    """``--slo`` on ``instance`` (:meth:`lsched.slo.SLO.apply`); a note on stderr
    names the trace's own deadline columns it keeps (without ``--slo-override``)."""
    if slo is None:
        return instance
    kept = () if override else slo.kept(instance)
    if kept:
        print(
            f"lsched: the trace's own {' and '.join(kept)} kept over --slo "
            "(--slo-override replaces them)",
            file=sys.stderr,
        )
    return slo.apply(instance, override=override)


def refuse_beside_cluster(options: Mapping[str, Any]) -> None:
    """InputError naming the options (name -> value) given beside ``--cluster``,
    whose file says what they would."""
    given = [name for name, value in options.items() if value]
    if given:
        raise InputError(
            f"got {', '.join(given)} with --cluster; expected the cluster file to "
            "say them",
            field="cluster",
        )


#: ``--max-model-len``, on every command that reads a trace and may clip it.
MaxLenOpt = Annotated[
    int | None,
    typer.Option("--max-model-len", help="Clip prompt + output to this many tokens."),
]
#: ``--poisson SEED`` (:func:`lsched.goodput.poisson_arrivals`).
PoissonOpt = Annotated[
    int | None,
    typer.Option(
        metavar="SEED",
        help="Replace the arrivals by a Poisson process drawn with SEED "
        "(DistServe's method); the lengths are kept.",
    ),
]
#: The trace argument of the commands that read one.
TraceArg = Annotated[Path, typer.Argument(help="Trace file (any supported format).")]
#: ``--model``, where it is optional (a cluster file may say it instead).
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Deployment profile name or TOML."),
]
ReplicasOpt = Annotated[
    int | None, typer.Option(help="Replicas (the profile's by default).")
]
FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help="Trace format.")]
LimitOpt = Annotated[int | None, typer.Option(help="First N requests.")]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
#: ``--prefix-cache`` (``lsched simulate`` and ``lsched compare``).
PrefixCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--prefix-cache",
        metavar="RULE[:capacity_tokens=N|:host_capacity_tokens=M]",
        help="A prefix cache on each replica's GPU, keyed by the trace's hash_ids "
        "and sharing its KV: gpu or lru (least recently used blocks evicted "
        "first), lru_tail_first; capacity_tokens caps it below the KV; "
        "host_capacity_tokens adds a cache of M tokens in the host tier "
        "(written through, hits copied at host-to-device bandwidth; within "
        "host.memory_bytes). A cluster file says it per pool (prefix_cache), "
        "where a prefill pool may instead share one KV pool of M tokens among "
        "its replicas (pool_capacity_tokens=M, Mooncake's; copies between "
        "replicas over a [[link]] from the pool to itself).",
    ),
]


#: ``--adapters`` (``lsched simulate``).
AdaptersOpt = Annotated[
    str | None,
    typer.Option(
        "--adapters",
        metavar="default|size_bytes=N,max_loras=K,slots=S,slot_bytes=B,size.NAME=N",
        help="Serve the trace's LoRA adapters (its adapter column) on each "
        "replica: at most max_loras distinct adapters among the running requests "
        "(vLLM's rule, default 1), slots (default max_loras) of slot_bytes taken "
        "out of the KV, loads of size / host-to-device bandwidth, LRU eviction "
        "(lsched.adapters). A cluster file says it per pool (adapters).",
    ),
]


T = TypeVar("T")


def _parsed(text: str | None, parse: Callable[[str], T], option: str) -> T | None:
    """``parse(text)`` (``None`` without ``text``); an InputError names
    ``option``."""
    if text is None:
        return None
    try:
        return parse(text)
    except InputError as exc:
        raise InputError(exc.message, field=option) from None


def adapters_spec(text: str | None) -> AdapterSpec | None:
    """``--adapters`` parsed before any work (``None`` without it)."""
    from lsched.adapters import parse_adapters

    return _parsed(text, parse_adapters, "--adapters")


def prefix_cache_spec(text: str | None) -> PrefixCacheSpec | None:
    """``--prefix-cache`` parsed before any work (``None`` without one)."""
    from lsched.prefix.spec import parse_prefix_cache

    return _parsed(text, parse_prefix_cache, "--prefix-cache")
