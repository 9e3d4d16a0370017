"""Token-length distributions for prompts and outputs.

Every distribution draws ``n`` integer lengths ``>= 1`` from a caller-supplied
``numpy.random.Generator`` (no global RNG):

- :class:`Fixed` ``(tokens)``: every length is ``tokens``.
- :class:`UniformInt` ``(low, high)``: uniform on the integers ``low..high``, both
  bounds inclusive.
- :class:`LogNormal` ``(median, sigma, max_tokens)``: ``L = rint(median * exp(sigma
  * Z))`` with ``Z ~ N(0, 1)``, then clipped to ``[1, max_tokens]`` (``max_tokens``
  optional). It is parametrised by the **median** ``exp(mu)`` and the standard
  deviation ``sigma`` of ``log L``, because both are read straight off a trace
  (median and standard deviation of log lengths). :meth:`LogNormal.from_mean_cv`
  converts a mean ``m`` and coefficient of variation ``c`` of the continuous
  distribution: ``sigma^2 = ln(1 + c^2)``, ``median = m / sqrt(1 + c^2)``.
  Rounding and clipping shift the mean slightly; the median is exact up to
  rounding (rint of the median of a continuous variable).

Joint (prompt, output) resampling from a trace lives in
:func:`lsched.generators.resample`, since a pair is not two independent lengths.

Each distribution converts to a JSON-like dict (:meth:`to_params`, stored in
``Instance.params`` so that an instance can be regenerated) and to a one-line
spec (:attr:`spec`), the form the CLI takes::

    fixed:tokens=128
    uniform:low=1,high=5
    lognormal:median=512,sigma=1.0[,max=4096]
    lognormal:mean=600,cv=0.8[,max=4096]     (converted to median and sigma)

:func:`parse_length_spec` reads a spec and :func:`length_from_params` a dict; both
raise :class:`~lsched.errors.InputError` naming the option or key at fault.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int, check_number, parse_spec
from lsched.errors import InputError

IntArray = npt.NDArray[np.int64]

#: Largest length a draw is clipped to when no ``max_tokens`` is given: far above
#: any context window, small enough that the cast to int64 cannot overflow.
_HARD_MAX_TOKENS = 2**40


@runtime_checkable
class LengthDistribution(Protocol):
    """What a prompt or output length distribution provides."""

    @property
    def spec(self) -> str:
        """The one-line spec that :func:`parse_length_spec` reads back."""
        ...

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        """Draw ``n`` lengths, each an integer ``>= 1``."""
        ...

    def to_params(self) -> dict[str, Any]:
        """A JSON-like dict that :func:`length_from_params` turns back into self."""
        ...


def _number_text(value: float) -> str:
    """Shortest text for a number in a spec: ``512`` rather than ``512.0``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True, slots=True)
class Fixed:
    """Every length equals ``tokens`` (an integer >= 1)."""

    tokens: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", check_int(self.tokens, "tokens", 1))

    @property
    def spec(self) -> str:
        return f"fixed:tokens={self.tokens}"

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        return np.full(check_int(n, "n", 0), self.tokens, dtype=np.int64)

    def to_params(self) -> dict[str, Any]:
        return {"kind": "fixed", "tokens": self.tokens}


@dataclass(frozen=True, slots=True)
class UniformInt:
    """Uniform on the integers ``low..high``, both inclusive (``1 <= low <= high``)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        low = check_int(self.low, "low", 1)
        high = check_int(self.high, "high", 1)
        if high < low:
            raise InputError(
                f"got {high} < low = {low}; expected high >= low", field="high"
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def spec(self) -> str:
        return f"uniform:low={self.low},high={self.high}"

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        # integers() excludes its upper end; the documented bounds are inclusive
        return rng.integers(
            self.low, self.high + 1, size=check_int(n, "n", 0), dtype=np.int64
        )

    def to_params(self) -> dict[str, Any]:
        return {"kind": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Lognormal lengths: ``rint(median * exp(sigma * Z))`` clipped to ``[1, max]``.

    Parameters
    ----------
    median
        Median length in tokens (``exp(mu)``), > 0.
    sigma
        Standard deviation of the log length, >= 0 (0 gives a fixed length).
    max_tokens
        Optional upper clip (an integer >= 1), e.g. a context window.
    """

    median: float
    sigma: float
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        median = check_number(self.median, "median", 0, strict=True)
        sigma = check_number(self.sigma, "sigma", 0.0)
        object.__setattr__(self, "median", median)
        object.__setattr__(self, "sigma", sigma)
        if self.max_tokens is not None:
            object.__setattr__(
                self, "max_tokens", check_int(self.max_tokens, "max_tokens", 1)
            )

    @classmethod
    def from_mean_cv(
        cls, mean: float, cv: float, max_tokens: int | None = None
    ) -> LogNormal:
        """The lognormal whose continuous law has this mean and CV (before rounding).

        ``sigma^2 = ln(1 + cv^2)`` and ``median = mean / sqrt(1 + cv^2)``, since a
        lognormal has mean ``exp(mu + sigma^2 / 2)`` and ``CV^2 = exp(sigma^2) - 1``.
        """
        mean = check_number(mean, "mean", 0, strict=True)
        cv = check_number(cv, "cv", 0.0)
        return cls(
            median=mean / math.sqrt(1.0 + cv * cv),
            sigma=math.sqrt(math.log1p(cv * cv)),
            max_tokens=max_tokens,
        )

    @property
    def spec(self) -> str:
        text = f"lognormal:median={_number_text(self.median)},"
        text += f"sigma={_number_text(self.sigma)}"
        return text if self.max_tokens is None else f"{text},max={self.max_tokens}"

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        draws = rng.lognormal(
            math.log(self.median), self.sigma, size=check_int(n, "n", 0)
        )
        upper = _HARD_MAX_TOKENS if self.max_tokens is None else self.max_tokens
        # clip in float first so that a far-tail draw cannot overflow int64
        return np.clip(np.rint(draws), 1, upper).astype(np.int64)

    def to_params(self) -> dict[str, Any]:
        return {
            "kind": "lognormal",
            "median": self.median,
            "sigma": self.sigma,
            "max_tokens": self.max_tokens,
        }


