"""Argument checks shared by the command line and the Python API.

One rule per kind of argument, the same wherever the argument is taken: a CLI
option calls the check before any work (with the option's name as the field,
``--time-limit``), a public function calls it at its top (with the parameter's
name, ``time_limit``), and both get the same message. Every failure is an
:class:`~lsched.errors.InputError` that names the field, the value found and
what was expected, on one line.

=================  ===============================================================
check              rule
=================  ===============================================================
:func:`check_int`  an integer (``bool`` is not one), in ``[minimum, maximum]``
:func:`check_number`  a finite real number, ``>= minimum`` (``> minimum`` if strict)
:func:`check_seed`  an integer in ``[0, 2**31 - 1]``: what NumPy, CP-SAT and HiGHS
                   all take
:func:`check_time_limit`  seconds ``> 0`` (``>= 0`` where zero is meaningful: the
                   LP bounds' limit, where 0 skips them)
:func:`check_workers`  an integer ``>= 1``
:func:`check_policies`  a sequence of policy specs; a single ``str`` is refused
                   (iterating it would read ``"fcfs"`` as ``f``, ``c``, ``f``,
                   ``s``): pass ``["fcfs"]``
:func:`parse_spec`  ``NAME[:key=value,...]``: a ``:`` needs at least one item, no
                   item is empty, no key given twice
:func:`read_text`  a file's text as UTF-8, or an InputError naming the file and
                   line of the first bad byte
=================  ===============================================================

This module imports neither NumPy nor anything heavier (``lsched --help`` stays
fast); NumPy integers and floats pass the checks through :mod:`numbers`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from lsched.errors import InputError

#: Largest seed: CP-SAT's and HiGHS's ``random_seed`` are 32-bit signed integers.
SEED_MAX = 2**31 - 1
#: Longest repr of a bad value shown in a message.
_SHOWN = 80


def shown(value: Any) -> str:
    """``repr(value)``, cut to a readable length (control bytes escaped)."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _typed(value: Any) -> str:
    """``str 'x'``: the type's name and the value, for a value of the wrong type."""
    return f"{type(value).__name__} {shown(value)}"


