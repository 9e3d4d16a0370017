"""Output-length predictors of controlled quality.

Length-aware policies (``sjf``, ``srpt``, ``mc-sf``, ``sorted-f``) read
``Instance.predicted_output_tokens``; every function here returns a *new*
:class:`~lsched.instance.Instance` with that column set, so any predictor can be
paired with any policy::

    from lsched import predictors
    noisy = predictors.lognormal_noise(instance, sigma=0.5, seed=0)
    simulate(noisy, profile, "mc-sf")

Each result records how it was made in ``params["predictor"]`` (a JSON-like dict:
``name`` and the arguments), so tables and files say which predictor a run used.

Predictors
----------
:func:`oracle`
    ``pred_i = o_i`` (the true length; an upper bound on what prediction can give).
:func:`lognormal_noise`
    Multiplicative log-normal error, median-unbiased:
    ``pred_i = max(1, round(o_i * exp(sigma * z_i)))``, ``z_i ~ N(0, 1)`` i.i.d.
    ``log(pred / o)`` has standard deviation ``sigma`` (before rounding), and
    ``P(pred_i > o_i) = P(pred_i < o_i)`` up to rounding.
:func:`buckets`
    Class prediction, as a length classifier gives: with edges
    ``e_1 < ... < e_k`` the classes are ``[1, e_1], [e_1 + 1, e_2], ...,
    [e_{k-1} + 1, e_k]`` and an open top class ``> e_k``; every request is
    predicted as its class's *upper edge* ``e_c`` (an upper bound within the
    class). The open class has no upper edge and is predicted ``e_k``, an
    underestimate: a classifier that knows only "longer than ``e_k``" can say no
    more. Give a last edge at or above the longest output to avoid it.
:func:`interval`
    An interval ``[lo_i, hi_i]`` that contains ``o_i`` with ``hi_i / lo_i`` about
    ``width`` (a ratio >= 1): ``lo_i = max(1, floor(o_i * width**(-u_i)))``,
    ``hi_i = ceil(o_i * width**(1 - u_i))`` with ``u_i ~ U(0, 1)`` i.i.d. placing
    ``o_i`` inside the interval on a log scale. The prediction is ``hi_i``, so
    ``o_i <= pred_i <= ceil(width * o_i)``: the overestimating predictions of
    Jaillet et al. 2025 (their guarantee for MC-SF assumes ``o <= pred <= alpha o``).
    Policies use only ``hi``; :func:`interval_bounds` returns ``lo`` and ``hi``
    (the same draws, for the same seed) for analyses that want both.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int, check_number, check_seed, parse_spec
from lsched.errors import InputError
from lsched.instance import Instance

IntArray = npt.NDArray[np.int64]

__all__ = ["buckets", "interval", "interval_bounds", "lognormal_noise", "oracle"]


def _with_predictions(
    instance: Instance, predicted: npt.ArrayLike, how: dict[str, Any]
) -> Instance:
    params = dict(instance.params)
    params["predictor"] = how
    return instance.replace(
        predicted_output_tokens=np.asarray(predicted, dtype=np.int64), params=params
    )


def oracle(instance: Instance) -> Instance:
    """Predict every output length exactly: ``pred_i = o_i``.

    Parameters
    ----------
    instance
        The requests.

    Returns
    -------
    Instance
        A copy with ``predicted_output_tokens = output_tokens``.
    """
    return _with_predictions(instance, instance.output_tokens, {"name": "oracle"})


def lognormal_noise(instance: Instance, sigma: float, seed: int) -> Instance:
    """Multiplicative, median-unbiased log-normal noise on the true lengths.

    ``pred_i = max(1, round(o_i * exp(sigma * z_i)))`` with ``z_i ~ N(0, 1)``
    i.i.d. from ``numpy.random.default_rng(seed)``; ``sigma = 0`` is the oracle.

    Parameters
    ----------
    instance
        The requests.
    sigma
        Standard deviation of ``log(pred / o)``, a number >= 0.
    seed
        Non-negative integer seed.

    Returns
    -------
    Instance
        A copy with the noisy ``predicted_output_tokens``.

    Raises
    ------
    InputError
        If ``sigma`` or ``seed`` is invalid.
    """
    sigma = check_number(sigma, "sigma", 0.0)
    seed = check_seed(seed)
    z = np.random.default_rng(seed).standard_normal(len(instance))
    raw = np.rint(instance.output_tokens * np.exp(sigma * z))
    # clip in float first: a huge sigma must not overflow the int64 cast
    predicted = np.clip(raw, 1, 2**62).astype(np.int64)
    how = {"name": "lognormal_noise", "sigma": sigma, "seed": seed}
    return _with_predictions(instance, predicted, how)


def buckets(instance: Instance, edges: Sequence[int]) -> Instance:
    """Class prediction: each request predicted as its length class's upper edge.

    Classes ``[1, e_1], [e_1 + 1, e_2], ..., [e_{k-1} + 1, e_k]`` and an open top
    class ``> e_k``, predicted ``e_k`` (module docstring).

    Parameters
    ----------
    instance
        The requests.
    edges
        Strictly increasing integers >= 1 (at least one).

    Returns
    -------
    Instance
        A copy with ``predicted_output_tokens`` the class representatives.

    Raises
    ------
    InputError
        If ``edges`` is empty, not integers >= 1, or not strictly increasing.
    """
    values = [check_int(e, "edges", 1) for e in edges]
    if not values:
        raise InputError("got no edges; expected at least one", field="edges")
    if any(b <= a for a, b in pairwise(values)):
        raise InputError(f"got {values}; expected strictly increasing", field="edges")
    edge = np.array(values, dtype=np.int64)
    # class c holds o with edge[c-1] < o <= edge[c]; the open top class maps to k
    cls = np.searchsorted(edge, instance.output_tokens, side="left")
    predicted = edge[np.minimum(cls, len(edge) - 1)]
    return _with_predictions(instance, predicted, {"name": "buckets", "edges": values})


def interval_bounds(
    instance: Instance, width: float, seed: int
) -> tuple[IntArray, IntArray]:
    """The intervals ``[lo, hi]`` of :func:`interval` (same ``width`` and ``seed``).

    Parameters
    ----------
    instance
        The requests.
    width
        Target ratio ``hi / lo``, a number >= 1 (1 gives ``lo = hi = o``).
    seed
        Non-negative integer seed.

    Returns
    -------
    lo, hi
        Integer arrays with ``1 <= lo <= o <= hi``.

    Raises
    ------
    InputError
        If ``width`` or ``seed`` is invalid.
    """
    width = check_number(width, "width", 1.0)
    seed = check_seed(seed)
    u = np.random.default_rng(seed).random(len(instance))  # in [0, 1)
    o = instance.output_tokens
    # width**(-u) <= 1 <= width**(1 - u) exactly in floating point, so the
    # floor/ceil keep o inside; with width = 1 both factors are exactly 1
    lo = np.maximum(1, np.floor(o * width ** (-u))).astype(np.int64)
    hi = np.ceil(o * width ** (1.0 - u)).astype(np.int64)
    return lo, hi


def interval(instance: Instance, width: float, seed: int) -> Instance:
    """Predict the upper end of a random interval of ratio ``width`` around ``o``.

    ``pred_i = hi_i`` of :func:`interval_bounds`, so ``o_i <= pred_i <=
    ceil(width * o_i)``. Policies read only the prediction; ask
    :func:`interval_bounds` for ``lo`` and ``hi``.

    Parameters
    ----------
    instance
        The requests.
    width
        Target ratio ``hi / lo``, a number >= 1.
    seed
        Non-negative integer seed.

    Returns
    -------
    Instance
        A copy with ``predicted_output_tokens = hi``.
    """
    width = check_number(width, "width", 1.0)
    _, hi = interval_bounds(instance, width, seed)
    how = {"name": "interval", "width": width, "seed": check_seed(seed)}
    return _with_predictions(instance, hi, how)


def apply_predictor(instance: Instance, spec: str) -> Instance:
    """Apply a predictor named as on the command line.

    ``oracle``, ``noise:sigma=0.5[,seed=0]``, ``interval:width=2[,seed=0]`` or
    ``buckets:edges=64/256/1024`` (bucket edges separated by ``/``).

    Raises
    ------
    InputError
        For an unknown predictor or parameter, or a value that is not a number.
    """
    name, options = parse_spec(spec, "predictor")
    allowed = {
        "oracle": set(),
        "noise": {"sigma", "seed"},
        "interval": {"width", "seed"},
        "buckets": {"edges"},
    }
    if name not in allowed:
        raise InputError(
            f"unknown predictor {name!r}; expected one of {', '.join(allowed)}",
            field="predictor",
        )
    unknown = set(options) - allowed[name]
    if unknown:
        raise InputError(
            f"unknown parameter(s) {sorted(unknown)} of {name}; expected "
            f"{sorted(allowed[name]) or 'none'}",
            field="predictor",
        )
    try:
        seed = int(options.get("seed", "0"))
        if name == "oracle":
            return oracle(instance)
        if name == "noise":
            return lognormal_noise(instance, float(options.get("sigma", "0.5")), seed)
        if name == "interval":
            return interval(instance, float(options.get("width", "2")), seed)
        edges = [int(e) for e in options.get("edges", "").split("/") if e]
        return buckets(instance, edges)
    except ValueError as exc:
        raise InputError(f"{spec!r}: {exc}", field="predictor") from None
