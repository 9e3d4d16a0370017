"""Service-level objectives: TTFT and TPOT deadlines, and their attainment.

An :class:`SLO` is a TTFT deadline (seconds from arrival to the first token), a
TPOT deadline (seconds per output token after the first), or both, the same for
every request, as DistServe states its SLOs (e.g. OPT-13B chat: TTFT 0.25 s, TPOT
0.1 s). :func:`parse_slo` reads the command line's ``ttft=0.25,tpot=0.1``.

Deadlines on an instance. :meth:`SLO.apply` writes the SLO's deadlines into the
instance's ``ttft_deadline_s`` / ``tpot_deadline_s`` columns, which the metrics
read (:func:`lsched.metrics.slo_attainment`). A trace that already carries a
deadline column keeps it: per-request deadlines (a tenant's, a priority class's)
say more than one figure for all, so the SLO only fills the columns the trace
lacks, unless ``override=True``, which replaces them. A column the SLO does not
name is left as the trace has it, so ``ttft=0.25`` on a trace with TPOT deadlines
judges both.

Attainment (:func:`attainment`) is taken over *all* requests: a rejected request
misses every deadline (DESIGN.md, "Rejection"). TTFT and TPOT are those of
:mod:`lsched.metrics`, which owns both definitions by name: ``"lsched"`` (TTFT
``f - a``, TPOT ``(c - f) / (o - 1)``) and ``"simdistserve"`` (TTFT ``f - a``, the
end of the prefill; TPOT ``(c - f) / o``, the decode span over the output length;
the mapping of simdistserve's output length to ``o`` is in that module's
docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from lsched.errors import InputError

if TYPE_CHECKING:
    from lsched.evaluator.result import SimulationResult
    from lsched.instance import Instance

__all__ = ["SLO", "Attainment", "attainment", "parse_slo"]

#: SLO keys of :func:`parse_slo` -> the instance column each one fills.
SLO_COLUMNS: dict[str, str] = {"ttft": "ttft_deadline_s", "tpot": "tpot_deadline_s"}
#: What :func:`parse_slo` expects, for its messages.
SLO_SYNTAX = "ttft=SECONDS,tpot=SECONDS (one or both, e.g. ttft=0.25,tpot=0.1)"


def _deadline(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"got {value!r}; expected a number of seconds", field=field)
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(
            f"got {value!r}; expected a finite number of seconds > 0", field=field
        )
    return value


@dataclass(frozen=True)
class SLO:
    """Deadlines that every request shares.

    Attributes
    ----------
    ttft_s
        Time to first token, seconds after arrival, or ``None``.
    tpot_s
        Time per output token after the first, seconds, or ``None``.

    At least one is given; each is a finite number > 0.

    Raises
    ------
    InputError
        Naming ``ttft_s`` or ``tpot_s`` and what was expected.
    """

    ttft_s: float | None = None
    tpot_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ttft_s", _deadline(self.ttft_s, "ttft_s"))
        object.__setattr__(self, "tpot_s", _deadline(self.tpot_s, "tpot_s"))
        if self.ttft_s is None and self.tpot_s is None:
            raise InputError(
                "got neither; expected a TTFT deadline, a TPOT deadline or both",
                field="slo",
            )

    @property
    def deadlines(self) -> dict[str, float]:
        """The instance columns the SLO fills and their value, e.g.
        ``{"ttft_deadline_s": 0.25, "tpot_deadline_s": 0.1}``."""
        values = {"ttft": self.ttft_s, "tpot": self.tpot_s}
        return {
            SLO_COLUMNS[key]: value
            for key, value in values.items()
            if value is not None
        }

    def apply(self, instance: Instance, *, override: bool = False) -> Instance:
        """``instance`` with this SLO's deadlines on every request.

        A deadline column the instance already carries is kept, unless
        ``override`` (then the SLO replaces it); columns the SLO does not name are
        left alone (module docstring). Returns ``instance`` itself when nothing
        changes.
        """
        changes = {
            column: [value] * len(instance)
            for column, value in self.deadlines.items()
            if override or getattr(instance, column) is None
        }
        return instance.replace(**changes) if changes else instance

    def kept(self, instance: Instance) -> tuple[str, ...]:
        """The deadline columns :meth:`apply` keeps from ``instance`` (without
        ``override``): those this SLO names and the instance already carries."""
        return tuple(c for c in self.deadlines if getattr(instance, c) is not None)

    def __str__(self) -> str:
        values = {"ttft": self.ttft_s, "tpot": self.tpot_s}
        return ",".join(f"{k}={v!r}" for k, v in values.items() if v is not None)

    def to_dict(self) -> dict[str, float | None]:
        """``{"ttft_s": ..., "tpot_s": ...}`` (``None`` where not given)."""
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s}


def _seconds(text: str, field: str) -> float:
    """``0.25``, ``0.25s`` or ``250ms`` as seconds."""
    number, scale = text, 1.0
    if text.endswith("ms"):
        number, scale = text[:-2], 1e-3
    elif text.endswith("s"):
        number = text[:-1]
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(
            f"got {text!r}; expected a finite number of seconds > 0 (or "
            "milliseconds with 'ms', e.g. 250ms)",
            field=field,
        )
    return value


def parse_slo(text: str, *, field: str = "slo") -> SLO:
    """Read ``ttft=0.25,tpot=0.1`` (seconds; ``250ms`` and ``0.25s`` also read).

    Either key may be left out, not both; spaces around the parts are ignored.

    Raises
    ------
    InputError
        Naming ``field`` (``slo``) for a malformed or repeated part or an unknown
        key, ``slo.ttft`` / ``slo.tpot`` for a value that is not a positive finite
        duration (``--slo ttft`` for a ``field`` that is an option, ``--slo``);
        each message says what was expected.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"got {text!r}; expected {SLO_SYNTAX}", field=field)
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = (p.strip() for p in part.partition("="))
        if not sep or not key or not value:
            raise InputError(
                f"got {part.strip()!r}; expected key=value in {SLO_SYNTAX}",
                field=field,
            )
        key = key.lower()
        if key not in SLO_COLUMNS:
            raise InputError(
                f"unknown key {key!r}; expected ttft and/or tpot, as in "
                "ttft=0.25,tpot=0.1 (seconds)",
                field=field,
            )
        if key in values:
            raise InputError(f"{key} is given twice; expected it once", field=field)
        # an option's parts read '--slo ttft', a parameter's 'slo.ttft'
        part_field = f"{field} {key}" if field.startswith("-") else f"{field}.{key}"
        values[key] = _seconds(value, part_field)
    return SLO(ttft_s=values.get("ttft"), tpot_s=values.get("tpot"))