def _range(minimum: float | None, maximum: float | None, strict: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" {'>' if strict else '>='} {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(
    value: Any,
    field: str,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``.

    A ``bool`` is refused (``True`` as a count is a bug, not a 1), and so is a
    float, even ``2.0``.
    """
    expected = f"an integer{_range(minimum, maximum)}"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputError(f"got {_typed(value)}; expected {expected}", field=field)
    number = int(value)
    if (minimum is not None and number < minimum) or (
        maximum is not None and number > maximum
    ):
        raise InputError(f"got {number}; expected {expected}", field=field)
    return number


def check_optional_int(
    value: Any, field: str, minimum: int | None = None
) -> int | None:
    """``None``, or ``value`` as by :func:`check_int`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputError(
            f"got {_typed(value)}; expected an integer{_range(minimum, None)} or none",
            field=field,
        )
    return check_int(value, field, minimum)


def check_number(
    value: Any,
    field: str,
    minimum: float | None = None,
    *,
    strict: bool = False,
    what: str = "a number",
) -> float:
    """``value`` as a finite ``float``, ``>= minimum`` (``> minimum`` if strict).

    ``what`` names the quantity in the message of a value out of range
    (``"seconds"``: ``got -1.0; expected seconds > 0``).
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"got {_typed(value)}; expected a number", field=field)
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"got {number}; expected a finite number", field=field)
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise InputError(
            f"got {number}; expected {what}{_range(minimum, None, strict)}",
            field=field,
        )
    return number


def check_seed(value: Any, field: str = "seed") -> int:
    """A random seed: an integer from 0 to :data:`SEED_MAX`."""
    return check_int(value, field, 0, SEED_MAX)


def check_time_limit(
    value: Any, field: str = "time_limit", *, zero: bool = False
) -> float:
    """Wall-clock seconds: finite and ``> 0`` (``>= 0`` with ``zero``)."""
    return check_number(value, field, 0, strict=not zero, what="seconds")


def check_workers(value: Any, field: str = "num_workers") -> int:
    """Solver threads or worker processes: an integer ``>= 1``."""
    return check_int(value, field, 1)


def check_solver_options(
    time_limit: Any, num_workers: Any, seed: Any, *, names: Sequence[str] = ()
) -> tuple[float, int, int]:
    """The three options every solver takes, checked; ``names`` overrides the
    fields (``("--time-limit", "--workers", "--seed")`` on the command line)."""
    fields = tuple(names) or ("time_limit", "num_workers", "seed")
    return (
        check_time_limit(time_limit, fields[0]),
        check_workers(num_workers, fields[1]),
        check_seed(seed, fields[2]),
    )


def check_choice(value: Any, field: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise InputError(
            f"got {shown(value)}; expected one of {', '.join(options)}", field=field
        )
    return value


def check_type(value: Any, field: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is an instance of ``kind``; ``what`` names it (``"an
    Instance"``)."""
    if not isinstance(value, kind):
        raise InputError(f"got {_typed(value)}; expected {what}", field=field)
    return value


def check_path(value: Any, field: str) -> Path:
    """``value`` as a :class:`~pathlib.Path` if it is a ``str`` or path-like."""
    if not isinstance(value, str | os.PathLike):
        raise InputError(f"got {_typed(value)}; expected a path", field=field)
    return Path(value)


def check_policies(value: Any, field: str = "policies") -> list[Any]:
    """A sequence of policy specifications (``str`` or ``PolicySpec``) as a list.

    A single ``str`` is refused rather than wrapped: it is the easy slip, and a
    sequence of its letters would otherwise be read as policies.
    """
    if isinstance(value, str):
        raise InputError(
            f"got the str {shown(value)}; expected a sequence of policy specs, "
            f"e.g. [{value!r}]",
            field=field,
        )
    if not isinstance(value, Iterable):
        raise InputError(
            f"got {_typed(value)}; expected a sequence of policy specs", field=field
        )
    items = list(value)
    from lsched.policies import PolicySpec  # the policies load on first use

    for k, item in enumerate(items):
        if not isinstance(item, str | PolicySpec):
            raise InputError(
                f"entry {k}: got {_typed(item)}; expected NAME[:key=value,...] or a "
                "PolicySpec",
                field=field,
            )
    return items


def parse_spec(text: Any, field: str) -> tuple[str, dict[str, str]]:
    """``NAME[:key=value,...]`` as ``(name, {key: value})``, keys in order.

    Names and keys are stripped; values are stripped text, converted by the
    caller. Refused: a name that is empty, a ``:`` with nothing after it, an
    empty item (``a=1,,b=2``), an item without ``=``, an empty key or value, and
    a key given twice.
    """
    if not isinstance(text, str):
        raise InputError(
            f"got {_typed(text)}; expected NAME[:key=value,...]", field=field
        )
    name, colon, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise InputError(
            f"got {shown(text)}; expected NAME[:key=value,...]", field=field
        )
    values: dict[str, str] = {}
    if not colon:
        return name, values
    if not rest.strip():
        raise InputError(
            f"got {shown(text)}: nothing after ':'; expected {name} or "
            f"{name}:key=value[,...]",
            field=field,
        )
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise InputError(
                f"got {shown(item.strip())} in {shown(text)}; expected key=value",
                field=field,
            )
        if key in values:
            raise InputError(
                f"key {key!r} given twice in {shown(text)}; expected each key once",
                field=field,
            )
        values[key] = value
    return name, values


def read_text(path: Any, what: str, *, field: str | None = None) -> str:
    """The text of the file at ``path``, decoded as UTF-8.

    Raises
    ------
    InputError
        Naming the file and the line of the first byte that is not UTF-8, with
        ``what`` the file was expected to be (``"a profile (TOML)"``); or naming
        ``field`` if ``path`` is not a path at all.
    OSError
        If the file cannot be read (the CLI reports it in one line).
    """
    path = check_path(path, field or "path")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"byte 0x{data[exc.start]:02x} is not UTF-8 text; expected {what}",
            file=path,
            line=line,
        ) from None


def refuse_nul(path: Any, what: str) -> None:
    """InputError naming the line of the first NUL byte in the file, if any.

    A text file never holds one; CSV parsers stop a field at it, so ``4\\0`` would
    be read as ``4``.
    """
    path = Path(path)
    lines = 1
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            at = chunk.find(b"\0")
            if at >= 0:
                raise InputError(
                    f"a NUL byte; expected {what}",
                    file=path,
                    line=lines + chunk.count(b"\n", 0, at),
                )
            lines += chunk.count(b"\n")
