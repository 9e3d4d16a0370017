"""Arrival processes: ``n`` non-decreasing arrival times in seconds.

- :class:`AllAtZero`: every request arrives at ``t = 0`` (the offline batch setting
  of Jaillet et al. 2025 and of Pang et al. 2025).
- :class:`Poisson` ``(rate_per_s)``: inter-arrival gaps i.i.d. exponential with mean
  ``1 / rate``, so the gaps have coefficient of variation 1.
- :class:`Gamma` ``(rate_per_s, cv)``: gaps i.i.d. Gamma with shape ``k = 1 / cv^2``
  and scale ``1 / (rate * k)``, so mean ``1 / rate`` and CV ``cv`` (``cv > 1`` is
  burstier than Poisson, ``cv < 1`` more regular; ``cv = 1`` is the exponential
  law, i.e. a Poisson process, though it draws a different random stream from
  :class:`Poisson`). This is the renewal model of bursty LLM traffic used e.g. by
  the BurstGPT study (Wang et al. 2024, "BurstGPT: A Real-World Workload Dataset to
  Optimize LLM Serving Systems").

Conventions: the first request arrives at ``t = 0`` and request ``i`` at the sum of
the first ``i`` gaps, so a renewal trace of ``n`` requests spans ``n - 1`` gaps
and starts where every engine's clock starts. Times are rounded to whole
microseconds, the resolution of the real traces (Azure 2023 timestamps carry 0.1
us, Mooncake ms), so that they survive a text round trip unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int, check_number
from lsched.errors import InputError

FloatArray = npt.NDArray[np.float64]

#: Arrival times are rounded to this many decimals of a second (microseconds).
ARRIVAL_DECIMALS = 6


@runtime_checkable
class ArrivalProcess(Protocol):
    """What an arrival process provides."""

    def sample(self, n: int, rng: np.random.Generator) -> FloatArray:
        """Draw ``n`` non-decreasing arrival times in seconds, the first at 0."""
        ...

    def to_params(self) -> dict[str, Any]:
        """A JSON-like dict that :func:`arrivals_from_params` turns back into self."""
        ...


def _from_gaps(gaps: FloatArray) -> FloatArray:
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    # rounding a non-decreasing sequence keeps it non-decreasing
    return np.round(times, ARRIVAL_DECIMALS)


@dataclass(frozen=True, slots=True)
class AllAtZero:
    """Every request arrives at ``t = 0``."""

    def sample(self, n: int, rng: np.random.Generator) -> FloatArray:
        return np.zeros(check_int(n, "n", 0), dtype=np.float64)

    def to_params(self) -> dict[str, Any]:
        return {"kind": "zero"}


@dataclass(frozen=True, slots=True)
class Poisson:
    """A Poisson process at ``rate_per_s`` requests per second (> 0)."""

    rate_per_s: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "rate_per_s",
            check_number(self.rate_per_s, "rate_per_s", 0, strict=True),
        )

    def sample(self, n: int, rng: np.random.Generator) -> FloatArray:
        n = check_int(n, "n", 0)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        return _from_gaps(rng.exponential(1.0 / self.rate_per_s, size=n - 1))

    def to_params(self) -> dict[str, Any]:
        return {"kind": "poisson", "rate_per_s": self.rate_per_s}


@dataclass(frozen=True, slots=True)
class Gamma:
    """A Gamma renewal process: mean rate ``rate_per_s`` (> 0), gap CV ``cv`` (> 0)."""

    rate_per_s: float
    cv: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "rate_per_s",
            check_number(self.rate_per_s, "rate_per_s", 0, strict=True),
        )
        object.__setattr__(self, "cv", check_number(self.cv, "cv", 0, strict=True))

    def sample(self, n: int, rng: np.random.Generator) -> FloatArray:
        n = check_int(n, "n", 0)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        shape = 1.0 / (self.cv * self.cv)
        scale = 1.0 / (self.rate_per_s * shape)  # mean = shape * scale = 1 / rate
        return _from_gaps(rng.gamma(shape, scale, size=n - 1))

    def to_params(self) -> dict[str, Any]:
        return {"kind": "gamma", "rate_per_s": self.rate_per_s, "cv": self.cv}


_KINDS: dict[str, tuple[type, frozenset[str]]] = {
    "zero": (AllAtZero, frozenset()),
    "poisson": (Poisson, frozenset({"rate_per_s"})),
    "gamma": (Gamma, frozenset({"rate_per_s", "cv"})),
}


def arrivals_from_params(
    params: Mapping[str, Any] | ArrivalProcess | None, *, field: str = "arrivals"
) -> ArrivalProcess:
    """Rebuild an arrival process from :meth:`to_params` output (``None``: all at 0).

    Raises
    ------
    InputError
        With ``field`` set to ``"<field>.<key>"`` for a bad, missing or unknown key.
    """
    if params is None:
        return AllAtZero()
    if isinstance(params, AllAtZero | Poisson | Gamma):
        return params
    if not isinstance(params, Mapping):
        raise InputError(
            f"got {params!r}; expected an arrival process or a dict with a 'kind' key",
            field=field,
        )
    kind = params.get("kind")
    if kind not in _KINDS:
        raise InputError(
            f"got {kind!r}; expected one of {sorted(_KINDS)}", field=f"{field}.kind"
        )
    cls, keys = _KINDS[kind]
    given = set(params) - {"kind"}
    if missing := keys - given:
        raise InputError(f"missing for kind {kind!r}", field=f"{field}.{min(missing)}")
    if unknown := given - keys:
        raise InputError(
            f"unknown key for kind {kind!r}; expected {sorted(keys)}",
            field=f"{field}.{min(unknown)}",
        )
    try:
        return cls(**{k: params[k] for k in keys})
    except InputError as exc:
        raise InputError(exc.message, field=f"{field}.{exc.field}") from None
