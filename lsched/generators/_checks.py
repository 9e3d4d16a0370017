"""Parameter checks shared by the generators: each failure is an InputError naming
the parameter, the value found and what was expected."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from lsched.errors import InputError


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``."""
    # bool is an Integral subtype; True as a token count is a bug, not a 1
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputError(f"got {value!r}; expected an integer", field=name)
    if minimum is not None and value < minimum:
        raise InputError(f"got {value}; expected an integer >= {minimum}", field=name)
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    strictly_positive: bool = False,
) -> float:
    """Return ``value`` as a finite ``float``, ``> 0`` or ``>= minimum`` if asked."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"got {value!r}; expected a number", field=name)
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"got {number}; expected a finite number", field=name)
    if strictly_positive and not number > 0:
        raise InputError(f"got {number}; expected a number > 0", field=name)
    if minimum is not None and number < minimum:
        raise InputError(f"got {number}; expected a number >= {minimum}", field=name)
    return number


def check_seed(seed: Any) -> int:
    """A seed is a non-negative integer (what ``numpy.random.default_rng`` takes)."""
    return check_int("seed", seed, minimum=0)
