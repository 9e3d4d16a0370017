"""``--set FIELD=VALUE``: override deployment-profile fields for one run.

Every command that takes ``--model`` also takes ``--set`` (repeatable), e.g.
``--model unit-slot --set kv_capacity_tokens=40 --set max_num_seqs=8``. A VALUE
is read as an int, else a float, else kept as text (text fields such as ``name``
always keep the text). The overrides go through
:meth:`~lsched.profile.DeploymentProfile.replace` in one call, so the profile is
re-validated as a whole; an unknown field or a bad value is an
:class:`~lsched.errors.InputError` naming ``--set`` and the field.

:func:`deployment_profile` also applies the KV capacity an instance carries
(``params["kv_capacity_tokens"]``, e.g. Jaillet et al.'s ``M``) unless
``--set kv_capacity_tokens=...`` is given, which wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from lsched.errors import InputError
from lsched.instance import Instance
from lsched.profile import DeploymentProfile, load_profile
from lsched.tiers import HOST_FIELDS, host_from_table

OPTION = "--set"
SET_HELP = (
    "Override a profile field for this run, FIELD=VALUE (repeatable), e.g. "
    "--set kv_capacity_tokens=40 --set max_num_seqs=8."
)
#: Fields that hold structures, not one value: ``--set`` cannot express them.
_STRUCTURED = frozenset({"iteration_time", "hardware", "sources", "path", "host"})


def settable_fields() -> tuple[str, ...]:
    """Profile fields ``--set`` accepts, in declaration order."""
    return tuple(
        f.name
        for f in dataclasses.fields(DeploymentProfile)
        if f.name not in _STRUCTURED
    )


def _text_fields() -> frozenset[str]:
    # annotations are strings under `from __future__ import annotations`
    return frozenset(
        f.name for f in dataclasses.fields(DeploymentProfile) if f.type in ("str", str)
    )


def parse_value(text: str) -> int | float | str:
    """``text`` as an int, else a float, else itself (stripped)."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["FIELD=VALUE", ...]`` as ``{field: value}``; each FIELD once.

    The host tier's fields are set one by one as ``host.FIELD``
    (:data:`lsched.tiers.HOST_FIELDS`) and come back as one ``host`` table.

    Raises
    ------
    InputError
        On an item without ``=``, a field that is unknown or not settable, or
        one given twice (which value was meant?), naming ``--set`` and the field.
    """
    settable = settable_fields()
    text_fields = _text_fields()
    overrides: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items or ():
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"got {item!r}; expected FIELD=VALUE", field=OPTION)
        if name in given:
            raise InputError(
                f"given twice ({given[name]!r} and {item!r}); expected each field once",
                field=f"{OPTION} {name}",
            )
        given[name] = item
        if name.startswith("host."):
            key = name.removeprefix("host.")
            if key not in HOST_FIELDS:
                raise InputError(
                    f"host tier field {key!r} is unknown; expected one of "
                    f"{', '.join(HOST_FIELDS)}",
                    field=f"{OPTION} {name}",
                )
            overrides.setdefault("host", {})[key] = parse_value(raw)
            continue
        if name not in settable:
            what = "is not a single value" if name in _STRUCTURED else "is unknown"
            raise InputError(
                f"profile field {name!r} {what}; expected one of {', '.join(settable)}"
                f" or host.FIELD",
                field=f"{OPTION} {name}",
            )
        overrides[name] = raw if name in text_fields else parse_value(raw)
    return overrides


def apply_overrides(
    profile: DeploymentProfile,
    overrides: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
) -> DeploymentProfile:
    """``profile`` with ``defaults`` then ``overrides`` applied in one ``replace``.

    ``defaults`` are changes that do not come from ``--set`` (an instance's KV
    capacity); ``overrides`` win over them.

    Raises
    ------
    InputError
        If the changed profile is not valid; the field is ``--set FIELD`` when an
        override is to blame.
    """
    changes = {**(defaults or {}), **overrides}
    if not changes:
        return profile
    if "host" in changes:
        assert profile.host is not None
        host = host_from_table(changes["host"], profile.host, prefix=f"{OPTION} host.")
        changes["host"] = host
    try:
        return profile.replace(**changes)
    except InputError as exc:
        if not overrides:
            raise
        if exc.field in overrides:
            value = overrides[exc.field]
            if isinstance(value, str) and not value.isprintable():
                value = repr(value)  # a control byte would garble the line
            raise InputError(
                f"{exc.message} (from {OPTION} {exc.field}={value})",
                field=f"{OPTION} {exc.field}",
            ) from None
        names = ", ".join(f"{OPTION} {name}" for name in overrides)
        raise InputError(f"{exc} (with {names})", field=OPTION) from None
    except (TypeError, ValueError) as exc:  # a structure the checks did not expect
        names = ", ".join(f"{OPTION} {name}" for name in overrides)
        raise InputError(f"{exc} (with {names})", field=OPTION) from None


def deployment_profile(
    model: str,
    overrides: Mapping[str, Any],
    instance: Instance | None = None,
    *,
    kv_capacity_tokens: int | None = None,
) -> DeploymentProfile:
    """Load ``model``; apply a KV capacity, then ``overrides``.

    The capacity is ``kv_capacity_tokens`` if given (a command's own option), else
    the instance's ``params["kv_capacity_tokens"]``; ``--set kv_capacity_tokens``
    in ``overrides`` wins over both.
    """
    profile = load_profile(model)
    defaults: dict[str, Any] = {}
    capacity = kv_capacity_tokens
    if capacity is None and instance is not None:
        capacity = instance.params.get("kv_capacity_tokens")
    if capacity is not None and "kv_capacity_tokens" not in overrides:
        defaults["kv_capacity_tokens"] = int(capacity)
    return apply_overrides(profile, overrides, defaults=defaults)