class Attainment(NamedTuple):
    """Shares of all requests meeting the TTFT deadline, the TPOT deadline and
    every deadline they carry (``both``); NaN where there is no such deadline."""

    ttft: float
    tpot: float
    both: float


def attainment(
    instance: Instance,
    result: SimulationResult,
    slo: SLO | None = None,
    *,
    definitions: str = "lsched",
    override: bool = False,
) -> Attainment:
    """SLO attainment of a simulation of ``instance``, every request counted.

    Parameters
    ----------
    instance
        The instance that was simulated (its deadlines are used where ``slo`` is
        ``None`` or leaves them, see :meth:`SLO.apply`).
    result
        Its :class:`~lsched.evaluator.result.SimulationResult`; a rejected
        request (no first-token time) is a miss.
    slo
        Deadlines to judge by, put on ``instance`` by :meth:`SLO.apply`.
    definitions
        ``"lsched"`` or ``"simdistserve"`` (:data:`lsched.metrics.DEFINITIONS`).
    override
        Let ``slo`` replace deadline columns the instance carries.

    Raises
    ------
    InputError
        If ``result`` has another number of requests, or on unknown
        ``definitions``.
    """
    from lsched.metrics import slo_attainment

    if slo is not None:
        instance = slo.apply(instance, override=override)
    records = result.requests
    if len(records) != len(instance):
        raise InputError(
            f"the result has {len(records)} requests; expected {len(instance)}, "
            "one per request of the instance",
            field="result",
        )
    shares = slo_attainment(
        instance,
        records["first_token_s"].to_numpy(dtype=float),
        records["completion_s"].to_numpy(dtype=float),
        definitions,
    )
    return Attainment(
        ttft=shares["slo_attainment_ttft"],
        tpot=shares["slo_attainment_tpot"],
        both=shares["slo_attainment"],
    )
