"""The ``lsched`` command line.

One Typer sub-app per noun (``trace``, ``models``, ``profile``), each in its own
module. :func:`main` is the console script: it turns an :class:`InputError` (or any
bad-input ``ValueError``/``OSError`` on a user file) into one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from lsched.cli import (
    compare,
    models,
    profile,
    simulate,
    solve,
    sweep,
    trace,
    trace_gen,
)
from lsched.errors import InputError
from lsched.policies import PolicyError

app = typer.Typer(
    name="lsched",
    help="Operations research for scheduling LLM inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
trace_gen.register(trace.app)  # `lsched trace gen` lives beside the generators
app.add_typer(trace.app, name="trace")
app.add_typer(models.app, name="models")
app.add_typer(profile.app, name="profile")
app.command("simulate")(simulate.simulate_command)
app.command("solve")(solve.solve_command)
app.command("bound")(compare.bound_command)
app.command("compare")(compare.compare_command)
app.command("sweep")(sweep.sweep_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit: 0 ok, 1 failure, 2 bad input or usage."""
    try:
        # standalone mode: Typer prints usage errors itself and exits with 2
        app(args=argv, prog_name="lsched")
    except InputError as exc:
        print(f"lsched: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except PolicyError as exc:  # a policy broke the model's rules or stalled
        print(f"lsched: policy error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # a missing or unreadable file named by the user
        name = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"lsched: error: {name}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
