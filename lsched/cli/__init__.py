"""The ``lsched`` command line.

One Typer sub-app or command per module (``trace``, ``models``, ``profile``,
``simulate``, ...). The top-level group knows each command's name and one-line
help without importing its module: a module, and the libraries it needs (pandas,
Pyomo, OR-Tools, matplotlib, Dask), is imported only when its command runs or
shows its own help, so ``lsched --help`` and ``lsched --version`` start in the time
of Typer alone. :func:`main` is the console script: it turns an
:class:`InputError` (or any bad-input ``ValueError``/``OSError`` on a user file)
into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from lsched.errors import InputError

#: Command name -> (module, attribute: a Typer app or a command function, help).
#: The help is the command's own first line; a test checks that they agree.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": (
        "lsched.cli.simulate",
        "simulate_command",
        "Replay TRACE on a deployment under each policy; print their metrics.",
    ),
    "solve": (
        "lsched.cli.solve",
        "solve_command",
        "Solve TRACE offline in the slot model; print the optimum, bound and gap.",
    ),
    "bound": (
        "lsched.cli.compare",
        "bound_command",
        "Every lower bound on the objective, with the schedules it holds for.",
    ),
    "compare": (
        "lsched.cli.compare",
        "compare_command",
        "Bounds, the best offline schedule and each policy's gap to the bound.",
    ),
    "goodput": (
        "lsched.cli.goodput",
        "goodput_command",
        "Largest request rate per GPU at which TRACE meets its SLO (goodput).",
    ),
    "placement": (
        "lsched.cli.placement",
        "placement_command",
        "Every split of N GPUs into pools, best goodput per GPU first.",
    ),
    "sweep": (
        "lsched.cli.sweep",
        "sweep_command",
        "Run every case of CONFIG not already in its results file.",
    ),
    "trace": (
        "lsched.cli.trace",
        "app",
        "Read, summarise, convert and generate request traces.",
    ),
    "models": (
        "lsched.cli.models",
        "app",
        "Deployment profiles: models/*.toml and $LSCHED_MODELS folders.",
    ),
    "profile": (
        "lsched.cli.profile",
        "app",
        "Fit deployment profiles to measurements.",
    ),
}


def load_command(name: str) -> Any:
    """Import the module of command ``name``; its click command, named ``name``."""
    module_name, attribute, _ = COMMANDS[name]
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):  # a group, even of one command (`profile`)
        command = typer.main.get_group(target)
    else:  # a function: the command of a one-command app
        app = typer.Typer(add_completion=False)
        app.command(name)(target)
        command = typer.main.get_command(app)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose commands are imported when they run.

    ``commands`` holds placeholders with each command's name and help, enough to
    list them; resolving a command to run it (or to show its help) imports it.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, (_, _, text) in COMMANDS.items():
            self.commands[name] = TyperCommand(name, help=text, short_help=text)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        from lsched.provenance import ARGV_META

        # the arguments as given, for the provenance of what the command writes
        ctx.meta.setdefault(ARGV_META, list(args))
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        from lsched.provenance import ARGV_META, command_line

        with command_line(ctx.meta.get(ARGV_META)):
            return super().invoke(ctx)

    def resolve_command(
        self, ctx: Any, args: list[str]
    ) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name in COMMANDS:
            command = load_command(name)
        return name, command, rest


def _version() -> str:
    from lsched.provenance import lsched_version

    return lsched_version()


def _show_version(value: bool) -> None:
    if value:
        print(f"lsched {_version()}")
        raise typer.Exit()


app = typer.Typer(
    name="lsched",
    cls=LazyGroup,
    help="Operations research for scheduling LLM inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print lsched's version and exit.",
        ),
    ] = False,
) -> None:
    """Operations research for scheduling LLM inference."""


def _policy_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a policy's error (only possible once policies loaded)."""
    base = sys.modules.get("lsched.policies.base")
    return base is not None and isinstance(exc, base.PolicyError)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit: 0 ok, 1 failure, 2 bad input or usage."""
    try:
        # standalone mode: Typer prints usage errors itself and exits with 2
        app(args=argv, prog_name="lsched")
    except InputError as exc:
        print(f"lsched: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a missing or unreadable file named by the user
        name = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"lsched: error: {name}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if not _policy_error(exc):
            raise
        # a policy broke the model's rules or stalled
        print(f"lsched: policy error: {exc}", file=sys.stderr)
        sys.exit(1)