# -- from dicts and specs ---------------------------------------------------------

#: Keys each kind accepts in a params dict (besides "kind").
_PARAM_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required, optional)
    "fixed": (frozenset({"tokens"}), frozenset()),
    "uniform": (frozenset({"low", "high"}), frozenset()),
    "lognormal": (frozenset({"median", "sigma"}), frozenset({"max_tokens"})),
}


def length_from_params(
    params: Mapping[str, Any] | LengthDistribution, *, field: str = "lengths"
) -> LengthDistribution:
    """Rebuild a distribution from :meth:`to_params` output (or pass one through).

    Raises
    ------
    InputError
        With ``field`` set to ``"<field>.<key>"`` for a bad, missing or unknown key.
    """
    if isinstance(params, Fixed | UniformInt | LogNormal):
        return params
    if not isinstance(params, Mapping):
        raise InputError(
            f"got {params!r}; expected a length distribution or a dict with a "
            "'kind' key",
            field=field,
        )
    kind = params.get("kind")
    if kind not in _PARAM_KEYS:
        raise InputError(
            f"got {kind!r}; expected one of {sorted(_PARAM_KEYS)}",
            field=f"{field}.kind",
        )
    required, optional = _PARAM_KEYS[kind]
    keys = set(params) - {"kind"}
    if missing := required - keys:
        raise InputError(f"missing for kind {kind!r}", field=f"{field}.{min(missing)}")
    if unknown := keys - required - optional:
        raise InputError(
            f"unknown key for kind {kind!r}; expected {sorted(required | optional)}",
            field=f"{field}.{min(unknown)}",
        )
    values = {k: v for k, v in params.items() if k != "kind"}
    try:
        if kind == "fixed":
            return Fixed(**values)
        if kind == "uniform":
            return UniformInt(**values)
        return LogNormal(**values)
    except InputError as exc:
        raise InputError(exc.message, field=f"{field}.{exc.field}") from None


#: Spec keys per kind; each alternative is (required keys, optional keys).
_SPEC_FORMS: dict[str, str] = {
    "fixed": "fixed:tokens=N",
    "uniform": "uniform:low=A,high=B",
    "lognormal": "lognormal:median=M,sigma=S[,max=N] or lognormal:mean=M,cv=C[,max=N]",
}


def _spec_number(option: str, key: str, text: str, *, integer: bool) -> float:
    try:
        return float(int(text)) if integer else float(text)
    except ValueError:
        what = "an integer" if integer else "a number"
        raise InputError(f"got {key}={text!r}; expected {what}", field=option) from None


def parse_length_spec(spec: str, *, option: str = "length") -> LengthDistribution:
    """Parse ``KIND:key=value,...`` (see the module docstring) into a distribution.

    Parameters
    ----------
    spec
        E.g. ``"lognormal:median=512,sigma=1.0"``.
    option
        What to name in errors, e.g. the CLI option ``"--prompt"``.

    Raises
    ------
    InputError
        With ``field=option`` and a message that says what was found and which
        form was expected.
    """
    kind, items = parse_spec(spec, option)
    kind = kind.lower()
    if kind not in _SPEC_FORMS:
        forms = "; ".join(_SPEC_FORMS.values())
        raise InputError(f"got {spec!r}; expected one of: {forms}", field=option)
    form = _SPEC_FORMS[kind]
    values: dict[str, str] = {}
    for key, value in items.items():
        if key.lower() in values:
            raise InputError(f"key {key!r} given twice in {spec!r}", field=option)
        values[key.lower()] = value
    if kind == "lognormal":
        by_mean = "mean" in values or "cv" in values
        required = {"mean", "cv"} if by_mean else {"median", "sigma"}
        allowed = required | {"max"}
    else:
        required = allowed = {"fixed": {"tokens"}, "uniform": {"low", "high"}}[kind]
    if unknown := set(values) - allowed:
        raise InputError(
            f"unknown key {min(unknown)!r} in {spec!r}; expected {form}", field=option
        )
    if missing := required - set(values):
        raise InputError(
            f"missing key {min(missing)!r} in {spec!r}; expected {form}", field=option
        )
    numbers = {
        k: _spec_number(option, k, v, integer=k in {"tokens", "low", "high", "max"})
        for k, v in values.items()
    }
    try:
        if kind == "fixed":
            return Fixed(int(numbers["tokens"]))
        if kind == "uniform":
            return UniformInt(int(numbers["low"]), int(numbers["high"]))
        max_tokens = int(numbers["max"]) if "max" in numbers else None
        if by_mean:
            return LogNormal.from_mean_cv(numbers["mean"], numbers["cv"], max_tokens)
        return LogNormal(numbers["median"], numbers["sigma"], max_tokens)
    except InputError as exc:
        # keep the option as the field; say which key of the spec was wrong
        key = "max" if exc.field == "max_tokens" else exc.field
        raise InputError(f"{key}: {exc.message} (in {spec!r})", field=option) from None
