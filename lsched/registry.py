"""Plug-ins by name: policies and routers, each with a parameter dataclass.

A plug-in is named on the command line and in notebooks as ``NAME`` or
``NAME:key=value,key=value`` (e.g. ``fcfs:chunked=false``). A :class:`Registry`
maps names to a :class:`Registered` entry: the parameter dataclass (``None`` for
none), a builder and a one-line summary. A builder is called as
``build(params, context)``, or as ``build(params)`` when it takes one argument (a
builder written before contexts existed keeps working).

Users add their own with :meth:`Registry.register` (``lsched.register_policy`` and
``lsched.register_router`` are the front doors); the built-in entries are
registered where they are defined.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lsched.checks import parse_spec
from lsched.errors import InputError


@dataclass(frozen=True)
class NoParams:
    """The parameters of a plug-in that has none."""


@dataclass(frozen=True)
class Registered:
    """One plug-in: its parameter dataclass, its builder and a summary."""

    params: type
    build: Callable[..., Any]
    summary: str = ""

    def make(self, params: Any, context: Any) -> Any:
        """Build one plug-in object."""
        if positional_arity(self.build) >= 2:
            return self.build(params, context)
        return self.build(params)


def positional_arity(function: Callable[..., Any]) -> int:
    """How many positional arguments ``function`` takes (a large number for
    ``*args``); how a builder or a ``make`` that predates contexts is told apart."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return 1
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return 1 << 30
    return sum(
        k
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for k in kinds
    )


class Registry(Mapping[str, Registered]):
    """Named plug-ins of one kind (``"policy"``, ``"router"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registered] = {}

    def __getitem__(self, name: str) -> Registered:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def register(
        self,
        name: str,
        build: Callable[..., Any],
        params: type | None = None,
        summary: str = "",
        *,
        replace: bool = False,
    ) -> None:
        """Add a plug-in.

        Parameters
        ----------
        name
            Its name (no ``:``, ``,`` or ``=``).
        build
            ``build(params, context)`` or ``build(params)``, returning one object.
        params
            A dataclass whose fields are the ``key=value`` options (defaults
            required); ``None``: no options.
        summary
            One line for listings.
        replace
            Allow replacing an entry of the same name.

        Raises
        ------
        InputError
            For a bad name, a taken name (unless ``replace``) or ``params`` that is
            not a dataclass with defaults.
        """
        if not name or any(c in name for c in ":,= ") or name != name.strip():
            raise InputError(
                f"got {name!r}; expected a name without ':', ',', '=' or spaces",
                field=self.kind,
            )
        if name in self._entries and not replace:
            raise InputError(
                f"{self.kind} {name!r} is already registered; pass replace=True to "
                "replace it",
                field=self.kind,
            )
        params = NoParams if params is None else params
        if not dataclasses.is_dataclass(params):
            raise InputError(
                f"parameters of {self.kind} {name!r} must be a dataclass, got "
                f"{params!r}",
                field=self.kind,
            )
        try:
            params()
        except TypeError as exc:
            raise InputError(
                f"parameters of {self.kind} {name!r} need a default for every "
                f"field ({exc})",
                field=self.kind,
            ) from None
        self._entries[name] = Registered(params, build, summary)

    def parse(self, text: str) -> tuple[str, Any]:
        """``NAME[:key=value,...]`` as ``(name, params)``.

        Raises
        ------
        InputError
            For an unknown name or key, or a value of the wrong type; the message
            lists what is known.
        """
        name, items = parse_spec(text, self.kind)
        if name not in self._entries:
            raise InputError(
                f"unknown {self.kind} {name!r}; expected one of "
                f"{', '.join(sorted(self._entries))}",
                field=self.kind,
            )
        params_type = self._entries[name].params
        fields = {f.name: f for f in dataclasses.fields(params_type)}
        values: dict[str, Any] = {}
        for key, value in items.items():
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise InputError(
                    f"got {f'{key}={value}'!r}; expected key=value with key one of: "
                    f"{known}",
                    field=f"{self.kind} {name}",
                )
            values[key] = _convert(value, fields[key].type, f"{name}.{key}")
        try:
            return name, params_type(**values)
        except ValueError as exc:
            raise InputError(str(exc), field=f"{self.kind} {name}") from None

    def label(self, name: str, params: Any) -> str:
        """``name`` or ``name:key=value,...`` listing the non-default parameters."""
        default = self._entries[name].params()
        changed = [
            f"{f.name}={_show(getattr(params, f.name))}"
            for f in dataclasses.fields(params)
            if getattr(params, f.name) != getattr(default, f.name)
        ]
        return name + (":" + ",".join(changed) if changed else "")


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _convert(text: str, kind: Any, option: str) -> Any:
    # field types are strings under `from __future__ import annotations`:
    # "int", "float | None", ...; "none" gives None where None is allowed
    parts = [p.strip() for p in str(kind).split("|")]
    if "None" in parts and text.lower() == "none":
        return None
    kind = next((p for p in parts if p != "None"), "str")
    kind = {"bool": bool, "int": int, "float": float, "str": str}.get(kind, kind)
    if kind is bool:
        lowered = text.lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
        raise InputError(f"got {text!r}; expected true or false", field=option)
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise InputError(
                f"got {text!r}; expected {'an integer' if kind is int else 'a number'}",
                field=option,
            ) from None
    return text
